"""Packing end to end: the bench's `--packing off,on` rows, a baseline run through the CLI with
`data.packing` on (its metrics carry the packing counts), a bad `data.pack_rows` refused naming
the key, and the train loop logging a packed loader's cut / dropped / pad counts per window."""

import json
import math

import pytest

from tests import train_toy, train_toy_config
from tests.integration.study_storage import make_tiny_storage
from tests.integration.test_bench_cli import TINY
from tests.integration.test_bench_cli import _run as run_bench
from tests.integration.test_pipelines import FAST, metrics_rows, ok, run_cli
from tests.unit.test_data_packing import Batches, batch_of
from wmtp_jax.data.packing import WINDOW_METRICS, PackedLoader
from wmtp_jax.train import fit


@pytest.mark.slow
def test_bench_packing_rows(tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["--packing", "off,on", "--lengths", "synthetic", "--pipelines", "baseline", *TINY]
    p = run_bench([*args, "--batch", "4", "--seq", "32", "--steps", "1", "--warmup", "0",
                   "--out", str(out)])  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds == ["packing_critic", "packing", "packing", "packing_ratio"]
    rows = rows[1:] + rows[:1]
    off, on = rows[0], rows[1]
    assert off["packing"] == "off" and on["packing"] == "on"
    assert off["useful_tokens"] == on["useful_tokens"] and on["rows"] < off["rows"] == 4
    assert on["pad_fraction"] < off["pad_fraction"]
    assert rows[2]["useful_tokens_per_s_ratio"] > 0 and rows[2]["cut_tokens"] == 0
    assert rows[3]["pad_fraction_packed"] < rows[3]["pad_fraction_padded"]
    bad = run_bench(["--packing", "maybe", *TINY])
    assert bad.returncode != 0 and "--packing" in bad.stderr


@pytest.mark.slow
def test_baseline_runs_packed_and_refuses_bad_rows(tmp_path):
    work = make_tiny_storage(tmp_path)
    packed = ["--config.data.packing=True", "--config.data.pack_rows=1"]
    ok(run_cli(work, "baseline.py", *FAST, *packed))
    out = work / "storage/checkpoints/baseline/baseline-micro"
    losses = [r["train/loss"] for r in metrics_rows(out) if "train/loss" in r]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)
    data = [r for r in metrics_rows(out) if "train/loss" in r]
    for r in data:  # 2 samples into 1 row of 128 tokens, each step
        assert {*WINDOW_METRICS.values(), "data/pad_fraction"} <= set(r)
        assert 0 <= r["data/pad_fraction"] < 1 and r["data/cut_samples"] <= 2
    p = run_cli(work, "baseline.py", *FAST, "--config.data.packing=True",
                "--config.data.pack_rows=5")  # fmt: skip
    assert p.returncode == 2 and "data.pack_rows" in p.stderr


@pytest.mark.slow
def test_loop_logs_packing_counts_per_window(tmp_path):
    """Steps alternate a batch with one sample cut (8 samples of 6 tokens then one of 5, in 8
    rows of 8 (one per device): the last keeps 2 tokens, pad 14/64) and one with a sample dropped
    (8 × 8 then 3: pad 0); a window of 2 steps logs 1 cut sample, 3 cut tokens, 1 dropped
    sample of 3 tokens and pad fraction (14/64 + 0)/2."""
    c = train_toy_config.config_in(
        tmp_path,
        **{
            "training.max_steps": 4,
            "training.log_interval": 2,
            "training.eval_every_steps": 0,
            "checkpoint.every_steps": 100,
        },
    )
    task = train_toy.make_task(c, dropout=0.0)
    toy = [batch_of([6] * 8 + [5]), batch_of([8] * 8 + [3])]
    for b in toy:
        b["input_ids"] %= 16  # the toy LM's vocabulary
    task.train_iter = PackedLoader(Batches(toy), rows=8, seq_len=8)
    task.val_iter_fn = None
    r = fit(c, task)
    rows = {row["step"]: row for row in metrics_rows(r.output_dir) if "train/loss" in row}
    assert sorted(rows) == [2, 4]
    for row in rows.values():
        assert row["data/cut_samples"] == 1 and row["data/cut_tokens"] == 3
        assert row["data/dropped_samples"] == 1 and row["data/dropped_tokens"] == 3
        assert row["data/pad_fraction"] == pytest.approx(7 / 64)
