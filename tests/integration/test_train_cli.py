"""`python -m wmtp_jax.main` errors, and a two-process jax.distributed run on CPU over loopback."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import train_toy

ROOT = Path(__file__).resolve().parents[2]
MAIN = [sys.executable, "-m", "tests.train_toy", "--config=tests/train_toy_config.py"]


def _run(*args, timeout=120, main=MAIN):
    return subprocess.run(
        main + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_unknown_key_exits_nonzero_naming_it():
    p = _run("--config.training.nonexistent=1")
    assert p.returncode != 0
    assert "unknown config key 'config.training.nonexistent'" in p.stderr


def test_invalid_value_exits_nonzero_naming_the_key():
    p = _run("--config.runtime.sharding=FOO")
    assert p.returncode != 0
    assert "runtime.sharding: 'FOO' is invalid" in p.stderr and "FULL_SHARD" in p.stderr


def test_cudnn_attention_on_cpu_is_refused_before_training():
    p = _run("--config.runtime.attention=cudnn")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "runtime.attention='cudnn' needs an NVIDIA GPU" in p.stderr and "'cpu'" in p.stderr


def test_missing_pipeline_module_is_a_clear_error():
    p = _run("--config.pipeline=nope", main=[sys.executable, "-m", "wmtp_jax.main", MAIN[-1]])
    assert p.returncode != 0
    assert p.returncode == 2
    assert "config.pipeline='nope': unknown pipeline 'nope'; one of baseline," in p.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_distributed_run_trains_and_checkpoints(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        **train_toy.cache_env(),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    procs = []
    for pid in range(2):
        args = MAIN + [
            f"--config.output_dir={tmp_path}",
            "--config.training.max_steps=4",
            "--config.training.eval_every_steps=2",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={pid}",
        ]
        procs.append(
            subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "checkpoint:" in outs[0][0] and "/checkpoints/4" in outs[0][0]
    assert sorted(
        int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit()
    ) == [2, 4]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == [1, 2, 3, 4]  # process 0 logs; 8 global rows = 4 per process over 4 devices
    assert all(r["train/loss"] > 0 for r in rows if "train/loss" in r)
    meta = json.loads((tmp_path / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["data_iter"] == {"epoch": 0, "index": 16}  # process 0's position: 4 steps × 4 rows


@pytest.mark.parametrize("process_id", [0, 1])  # 0: the coordinator, its peer never comes
def test_an_unreachable_coordinator_ends_with_one_line_at_the_deadline(tmp_path, process_id):
    port = _free_port()  # nobody listens there
    p = _run(
        f"--config.output_dir={tmp_path}",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={process_id}",
        "--config.distributed.initialization_timeout=3",
        timeout=200,  # jax alone would wait 300 s, then abort with a C++ stack trace
    )
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "Check failure" not in p.stderr, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert err == [
        f"error: joining the coordinator 127.0.0.1:{port} (process {process_id} of 2) did not "
        "complete within distributed.initialization_timeout=3 s: the coordinator is "
        "unreachable or not every process started"
    ], p.stderr[-3000:]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_a_bad_initialization_timeout_is_refused(value):
    p = _run(
        "--config.distributed.coordinator_address=127.0.0.1:1",
        "--config.distributed.num_processes=2",
        "--config.distributed.process_id=1",
        f"--config.distributed.initialization_timeout={value}",
    )
    assert p.returncode == 2, p.stderr[-2000:]
    # non-finite values are refused by the config's generic number check, the others by the
    # distributed deadline's own: one line naming the key either way
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: distributed.initialization_timeout"), line
    assert "finite" in line, line
