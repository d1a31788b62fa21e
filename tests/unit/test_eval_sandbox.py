"""Isolation: hostile programs fail, see nothing of the host, harm nothing outside their sandbox
and leave no process or IPC object; the policy refuses to run without isolation."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmtp_jax.eval import execution, grader, isolation, session

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
