"""Samplers: parity with the original (unique pairs), invariants, PYTHONHASHSEED, shards."""

import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from tests.fixtures.data.helpers import synthetic_dir
from wmtp_jax.data import pairs as S
from wmtp_jax.data.sources import load_samples, resolve_split


def make_map(n_problems=200, seed=0):
    """problem_index_map with disjoint line indices, difficulties 0..9, token lengths 10..400."""
    rng = random.Random(seed)
    pim, line = {}, 0
    for p in range(n_problems):
        nc, ni = rng.randint(0, 5), rng.randint(0, 5)
        c, i = list(range(line, line + nc)), list(range(line + nc, line + nc + ni))
        line += nc + ni
        pim[f"prob {p}_A. name"] = {
            "difficulty": rng.choice([None, 0, 1, 2, 3, 7, 8, 9]),
            "correct_indices": c,
            "incorrect_indices": i,
            "correct_token_lengths": [rng.randint(10, 400) for _ in c],
            "incorrect_token_lengths": [rng.randint(10, 400) for _ in i],
        }
    return pim


def reference_unique_pairs(pim, n_samples, weights, bins, seed, cap):
    """Transcription of the original `_sample_unique_pairs` (global `random` module)."""
    random.seed(seed)
    bin_problems = {b: [] for b in bins}
    for pid, info in pim.items():
        c, i, d = info["correct_indices"], info["incorrect_indices"], info["difficulty"]
        if not c or not i or d is None:
            continue
        for b, (lo, hi) in bins.items():
            if lo <= d <= hi:
                bin_problems[b].append({"pid": pid, "c": list(c), "i": list(i)})
                break
    bin_pairs = {}
    for b, probs in bin_problems.items():
        pairs = []
        for pr in probs:
            random.shuffle(pr["c"])
            random.shuffle(pr["i"])
            n = min(len(pr["c"]), len(pr["i"]))
            if cap:
                n = min(n, cap)
            pairs += [
                {"correct_idx": pr["c"][j], "incorrect_idx": pr["i"][j], "problem_id": pr["pid"]}
                for j in range(n)
            ]
        bin_pairs[b] = pairs
    w = {b: x for b, x in weights.items() if x > 0 and bin_pairs.get(b)}
    tot = sum(w.values())
    w = {b: x / tot for b, x in w.items()}
    targets = {b: int(n_samples * x) for b, x in w.items()}
    rem = n_samples - sum(targets.values())
    order = sorted(w, key=lambda b: len(bin_pairs[b]), reverse=True)
    for j in range(rem):
        targets[order[j % len(order)]] += 1
    sel = []
    for b in w:
        random.shuffle(bin_pairs[b])
        sel += bin_pairs[b][: min(targets[b], len(bin_pairs[b]))]
    random.shuffle(sel)
    return sel[:n_samples]


BINS = {"diff_7": [7, 7], "else": [1, 9]}
WEIGHTS = {"diff_7": 0.35, "else": 0.65}


@pytest.mark.parametrize("cap", [None, 1, 2])
def test_unique_pairs_match_reference_bit_for_bit(cap):
    pim = make_map()
    n = 20 if cap == 1 else 30
    got = S.sample_unique_pairs(pim, n, WEIGHTS, BINS, seed=42, max_pairs_per_problem=cap)
    assert got == reference_unique_pairs(pim, n, WEIGHTS, BINS, 42, cap)


def test_unique_pairs_invariants():
    pim = make_map()
    pairs = S.sample_unique_pairs(pim, 30, WEIGHTS, BINS, seed=1)
    assert len(pairs) == 30
    used = [p["correct_idx"] for p in pairs] + [p["incorrect_idx"] for p in pairs]
    assert len(used) == len(set(used))  # every line index at most once
    for p in pairs:
        info = pim[p["problem_id"]]
        assert p["correct_idx"] in info["correct_indices"]
        assert p["incorrect_idx"] in info["incorrect_indices"]
    per_bin = Counter(
        "diff_7" if pim[p["problem_id"]]["difficulty"] == 7 else "else" for p in pairs
    )
    # targets: int(30*.35)=10, int(30*.65)=19, remainder 1 -> the bin with more pairs ("else")
    assert per_bin == {"diff_7": 10, "else": 20}


