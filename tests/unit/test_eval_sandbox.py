"""Isolation: hostile programs fail, see nothing of the host, harm nothing outside their sandbox
and leave no process or IPC object; the policy refuses to run without isolation."""

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmtp_jax.eval import execution, grader, isolation, session, syscalls

REPO = Path(__file__).resolve().parents[2]
SB = execution.sandbox()  # required: fails here, loudly, where isolation is missing
TIMEOUT = 2.0
ROOT_ENTRIES = {
    "bin",
    "sbin",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "usr",
    "etc",
    "proc",
    "dev",
    "tmp",
    "sandbox",
    "root",
    "home",
    "opt",
}  # the last three: interpreter trees


def _sandbox_pids() -> list[int]:
    """Live processes running under this process's sandbox uids."""
    lo = isolation._UIDS.base
    return isolation.pids_with_uid(lambda uid: lo <= uid < lo + 10_000)


def _sandbox_shm() -> list[str]:
    """Host SysV shared-memory segments owned by a sandbox uid (>= 1e6)."""
    with open("/proc/sysvipc/shm") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [r[1] for r in rows if int(r[7]) >= 1_000_000]  # shmid, uid columns


@pytest.fixture(autouse=True)
def no_leftover_processes():
    yield
    deadline = time.monotonic() + 5
    while _sandbox_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids() == []


def _lines(source: str, **kw) -> list[str]:
    res = execution.run_program(source, **kw)
    assert res.returncode == 0, res.stderr
    return res.stdout.decode().splitlines()


def test_isolation_active_here():
    print(SB.describe())
    assert SB.isolated and SB.policy == "required" and SB.record()["isolated"]
    uid, cwd, root, run_dir, pids, host = _lines(
        "import os, socket\nprint(os.getuid())\nprint(os.getcwd())\nprint(sorted(os.listdir('/')))"
        "\nprint(os.path.exists('/sandbox/main.py'))"
        "\nprint(sum(p.isdigit() for p in os.listdir('/proc')))"
        "\nprint(socket.gethostname())"
    )
    assert int(uid) != 0 and (int(uid) >= 1_000_000) == SB.uid_drop
    assert cwd == "/tmp"
    assert set(eval(root)) <= ROOT_ENTRIES and "work" not in eval(root)
    assert run_dir == "True"  # its own files only (read-only)
    assert int(pids) <= 3  # bwrap's init, the program (a new PID namespace)
    assert host == "sandbox"  # a UTS namespace
    status = _lines("print(open('/proc/self/status').read())")
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status  # no setuid


def test_host_files_are_out_of_reach(tmp_path):
    """World-readable files in the checkout, storage/, home and the host /tmp cannot be read."""
    token = secrets.token_hex(8)
    home = Path(os.path.expanduser("~"))
    places = [
        REPO / f".sandbox_probe_{token}",
        REPO / "storage" / f".sandbox_probe_{token}",
        home / f".sandbox_probe_{token}",
        tmp_path / f"probe_{token}",
    ]
    os.chmod(tmp_path, 0o755)
    made = []
    try:
        for p in places:
            if p.parent.is_dir():
                p.write_text(token)
                os.chmod(p, 0o644)
                made.append(p)
        assert REPO / f".sandbox_probe_{token}" in made
        prog = (
            f"import os\npaths = {[str(p) for p in made]!r} + ['/etc/passwd', '/etc/hostname',"
            f" {str(REPO / 'pyproject.toml')!r}, {sys.executable!r}]\n"
            "for p in paths:\n    try:\n        open(p).read()\n        print('READ', p)\n"
            "    except OSError:\n        pass\n"
            f"print(os.path.exists({str(REPO)!r}))\n"
        )
        assert _lines(prog) == ["False"]
    finally:
        for p in made:
            p.unlink()


