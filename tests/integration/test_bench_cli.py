"""`python -m wmtp_jax.bench` end to end on tiny shapes: it runs and writes valid JSON lines
(a functional check, not a timed assertion)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from wmtp_jax.bench import flops
from wmtp_jax.bench.train_step import TrainCase
from wmtp_jax.train.xla_flags import with_cpu_defaults

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--dim",
    "32",
    "--n-layers",
    "3",
    "--n-heads",
    "2",
    "--n-future",
    "2",
    "--vocab",
    "64",
    "--multiple-of",
    "16",
]


def _run(args, devices=1, timeout=600):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    return subprocess.run(
        [sys.executable, "-m", "wmtp_jax.bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_and_decode_write_json_lines(tmp_path):
    out, png = tmp_path / "r.jsonl", tmp_path / "tput.png"
    p = _run(
        [
            "--what",
            "all",
            "--pipelines",
            "verifiable",
            *TINY,
            "--batch",
            "2",
            "--seq",
            "16",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--peak-tflops",
            "1",
            "--prompt-len",
            "4",
            "--max-new-tokens",
            "4",
            "--decode-repeats",
            "1",
            "--out",
            str(out),
            "--plot",
            str(png),
        ],
        devices=2,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["train", "decode", "decode"]
    train, greedy, spec = rows
    for r in rows:
        m = r["machine"]
        assert m["backend"] == "cpu" and m["jax"] and m["flax"] and m["host_cores"] >= 1
        assert len(r["loadavg"]) == 3 and "commit" in m
        # the user's XLA_FLAGS kept, the release's CPU defaults appended (train/xla_flags.py)
        want = with_cpu_defaults("--xla_force_host_platform_device_count=2", jax.__version__)
        assert m["xla_flags"] == want
    c = train["config"]
    assert (c["pipeline"], c["batch"], c["seq"], c["dim"], c["n_layers"]) == (
        "verifiable",
        2,
        16,
        32,
        3,
    )
    assert train["n_devices"] == 2 and train["mesh_shape"]["fsdp"] == 2
    case = TrainCase(
        pipeline="verifiable",
        dim=32,
        n_layers=3,
        n_heads=2,
        n_future=2,
        vocab=64,
        multiple_of=16,
        batch=2,
        seq=16,
    )
    want = flops.train_flops_per_token(
        "verifiable", case.policy_args(), 16, critic_args=case.critic_args()
    )
    assert train["flops_per_token"] == want
    assert train["tokens_per_step"] == 32 and train["step_flops"] == want["total"] * 32
    assert train["compile_s"] > 0 and len(train["step_times_s"]) == 2
    assert train["tokens_per_s"] == pytest.approx(32 / train["step_time_s"])
    # MFU = achieved FLOP/s / (1 TFLOP/s × 2 devices)
    assert train["mfu"] == pytest.approx(train["step_flops"] / train["step_time_s"] / 2e12)
    assert train["memory_analysis"]["estimate"] > 0 and train["final_loss"] > 0
    assert (greedy["mode"], spec["mode"]) == ("greedy", "speculative")
    assert greedy["new_tokens"] == spec["new_tokens"] == 4 and greedy["tokens_per_s"] > 0
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and 0.0 <= spec["match_greedy"] <= 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_exits_nonzero_naming_the_flag(tmp_path):
    p = _run(["--pipelines", "baseline,ppo", "--out", str(tmp_path / "r.jsonl")])
    assert p.returncode != 0 and "--pipelines" in p.stderr and "ppo" in p.stderr
    p = _run(["--mesh", "1,2", "--out", str(tmp_path / "r.jsonl")])
    assert p.returncode != 0 and "--mesh" in p.stderr
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow
def test_attention_sweep_and_torch_comparison_smoke(tmp_path):
    out = tmp_path / "r.jsonl"
    p = _run(
        [
            "--attention",
            "--attention-seq",
            "40",
            "--attention-shape",
            "2,4,2,8",
            "--compare-torch",
            "--pipelines",
            "baseline",
            *TINY,
            "--batch",
            "2",
            "--seq",
            "16",
            "--attention-impl",
            "xla,blockwise",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    attn = [r for r in rows if r["kind"] == "attention"]
    assert [r["implementation"] for r in attn] == ["xla", "blockwise", "torch_sdpa"]
    xla, blockwise, sdpa = attn
    for r in attn:
        assert r["config"]["seq"] == 40 and len(r["fwd_bwd_ms_all"]) == 2 and r["fwd_bwd_ms"] > 0
        assert r["ratio_vs_torch_sdpa"] == pytest.approx(r["fwd_bwd_ms"] / sdpa["fwd_bwd_ms"])
        assert len(r["loadavg_during"]) == 2
    assert blockwise["resolved"] == "blockwise" and xla["memory_analysis"]["estimate"] > 0
    assert blockwise["memory_vs_xla"] == pytest.approx(
        blockwise["memory_analysis"]["estimate"] / xla["memory_analysis"]["estimate"]
    )
    assert sdpa["torch_peak_bytes"] is None  # no CPU allocator statistics in torch
    cmp = [r for r in rows if r["kind"] == "compare_torch"]
    assert [(r["config"]["attention"], r["attention_resolved"]) for r in cmp] == [
        ("xla", "xla"),
        ("blockwise", "blockwise"),
    ]
    for r in cmp:
        # the same model, weights, batch and loss on both sides: the same first loss
        assert r["first_loss_jax"] == pytest.approx(r["first_loss_torch"], abs=1e-4)
        assert r["ratio_jax_over_torch"] == pytest.approx(r["jax_step_ms"] / r["torch_step_ms"])
        assert len(r["jax_step_ms_all"]) == len(r["torch_step_ms_all"]) == 2
        assert r["torch_threads"] >= 1 and len(r["loadavg_during"]) == 2
    p = _run(["--attention", "--attention-impl", "flash", "--out", str(tmp_path / "x.jsonl")])
    assert p.returncode != 0 and "--attention-impl" in p.stderr and "flash" in p.stderr
