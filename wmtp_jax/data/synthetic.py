"""Synthetic verifiable code task: seeded, execution-verified Python function-writing problems.

`generate(seed, n_problems)` -> problems; `write_synthetic(out_dir, ...)` writes the prepared
layout (processed/{train,valid,test}.jsonl + metadata + schema + {valid,test}_eval.jsonl).
Records follow CodeContests: `task_id = f"{problem_id}_correct_{i}"` / `_incorrect_{i}`,
`is_correct`, `metadata = {source: "synthetic", difficulty, family, entry_point (= the template
name), params (the drawn parameters), test_list, test_setup_code, has_tests: true}`. Incorrect
records add `mutation` and `mutated_span: [start, end]`: the half-open character range of
`output` that differs from the nearest correct solution of the same problem
(`wmtp_jax.data.spans.mutated_span`; ground truth for critic credit).
Every label is checked by running the tests in worker subprocesses (one fork per candidate, time
limit); mutants that pass are dropped, and a problem is kept only with >= 1 correct and >= 1
incorrect solution. Problems are distinct (template, params) draws, so the splits are held out
on parameters. Same seed and size -> byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wmtp_jax.data.metadata import SplitWriter, write_schema
from wmtp_jax.data.records import iter_jsonl
from wmtp_jax.data.spans import mutated_span
from wmtp_jax.data.synthetic_families import TEMPLATES, Template, function_code
from wmtp_jax.data.tokenizer import TokenCounter

logger = logging.getLogger(__name__)

DEFAULT_N_PROBLEMS = 2500
SPLIT_FRACTIONS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))
_WORKER = Path(__file__).with_name("verify_worker.py")


def _expected(t: Template, p: dict, inputs: list[tuple]) -> list:
    ns: dict = {}
    exec(function_code(t, t.correct[0], p), ns)  # our own template code, trusted
    return [ns[t.name](*args) for args in inputs]


def _draw_problem(t: Template, rng: random.Random) -> dict:
    p = t.params(rng)
    inputs = t.inputs(rng, p)
    expected = _expected(t, p, inputs)
    tests = [
        f"assert {t.name}({', '.join(map(repr, args))}) == {out!r}"
        for args, out in zip(inputs, expected)
    ]
    return {
        "key": (t.name, tuple(sorted(p.items()))),
        "template": t,
        "params": p,
        "instruction": f"Write a Python function `{t.name}({t.args})` that {t.doc.format(**p)}.",
        "correct": [function_code(t, b, p) for b in t.correct],
        "incorrect": [(kind, function_code(t, b, p)) for kind, b in t.incorrect],
        "test_list": tests,
        "test_setup_code": "",
    }


def verify(
    jobs: list[dict], timeout: float = 2.0, workers: int | None = None, isolate: bool = False
) -> list[bool]:
    """Runs `{code, setup, tests}` jobs in `workers` subprocesses -> pass flags.

    isolate=False (generated, trusted code): exec per job in a fresh namespace with a timer; a
    chunk whose worker dies is re-run with isolate=True (a forked child per job)."""
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, 8, len(jobs)))
    chunks = [jobs[i::workers] for i in range(workers)]

    def run(chunk, mode="fork" if isolate else "exec"):
        req = {"timeout": timeout, "jobs": chunk, "mode": mode}
        proc = subprocess.run(
            [sys.executable, "-S", str(_WORKER)],
            capture_output=True,
            input=json.dumps(req).encode(),
            timeout=60 + timeout * len(chunk),
            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
        )
        try:
            res = json.loads(proc.stdout) if proc.returncode == 0 else None
        except json.JSONDecodeError:
            res = None
        if isinstance(res, list) and len(res) == len(chunk):
            return res
        if mode == "fork":
            raise RuntimeError(f"verification worker failed: {proc.stderr.decode()[-2000:]}")
        logger.warning(
            "verification worker died (rc %d); re-running %d jobs isolated",
            proc.returncode,
            len(chunk),
        )
        return run(chunk, "fork")

    with ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(run, chunks))
    out = [False] * len(jobs)
    for w, res in enumerate(results):
        out[w::workers] = res
    return out


def generate(seed: int = 0, n_problems: int = DEFAULT_N_PROBLEMS) -> list[dict]:
    """`n_problems` distinct verified problems, families interleaved, in a seeded order."""
    rng = random.Random(seed)
    problems, seen, attempts = [], set(), 0
    while len(problems) < n_problems:
        drafts = []
        while len(drafts) < (n_problems - len(problems)) * 5 // 4 + 4:
            attempts += 1
            if attempts > 200 * n_problems:
                raise ValueError(
                    f"cannot draw {n_problems} distinct synthetic problems "
                    f"(got {len(problems)}); lower --n-problems"
                )
            d = _draw_problem(TEMPLATES[attempts % len(TEMPLATES)], rng)
            if d["key"] not in seen:
                seen.add(d["key"])
                drafts.append(d)
        jobs = [
            {"code": c, "setup": d["test_setup_code"], "tests": d["test_list"]}
            for d in drafts
            for c in d["correct"] + [c for _, c in d["incorrect"]]
        ]
        ok = iter(verify(jobs))
        for d in drafts:
            c_ok = [next(ok) for _ in d["correct"]]
            i_ok = [next(ok) for _ in d["incorrect"]]
            if not all(c_ok):
                bad = d["correct"][c_ok.index(False)]
                raise AssertionError(
                    f"synthetic template {d['template'].name}: a correct "
                    f"solution fails its tests:\n{bad}\n{d['test_list']}"
                )
            d["incorrect"] = [m for m, passed in zip(d["incorrect"], i_ok) if not passed]
            if d["incorrect"] and len(problems) < n_problems:
                problems.append(d)
    return problems


def _metadata(d: dict) -> dict:
    t = d["template"]
    return {
        "source": "synthetic",
        "difficulty": t.difficulty,
        "family": t.family,
        "entry_point": t.name,
        "params": dict(sorted(d["params"].items())),
        "test_list": d["test_list"],
        "test_setup_code": d["test_setup_code"],
        "has_tests": True,
    }


def records_of(d: dict, pid: str) -> list[dict]:
    base = {"instruction": d["instruction"], "input": ""}
    recs = [
        {
            **base,
            "output": c,
            "task_id": f"{pid}_correct_{i}",
            "is_correct": True,
            "metadata": _metadata(d),
        }
        for i, c in enumerate(d["correct"])
    ]
    recs += [
        {
            **base,
            "output": c,
            "task_id": f"{pid}_incorrect_{i}",
            "is_correct": False,
            "metadata": {
                **_metadata(d),
                "mutation": kind,
                "mutated_span": list(mutated_span(c, d["correct"])),
            },
        }
        for i, (kind, c) in enumerate(d["incorrect"])
    ]
    return recs


def write_synthetic(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_problems: int = DEFAULT_N_PROBLEMS,
    tokenizer_dir=None,
) -> dict:
    """Generates and writes the dataset under `out_dir/processed`; returns per-split stats."""
    if n_problems < 10:
        raise ValueError(f"--n-problems must be >= 10 (train/valid/test), got {n_problems}")
    problems = generate(seed, n_problems)
    random.Random(seed + 1).shuffle(problems)
    proc = Path(out_dir) / "processed"
    counter = TokenCounter(tokenizer_dir)
    stats, start = {}, 0
    for k, (split, frac) in enumerate(SPLIT_FRACTIONS):
        stop = n_problems if k == len(SPLIT_FRACTIONS) - 1 else start + round(frac * n_problems)
        writer = SplitWriter(proc / f"{split}.jsonl", counter, max_tokens=None)
        eval_recs = []
        try:
            for j in range(start, stop):
                pid = f"synthetic_{j:05d}"
                writer.add(records_of(problems[j], pid))
                eval_recs.append(
                    {
                        "task_id": pid,
                        "instruction": problems[j]["instruction"],
                        "input": "",
                        "metadata": _metadata(problems[j]),
                    }
                )
        except BaseException:
            writer.abort()  # no .tmp left behind
            raise
        stats[split] = writer.close()
        if split != "train":
            with open(proc / f"{split}_eval.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in eval_recs)
        start = stop
    write_schema(
        proc,
        "synthetic",
        f"wmtp_jax.data.synthetic(seed={seed}, n_problems={n_problems})",
        True,
        "Execution-verified synthetic Python function-writing problems",
        "families: " + ", ".join(sorted({t.family for t in TEMPLATES})),
    )
    return stats


def ensure_synthetic(
    out_dir: str | os.PathLike, seed: int = 0, tokenizer_dir=None, n_problems: int | None = None
) -> Path:
    """Writes the synthetic dataset unless `out_dir/processed/schema.json` already exists.

    When `tokenizer_dir` is given and the existing metadata used another token count, the
    metadata is rebuilt with the tokenizer (records unchanged). Returns `out_dir/processed`.
    """
    proc = Path(out_dir) / "processed"
    if not (proc / "schema.json").exists():
        logger.info("creating synthetic dataset in %s (seed %d)", proc, seed)
        write_synthetic(out_dir, seed, n_problems or DEFAULT_N_PROBLEMS, tokenizer_dir)
    elif tokenizer_dir is not None:
        meta = json.loads((proc / "train_metadata.json").read_text())
        if meta.get("token_count", {}).get("tokenizer") != str(tokenizer_dir):
            rebuild_metadata(proc, tokenizer_dir)
    return proc


def rebuild_metadata(processed: str | os.PathLike, tokenizer_dir) -> None:
    """Recomputes every split's metadata (token lengths) from its JSONL with a tokenizer."""
    counter = TokenCounter(tokenizer_dir)
    for path in sorted(Path(processed).glob("*.jsonl")):
        if path.stem.endswith("_eval"):
            continue
        recs = [r for _, r in iter_jsonl(path)]  # synthetic splits are small
        writer = SplitWriter(path, counter, max_tokens=None)  # same records, new metadata
        writer.add(recs)
        writer.close()
