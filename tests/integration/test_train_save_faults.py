"""A checkpoint save that fails ends the run at once: one `error:` line naming the directory and
the OS error, exit 1, the output_dir lock released, no traceback and no hang (orbax's save
threads are not joined). Faults are real where this machine allows it: a tmpfs mounted read-only
or too small (root with CAP_SYS_ADMIN), a directory without write permission (not root).
Elsewhere the same OS errors are raised from the directory creation that orbax and the probe use
(`_INJECT`), so every case runs everywhere."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import train_toy
from wmtp_jax.train.checkpoint import Checkpointer, CheckpointSaveError
from wmtp_jax.train.lock import LOCK_FILE

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--config=tests/train_toy_config.py"]

# Runs tests.train_toy's command line with os.makedirs / os.open raising `err` for the
# checkpoint probe (`probe`) or orbax's temporary step directories.
_INJECT = """
import errno, os, sys
err, probe = errno.{err}, {probe}
_makedirs, _open = os.makedirs, os.open
def makedirs(path, *a, **k):
    if ".orbax-checkpoint-tmp" in str(path):
        raise OSError(err, os.strerror(err), str(path))
    return _makedirs(path, *a, **k)
def open_(path, *a, **k):
    if probe and ".write-probe-" in str(path):
        raise OSError(err, os.strerror(err), str(path))
    return _open(path, *a, **k)
os.makedirs, os.open = makedirs, open_
from tests import train_toy
from wmtp_jax import main
sys.argv = ["train_toy", *sys.argv[1:]]
main.cli(pipeline=train_toy)
"""


def _env():
    return {**os.environ, **train_toy.cache_env(), "JAX_PLATFORMS": "cpu"}


def _mount(directory: Path, options: str) -> bool:
    """Mount a tmpfs on `directory` (True), or False where this process may not."""
    if os.geteuid() != 0:
        return False
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True
    )
    return p.returncode == 0


def _run(out: Path, fault: str) -> tuple[subprocess.CompletedProcess, str]:
    """The toy run on `out` with `checkpoints/` read-only or full; (process, how it was made)."""
    ck = out / "checkpoints"
    ck.mkdir(parents=True)
    size = "ro,size=64k" if fault == "read-only" else "size=64k"  # 64k: the first save fails
    mounted = _mount(ck, size)
    cmd = [sys.executable, "-m", "tests.train_toy", *ARGS]
    how = "tmpfs"
    if not mounted:
        if fault == "read-only" and os.geteuid() != 0:
            ck.chmod(0o555)
            how = "chmod"
        else:
            err, probe = ("EROFS", True) if fault == "read-only" else ("ENOSPC", False)
            cmd = [sys.executable, "-c", _INJECT.format(err=err, probe=probe), *ARGS]
            how = "injected"
    try:
        p = subprocess.run(
            [*cmd, f"--config.output_dir={out}"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=240,  # a hang waits for orbax's 300 s barrier timeout
        )
    finally:
        if mounted:
            subprocess.run(["umount", str(ck)], check=True)
        elif how == "chmod":
            ck.chmod(0o755)
    return p, how


def _lock_is_free(out: Path) -> bool:
    fd = os.open(out / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "fault, oserror",
    [("read-only", "Read-only file system"), ("disk-full", "No space left on device")],
)
def test_failed_save_ends_the_run_with_one_line(tmp_path, fault, oserror):
    out = tmp_path / "run"
    p, how = _run(out, fault)
    assert p.returncode == 1, (how, p.stderr[-3000:])
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, (how, p.stderr[-3000:])
    assert f"{out / 'checkpoints'}" in err[0] and oserror in err[0], (how, err)
    assert "Traceback" not in p.stderr, (how, p.stderr[-3000:])
    assert _lock_is_free(out)
    if fault == "read-only":  # refused by the probe, before the first step
        assert "is not writable" in err[0]
        assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text()
    else:  # the (async) step-2 save failed; it is reported at the next save or wait
        assert f"could not save checkpoint {out / 'checkpoints' / '2'}" in err[0]
        rows = (out / "metrics.jsonl").read_text().splitlines()
        assert 2 <= len([r for r in rows if "train/loss" in r]) < 6, rows
        assert "Traceback" in (out / "run.log").read_text()  # orbax's report kept in run.log


def test_an_unwritable_checkpoint_directory_is_refused_when_the_checkpointer_is_made(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the directory goes")
    with pytest.raises(CheckpointSaveError, match=r"checkpoints is not writable: \[Errno 17\]"):
        Checkpointer(tmp_path)
