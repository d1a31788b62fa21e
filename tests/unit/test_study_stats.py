"""Study math: percentile bootstrap over problems × seeds, the paired bootstrap, pooled AUROC with
ties, the token / mutated-span overlap, per-problem pass@k from results.jsonl."""

import json
import math

import numpy as np
import pytest

from wmtp_jax.study import cells, credit, intervals


def test_bootstrap_hand_made_case():
    # 3 problems [0, 0, 1], one seed: a resample mean is k/3 with k ~ Binomial(3, 1/3):
    # P(0) = 8/27, P(1/3) = 12/27, P(2/3) = 6/27, P(1) = 1/27 -> 2.5% quantile 0, 97.5% quantile 1
    # (P(mean < 1) = 26/27 = 0.963 < 0.975).
    r = intervals.bootstrap_ci([0.0, 0.0, 1.0], n_resamples=4000, seed=0)
    assert r["mean"] == pytest.approx(1 / 3)
    assert r["ci95"] == [0.0, 1.0]
    means = intervals.bootstrap_means([0.0, 0.0, 1.0], n_resamples=4000, seed=0)
    freq = [np.mean(np.isclose(means, k / 3)) for k in range(4)]
    assert freq == pytest.approx([8 / 27, 12 / 27, 6 / 27, 1 / 27], abs=0.025)


def test_bootstrap_constant_deterministic_and_seed_resampling():
    r = intervals.bootstrap_ci(np.full((3, 5), 0.4), 1000, 1)
    assert r["mean"] == pytest.approx(0.4) and r["ci95"] == pytest.approx([0.4, 0.4])
    x = np.random.default_rng(0).random((3, 20))
    assert intervals.bootstrap_ci(x, 1000, 7) == intervals.bootstrap_ci(x, 1000, 7)
    # rows (seeds) are resampled too: two seeds that disagree on every problem
    # -> resample means 0 (both draws seed 0), 1/2, 1 with probabilities 1/4, 1/2, 1/4
    m = intervals.bootstrap_means([[0.0] * 4, [1.0] * 4], 4000, 0)
    assert sorted(set(np.round(m, 6))) == [0.0, 0.5, 1.0]
    assert np.mean(m == 0) == pytest.approx(0.25, abs=0.03)


def test_paired_bootstrap():
    a = np.array([[1.0, 1.0, 0.0, 1.0]])
    b = np.array([[0.0, 1.0, 0.0, 0.0]])
    r = intervals.paired_bootstrap_ci(a, b, 2000, 0)
    assert r["delta"] == pytest.approx(0.5)
    # the difference per problem is [1, 0, 0, 1]: the same problems are drawn for both arms, so
    # each resample is j/4 (j = draws of problems 0 or 3), never the unpaired extremes like -1/4
    m = intervals.bootstrap_means(a - b, 2000, 0)
    assert np.all(np.isin(np.round(m * 4), [0, 1, 2, 3, 4]))
    assert 0.0 <= r["ci95"][0] <= 0.25 and 0.75 <= r["ci95"][1] <= 1.0
    # identical arms: every paired resample is exactly 0
    assert intervals.paired_bootstrap_ci(a, a, 1000, 0) == {"delta": 0.0, "ci95": [0.0, 0.0]}
    with pytest.raises(ValueError, match="shapes differ"):
        intervals.paired_bootstrap_ci(a, b[:, :3])


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        intervals.bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        intervals.bootstrap_ci([0.0, math.nan])
    with pytest.raises(ValueError, match="n_resamples"):
        intervals.bootstrap_means([1.0], 0)


def test_auroc_hand_computed():
    # positives {0.9, 0.5}, negatives {0.5, 0.1, 0.3}: pairs (pos > neg) 3 + 2, tie 0.5 = 1/2
    # -> (3 + 2 + 0.5) / 6
    s = [0.9, 0.5, 0.5, 0.1, 0.3]
    y = [1, 1, 0, 0, 0]
    assert credit.auroc(s, y) == pytest.approx(5.5 / 6)
    assert credit.auroc([1, 1, 1], [1, 0, 0]) == 0.5  # all tied
    assert credit.auroc([0, 1], [1, 0]) == 0.0
    assert math.isnan(credit.auroc([1, 2], [1, 1]))
    # weights = multiplicities: counting the 0.1 negative twice equals repeating it
    w = [1, 1, 1, 2, 1]
    assert credit.auroc(s, y, w) == pytest.approx(credit.auroc(s + [0.1], y + [0]))


