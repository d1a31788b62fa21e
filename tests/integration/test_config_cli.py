"""Bad configs through the command line: one `error: <key>: <reason>` line on stderr, exit 2,
no traceback, nothing created (the in-process versions of every case are in
tests/unit/test_config_validation.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(cwd, *overrides):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device
    cmd = [sys.executable, "-m", "wmtp_jax.main", f"--config={ROOT}/configs/baseline.py"]
    cmd += ["--config.mlflow.experiment=", *overrides]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "case,overrides,want",
    [
        (
            "output_dir file",
            ["--config.output_dir=f"],
            "error: output_dir: 'f' is invalid; it is a file",
        ),
        (
            "lock dir",
            ["--config.output_dir=run"],
            "error: output_dir: 'run' is invalid; its lock file",
        ),
        (
            "seed",
            ["--config.seed=4294967296"],
            "error: seed: 4294967296 is invalid; need an integer",
        ),
        ("mesh", ["--config.mesh.data=3"], "error: mesh: {'data': 3, 'fsdp': -1, 'tensor': 1}: 1 "),
    ],
)
def test_bad_config_is_one_error_line_exit_2(tmp_path, case, overrides, want):
    (tmp_path / "f").write_text("x")
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    p = run_cli(tmp_path, *overrides)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith(want), p.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
