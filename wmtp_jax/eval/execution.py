"""Sandboxed execution of untrusted generated programs.

Isolation policy (``sandbox(policy)``, decided once per process and policy):
  * ``required`` (default): bubblewrap (``bwrap``) runs every program in new PID, network, mount,
    IPC and UTS namespaces (cgroup where possible) on a minimal read-only root: /usr, the
    interpreter's own tree, a fresh /proc and /dev, a private size-capped /tmp as cwd, and the
    run's own files read-only under /sandbox; nothing of the checkout, storage, home or other
    runs. The program runs as an unprivileged uid: started as root, bwrap makes no user namespace
    and the program drops to a throw-away uid (one per concurrent run, from a random base
    >= 1e6); otherwise bwrap makes a user namespace with uid 65534 inside. When this cannot be
    set up, ``sandbox`` raises ``SandboxUnavailable`` (one line: what is missing, how to opt out)
    before anything runs.
  * ``best_effort``: the above when possible, else a plain process (+ a throw-away uid as root).
  * ``none``: a plain process, no isolation.

Always on: rlimits (CPU, address space, processes, file size, open files, no core), a session /
process group SIGKILLed at the end, a wall-clock timeout, an environment of PATH and LANG only,
stdout read with a byte cap. Under bwrap the namespace dies with the run: no process, SysV IPC
object or file outlives it (bwrap --die-with-parent covers a killed scorer too).

Two ways to run: ``run_program`` (stdin -> stdout, CodeContests) and ``serve`` (the program
behind ``wire.serve``, answering the trusted grader's calls with plain data; see ``grader``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from absl import logging

from wmtp_jax.eval import wire

POLICIES = ("required", "best_effort", "none")
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_SANDBOX_ERROR = wire.SETUP_ERROR
_NOBODY = 65534
_WIRE_SOURCE = Path(__file__).with_name("wire.py").read_text()  # copied into each run
_REPO = Path(__file__).resolve().parents[2]


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be set up here (the message is one line)."""


class SessionEnded(BaseException):
    """A served program is gone, timed out or broke the protocol; ``reason`` is the verdict.
    A BaseException, so that benchmark test code's ``except Exception`` cannot swallow it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource caps for one run. ``cpu_seconds=None`` means int(timeout) + 2."""

    cpu_seconds: int | None = None
    address_space: int = 1 << 30
    nproc: int = 64
    file_size: int = 16 << 20
    open_files: int = 256
    max_output: int = 1 << 20  # stdout bytes kept (one reply, for served programs); more fails
    tmpfs_size: int = 64 << 20

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
        if self.isolated:
            return (
                f"bubblewrap: pid+net+mount+ipc+uts namespaces, read-only minimal root, "
                f"private /tmp, {uid}, rlimits"
            )
        return (
            f"plain process, NOT isolated (host filesystem, network and IPC reachable), "
            f"{uid}, rlimits"
        )

    def record(self) -> dict:
        """What a results summary records about the isolation it ran under."""
        return {"policy": self.policy, "isolated": self.isolated, "isolation": self.describe()}


@dataclasses.dataclass
class RunResult:
    returncode: int | None
    stdout: bytes
    stderr: bytes  # the last 4 KiB
    timed_out: bool
    output_exceeded: bool
    wall_s: float


class _UidPool:
    """Hands out a distinct unprivileged uid per concurrent run (random base per process)."""

    def __init__(self):
        self.base = 1_000_000 + secrets.randbelow(1 << 30)
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self.base + self._next - 1

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)


_UIDS = _UidPool()


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


