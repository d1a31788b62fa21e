"""Evaluation: benchmarks, sandboxed execution, pass@k / answer matching, scoring CLI.

    summary, results = score_samples("humaneval", [{"task_id": ..., "completion": ...}, ...])
"""

from wmtp_jax.eval.benchmarks import (BENCHMARKS, Problem, check_completion, load_problems,
                                      postprocess, stop_sequences)
from wmtp_jax.eval.execution import (Limits, probe_protections, run_program, run_python_tests,
                                     run_stdio_tests)
from wmtp_jax.eval.metrics import extract_answer, mean_pass_at_k, pass_at_k
from wmtp_jax.eval.score import read_samples, score_samples

__all__ = ["BENCHMARKS", "Problem", "check_completion", "load_problems", "postprocess",
           "stop_sequences", "Limits", "probe_protections", "run_program", "run_python_tests",
           "run_stdio_tests", "extract_answer", "mean_pass_at_k", "pass_at_k", "read_samples",
           "score_samples"]
