"""Standalone worker (no package imports): verifies candidate programs against their tests.

stdin: JSON `{"timeout": s, "jobs": [{"code", "setup", "tests": [assert, ...]}, ...]}`;
stdout: JSON list of booleans. Mode "fork": each job runs in a forked child (a crash, exit, hang
or global mutation cannot affect the next job) with SIGALRM as the time limit; it passes iff the
child reaches the end of all tests and writes a marker. Mode "exec" (fast, for trusted generated
code): each job is exec'd in a fresh namespace under an interval-timer limit; the caller re-runs
the chunk in fork mode if the worker dies.
"""

import json
import os
import signal
import sys

MARKER = b"ALL_TESTS_PASSED"


def run_job(job, timeout):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            signal.alarm(max(1, int(timeout)))
            ns = {"__name__": "__candidate__"}
            exec(job.get("setup") or "", ns)
            exec(job["code"], ns)
            for t in job["tests"]:
                exec(t, ns)
            os.write(w, MARKER)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(w)
    out = b""
    while True:
        chunk = os.read(r, 64)
        if not chunk:
            break
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and out == MARKER


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def exec_job(job, timeout):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        ns = {"__name__": "__candidate__"}
        exec(job.get("setup") or "", ns)
        exec(job["code"], ns)
        for t in job["tests"]:
            exec(t, ns)
        return True
    except BaseException:  # includes SystemExit and the timeout
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main():
    req = json.load(sys.stdin)
    run = exec_job if req.get("mode", "fork") == "exec" else run_job
    real_stdout = os.dup(1)  # candidates' prints must not corrupt the JSON answer
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    results = [run(j, req.get("timeout", 2)) for j in req["jobs"]]
    os.write(real_stdout, (json.dumps(results) + "\n").encode())


if __name__ == "__main__":
    main()
