"""Launching one untrusted program and tearing it down: the isolation, the resource limits and
the process lifecycle (``execution`` runs programs with it, ``session`` serves them).

Isolation policy (``execution.sandbox(policy)``, decided once per process and policy):
  * ``required`` (default): bubblewrap (``bwrap``) runs every program in new PID, network, mount,
    IPC and UTS namespaces (cgroup where possible) on a minimal read-only root: /usr, the
    interpreter's own tree, a fresh /proc and /dev, a private size-capped /tmp as cwd (and
    /dev/shm), and the run's own files read-only under /sandbox; nothing of the checkout,
    storage, home or other runs. A seccomp filter (``syscalls``) denies what generated code never
    needs: kernel keyrings, new namespaces, mounts, ptrace, bpf, perf, userfaultfd... The program
    runs as an unprivileged uid: started as root, bwrap makes no user namespace and the program
    drops to a throw-away uid, a fresh one per run, never reused by this scorer and never one that
    holds kernel keys; otherwise bwrap makes a user namespace with uid 65534 inside and
    ``--disable-userns``. Every run gets a fresh, empty session keyring (the scorer's, a PAM
    login's, is out of reach). A memory cap covers all of a run's processes, files in memory
    included: a cgroup per run (``cgroups``) where one can be made; elsewhere in-memory files are
    bounded (tmpfs sizes; memfd_create and SysV shmget denied) and each process by RLIMIT_AS.
    When bwrap or the filter cannot be set up, ``sandbox`` raises ``SandboxUnavailable`` (one
    line: what is missing, how to opt out) before anything runs.
  * ``best_effort``: the above when possible, else a plain process (+ a throw-away uid as root).
  * ``none``: a plain process, no isolation.

Always on: rlimits (CPU, address space, processes, file size, open files, no core), a session /
process group SIGKILLed at the end, a wall-clock timeout, an environment of PATH and LANG only,
stdout read with a byte cap. Under bwrap the namespace dies with the run: no process, SysV IPC
object, key or file outlives it (bwrap --die-with-parent covers a killed scorer too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from wmtp_jax.eval import cgroups, syscalls, wire

POLICIES = ("required", "best_effort", "none")
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_SANDBOX_ERROR = wire.SETUP_ERROR
_NOBODY = 65534
WIRE_SOURCE = Path(__file__).with_name("wire.py").read_text()  # copied into each run
_REPO = Path(__file__).resolve().parents[2]


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be set up here (the message is one line)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource caps for one run. ``cpu_seconds=None`` means int(timeout) + 2. ``memory``: bytes
    of RAM for all of the run's processes together, files in memory included (a cgroup, where
    the sandbox has one); None: no cgroup, in-memory files bounded instead."""

    cpu_seconds: int | None = None
    address_space: int = 1 << 30
    memory: int | None = 1 << 30
    nproc: int = 64
    file_size: int = 16 << 20
    open_files: int = 256
    max_output: int = 1 << 20  # stdout bytes kept (one reply, for served programs); more fails
    tmpfs_size: int = 64 << 20  # each of /tmp and /dev/shm

    def rlimits(self, timeout: float) -> list[tuple[str, int]]:
        cpu = self.cpu_seconds if self.cpu_seconds is not None else int(timeout) + 2
        return [
            ("RLIMIT_CPU", cpu),
            ("RLIMIT_AS", self.address_space),
            ("RLIMIT_NPROC", self.nproc),
            ("RLIMIT_FSIZE", self.file_size),
            ("RLIMIT_NOFILE", self.open_files),
            ("RLIMIT_CORE", 0),
        ]


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """How programs run: ``bwrap`` (its path) when isolated, else a plain process."""

    policy: str
    bwrap: str | None
    userns: bool  # bwrap makes a user namespace (not root): uid 65534 inside
    uid_drop: bool  # the program drops to a throw-away host uid (started as root)
    seccomp: bool = False  # the syscall filter (bwrap only)
    cgroups: cgroups.Hierarchy | None = None  # where runs' memory cgroups go

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        uid = (
            "throw-away uid"
            if self.uid_drop
            else "uid 65534 in a user namespace"
            if self.userns
            else "the caller's uid"
        )
        memory = (
            f"memory cap per run ({self.cgroups.describe()})"
            if self.cgroups
            else "in-memory files bounded, memory capped per process only"
            if self.seccomp
            else "memory capped per process only"
        )
        if self.isolated:
            return (
                f"bubblewrap: pid+net+mount+ipc+uts namespaces, read-only minimal root, "
                f"private /tmp, {uid}, "
                f"{'seccomp filter' if self.seccomp else 'NO syscall filter'}, "
                f"fresh session keyring, {memory}, rlimits"
            )
        return (
            f"plain process, NOT isolated (host filesystem, network and IPC reachable), "
            f"{uid}, {memory}, rlimits"
        )

    def record(self) -> dict:
        """What a results summary records about the isolation it ran under."""
        return {"policy": self.policy, "isolated": self.isolated, "isolation": self.describe()}


