"""Benchmark loading, prompts, post-processing and checking on fixtures in the prepared formats."""

import os

import pytest

from wmtp_jax.eval import benchmarks

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "eval")
ALPACA_HEAD = (
    "Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request.\n\n### Instruction:\n"
)


def test_unknown_benchmark_lists_valid_ones():
    with pytest.raises(ValueError, match="humaneval, mbpp, codecontests, gsm8k, synthetic"):
        benchmarks.load_problems("apps", FIXTURES)


def test_humaneval_bundled_whole_benchmark_raw_prompt(tmp_path):
    problems = benchmarks.load_problems("humaneval", str(tmp_path))  # no prepared file
    assert len(problems) == 164
    p = problems["HumanEval/0"]
    assert p.prompt.startswith("from typing import List\n\n\ndef has_close_elements(")
    assert p.tests["entry_point"] == "has_close_elements"
    assert len(benchmarks.load_problems("humaneval", str(tmp_path), limit=5)) == 5


def test_alpaca_prompts_exact_text():
    mbpp = benchmarks.load_problems("mbpp", FIXTURES)
    assert list(mbpp) == ["11", "12"]
    assert mbpp["11"].prompt == (
        ALPACA_HEAD + "Write a function to add two numbers.\n\nThe function "
        "should be named 'add'.\n\n### Response:\n"
    )
    assert mbpp["12"].tests == {
        "test_list": ["assert scale(2) == 6"],
        "test_setup_code": "FACTOR = 3",
    }
    cc = benchmarks.load_problems("codecontests", FIXTURES)
    assert cc["1_A. Sum"].prompt == (
        ALPACA_HEAD + "Write a Python solution that reads from stdin and prints to stdout.\n\n"
        "Given two integers a and b on one line, print a + b.\n\n### Response:\n"
    )
    syn = benchmarks.load_problems("synthetic", FIXTURES)
    assert syn["synthetic/0"].tests["test_list"] == [
        "assert double(2) == 4",
        "assert double(-3) == -6",
    ]


def test_gsm8k_reference_answers():
    gsm = benchmarks.load_problems("gsm8k", FIXTURES)
    assert {t: p.tests["answer"] for t, p in gsm.items()} == {
        "gsm8k_0": 1234.0,
        "gsm8k_1": -2.5,
        "gsm8k_2": 42.0,
    }


def test_codecontests_tests_public_private_generated_and_cap():
    cc = benchmarks.load_problems("codecontests", FIXTURES, max_tests=None)
    assert cc["1_A. Sum"].tests["tests"] == [
        ("1 2\n", "3\n"),
        ("10 -4\n", "6\n"),
        ("0 0\n", "0\n"),
        ("1000000000 1000000000\n", "2000000000\n"),
    ]
    capped = benchmarks.load_problems("codecontests", FIXTURES, max_tests=2)["1_A. Sum"].tests[
        "tests"
    ]
    assert len(capped) == 2 and set(capped) < set(cc["1_A. Sum"].tests["tests"])
    assert (
        capped
        == benchmarks.load_problems("codecontests", FIXTURES, max_tests=2)["1_A. Sum"].tests[
            "tests"
        ]
    )  # deterministic


def test_malformed_benchmark_file_names_file_and_line(tmp_path):
    d = tmp_path / "mbpp" / "processed"
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text(
        '{"task_id": 1, "instruction": "x", "metadata": {"test_list": []}}\n{oops\n'
    )
    with pytest.raises(ValueError, match=r"test.jsonl:2: malformed JSON"):
        benchmarks.load_problems("mbpp", str(tmp_path))


def test_humaneval_postprocess_keeps_indentation_and_stops_at_top_level():
    completion = "    return a + b\n\n\ndef other():\n    pass\n"
    assert benchmarks.postprocess("humaneval", completion) == "    return a + b\n\n"
    assert (
        benchmarks.postprocess("humaneval", "    x = 1\n    return x\n# junk\n")
        == "    x = 1\n    return x"
    )
    assert benchmarks.postprocess("humaneval", "    return 1\nprint(f())") == "    return 1"
    assert benchmarks.postprocess("humaneval", "    return 1\n```\nmore") == "    return 1"


