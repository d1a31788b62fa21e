"""Packing end to end: the bench's `--packing off,on` rows, a baseline run through the CLI with
`data.packing` on, and a bad `data.pack_rows` refused naming the key."""

import json
import math

import pytest

from tests.integration.study_storage import make_tiny_storage
from tests.integration.test_bench_cli import TINY
from tests.integration.test_bench_cli import _run as run_bench
from tests.integration.test_pipelines import FAST, metrics_rows, ok, run_cli


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
    p = run_cli(work, "baseline.py", *FAST, "--config.data.packing=True",
                "--config.data.pack_rows=5")  # fmt: skip
    assert p.returncode == 2 and "data.pack_rows" in p.stderr