class _UidPool:
    """A fresh unprivileged uid per run, never handed out twice by this process (from a random
    base >= 1e6), and never one that holds kernel keys (listed in /proc/key-users) or one that is
    still in use."""

    def __init__(self):
        self.base = 1_000_000 + secrets.randbelow(1 << 30)
        self._next = itertools.count(self.base)
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            held = _key_users()
            return next(uid for uid in self._next if uid not in held)


def _key_users() -> set[int]:
    try:
        with open("/proc/key-users") as f:
            return {int(line.split(":")[0]) for line in f}
    except (OSError, ValueError):
        return set()


_UIDS = _UidPool()


@functools.cache
def _keyctl() -> int | None:
    """This architecture's keyctl syscall number (None without libseccomp: no fresh keyring)."""
    try:
        nr = syscalls.syscall_number("keyctl")
    except syscalls.FilterUnavailable:
        return None
    return nr if nr >= 0 else None


@functools.cache
def _program_python() -> str:
    """The base interpreter (not the venv's `bin/python`): programs get the standard library
    only, and the venv (in the checkout) stays out of the sandbox."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@functools.cache
def _root_fs() -> tuple[str, ...]:
    """bwrap arguments for the read-only minimal root: /usr (+ /bin, /lib... as on the host),
    the interpreter's trees, with the checkout, cwd and home masked when they lie inside."""
    args = ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += [
        "--perms",
        "0755",
        "--dir",
        "/etc",
        "--ro-bind-try",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
    ]
    trees: list[str] = []
    for p in sorted(
        {
            os.path.realpath(p)
            for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(_program_python()))
        }
    ):
        if not any(_inside(p, t) for t in ["/usr", *trees]):
            trees.append(p)
    made = {"/", "/etc"}
    for tree in trees:
        parts = tree.strip("/").split("/")
        for i in range(1, len(parts)):  # bwrap would make missing parents 0700
            anc = "/" + "/".join(parts[:i])
            if anc not in made:
                made.add(anc)
                args += ["--perms", "0755", "--dir", anc]
        args += ["--ro-bind", tree, tree]
    bound = ["/usr", *trees]
    hidden = {os.path.realpath(p) for p in (_REPO, os.getcwd(), os.path.expanduser("~"))}
    for hide in sorted(hidden):
        if any(_inside(hide, b) and hide != b for b in bound) and not any(
            _inside(t, hide) for t in trees
        ):
            args += ["--tmpfs", hide]
    return tuple(args)


