"""Evaluation: benchmarks, sandboxed execution, pass@k / answer matching, scoring CLI.

summary, results = score_samples("humaneval", [{"task_id": ..., "completion": ...}, ...])
"""

from wmtp_jax.eval.benchmarks import (
    BENCHMARKS,
    Problem,
    check_completion,
    load_problems,
    postprocess,
    stop_sequences,
)
from wmtp_jax.eval.execution import run_program, run_stdio_tests, sandbox
from wmtp_jax.eval.grader import run_tests
from wmtp_jax.eval.isolation import POLICIES, Limits, Sandbox, SandboxUnavailable
from wmtp_jax.eval.metrics import extract_answer, mean_pass_at_k, pass_at_k


def __getattr__(name):  # lazy: keeps `python -m wmtp_jax.eval.score` free of runpy warnings
    if name in ("read_samples", "score_samples"):
        from wmtp_jax.eval import score

        return getattr(score, name)
    raise AttributeError(name)


__all__ = [
    "BENCHMARKS",
    "Problem",
    "check_completion",
    "load_problems",
    "postprocess",
    "stop_sequences",
    "POLICIES",
    "Limits",
    "Sandbox",
    "SandboxUnavailable",
    "run_program",
    "run_stdio_tests",
    "sandbox",
    "run_tests",
    "extract_answer",
    "mean_pass_at_k",
    "pass_at_k",
    "read_samples",
    "score_samples",
]