def test_shortfall_names_bins_and_counts():
    with pytest.raises(S.SamplingShortfall, match=r"diff_7: target \d+, available \d+"):
        S.sample_unique_pairs(make_map(), 10_000, WEIGHTS, BINS, seed=0)
    with pytest.raises(S.SamplingShortfall, match="pairs per length bin"):
        S.sample_length_balanced_pairs(make_map(), 10_000, seed=0)


def test_length_balanced_invariants():
    pim = make_map(80)
    pairs = S.sample_length_balanced_pairs(
        pim,
        25,
        seed=3,
        length_bins=[0, 100, 200, 300],
        difficulty_bins={"all": [1, 9]},
        max_pairs_per_problem=2,
    )
    assert len(pairs) == 25
    used = [p["correct_idx"] for p in pairs] + [p["incorrect_idx"] for p in pairs]
    assert len(used) == len(set(used))
    assert max(Counter(p["problem_id"] for p in pairs).values()) <= 2
    for p in pairs:
        info = pim[p["problem_id"]]
        assert info["difficulty"] is not None and 1 <= info["difficulty"] <= 9
        lc = info["correct_token_lengths"][info["correct_indices"].index(p["correct_idx"])]
        li = info["incorrect_token_lengths"][info["incorrect_indices"].index(p["incorrect_idx"])]
        assert (
            S.length_bin(lc, [0, 100, 200, 300])
            == S.length_bin(li, [0, 100, 200, 300])
            == p["length_bin"]
        )
    assert S.length_bin(99, [0, 100]) == "0-100" and S.length_bin(100, [0, 100]) == "100+"


_HASH_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from tests.unit.test_data_pairs import make_map
from wmtp_jax.data import pairs as S
pim = make_map(80)
cfg = {{"use_length_balanced": True, "n_samples": 30, "length_bins": [0, 50, 150, 250, 400],
       "max_pairs_per_problem": 3, "difficulty_bins": {{"all": [0, 9]}}}}
a = S.sample_pairs(pim, cfg, seed=84)
b = S.sample_pairs(pim, {{"n_samples": 30, "difficulty_bins": {{"lo": [0, 3], "hi": [4, 9]}},
                         "difficulty_weights": {{"lo": 0.5, "hi": 0.5}}}}, seed=7)
print(json.dumps([a, b]))
"""


def test_same_output_under_different_pythonhashseeds():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = []
    for h in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=h)
        outs.append(
            subprocess.run(
                [sys.executable, "-c", _HASH_SCRIPT.format(root=root)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    assert outs[0] == outs[1] and len(json.loads(outs[0])[0]) == 30


def test_shards_disjoint_and_covering():
    pairs = S.sample_unique_pairs(make_map(), 31, WEIGHTS, BINS, seed=5)
    for world in (2, 3):
        shards = [S.shard(pairs, r, world) for r in range(world)]
        keys = [p["correct_idx"] for sh in shards for p in sh]
        assert sorted(keys) == sorted(p["correct_idx"] for p in pairs) and len(set(keys)) == 31
    with pytest.raises(ValueError, match="rank"):
        S.shard(pairs, 2, 2)


def test_load_samples_pointwise_and_pairwise():
    d = synthetic_dir()
    cfg = {
        "n_samples": 40,
        "difficulty_bins": {"all": [1, 3]},
        "difficulty_weights": {"all": 1.0},
        "max_pairs_per_problem": 2,
    }
    point = load_samples(d, "train", cfg, seed=3)
    pair = load_samples(d, "train", dict(cfg, use_pairwise=True), seed=3)
    assert len(point) == len(pair) == 40
    for j in range(40):
        assert point[j]["is_correct"] is True  # pointwise = correct side of the same pairs
        assert point[j]["output"] == pair[j]["correct_output"]
        assert set(pair[j]) == {
            "instruction",
            "input",
            "correct_output",
            "incorrect_output",
            "problem_id",
        }
    halves = [load_samples(d, "train", cfg, seed=3, rank=r, world_size=2) for r in range(2)]
    ids = [point[k]["task_id"] for k in range(40)]
    assert [h[k]["task_id"] for k in range(20) for h in halves] == ids  # [rank::2] interleave
    assert resolve_split(d, "validation")[0].name == "valid.jsonl"
    with pytest.raises(
        ValueError, match=r"valid splits: \['test', 'train', 'valid', 'validation'\]"
    ):
        resolve_split(d, "dev")