def command(
    sb: Sandbox,
    host_dir: str,
    mode: str,
    uid: int | None,
    limits: Limits,
    timeout: float,
    cgroup_fd: int | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """``python -I -S wire.py CONFIG <mode> main.py`` from the run dir, under bwrap if isolated
    (-S: the interpreter's site-packages stay out, and start-up is fast). ``cgroup_fd``: the
    run's ``cgroup.procs``, joined first thing; ``seccomp_fd``: the compiled filter, for bwrap."""
    inside = "/sandbox" if sb.isolated else host_dir
    config = dict(
        rlimits=limits.rlimits(timeout),
        uid=uid,
        cwd="/tmp" if sb.isolated else os.path.join(host_dir, "work"),
        cgroup_fd=cgroup_fd,
        keyctl=_keyctl(),
    )
    program = [
        _program_python(),
        "-I",
        "-S",
        os.path.join(inside, "wire.py"),
        json.dumps(config),
        mode,
        os.path.join(inside, "main.py"),
    ]
    if not sb.isolated:
        return program
    cmd = [
        sb.bwrap,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
    ]
    if sb.userns:
        cmd += ["--unshare-user", "--uid", str(_NOBODY), "--gid", str(_NOBODY), "--disable-userns"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    tmpfs = ["--perms", "1777", "--size", str(limits.tmpfs_size), "--tmpfs"]
    return [
        *cmd,
        *_root_fs(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *tmpfs,
        "/dev/shm",
        *tmpfs,
        "/tmp",
        "--ro-bind",
        host_dir,
        "/sandbox",
        "--chdir",
        "/tmp",
        "--",
        *program,
    ]


def _filter_fd(bounded_files: bool) -> int:
    """The read end of a pipe holding the compiled filter (bwrap reads it to the end)."""
    bpf = syscalls.program(bounded_files)
    r, w = os.pipe()
    try:
        os.write(w, bpf)  # a few KiB: within the pipe's buffer
    finally:
        os.close(w)
    return r


@dataclasses.dataclass
class Run:
    """A launched program: its process, and its memory cgroup when it has one."""

    proc: subprocess.Popen
    cgroup: cgroups.RunCgroup | None

    def memory_exceeded(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_kills() > 0


@contextlib.contextmanager
def launch(
    sb: Sandbox, source: str, mode: str, limits: Limits, timeout: float, stdin: bytes | None
) -> Iterator[Run]:
    """Start ``source`` as ``main.py`` behind ``wire.py <mode>`` (``run`` or ``serve``), fed
    ``stdin`` (None: a pipe). On leaving the block it is killed with everything it started, and
    its run dir and cgroup are removed (its uid is never handed out again)."""
    uid = _UIDS.acquire() if sb.uid_drop else None
    host_dir = tempfile.mkdtemp(prefix="wmtp_sandbox_")
    cgroup, seccomp_fd = None, None
    try:
        os.chmod(host_dir, 0o711)
        files = {"main.py": source, "wire.py": WIRE_SOURCE}
        for name, text in files.items():
            path = os.path.join(host_dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(path, 0o644)
        if not sb.isolated:
            os.mkdir(os.path.join(host_dir, "work"), 0o700)
            if uid is not None:
                os.chown(os.path.join(host_dir, "work"), uid, uid)
        if sb.cgroups is not None and limits.memory is not None:
            cgroup = cgroups.RunCgroup(sb.cgroups, limits.memory)
        if sb.seccomp:
            seccomp_fd = _filter_fd(bounded_files=cgroup is None)
        cgroup_fd = cgroup.procs_fd if cgroup is not None else None
        cmd = command(sb, host_dir, mode, uid, limits, timeout, cgroup_fd, seccomp_fd)
        with contextlib.ExitStack() as stack:
            stdin_file = subprocess.PIPE
            if stdin is not None:
                path = os.path.join(host_dir, "stdin")
                with open(path, "wb") as f:
                    f.write(stdin)
                stdin_file = stack.enter_context(open(path, "rb"))
            fds = [fd for fd in (cgroup_fd, seccomp_fd) if fd is not None]
            proc = spawn(cmd, stdin_file, fds)
        if cgroup is not None:
            cgroup.close_procs()  # the child holds its copy
        try:
            yield Run(proc, cgroup)
        finally:
            reap(proc, sb, uid)
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
        if cgroup is not None:
            cgroups.retire(cgroup)
        shutil.rmtree(host_dir, ignore_errors=True)


def spawn(cmd: list[str], stdin, pass_fds=()) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=SAFE_ENV,
        start_new_session=True,
        close_fds=True,
        pass_fds=pass_fds,
    )


def pids_with_uid(match: Callable[[int], bool]) -> list[int]:
    """Live pids having a real, effective, saved or filesystem uid for which `match` is true."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if any(match(int(u)) for u in uids):
            pids.append(int(pid))
    return pids


def reap(proc: subprocess.Popen, sb: Sandbox, uid: int | None) -> None:
    """SIGKILL the run's process group (bwrap takes its namespace down with it), reap it, and
    without namespaces kill what escaped the group under the run's uid."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
    if uid is not None and not sb.isolated:
        for pid in pids_with_uid(lambda u: u == uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue


def exited(proc: subprocess.Popen) -> int | None:
    """Exit code if ``proc`` has exited, without reaping it (its group id stays reserved)."""
    info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if not info:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def failure_reason(returncode: int | None, stderr: bytes, memory_exceeded: bool = False) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    if returncode == _SANDBOX_ERROR and lines and "sandbox setup error" in lines[-1]:
        return "failed: " + lines[-1]
    if memory_exceeded:
        return "failed: memory limit exceeded"
    if returncode == 0:
        return "failed: exited before all tests ran"
    if lines:
        return "failed: " + lines[-1][:300]
    return f"failed: exit status {returncode}"
