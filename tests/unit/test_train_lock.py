"""The output_dir lock file is never followed through a symlink nor taken from a non-file."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import train_toy
from wmtp_jax.train.lock import LOCK_FILE, BadLockFile, claim_output_dir, release_output_dir

ROOT = Path(__file__).resolve().parents[2]


def _symlink(d: Path) -> Path:
    target = d / "precious.txt"
    target.write_text("keep me\n")
    (d / LOCK_FILE).symlink_to(target)
    return target


@pytest.mark.parametrize(
    "make, what",
    [
        (_symlink, "is a symlink"),
        (lambda d: (d / LOCK_FILE).symlink_to(d / "missing"), "is a symlink"),  # dangling
        (lambda d: (d / LOCK_FILE).mkdir(), "is a directory"),
        (lambda d: os.mkfifo(d / LOCK_FILE), "is not a regular file"),
    ],
)
def test_a_lock_that_is_not_a_file_is_refused(tmp_path, make, what):
    target = make(tmp_path)
    with pytest.raises(BadLockFile, match=f"lock file {tmp_path / LOCK_FILE} {what}"):
        claim_output_dir(tmp_path)
    if target is not None:
        assert target.read_text() == "keep me\n"  # not truncated, not written
    assert not (tmp_path / "missing").exists()  # a dangling link is not created through
    lock = tmp_path / LOCK_FILE
    os.rmdir(lock) if lock.is_dir() and not lock.is_symlink() else lock.unlink()
    claim_output_dir(tmp_path)  # once removed, the run takes the lock
    release_output_dir(tmp_path)


def test_the_command_line_refuses_a_symlinked_lock_with_one_line(tmp_path):
    target = _symlink(tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "tests.train_toy", "--config=tests/train_toy_config.py"]
        + [f"--config.output_dir={tmp_path}"],
        cwd=ROOT,
        env={**os.environ, **train_toy.cache_env(), "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    # the config preflight refuses it before the lock is taken (the lock itself refuses it too:
    # the unit tests above)
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: ") and f"{tmp_path / LOCK_FILE} is a symlink" in line, line
    assert target.read_text() == "keep me\n"