def test_auroc_interval_covers_and_is_seeded():
    rng = np.random.default_rng(0)
    sol = np.repeat(np.arange(30), 10)
    inside = rng.random(300) < 0.3
    score = inside + rng.normal(0, 1, 300)
    ci = credit.auroc_interval([score], inside, sol, 500, 0)
    a = credit.auroc(score, inside)
    assert ci[0] < a < ci[1] and ci == credit.auroc_interval([score], inside, sol, 500, 0)


def test_token_inside_overlap():
    # tokens [0,3) [3,5) [5,9) [9,9) (empty: EOS) [9,12); span [4, 6)
    off = [(0, 3), (3, 5), (5, 9), (9, 9), (9, 12)]
    assert credit.token_inside(off, (4, 6)).tolist() == [False, True, True, False, False]
    assert credit.token_inside(off, (3, 5)).tolist() == [False, True, False, False, False]
    assert credit.token_inside(off, (9, 10)).tolist() == [False, False, False, False, True]
    assert credit.token_inside(off, (12, 13)).tolist() == [False] * 5  # half-open: no touch


def test_encode_offsets_match_the_collator():
    from tests.fixtures.data.helpers import micro_tokenizer

    tok = micro_tokenizer()
    rec = {
        "instruction": "Write f.",
        "input": "",
        "output": "def f(x):\n    return x + 1\n",
        "is_correct": False,
    }
    batch, off = credit.encode(tok, [rec], max_length=64, append_eos=True)
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    resp = labels != -100
    texts = [rec["output"][a:b] for a, b in off[0][resp]]
    # the response tokens' character ranges tile the output (EOS has none)
    assert "".join(texts) == rec["output"]
    assert off[0][resp][-1].tolist() == [0, 0] and ids[resp][-1] == tok.eos_token_id
    span = (rec["output"].index("+"), rec["output"].index("+") + 1)
    inside = credit.token_inside(off[0][resp], span)
    assert inside.sum() >= 1 and all("+" in t for t, i in zip(texts, inside) if i)


def test_problem_scores_per_problem_pass_at_k(tmp_path):
    rows = [
        ("a", True),
        ("a", False),
        ("a", False),
        ("b", False),
        ("b", False),
        ("b", False),
        ("c", True),
        ("c", True),
        ("c", True),
    ]
    f = tmp_path / "results.jsonl"
    f.write_text("".join(json.dumps({"task_id": t, "passed": p}) + "\n" for t, p in rows))
    got = cells.problem_scores(f, (1, 2))
    assert got["task_ids"] == ["a", "b", "c"]
    assert got["pass@1"] == pytest.approx([1 / 3, 0.0, 1.0])
    assert got["pass@2"] == pytest.approx([1 - (2 / 3) * (1 / 2), 0.0, 1.0])  # 1 - C(2,2)/C(3,2)


def test_top1_inside_hand_computed():
    # solution 0: max at token 1 (inside); solution 1: max at token 3 (outside); ties: first
    score = [0.1, 0.9, 0.2, 0.5, 0.1, 0.5]
    inside = [0, 1, 1, 0, 1, 0]
    sol = [0, 0, 0, 1, 1, 1]
    rate, chance = credit.top1_inside(score, inside, sol)
    assert rate == 0.5 and chance == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert credit.top1_inside([1.0, 1.0], [1, 0], [0, 0])[0] == 1.0


def test_by_position_hand_computed():
    """Solutions of 5, 1 and 2 tokens: positions 0, ¼, ½, ¾, 1 → fifths 0..4; a one-token
    solution → fifth 0; a two-token one → fifths 0 and 4."""
    got = credit.by_position([1, 2, 3, 4, 5, 10, 6, 8], [0, 0, 0, 0, 0, 1, 2, 2])
    assert got == pytest.approx([17 / 3, 2.0, 3.0, 4.0, 6.5])
    empty = credit.by_position([1.0, 2.0], [0, 1], n_bins=2)  # two one-token solutions
    assert empty[0] == 1.5 and np.isnan(empty[1])