def test_other_runs_are_out_of_reach():
    """While one run holds a secret (its source and a file in its /tmp), another cannot find it."""
    secret = "s3cr3t-" + secrets.token_hex(8)
    holder = (
        f"open('/tmp/held', 'w').write({secret!r})\n"
        "def wait():\n    import time\n    time.sleep(30)\n"
    )
    seeker = (
        "import os\nfound = []\n"
        "for top in ('/tmp', '/sandbox', '/proc', '/dev/shm'):\n"
        "    for d, _, files in os.walk(top):\n"
        "        for f in files:\n"
        "            try:\n"
        "                data = open(os.path.join(d, f), 'rb').read(1 << 20)\n"
        f"                if {secret!r}.encode() in data:\n"
        "                    found.append(os.path.join(d, f))\n"
        "            except OSError:\n                pass\n"
        "print(found)\n"
    )
    with session.serve(holder, timeout=20) as s:
        assert s.exchange() == {"ready": ["wait"]}
        assert _lines(seeker, timeout=20) == ["[]"]


def test_sysv_shared_memory_dies_with_the_run():
    prog = (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "ids = [libc.shmget(0, 1 << 20, 0o1000 | 0o666) for _ in range(3)]\n"
        "print(all(i >= 0 for i in ids))\n"
    )
    assert _lines(prog) == ["True"]
    assert _sandbox_shm() == []


def test_infinite_loop_times_out():
    t = time.monotonic()
    res = execution.run_program("while True:\n    pass\n", timeout=1.0)
    assert res.timed_out and res.returncode is None
    assert time.monotonic() - t < 4


@pytest.mark.parametrize(
    "bomb", ["x = bytearray(1 << 36)", "xs = []\nwhile True:\n    xs.append(bytearray(32 << 20))"]
)
def test_memory_bomb_fails(bomb):
    # a small address-space cap so the gradual bomb hits it fast (page zeroing is slow here)
    res = execution.run_program(
        bomb, timeout=10.0, limits=isolation.Limits(address_space=256 << 20)
    )
    assert res.returncode == 1 and b"MemoryError" in res.stderr


def test_fork_bomb_is_contained():
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    assert execution.run_program(bomb, timeout=TIMEOUT).timed_out
    assert execution.run_program("print(1)").stdout == b"1\n"  # the next run is unaffected


def test_daemonised_child_is_reaped():
    prog = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(1000)\n    os._exit(0)\nos._exit(0)\n"
    )
    assert execution.run_program(prog, timeout=TIMEOUT).returncode == 0
    # (the autouse fixture checks that the sleeping grandchild is gone)


def test_writes_outside_the_sandbox_do_not_land(tmp_path):
    token = secrets.token_hex(8)
    targets = [
        f"/tmp/wmtp_escape_{token}",
        f"/var/tmp/wmtp_escape_{token}",
        f"/dev/shm/wmtp_escape_{token}",
        str(tmp_path / f"escape_{token}"),
        str(REPO / f"wmtp_escape_{token}"),
    ]
    os.chmod(tmp_path, 0o777)  # even a world-writable host dir must stay out of reach
    prog = "".join(
        f"try:\n    open({t!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for t in targets
    )
    assert execution.run_program(prog).returncode == 0
    landed = [t for t in targets if os.path.exists(t)]
    for t in landed:
        os.remove(t)
    assert landed == []


def test_file_size_limit():
    res = execution.run_program(
        "open('big', 'wb').write(b'x' * (64 << 20))", limits=isolation.Limits(file_size=1 << 20)
    )
    assert res.returncode != 0 and b"File too large" in res.stderr


def test_huge_output_is_capped():
    res = execution.run_program("while True:\n    print('x' * 100000)\n", timeout=5.0)
    assert res.output_exceeded and res.returncode is None


def test_killing_everything_it_sees_harms_nobody():
    prog = (
        "import os\nos.kill(os.getppid(), 9)\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"
    )
    execution.run_program(prog)
    assert execution.run_program("print(1 + 1)").stdout == b"2\n"  # the harness still works


