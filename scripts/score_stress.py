"""Score 1,000 mixed samples (benign, hostile) with `python -m wmtp_jax.eval.score`, check the
verdicts and that nothing outlives the run, and time it.

    python scripts/score_stress.py [--code DIR] [--mix timing|full] [--repeat N] [--check]

--code: the checkout whose scorer runs (default: this one), so that two versions can be timed
side by side on the same samples. --mix timing: the 1,000 samples less the hostile kinds whose
cost or effect is unbounded without this round's defences (a memory bomb in files, a set of
equal-hash ints, a lone surrogate, a deeply nested line), which an older scorer cannot take;
--mix full: all kinds. --check: fail (exit 1) on a wrong verdict or anything left behind. The
scorer runs with a session keyring holding a secret key, as a PAM login would give it.
Prints one line per run: wall seconds, CPU seconds of the scorer and everything it started (a
cpuacct cgroup, where one can be made: nearly independent of the machine's load), the load
average before and after, wrong verdicts, leftovers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

import pyseccomp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX_UIDS = (1_000_000, 1_000_000 + (1 << 30) + (1 << 24))
M61 = (1 << 61) - 1  # ints k * M61 all hash to 0

PROBLEMS = [
    (11, "add", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], ""),
    (12, "scale", ["assert scale(2) == 6"], "FACTOR = 3"),
    (
        13,
        "is_even",
        ["assert all(map(is_even, [2, 4, 6]))", "assert not any(map(is_even, [1, 3]))"],
        "",
    ),
    (
        14,
        "key_of",
        [
            "assert sorted([3, 1, 2], key=key_of) == [1, 2, 3]",
            "assert [key_of(x) for x in (1, 2)] == [1, 2]",
            "assert all(key_of(x) == x for x in range(3))",
            "assert set(map(key_of, [1, 2])) == {1, 2}",
        ],
        "",
    ),
    (15, "uniq", ["assert uniq([1, 2, 2]) == {1, 2}"], ""),
]
ADD = "def add(a, b):\n    return a + b\n"
SYSCALLS = (
    "import ctypes, errno, os\n"
    "_libc = ctypes.CDLL(None, use_errno=True)\n"
    "def _sys(nr, *args):\n"
    "    r = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) "
    "else a for a in args])\n"
    "    return r, ctypes.get_errno()\n"
)
NR = {
    name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    for name in ("keyctl", "add_key", "ptrace", "bpf", "unshare", "mount")
}


def kinds(token: str, shm_key: int) -> dict[str, tuple[int, str, bool, bool]]:
    """kind -> (task_id, code, passes, hostile); hostile kinds with a right answer pass: what
    they try must simply not matter (nor outlive the run)."""
    outside = [f"/tmp/wmtp_stress_{token}", f"/dev/shm/wmtp_stress_{token}"]
    writes = "".join(
        f"try:\n    open({p!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for p in outside
    )
    right_if = lambda cond: (  # noqa: E731
        f"def add(a, b):\n    return a + b if ({cond}) else 0\n"
    )
    return {
        # benign, and the earlier rounds' hostile kinds
        "right": (11, ADD, True, False),
        "right (setup)": (12, "def scale(x):\n    return x * FACTOR\n", True, False),
        "right (map)": (13, "def is_even(x):\n    return x % 2 == 0\n", True, False),
        "right (key)": (14, "def key_of(x):\n    return x\n", True, False),
        "right (set)": (15, "def uniq(xs):\n    return set(xs)\n", True, False),
        "wrong": (11, "def add(a, b):\n    return a * b\n", False, False),
        "wrong (setup)": (12, "def scale(x):\n    return x\n", False, False),
        "exits first": (11, "import sys\nsys.exit(0)\n" + ADD, False, False),
        "lies about equality": (
            11,
            "def add(a, b):\n    class Y:\n        def __eq__(s, o):\n            return True\n"
            "    return Y()\n",
            False,
            False,
        ),
        "crashes": (11, "def add(a, b):\n    return a + b + None\n", False, False),
        "memory bomb": (11, "x = bytearray(1 << 40)\n" + ADD, False, False),
        "huge reply": (11, "def add(a, b):\n    return 'y' * (2 << 20)\n", False, False),
        "daemon": (
            11,
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n" + ADD,
            True,
            False,
        ),
        "shared memory": (
            11,
            f"import ctypes\nctypes.CDLL(None).shmget({shm_key}, 1 << 20, 0o1000 | 0o666)\n" + ADD,
            True,
            False,
        ),
        "writes outside": (11, writes + ADD, True, False),
        "kills everything": (
            11,
            "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n" + ADD,
            True,
            False,
        ),
        "infinite loop": (11, "def add(a, b):\n    while True:\n        pass\n", False, False),
        "fork bomb": (
            11,
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
            "        pass\n" + ADD,
            False,
            False,
        ),
        # this round's hostile kinds
        "reads the scorer's keyring": (
            11,
            SYSCALLS + "_buf = ctypes.create_string_buffer(256)\n"
            # KEYCTL_READ of the session keyring
            f"_got = _sys({NR['keyctl']}, 11, -3, _buf, 256)[0] > 0 or "
            "'wmtp_stress' in open('/proc/keys').read()\n" + right_if("_got"),
            False,
            True,
        ),
        "stores a key": (
            11,
            SYSCALLS + "for _ring in (-4, -3, -5):\n"  # user, session, user-session keyrings
            f"    _sys({NR['add_key']}, b'user', b'wmtp_answers', b'3', 1, _ring)\n" + ADD,
            True,
            True,
        ),
        "replays a stored key": (
            11,
            SYSCALLS
            # KEYCTL_SEARCH of the user, session and user-session keyrings
            + f"_found = any(_sys({NR['keyctl']}, 10, _r, b'user', b'wmtp_answers', 0)[0] > 0 "
            "for _r in (-4, -3, -5))\n" + right_if("_found"),
            False,
            True,
        ),
        "nested user namespace + mount": (
            11,
            SYSCALLS + f"_ok = _sys({NR['unshare']}, 0x10000000 | 0x20000)[0] == 0 and "
            f"_sys({NR['mount']}, b'none', b'/tmp', b'tmpfs', 0, None)[0] == 0\n" + right_if("_ok"),
            False,
            True,
        ),
        "ptrace": (
            11,
            SYSCALLS + right_if(f"_sys({NR['ptrace']}, 0, 0, 0, 0)[0] == 0"),
            False,
            True,
        ),
        "bpf": (
            11,
            SYSCALLS + right_if(f"_sys({NR['bpf']}, 0, None, 0)[1] != errno.EPERM"),
            False,
            True,
        ),
        "StopIteration in map": (
            13,
            "def is_even(x):\n    raise StopIteration\n",
            False,
            True,
        ),
        "GeneratorExit in map": (13, "def is_even(x):\n    raise GeneratorExit\n", False, True),
        "KeyboardInterrupt in map": (
            13,
            "def is_even(x):\n    raise KeyboardInterrupt\n",
            False,
            True,
        ),
        "SystemExit in map": (13, "def is_even(x):\n    raise SystemExit(0)\n", False, True),
        "StopIteration in sorted": (
            14,
            "def key_of(x):\n    raise StopIteration\n",
            False,
            True,
        ),
        "deep reply": (
            11,
            "def add(a, b):\n    v = a + b\n    for _ in range(500):\n        v = [v]\n"
            "    return v\n",
            False,
            True,
        ),
        # unbounded without this round's defences: --mix full only
        "memfd over the cap": (
            11,
            "import os\n_fds = []\nfor _ in range(80):\n"
            "    _f = os.memfd_create('x')\n"
            "    for _ in range(16):\n        os.write(_f, b'x' * (1 << 20))\n"
            "    _fds.append(_f)\n" + ADD,
            False,
            True,
        ),
        "equal-hash set": (
            15,
            f"def uniq(xs):\n    return {{k * {M61} for k in range(1, 40001)}}\n",
            False,
            True,
        ),
        "lone surrogate": (11, ADD + "# \ud800\n", False, True),
    }


FULL_ONLY = {"memfd over the cap", "equal-hash set", "lone surrogate", "deep sample line"}
SLOW = {"infinite loop": 4, "fork bomb": 2}  # each costs the whole timeout: a few only


def build(mix: str, token: str, shm_key: int) -> tuple[list[dict], dict]:
    table = kinds(token, shm_key)
    benign = [k for k, v in table.items() if not v[3] and k not in SLOW]
    hostile = [k for k, v in table.items() if v[3] and (mix == "full" or k not in FULL_ONLY)]
    if mix == "full":
        hostile.append("deep sample line")
    names = [benign[i % len(benign)] for i in range(900 - sum(SLOW.values()))]
    names += [k for k, n in SLOW.items() for _ in range(n)]
    names += [hostile[i % len(hostile)] for i in range(100)]
    samples = []
    for k in names:
        if k == "deep sample line":
            samples.append({"task_id": 11, "completion": ADD, "kind": k, "deep": None})
        else:
            samples.append({"task_id": table[k][0], "completion": table[k][1], "kind": k})
    return samples, table


def write_samples(path: str, samples: list[dict]) -> None:
    with open(path, "w") as f:
        for s in samples:
            line = json.dumps(s)
            if s["kind"] == "deep sample line":
                line = line.replace('"deep": null', '"deep": ' + "[" * 100_000 + "]" * 100_000)
            f.write(line + "\n")


def write_problems(data_dir: str) -> None:
    os.makedirs(os.path.join(data_dir, "mbpp", "processed"))
    with open(os.path.join(data_dir, "mbpp", "processed", "test.jsonl"), "w") as f:
        for task_id, name, tests, setup in PROBLEMS:
            meta = {"test_list": tests, "test_setup_code": setup}
            row = {"task_id": task_id, "instruction": f"Write {name}.", "metadata": meta}
            f.write(json.dumps(row) + "\n")


def keyring_with_secret(secret: bytes) -> None:
    """A fresh session keyring for this process (and the scorer it starts) holding a key."""
    libc = ctypes.CDLL(None, use_errno=True)
    long = ctypes.c_long
    if libc.syscall(long(NR["keyctl"]), long(1), None) < 0:  # KEYCTL_JOIN_SESSION_KEYRING
        raise OSError(ctypes.get_errno(), "keyctl join")
    if (
        libc.syscall(
            long(NR["add_key"]), b"user", b"wmtp_stress_secret", secret, long(len(secret)), long(-3)
        )
        < 0
    ):
        raise OSError(ctypes.get_errno(), "add_key")


def sysv_objects() -> set[tuple[str, str]]:
    out = set()
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            out |= {(kind, line.split()[1]) for line in f.readlines()[1:]}
    return out


def sandbox_keys() -> list[str]:
    """Keys ("key <id> <uid> <description>") and key users ("key user <uid>") of sandbox uids
    (an earlier scorer's may linger: compare)."""
    lo, hi = SANDBOX_UIDS
    with open("/proc/keys") as f:
        keys = [line.split() for line in f]
    with open("/proc/key-users") as f:
        users = [int(line.split(":")[0]) for line in f]
    return [f"key {k[0]} {k[5]} {' '.join(k[8:])}" for k in keys if lo <= int(k[5]) < hi] + [
        f"key user {u}" for u in users if lo <= u < hi
    ]


def sandbox_pids() -> list[int]:
    lo, hi = SANDBOX_UIDS
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if any(lo <= int(u) < hi for u in uids):
            pids.append(int(pid))
    return pids


def procs_mentioning(text: str) -> list[int]:
    """Processes whose command line names ``text`` (a surviving bwrap names its run dir)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            continue
    return out


def cgroups_of(pid: int) -> list[str]:
    """The runs' memory cgroups that scorer ``pid`` made (named wmtp-<pid>-<n>)."""
    return [
        os.path.join(d, n)
        for d, dirs, _ in os.walk("/sys/fs/cgroup")
        for n in dirs
        if n.startswith(f"wmtp-{pid}-")
    ]


class CpuMeter:
    """CPU seconds used by this process and everything it starts (the scorer, bwrap, every
    sandboxed program), from a cpuacct cgroup (v1) joined for the duration: unlike wall time, it
    hardly depends on what else the machine runs. None where no such cgroup can be made."""

    ROOT = "/sys/fs/cgroup/cpuacct"

    def __enter__(self):
        self.dir = None
        try:
            with open("/proc/self/cgroup") as f:
                self.home = next(
                    line.rstrip("\n").split(":", 2)[2]
                    for line in f
                    if "cpuacct" in line.split(":")[1].split(",")
                )
            self.dir = os.path.join(self.ROOT, f"wmtp_stress_{os.getpid()}")
            os.mkdir(self.dir)
            with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except (OSError, StopIteration):
            self.dir = None
        return self

    def seconds(self) -> float | None:
        if self.dir is None:
            return None
        with open(os.path.join(self.dir, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def __exit__(self, *exc):
        if self.dir is not None:
            with open(os.path.join(self.ROOT, self.home.lstrip("/"), "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            for _ in range(100):  # its last processes may still be on their way out
                try:
                    os.rmdir(self.dir)
                    break
                except OSError:
                    time.sleep(0.05)


def settle(probe, wait: float = 10.0):
    """What ``probe()`` still returns after up to ``wait`` s (other scorers' runs come and go:
    only what stays is a leak)."""
    seen = set(probe())
    deadline = time.monotonic() + wait
    while seen and time.monotonic() < deadline:
        time.sleep(0.2)
        seen &= set(probe())
    return sorted(seen)


def run_once(code: str, mix: str, workers: int, check: bool) -> dict:
    token = secrets.token_hex(6)
    shm_key = 0x5EED0000 + secrets.randbelow(1 << 16)
    samples, table = build(mix, token, shm_key)
    with tempfile.TemporaryDirectory(prefix="wmtp_stress_") as tmp:
        data_dir = os.path.join(tmp, "data")
        write_problems(data_dir)
        path = os.path.join(tmp, "samples.jsonl")
        write_samples(path, samples)
        work_tmp = os.path.join(tmp, "runs")
        os.mkdir(work_tmp)
        env = {**os.environ, "PYTHONPATH": code, "TMPDIR": work_tmp}
        ipc_before, keys_before = sysv_objects(), set(sandbox_keys())
        load_before = os.getloadavg()[0]
        with CpuMeter() as cpu:
            start = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "wmtp_jax.eval.score", "--benchmark", "mbpp"]
                + ["--samples", path, "--data-dir", data_dir, "--no-progress"]
                + ["--workers", str(workers), "--timeout", "2", "--k", "1"],
                cwd=code,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _, stderr = proc.communicate()
            seconds = time.monotonic() - start
            cpu_seconds = cpu.seconds()
        report = {
            "seconds": round(seconds, 1),
            "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "exit": proc.returncode,
        }
        if proc.returncode != 0:
            report["stderr"] = stderr.strip().splitlines()[-3:]
            return report
        with open(path + "_results.jsonl") as f:
            results = [json.loads(line) for line in f]
        wrong = {}
        for s, r in zip(samples, results):  # in input order (a too-deep line keeps no "kind")
            expected = table[s["kind"]][2] if s["kind"] in table else False
            if r["passed"] != expected:
                wrong.setdefault(s["kind"], r["result"])
        report["wrong_verdicts"] = wrong
        report["left_processes"] = settle(lambda: sandbox_pids() + procs_mentioning(work_tmp))
        report["left_keys"] = settle(lambda: set(sandbox_keys()) - keys_before)
        report["left_sysv"] = sorted(settle(lambda: sysv_objects() - ipc_before))
        report["left_cgroups"] = cgroups_of(proc.pid)
        report["left_files"] = sorted(os.listdir(work_tmp)) + [
            p
            for p in (f"/tmp/wmtp_stress_{token}", f"/dev/shm/wmtp_stress_{token}")
            if os.path.exists(p)
        ]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", default=REPO, help="checkout whose scorer runs")
    parser.add_argument("--mix", choices=("timing", "full"), default="full")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    keyring_with_secret(secrets.token_hex(8).encode())
    failed = False
    for _ in range(args.repeat):
        report = run_once(os.path.abspath(args.code), args.mix, args.workers, args.check)
        print(json.dumps({"code": args.code, "mix": args.mix, **report}), flush=True)
        leftovers = [
            report.get(k) for k in ("left_processes", "left_keys", "left_sysv", "left_files")
        ]
        failed |= report["exit"] != 0 or bool(report.get("wrong_verdicts")) or any(leftovers)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