def test_humaneval_first_line_indent_passes():
    """The original stripped the first line's indent and failed this; it must pass here."""
    p = benchmarks.load_problems("humaneval", "/nonexistent")["HumanEval/53"]  # add(x, y)
    assert benchmarks.check_completion("humaneval", p, "    return x + y\n")["passed"]
    assert not benchmarks.check_completion("humaneval", p, "    return x - y\n")["passed"]


@pytest.mark.parametrize(
    "response,code",
    [
        (
            "Here you go:\n```python\ndef f():\n    return 1\n```\nThis works.",
            "def f():\n    return 1\n",
        ),
        ("```py\nprint(1)\n", "print(1)\n"),  # unclosed fence
        ("```\n    x = 1\n```", "x = 1\n"),  # dedented
        ("def f():\n    return 2\n\n### Instruction:\nnext task", "def f():\n    return 2\n"),
    ],
)
def test_extract_code(response, code):
    assert benchmarks.postprocess("mbpp", response) == code


def test_stop_sequences():
    assert "\ndef " in benchmarks.stop_sequences("humaneval")
    assert "\n### Instruction:" in benchmarks.stop_sequences("mbpp")


def test_mbpp_and_synthetic_checks_with_setup_code():
    mbpp = benchmarks.load_problems("mbpp", FIXTURES)
    ok = benchmarks.check_completion(
        "mbpp", mbpp["12"], "```python\ndef scale(x):\n    return x * FACTOR\n```"
    )
    assert ok == {"passed": True, "result": "passed"}
    bad = benchmarks.check_completion("mbpp", mbpp["11"], "def add(a, b):\n    return a - b")
    assert bad == {"passed": False, "result": "failed: AssertionError"}
    syn = benchmarks.load_problems("synthetic", FIXTURES)["synthetic/0"]
    assert benchmarks.check_completion("synthetic", syn, "def double(x):\n    return 2 * x\n")[
        "passed"
    ]


def test_codecontests_stdin_stdout():
    cc = benchmarks.load_problems("codecontests", FIXTURES, max_tests=None)
    rev = cc["2_B. Reverse"]
    good = (
        "```python\nimport sys\nn, *xs = sys.stdin.read().split()\n"
        "print('  '.join(reversed(xs)), end='   \\n\\n')\n```"
    )  # extra whitespace is fine
    assert benchmarks.check_completion("codecontests", rev, good) == {
        "passed": True,
        "result": "passed",
        "tests_passed": 3,
        "tests_run": 3,
    }
    wrong = benchmarks.check_completion(
        "codecontests", rev, "import sys\nprint(sys.stdin.read().split()[1])"
    )
    assert wrong["result"] == "failed: wrong answer (test 0)" and not wrong["passed"]
    crash = benchmarks.check_completion(
        "codecontests",
        cc["1_A. Sum"],
        "a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)",
    )
    assert not crash["passed"] and crash["result"].startswith("failed: exit status 3")
    slow = benchmarks.check_completion(
        "codecontests", cc["1_A. Sum"], "while True: pass", timeout=0.5
    )
    assert slow["result"] == "timed out"


def test_gsm8k_check_completion():
    gsm = benchmarks.load_problems("gsm8k", FIXTURES)
    right = benchmarks.check_completion("gsm8k", gsm["gsm8k_0"], "1000 + 234 = 1234\n#### 1,234")
    assert right["passed"] and right["answer"] == 1234.0
    wrong = benchmarks.check_completion("gsm8k", gsm["gsm8k_2"], "6 * 7 = 43")
    assert not wrong["passed"] and wrong["result"] == "failed: answer 43.0 != 42.0"
