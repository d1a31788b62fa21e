"""A memory cap across all of a run's processes, files in memory included: one cgroup per run.

Each run gets a child of the scorer's own memory cgroup, with ``memory.max`` (cgroup v2) or
``memory.limit_in_bytes`` (the memory controller on a v1 hierarchy) set to ``Limits.memory`` and
no swap. The kernel charges everything the run's processes allocate to it, tmpfs, memfd and SysV
shared-memory pages included, and kills within the run when the cap is reached. The program
joins it first thing (``wire.confine`` writes to an fd of ``cgroup.procs`` opened here), so
everything it starts is inside. Creating a child needs write access to the scorer's cgroup
(root, or a delegated v2 subtree with the memory controller enabled for children).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import signal
import threading
import time

from absl import logging

_PREFIX = "wmtp-"
_COUNTER = itertools.count()


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Where runs' cgroups are made: the scorer's own memory cgroup, v1 or v2."""

    parent: str
    version: int

    def describe(self) -> str:
        return f"cgroup v{self.version} {'memory.max' if self.version == 2 else 'memory limit'}"


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _candidates() -> list[tuple[int, str]]:
    """(version, directory) where runs' cgroups could go: for v2 the scorer's cgroup or its
    parent, where the memory controller is enabled for children (a cgroup with processes cannot
    enable it: the scorer's own works only at the root or when delegated so), for v1 the
    scorer's memory cgroup."""
    with open("/proc/self/cgroup") as f:
        entries = [line.rstrip("\n").split(":", 2) for line in f]
    v1 = next((path for _, ctrl, path in entries if "memory" in ctrl.split(",")), None)
    v2 = next((path for hid, ctrl, path in entries if hid == "0" and ctrl == ""), None)
    with open("/proc/self/mountinfo") as f:
        mounts = []
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, (fstype, _src, opts) = pre.split(), post.split()[:3]
            mounts.append((_unescape(fields[3]), _unescape(fields[4]), fstype, opts.split(",")))
    out = []
    for version, path in ((2, v2), (1, v1)):
        for root, point, fstype, opts in mounts if path is not None else ():
            ok = fstype == "cgroup2" if version == 2 else fstype == "cgroup" and "memory" in opts
            if ok and _inside(path, root):
                directory = os.path.join(point, path[len(root) :].lstrip("/")).rstrip("/")
                if version == 1:
                    out.append((1, directory))
                else:
                    for d in (directory, os.path.dirname(directory)):
                        if _inside(d, point) and _enabled_for_children(d):
                            out.append((2, d))
                break
    return out


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root.rstrip("/") or path.startswith(root.rstrip("/") + "/")


def _enabled_for_children(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "cgroup.subtree_control")) as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def find() -> Hierarchy | None:
    """The hierarchy to make runs' cgroups in, or None where none can be made here."""
    try:
        candidates = _candidates()
    except (OSError, ValueError):
        return None
    problem = "no memory cgroup controller"
    for version, directory in candidates:
        hierarchy = Hierarchy(directory, version)
        _sweep(hierarchy)
        try:
            RunCgroup(hierarchy, 64 << 20).remove()
            return hierarchy
        except OSError as e:
            problem = f"{directory}: {e.strerror or e}"
    logging.info("no memory cgroup for sandboxed runs (%s)", problem)
    return None


def _sweep(h: Hierarchy) -> None:
    """Remove runs' cgroups left by scorers that were killed (empty once their runs died)."""
    try:
        names = os.listdir(h.parent)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(re.escape(_PREFIX) + r"(\d+)-\d+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(h.parent, name))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class RunCgroup:
    """One run's cgroup, capped at ``limit`` bytes; ``procs_fd`` moves a process in (write "0")."""

    procs_fd: int | None

    def __init__(self, h: Hierarchy, limit: int):
        self.h = h
        self.dir = os.path.join(h.parent, f"{_PREFIX}{os.getpid()}-{next(_COUNTER)}")
        os.mkdir(self.dir)
        try:
            if h.version == 2:
                _write(os.path.join(self.dir, "memory.max"), str(limit))
                for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    if os.path.exists(os.path.join(self.dir, name)):
                        _write(os.path.join(self.dir, name), value)
            else:
                _write(os.path.join(self.dir, "memory.limit_in_bytes"), str(limit))
                memsw = os.path.join(self.dir, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    _write(memsw, str(limit))
            self.procs_fd = os.open(os.path.join(self.dir, "cgroup.procs"), os.O_WRONLY)
        except OSError:
            os.rmdir(self.dir)
            raise

    def close_procs(self) -> None:
        """Close ``procs_fd`` (once the run's first process holds its copy)."""
        if self.procs_fd is not None:
            os.close(self.procs_fd)
            self.procs_fd = None

    def oom_kills(self) -> int:
        """Processes the kernel killed here for want of memory."""
        name = "memory.events" if self.h.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.dir, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def _pids(self) -> list[int]:
        with open(os.path.join(self.dir, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]

    def try_remove(self, deadline: float) -> bool:
        """Remove the cgroup if its processes are gone (True); past ``deadline`` kill them first
        (and past it by more than a minute give up with a warning, True)."""
        try:
            os.rmdir(self.dir)
            return True
        except FileNotFoundError:
            return True
        except OSError:  # EBUSY: processes still inside
            pass
        now = time.monotonic()
        if now > deadline + 60:
            logging.warning("cannot remove the run's cgroup %s: its processes do not die", self.dir)
            return True
        if now > deadline:
            with contextlib.suppress(OSError):
                self._kill(self._pids())
        return False

    def remove(self, grace: float = 2.0) -> None:
        """Wait for the processes inside to end (kill them after ``grace`` s), then remove it."""
        self.close_procs()
        deadline = time.monotonic() + grace
        while not self.try_remove(deadline):
            time.sleep(0.001)

    def _kill(self, pids: list[int]) -> None:
        if self.h.version == 2 and os.path.exists(os.path.join(self.dir, "cgroup.kill")):
            _write(os.path.join(self.dir, "cgroup.kill"), "1")
            return
        mine = os.path.relpath(self.dir, self.h.parent)
        for pid in pids:  # via a pidfd, checked to be still inside: a reused pid is spared
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    inside = any(line.rstrip().endswith("/" + mine) for line in f)
                if inside:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)


_RETIRING: list[tuple[RunCgroup, float]] = []  # (cgroup, when to kill what is left)
_RETIRING_LOCK = threading.Lock()
_reaper: threading.Thread | None = None


def retire(cgroup: RunCgroup, grace: float = 2.0) -> None:
    """Remove ``cgroup`` now if its processes are gone, else from a background thread once they
    are (a killed run's namespace dies a few ms after its bwrap; after ``grace`` s what is left is
    killed): the caller does not wait. The thread is no daemon, so the scorer exits only once
    every run's cgroup is gone."""
    global _reaper
    cgroup.close_procs()
    if cgroup.try_remove(time.monotonic() + grace):
        return
    with _RETIRING_LOCK:
        _RETIRING.append((cgroup, time.monotonic() + grace))
        if _reaper is None:
            _reaper = threading.Thread(target=_remove_retired, name="wmtp-cgroup-reaper")
            _reaper.start()


def _remove_retired() -> None:
    global _reaper
    while True:
        time.sleep(0.01)
        with _RETIRING_LOCK:
            _RETIRING[:] = [(c, d) for c, d in _RETIRING if not c.try_remove(d)]
            if not _RETIRING:
                _reaper = None
                return
