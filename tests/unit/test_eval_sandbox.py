"""Adversarial programs: each fails, harms nothing outside its sandbox, and leaves no process."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import pytest

from wmtp_jax.eval import execution

PROT = execution.probe_protections()
TIMEOUT = 2.0


def _sandbox_pids() -> list[int]:
    """Live processes running under this process's sandbox uids."""
    lo = execution._UIDS.base
    return execution.pids_with_uid(lambda uid: lo <= uid < lo + 10_000)


def _assert_no_leftovers():
    deadline = time.monotonic() + 5
    while _sandbox_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids() == []


@pytest.fixture(autouse=True)
def no_leftover_processes():
    yield
    if PROT.uid_drop:
        _assert_no_leftovers()


def test_protections_active_here():
    print(PROT.describe())
    res = execution.run_program("import os; print(os.getuid(), os.getcwd())")
    uid, cwd = res.stdout.split()
    assert res.returncode == 0
    assert (int(uid) != 0) == PROT.uid_drop
    assert cwd.decode() != os.getcwd()


def test_passing_program_and_marker():
    assert execution.run_python_tests("def f(x):\n    return x + 1\nassert f(1) == 2\n") == {
        "passed": True, "result": "passed"}
    # printing a marker-looking line does not pass: the marker is random per run
    assert not execution.run_python_tests("print('WMTP_DONE_0')\nimport os\nos._exit(0)\n")["passed"]


@pytest.mark.parametrize("early_exit", ["import sys\nsys.exit(0)", "import os\nos._exit(0)",
                                        "raise SystemExit", "quit()"])
def test_exit_before_tests_fails(early_exit):
    res = execution.run_python_tests(f"{early_exit}\nassert False\n")
    assert res == {"passed": False, "result": "failed: exited before all tests ran"}


def test_infinite_loop_times_out():
    t = time.monotonic()
    assert execution.run_python_tests("while True:\n    pass\n", timeout=1.0) == {
        "passed": False, "result": "timed out"}
    assert time.monotonic() - t < 4


@pytest.mark.parametrize("bomb", ["x = bytearray(1 << 36)",
                                  "xs = []\nwhile True:\n    xs.append(bytearray(32 << 20))"])
def test_memory_bomb_fails(bomb):
    # a small address-space cap so the gradual bomb hits it fast (page zeroing is slow here)
    res = execution.run_python_tests(bomb, timeout=10.0,
                                     limits=execution.Limits(address_space=256 << 20))
    assert not res["passed"] and "MemoryError" in res["result"]


def test_fork_bomb_is_contained():
    bomb = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert not execution.run_python_tests(bomb, timeout=TIMEOUT)["passed"]


def test_daemonised_child_is_reaped():
    prog = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(1000)\n    os._exit(0)\nos._exit(0)\n")
    assert not execution.run_python_tests(prog, timeout=TIMEOUT)["passed"]


def test_writes_outside_the_sandbox_do_not_land(tmp_path):
    token = secrets.token_hex(8)
    targets = [f"/tmp/wmtp_escape_{token}", f"/var/tmp/wmtp_escape_{token}",
               f"/dev/shm/wmtp_escape_{token}", str(tmp_path / f"escape_{token}"),
               os.path.join(os.getcwd(), f"wmtp_escape_{token}")]
    os.chmod(tmp_path, 0o777)  # even a world-writable host dir must stay out of reach
    prog = "".join(f"try:\n    open({t!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for t in targets)
    res = execution.run_python_tests(prog + "assert False\n")
    assert not res["passed"]
    landed = [t for t in targets if os.path.exists(t)]
    for t in landed:
        os.remove(t)
    expected_safe = targets if PROT.private_tmp else targets[-1:]
    assert not set(landed) & set(expected_safe)


def test_file_size_limit():
    res = execution.run_program("open('big', 'wb').write(b'x' * (64 << 20))",
                                limits=execution.Limits(file_size=1 << 20))
    assert res.returncode != 0 and b"File too large" in res.stderr


def test_huge_output_is_capped():
    res = execution.run_python_tests("while True:\n    print('x' * 100000)\n", timeout=5.0)
    assert res == {"passed": False, "result": "failed: output limit exceeded"}


def test_killing_the_parent_fails_and_harms_nobody():
    prog = "import os\nos.kill(os.getppid(), 9)\n"
    if PROT.namespaces or PROT.uid_drop:
        prog += "try:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"
    assert not execution.run_python_tests(prog + "assert False\n")["passed"]
    assert execution.run_python_tests("assert 1 + 1 == 2\n")["passed"]  # the harness still works


def test_environment_secrets_invisible(monkeypatch):
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("WMTP_TEST_SECRET", secret)
    res = execution.run_program(
        "import os\nprint(dict(os.environ))\n"
        "for p in ('/proc/self/environ', '/proc/1/environ', '/proc/%d/environ' % os.getppid()):\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(e)\n")
    assert res.returncode == 0
    assert secret.encode() not in res.stdout
    assert b"'PATH'" in res.stdout and b"WMTP_TEST_SECRET" not in res.stdout
    assert not execution.run_python_tests(
        f"import os\nassert os.environ['WMTP_TEST_SECRET'] == {secret!r}\n")["passed"]


def test_no_network_when_namespaces_active():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        res = execution.run_program(
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 1)\n"
            "    print('connected')\nexcept OSError:\n    print('blocked')\n")
    finally:
        server.close()
    assert res.stdout.strip() == (b"blocked" if PROT.namespaces else b"connected")


def test_parallel_map_keeps_order():
    progs = [f"assert {i} % 2 == 0\n" for i in range(6)]
    out = execution.parallel_map(execution.run_python_tests, progs, workers=3, progress=False)
    assert [r["passed"] for r in out] == [True, False, True, False, True, False]



def _pids_with_uid_at_least(lo: int) -> set[int]:
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                if int(next(x for x in f if x.startswith("Uid:")).split()[1]) >= lo:
                    pids.add(int(pid))
        except (OSError, StopIteration):
            continue
    return pids


def test_sandbox_dies_with_a_killed_harness(tmp_path):
    """SIGKILL the harness mid-run: the launcher's alarm still kills the sleeping program."""
    script = ("from wmtp_jax.eval import execution\nexecution.probe_protections()\n"
              "print('probed', flush=True)\n"
              "execution.run_program('import time\\ntime.sleep(1000)', timeout=1.0)\n")
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "TMPDIR": str(tmp_path)})  # its temp dir lands here
    assert harness.stdout.readline() == "probed\n"
    before = _pids_with_uid_at_least(1_000_000)  # sandbox uids are drawn from [1e6, ...)
    deadline = time.monotonic() + 20
    while not (started := _pids_with_uid_at_least(1_000_000) - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(harness.pid, signal.SIGKILL)
    harness.wait()
    harness.stdout.close()
    assert started, "the sandboxed program never started"
    deadline = time.monotonic() + 10
    while _pids_with_uid_at_least(1_000_000) & started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_with_uid_at_least(1_000_000) & started