def test_environment_secrets_invisible(monkeypatch):
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("WMTP_TEST_SECRET", secret)
    res = execution.run_program(
        "import os\nprint(dict(os.environ))\n"
        "for p in ('/proc/self/environ', '/proc/1/environ',"
        " '/proc/%d/environ' % os.getppid()):\n"
        "    try:\n        print(open(p, 'rb').read())\n"
        "    except OSError as e:\n        print(e)\n"
    )
    assert res.returncode == 0
    assert secret.encode() not in res.stdout and b"WMTP_TEST_SECRET" not in res.stdout
    assert b"'PATH'" in res.stdout


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        out = _lines(
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 1)\n"
            "    print('connected')\nexcept OSError:\n    print('blocked')\n"
        )
    finally:
        server.close()
    assert out == ["blocked"]


def test_parallel_map_keeps_order():
    progs = [(f"def f():\n    return {i}\n", "assert f() % 2 == 0\n") for i in range(6)]
    out = execution.parallel_map(lambda pt: grader.run_tests(*pt), progs, workers=3, progress=False)
    assert [r["passed"] for r in out] == [True, False, True, False, True, False]


def test_sandbox_dies_with_a_killed_harness(tmp_path):
    """SIGKILL the harness mid-run: bwrap --die-with-parent takes the sleeping program down."""
    script = (
        "from wmtp_jax.eval import execution\nexecution.sandbox()\n"
        "print('probed', flush=True)\n"
        "execution.run_program('import time\\ntime.sleep(1000)', timeout=100.0)\n"
    )
    harness = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # its run dirs land here
    assert harness.stdout.readline() == "probed\n"
    sandbox_uids = lambda: set(isolation.pids_with_uid(lambda u: u >= 1_000_000))  # noqa: E731
    before = sandbox_uids()
    deadline = time.monotonic() + 20
    while not (started := sandbox_uids() - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(harness.pid, signal.SIGKILL)
    harness.wait()
    harness.stdout.close()
    assert started, "the sandboxed program never started"
    deadline = time.monotonic() + 10
    while sandbox_uids() & started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sandbox_uids() & started


# ---- kernel keyrings, syscall filter, memory cap --------------------------------------------

NR = {
    n: syscalls.syscall_number(n)
    for n in (
        "keyctl",
        "add_key",
        "request_key",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "mount",
        "umount2",
        "pivot_root",
        "ptrace",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
        "memfd_create",
    )
}
KEYCTL_READ, KEYCTL_SEARCH, KEYCTL_JOIN, KEYCTL_REVOKE = 11, 10, 1, 3
SESSION_KEYRING, USER_KEYRING, USER_SESSION_KEYRING = -3, -4, -5
SYSCALL = (
    "import ctypes, errno, os\n_libc = ctypes.CDLL(None, use_errno=True)\n"
    "def sys_(nr, *args):\n"
    "    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]\n"
    "    r = _libc.syscall(ctypes.c_long(nr), *args)\n"
    "    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]\n"
)


def _syscall(nr: int, *args) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def _run_uids_holding_keys() -> list[int]:
    with open("/proc/key-users") as f:
        users = {int(line.split(":")[0]) for line in f}
    return sorted(u for u in users if isolation._UIDS.base <= u < isolation._UIDS.base + 10_000)


@pytest.fixture
def scorer_secret_key():
    """This process gets a fresh session keyring holding a secret, as a PAM login gives one
    (with a link to the user keyring); the key is revoked afterwards."""
    _syscall(NR["keyctl"], KEYCTL_JOIN, None)
    secret = "s3cr3t-" + secrets.token_hex(8)
    key = _syscall(
        NR["add_key"],
        b"user",
        b"wmtp_scorer_secret",
        secret.encode(),
        len(secret),
        SESSION_KEYRING,
    )
    yield key, secret
    _syscall(NR["keyctl"], KEYCTL_REVOKE, key)


def test_the_scorers_keyring_is_out_of_reach(scorer_secret_key):
    key, secret = scorer_secret_key
    out = _lines(
        SYSCALL + "buf = ctypes.create_string_buffer(4096)\n"
        f"for ring in ({SESSION_KEYRING}, {USER_KEYRING}, {USER_SESSION_KEYRING}, {key}):\n"
        f"    print(sys_({NR['keyctl']}, {KEYCTL_READ}, ring, buf, 4096), buf.raw.rstrip(b'\\0'))\n"
        f"print(sys_({NR['keyctl']}, {KEYCTL_SEARCH}, {SESSION_KEYRING}, b'user',"
        " b'wmtp_scorer_secret', 0))\n"
        "print(open('/proc/keys').read())\n"
    )
    text = "\n".join(out)
    assert secret not in text and "wmtp_scorer_secret" not in text, text
    assert out[:5] == ["EPERM b''"] * 4 + ["EPERM"], out
    keys = [line.split() for line in out[5:] if line.strip()]
    assert [k[7:] for k in keys] == [["keyring", "_ses:", "empty"]]  # its own fresh keyring


def test_keys_do_not_pass_from_one_sample_to_the_next():
    stash = (
        SYSCALL
        + "".join(
            f"print(sys_({NR['add_key']}, b'user', b'wmtp_answers', b'42', 2, {ring}))\n"
            for ring in (SESSION_KEYRING, USER_KEYRING, USER_SESSION_KEYRING)
        )
        + f"print(sys_({NR['request_key']}, b'user', b'wmtp_answers', None, 0))\n"
    )
    replay = (
        SYSCALL
        + "".join(
            f"print(sys_({NR['keyctl']}, {KEYCTL_SEARCH}, {ring}, b'user', b'wmtp_answers', 0))\n"
            for ring in (SESSION_KEYRING, USER_KEYRING, USER_SESSION_KEYRING)
        )
        + "print(os.getuid())\n"
    )
    assert _lines(stash) == ["EPERM"] * 4
    first, second = _lines(replay), _lines(replay)
    assert first[:3] == second[:3] == ["EPERM"] * 3
    assert first[3] != second[3]  # a fresh uid per run
    deadline = time.monotonic() + 5  # a run's keyring goes with its last process
    while _run_uids_holding_keys() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _run_uids_holding_keys() == []


def test_uids_holding_keys_are_skipped(monkeypatch):
    pool = isolation._UidPool()
    monkeypatch.setattr(isolation, "_key_users", lambda: {pool.base, pool.base + 2})
    assert [pool.acquire() for _ in range(3)] == [pool.base + 1, pool.base + 3, pool.base + 4]


def test_syscall_filter_denies_namespaces_mounts_tracing():
    clone_newuser = 0x10000000 | signal.SIGCHLD
    out = _lines(
        SYSCALL + "for name, call in [\n"
        f"    ('unshare user', ({NR['unshare']}, 0x10000000)),\n"
        f"    ('unshare mount', ({NR['unshare']}, 0x00020000)),\n"
        f"    ('unshare net', ({NR['unshare']}, 0x40000000)),\n"
        f"    ('clone user', ({NR['clone']}, {clone_newuser}, 0, 0, 0, 0)),\n"
        f"    ('setns', ({NR['setns']}, 0, 0)),\n"
        f"    ('mount', ({NR['mount']}, b'none', b'/tmp', b'tmpfs', 0, None)),\n"
        f"    ('umount', ({NR['umount2']}, b'/tmp', 0)),\n"
        f"    ('pivot_root', ({NR['pivot_root']}, b'/tmp', b'/tmp')),\n"
        f"    ('ptrace', ({NR['ptrace']}, 0, 0, 0, 0)),\n"
        f"    ('process_vm_readv', ({NR['process_vm_readv']}, 1, None, 0, None, 0, 0)),\n"
        f"    ('bpf', ({NR['bpf']}, 0, None, 0)),\n"
        f"    ('perf_event_open', ({NR['perf_event_open']}, None, 0, -1, -1, 0)),\n"
        f"    ('userfaultfd', ({NR['userfaultfd']}, 0)),\n"
        f"    ('clone3', ({NR['clone3']}, None, 0)),\n"
        "]:\n    print(name, sys_(*call))\n"
        "import subprocess\n"  # libc falls back from clone3 to clone: programs still spawn
        "print(subprocess.run(['/bin/echo', 'spawned'], capture_output=True).stdout.decode())\n"
        "print(open('/proc/self/status').read().count('Seccomp:\\t2'))\n"
    )
    want = [
        f"{n} EPERM"
        for n in (
            "unshare user",
            "unshare mount",
            "unshare net",
            "clone user",
            "setns",
            "mount",
            "umount",
            "pivot_root",
            "ptrace",
            "process_vm_readv",
            "bpf",
            "perf_event_open",
            "userfaultfd",
        )
    ]
    assert out == [*want, "clone3 ENOSYS", "spawned", "", "1"]


CAP = 96 << 20
FILL = (
    "import os\ndef fill(f, mib):\n    for _ in range(mib):\n"
    "        os.write(f, b'x' * (1 << 20))\n"
)
IN_MEMORY_FILES = {
    "memfd": FILL + "fds = [os.memfd_create('x') for _ in range(12)]\nfor f in fds:\n"
    "    fill(f, 15)\nprint('held', 12 * 15, 'MiB')\n",
    "tmpfs /tmp and /dev/shm": FILL + "for d in ('/tmp', '/dev/shm'):\n    for i in range(4):\n"
    "        fill(os.open(f'{d}/f{i}', os.O_CREAT | os.O_WRONLY), 15)\n"
    "print('held', 2 * 4 * 15, 'MiB')\n",
    "SysV shm": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\n"
    "for _ in range(12):\n    i = libc.shmget(0, 15 << 20, 0o1000 | 0o600)\n"
    "    p = libc.shmat(i, None, 0)\n    ctypes.memset(p, 1, 15 << 20)\n"
    "    libc.shmdt(ctypes.c_void_p(p))\nprint('held', 12 * 15, 'MiB')\n",
    "many processes": "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n"
    "        x = b'x' * (40 << 20)\n        time.sleep(60)\n"
    "pid, status = os.wait()\n"
    "print('a child was killed by', os.WTERMSIG(status), flush=True)\nos._exit(3)\n",
}


@pytest.mark.skipif(SB.cgroups is None, reason="no memory cgroup can be made here")
@pytest.mark.parametrize("kind", list(IN_MEMORY_FILES))
def test_memory_cap_spans_processes_and_files_in_memory(kind):
    """One cap for everything a run holds: files in memory (which RLIMIT_AS does not count) and
    all of its processes."""
    limits = isolation.Limits(memory=CAP, tmpfs_size=64 << 20)
    res = execution.run_program(IN_MEMORY_FILES[kind], timeout=20.0, limits=limits)
    assert res.memory_exceeded and res.returncode != 0 and b"held" not in res.stdout, res
    if kind == "many processes":
        assert res.stdout == b"a child was killed by 9\n"
    assert execution.run_program("print(1)", limits=limits).stdout == b"1\n"
    res = grader.run_tests(
        IN_MEMORY_FILES[kind] + "def f():\n    return 1\n",
        "assert f() == 1\n",
        limits=limits,
        timeout=20.0,
    )
    assert res == {"passed": False, "result": "failed: memory limit exceeded"}


def test_without_a_cgroup_files_in_memory_are_bounded():
    limits = isolation.Limits(memory=None, tmpfs_size=8 << 20)
    out = _lines(
        SYSCALL + f"print(sys_({NR['memfd_create']}, b'x', 0))\n"
        "print(ctypes.CDLL(None).shmget(0, 1 << 20, 0o1000 | 0o600))\n"
        "for d in ('/tmp', '/dev/shm'):\n    try:\n"
        "        open(f'{d}/big', 'wb').write(b'x' * (9 << 20))\n"
        "    except OSError as e:\n        print(d, errno.errorcode[e.errno])\n",
        limits=limits,
    )
    assert out == ["EPERM", "-1", "/tmp ENOSPC", "/dev/shm ENOSPC"]


@pytest.mark.skipif(SB.cgroups is None, reason="no memory cgroup can be made here")
def test_runs_cgroups_are_removed():
    def mine():
        return [d for d in os.listdir(SB.cgroups.parent) if d.startswith(f"wmtp-{os.getpid()}-")]

    execution.run_program("import os\nos.fork()\nprint(1)")
    with session.serve("x = 1\n") as s:
        s.exchange()
        assert mine()
    deadline = time.monotonic() + 5  # removed once the run's processes are gone
    while mine() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mine() == []


# ---- policy ------------------------------------------------------------------------------------


@pytest.fixture
def fresh_probe():
    execution.sandbox.cache_clear()
    yield
    execution.sandbox.cache_clear()


def _fake_bwrap(tmp_path) -> str:
    (tmp_path / "bwrap").write_text(
        "#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\n"
        "exit 1\n"
    )
    os.chmod(tmp_path / "bwrap", 0o755)
    return str(tmp_path)


def test_required_refuses_without_bwrap(monkeypatch, tmp_path, fresh_probe):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(isolation.SandboxUnavailable) as e:
        execution.sandbox("required")
    msg = str(e.value)
    assert "\n" not in msg and "bubblewrap (`bwrap`) is not installed" in msg
    assert "--sandbox best_effort or none" in msg and "sandbox=" in msg


def test_required_refuses_when_bwrap_cannot_isolate(monkeypatch, tmp_path, fresh_probe):
    monkeypatch.setenv("PATH", _fake_bwrap(tmp_path))
    with pytest.raises(isolation.SandboxUnavailable, match="Creating new namespace failed"):
        execution.sandbox()


def test_best_effort_and_none_are_recorded_opt_ins(monkeypatch, tmp_path, fresh_probe):
    monkeypatch.setenv("PATH", _fake_bwrap(tmp_path))
    sb = execution.sandbox("best_effort")
    assert not sb.isolated and sb.uid_drop == (os.geteuid() == 0)
    assert (
        sb.record() == {"policy": "best_effort", "isolated": False, "isolation": sb.describe()}
        and "NOT isolated" in sb.describe()
    )
    assert execution.run_program("print(6 * 7)", sb=sb).stdout == b"42\n"
    assert grader.run_tests("def f():\n    return 1\n", "assert f() == 1\n", sb=sb)["passed"]
    none = execution.sandbox("none")
    assert none.record()["policy"] == "none" and not none.isolated and not none.uid_drop
    with pytest.raises(ValueError, match="required, best_effort, none"):
        execution.sandbox("off")


def test_required_refuses_without_the_syscall_filter(monkeypatch, fresh_probe):
    def missing(bounded_files):
        raise syscalls.FilterUnavailable("cannot compile the syscall filter (no libseccomp)")

    monkeypatch.setattr(syscalls, "program", missing)
    with pytest.raises(isolation.SandboxUnavailable) as e:
        execution.sandbox("required")
    msg = str(e.value)
    assert "\n" not in msg and "cannot compile the syscall filter" in msg
    assert "--sandbox best_effort or none" in msg
    sb = execution.sandbox("best_effort")  # isolated still, and the missing filter recorded
    assert sb.isolated and not sb.seccomp and "NO syscall filter" in sb.describe()
    assert execution.run_program("print(6 * 7)", sb=sb).stdout == b"42\n"