def _command(
    sb: Sandbox, host_dir: str, mode: str, uid: int | None, limits: Limits, timeout: float
) -> list[str]:
    """``python -I -S wire.py CONFIG <mode> main.py`` from the run dir, under bwrap if isolated
    (-S: the interpreter's site-packages stay out, and start-up is fast)."""
    inside = "/sandbox" if sb.isolated else host_dir
    config = dict(
        rlimits=limits.rlimits(timeout),
        uid=uid,
        cwd="/tmp" if sb.isolated else os.path.join(host_dir, "work"),
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
    return [
        *cmd,
        *_root_fs(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(limits.tmpfs_size),
        "--tmpfs",
        "/tmp",
        "--ro-bind",
        host_dir,
        "/sandbox",
        "--chdir",
        "/tmp",
        "--",
        *program,
    ]


@contextlib.contextmanager
def _run_dir(sb: Sandbox, files: dict[str, str]) -> Iterator[tuple[str, int | None]]:
    """(host dir holding ``files``, the run's uid or None); both released afterwards."""
    uid = _UIDS.acquire() if sb.uid_drop else None
    host_dir = tempfile.mkdtemp(prefix="wmtp_sandbox_")
    try:
        os.chmod(host_dir, 0o711)
        for name, text in files.items():
            path = os.path.join(host_dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(path, 0o644)
        if not sb.isolated:
            os.mkdir(os.path.join(host_dir, "work"), 0o700)
            if uid is not None:
                os.chown(os.path.join(host_dir, "work"), uid, uid)
        yield host_dir, uid
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
        if uid is not None:
            _UIDS.release(uid)


def _spawn(cmd: list[str], stdin) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=SAFE_ENV,
        start_new_session=True,
        close_fds=True,
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


def _reap(proc: subprocess.Popen, sb: Sandbox, uid: int | None) -> None:
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


def _exited(proc: subprocess.Popen) -> int | None:
    """Exit code if ``proc`` has exited, without reaping it (its group id stays reserved)."""
    info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if not info:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _failure_reason(returncode: int | None, stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    if returncode == _SANDBOX_ERROR and lines and "sandbox setup error" in lines[-1]:
        return "failed: " + lines[-1]
    if returncode == 0:
        return "failed: exited before all tests ran"
    if lines:
        return "failed: " + lines[-1][:300]
    return f"failed: exit status {returncode}"


def _run(
    source: str, stdin: bytes | None, timeout: float, limits: Limits, sb: Sandbox
) -> RunResult:
    with _run_dir(sb, {"main.py": source, "wire.py": _WIRE_SOURCE}) as (host_dir, uid):
        stdin_path = os.path.join(host_dir, "stdin")
        with open(stdin_path, "wb") as f:
            f.write(stdin or b"")
        with open(stdin_path, "rb") as stdin_file:
            cmd = _command(sb, host_dir, "run", uid, limits, timeout)
            start = time.monotonic()
            proc = _spawn(cmd, stdin_file)
        out, err = bytearray(), bytearray()
        timed_out = exceeded = False
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ, out)
                sel.register(proc.stderr, selectors.EVENT_READ, err)
                while sel.get_map() and not exceeded:
                    left = start + timeout - time.monotonic()
                    if left <= 0:
                        timed_out = True
                        break
                    for key, _ in sel.select(left):
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        key.data.extend(chunk)
                        if key.data is err and len(err) > 8192:
                            del err[:-4096]
                        exceeded = len(out) > limits.max_output
            while not (timed_out or exceeded) and _exited(proc) is None:
                if time.monotonic() >= start + timeout:
                    timed_out = True
                    break
                time.sleep(0.002)
        finally:
            _reap(proc, sb, uid)
    rc = None if (timed_out or exceeded) else proc.returncode
    return RunResult(
        rc,
        bytes(out[: limits.max_output]),
        bytes(err[-4096:]),
        timed_out,
        exceeded,
        time.monotonic() - start,
    )


def _probe(sb: Sandbox) -> str | None:
    """None if a trivial program runs correctly under ``sb``, else what went wrong."""
    try:
        res = _run("print('ok')", None, 20.0, Limits(), sb)
    except OSError as e:
        return repr(e)
    if res.returncode == 0 and res.stdout.strip() == b"ok":
        return None
    lines = res.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else f"exit status {res.returncode}"


@functools.cache
def sandbox(policy: str = "required") -> Sandbox:
    """The sandbox for ``policy`` (probed once): see the module docstring."""
    if policy not in POLICIES:
        raise ValueError(f"sandbox={policy!r}: must be one of {', '.join(POLICIES)}")
    root = os.geteuid() == 0
    if policy != "none":
        bwrap = shutil.which("bwrap")
        problem = "bubblewrap (`bwrap`) is not installed (apt-get install bubblewrap)"
        if bwrap:
            sb = Sandbox(policy, bwrap, userns=not root, uid_drop=root)
            problem = _probe(sb)
            if problem is None:
                logging.info("sandbox=%s: %s", policy, sb.describe())
                return sb
            problem = f"{bwrap} cannot isolate here: {problem}"
        if policy == "required":
            raise SandboxUnavailable(
                f"sandbox isolation unavailable: {problem}; to run generated code without it, "
                "opt out with --sandbox best_effort or none (evaluation: "
                "--config.sandbox=best_effort or none)"
            )
        logging.warning("sandbox=best_effort: %s", problem)
    sb = Sandbox(policy, None, False, root and policy == "best_effort")
    problem = _probe(sb)
    if problem is not None:
        raise SandboxUnavailable(f"cannot run a trivial Python program: {problem}")
    logging.warning("sandbox=%s: %s", policy, sb.describe())
    return sb


def run_program(
    source: str,
    stdin: bytes | None = None,
    timeout: float = 5.0,
    limits: Limits = Limits(),
    sb: Sandbox | None = None,
) -> RunResult:
    """Run Python ``source`` as ``main.py`` in the sandbox (default: required), fed ``stdin``."""
    return _run(source, stdin, timeout, limits, sb or sandbox())


class Session:
    """A program behind ``wire.serve`` in the sandbox: ``exchange(msg)`` sends a message and
    returns the next reply (a JSON value). Everything shares one deadline; a dead, slow or
    garbling program raises ``SessionEnded`` (and ``ended`` keeps the reason)."""

    def __init__(self, proc: subprocess.Popen, deadline: float, limits: Limits):
        self.proc, self.deadline, self.limits = proc, deadline, limits
        self.ended: str | None = None
        self._buf, self.stderr, self._printed = bytearray(), bytearray(), 0
        os.set_blocking(proc.stdin.fileno(), False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(proc.stdout, selectors.EVENT_READ)
        self._sel.register(proc.stderr, selectors.EVENT_READ)

    def end(self, reason: str):
        self.ended = self.ended or reason
        raise SessionEnded(self.ended)

    def exchange(self, msg=None):
        if self.ended:
            raise SessionEnded(self.ended)
        line = self._pump(wire.dumps(msg) if msg is not None else b"")
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            self.end("failed: malformed reply from the program")

    def _pump(self, out: bytes) -> bytes:
        """Write ``out`` (non-blocking), return the next stdout line; drains stderr."""
        pending = memoryview(out)
        writing = False
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0 and not pending:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.limits.max_output:
                self.end("failed: output limit exceeded")
            if bool(pending) != writing:
                writing = bool(pending)
                if writing:
                    self._sel.register(self.proc.stdin, selectors.EVENT_WRITE)
                else:
                    self._sel.unregister(self.proc.stdin)
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.end("timed out")
            for key, _ in self._sel.select(left):
                if key.fileobj is self.proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[:65536]) :]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:
                        pending = pending[:0]  # it stopped reading: its stdout says the rest
                    continue
                if key.fileobj is self.proc.stderr:
                    self._read_stderr()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self.end(self._exit_reason(writing))
                self._buf += chunk

    def _exit_reason(self, writing: bool) -> str:
        """stdout closed: wait (to the deadline) for the exit, reading stderr for the reason."""
        self._sel.unregister(self.proc.stdout)
        if writing:
            self._sel.unregister(self.proc.stdin)
        while (rc := _exited(self.proc)) is None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return "timed out"
            if self._sel.select(min(left, 0.05)):
                self._read_stderr()
        return _failure_reason(rc, bytes(self.stderr))

    def _read_stderr(self) -> None:
        """The program's prints and tracebacks: the last 4 KiB kept, max_output bytes in all."""
        chunk = os.read(self.proc.stderr.fileno(), 65536)
        if not chunk:
            self._sel.unregister(self.proc.stderr)
        self._printed += len(chunk)
        self.stderr += chunk
        del self.stderr[:-4096]
        if self._printed > self.limits.max_output:
            self.end("failed: output limit exceeded")


@contextlib.contextmanager
def serve(
    program: str, timeout: float = 5.0, limits: Limits = Limits(), sb: Sandbox | None = None
) -> Iterator[Session]:
    """``program`` running in the sandbox behind ``wire.serve`` for ``timeout`` seconds in all;
    killed (with everything it started) on leaving the block."""
    sb = sb or sandbox()
    with _run_dir(sb, {"main.py": program, "wire.py": _WIRE_SOURCE}) as (host_dir, uid):
        proc = _spawn(_command(sb, host_dir, "serve", uid, limits, timeout), subprocess.PIPE)
        session = Session(proc, time.monotonic() + timeout, limits)
        try:
            yield session
        finally:
            session._sel.close()
            _reap(proc, sb, uid)


def normalize_output(text: str) -> list[str]:
    """Whitespace-normalised output: one token list per non-empty line.

    E.g. ' 1  2 \\n\\n' -> ['1 2'].
    """
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def run_stdio_tests(
    code: str,
    tests: Sequence[tuple[str, str]],
    timeout: float = 5.0,
    limits: Limits = Limits(),
    check_exit_code: bool = True,
    stop_on_failure: bool = True,
    sb: Sandbox | None = None,
) -> dict:
    """Run a stdin/stdout program once per (input, expected output) test, ``timeout`` each.

    A test passes iff the whitespace-normalised stdout equals the expected output (and, with
    ``check_exit_code``, the exit status is 0): the comparison happens here, outside the
    sandbox. Returns the human-eval style dict plus ``tests_passed`` / ``tests_run``.
    """
    if not tests:
        return {"passed": False, "result": "failed: no tests", "tests_passed": 0, "tests_run": 0}
    passed, run, first_failure = 0, 0, None
    for i, (inp, expected) in enumerate(tests):
        res = run_program(code, inp.encode(), timeout, limits, sb)
        run += 1
        ok = (
            not res.timed_out
            and not res.output_exceeded
            and (res.returncode == 0 or not check_exit_code)
            and normalize_output(res.stdout.decode(errors="replace")) == normalize_output(expected)
        )
        if ok:
            passed += 1
            continue
        if first_failure is None:
            if res.timed_out:
                first_failure = "timed out"
            elif res.output_exceeded:
                first_failure = f"failed: output limit exceeded (test {i})"
            elif res.returncode != 0:
                first_failure = f"{_failure_reason(res.returncode, res.stderr)} (test {i})"
            else:
                first_failure = f"failed: wrong answer (test {i})"
        if stop_on_failure:
            break
    if first_failure is None:
        return {"passed": True, "result": "passed", "tests_passed": passed, "tests_run": run}
    return {"passed": False, "result": first_failure, "tests_passed": passed, "tests_run": run}


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int | None = None,
    desc: str = "executing",
    progress: bool = True,
) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (each call launches its own subprocess).

    Default workers: 2 × CPU count (much of a short run is process/namespace setup latency).
    """
    items = list(items)
    workers = max(1, workers or 2 * (os.cpu_count() or 1))
    results: list = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        done = concurrent.futures.as_completed(futures)
        if progress and len(items) > 1:
            from tqdm import tqdm

            done = tqdm(done, total=len(items), desc=desc, unit="run", file=sys.stderr)
        for fut in done:
            results[futures[fut]] = fut.result()
    return results
