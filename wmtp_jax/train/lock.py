"""An exclusive lock on a run's `output_dir`: a second run on the same directory refuses at once.

`<output_dir>/.lock` is held with `fcntl.flock(LOCK_EX | LOCK_NB)` for the life of the run and
carries the holder ("pid 123 on host h since 2026-01-01T00:00:00Z"). It is opened with
O_NOFOLLOW: a `.lock` that is a symlink, a directory or anything but a regular file is refused
(`BadLockFile`), never followed or written through. The kernel drops a flock
when its process dies, however it dies, so a stale file from a killed run never blocks. Holds
nest within a process: a pipeline claims its output_dir in its set-up, before loading anything
(so a second run refuses at once), and `fit` holds it again for the run. Multi-host: process 0
locks and tells the others, which fail with it. flock is advisory and per host: on a network
filesystem it guards runs started on the same host (NFSv4 forwards it to the server).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = ".lock"
_held: dict[str, list] = {}  # realpath of output_dir -> [fd, depth]


class OutputDirBusy(RuntimeError):
    """Another live process holds the output_dir lock."""


def _holder_line() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"pid {os.getpid()} on host {socket.gethostname()} since {now}"


class BadLockFile(OutputDirBusy):
    """`<output_dir>/.lock` is a symlink or not a regular file (never followed or written)."""


def _open_lock(path: Path) -> int:
    """The lock file, created if missing; never through a symlink, never anything but a file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise BadLockFile(
                f"lock file {path} is a symlink; remove it (a lock is never followed)"
            ) from None
        if e.errno == errno.EISDIR:
            raise BadLockFile(f"lock file {path} is a directory; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadLockFile(f"lock file {path} is not a regular file; remove it")
    return fd


def _acquire(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "an unknown process"
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise OutputDirBusy(
            f"output_dir {directory} is in use by {holder} (lock {path}); wait "
            f"for that run to end or choose another output_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_holder_line() + "\n").encode(), 0)
    return fd


def claim_output_dir(output_dir) -> Path:
    """Take the lock on `output_dir` (created if missing) for the rest of this process, or raise
    OutputDirBusy naming the holder. A no-op when this process already holds it."""
    directory = Path(output_dir).absolute()
    key = os.path.realpath(directory)
    if key in _held:
        _held[key][1] += 1
        return directory
    fd, err, refusal = None, "", None
    if jax.process_index() == 0:
        try:
            fd = _acquire(directory)
        except OutputDirBusy as e:  # busy, or a BadLockFile
            err, refusal = str(e), e
    if jax.process_count() > 1:
        busy = multihost_utils.process_allgather(np.int32(bool(err))).max()
        err = err or (
            f"output_dir {directory} is in use by another run (process 0 could not lock it)"
            if busy
            else ""
        )
    if refusal is not None:
        raise refusal
    if err:
        raise OutputDirBusy(err)
    _held[key] = [fd, 1]
    return directory


def release_output_dir(output_dir) -> None:
    """Undo one `claim_output_dir`; the last one closes the lock file (dropping the flock)."""
    key = os.path.realpath(Path(output_dir).absolute())
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        if entry[0] is not None:
            os.close(entry[0])


def release_all() -> None:
    """Drop every lock this process holds (before an `os._exit`)."""
    for key in list(_held):
        fd = _held.pop(key)[0]
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def hold_output_dir(output_dir):
    """`claim_output_dir` for the block (nested holds and an earlier claim are kept)."""
    directory = claim_output_dir(output_dir)
    try:
        yield directory
    finally:
        release_output_dir(directory)
