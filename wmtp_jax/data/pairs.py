"""Pair / sample selection from a split's `problem_index_map` (the original's datasets.py).

Deterministic for a seed on every process and run: a private `random.Random(seed)` consumed in
exactly the original's order (map order, bin order, per-problem shuffles, per-bin shuffles, final
shuffle), so the unique-pair sampler is bit-identical to the original's global `random` calls. The
length-balanced sampler visits the shared length-bin labels in `length_bins` order instead of
Python set order (the original's cross-process nondeterminism, bug 1). Every line index is used
at most once. `shard(xs, rank, world_size) = xs[rank::world_size]` (disjoint, covering).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

DEFAULT_LENGTH_BINS = (0, 100, 150, 200, 300, 500, 1000, 2000)


class SamplingShortfall(ValueError):
    """Fewer pairs than requested; the message names the bins and their counts."""


def _pos_int_or_none(x):
    return None if not x else int(x)  # None and 0 both mean "unlimited" (original)


def _difficulty_binned(problem_index_map, difficulty_bins) -> dict[str, list]:
    """{bin: [(problem id, correct indices, incorrect indices)]} in map order: each problem with
    both sides and a difficulty goes to the first bin [lo, hi] holding it."""
    binned: dict[str, list] = {name: [] for name in difficulty_bins}
    for pid, info in problem_index_map.items():
        c, i, d = (
            info.get("correct_indices") or [],
            info.get("incorrect_indices") or [],
            info.get("difficulty"),
        )
        if not c or not i or d is None:
            continue
        for name, (lo, hi) in difficulty_bins.items():
            if lo <= d <= hi:
                binned[name].append((pid, list(c), list(i)))
                break
    return binned


def _bin_targets(difficulty_weights, bin_pairs: dict, n_samples: int) -> dict[str, int]:
    """Pairs to draw per bin, in weight order: n_samples × normalised weight (bins with weight > 0
    and pairs), the remainder one by one to the bins with the most pairs first."""
    weights = {}
    for name, w in difficulty_weights.items():
        if w > 0 and bin_pairs.get(name):
            weights[name] = w
        elif w > 0:
            logger.warning("difficulty bin %r has no pairs (weight %s dropped)", name, w)
    if not weights:
        raise SamplingShortfall(
            f"no difficulty bin with weight > 0 has pairs; pairs per bin: "
            f"{ {k: len(v) for k, v in bin_pairs.items()} }"
        )
    total = sum(weights.values())
    norm = {k: w / total for k, w in weights.items()}
    targets = {k: int(n_samples * w) for k, w in norm.items()}
    remainder = n_samples - sum(targets.values())
    by_avail = sorted(norm, key=lambda k: len(bin_pairs[k]), reverse=True)
    for j in range(remainder):
        targets[by_avail[j % len(by_avail)]] += 1
    return targets


def sample_unique_pairs(
    problem_index_map: Mapping[str, Mapping],
    n_samples: int,
    difficulty_weights: Mapping[str, float],
    difficulty_bins: Mapping[str, Sequence[int]],
    seed: int,
    max_pairs_per_problem: int | None = None,
) -> list[dict]:
    """Difficulty-binned unique pairs `{correct_idx, incorrect_idx, problem_id}` (§1.4)."""
    rng = random.Random(seed)
    cap = _pos_int_or_none(max_pairs_per_problem)
    binned = _difficulty_binned(problem_index_map, difficulty_bins)
    bin_pairs: dict[str, list[dict]] = {}
    for name, problems in binned.items():
        pairs = []
        for pid, c, i in problems:
            rng.shuffle(c)
            rng.shuffle(i)
            n = min(len(c), len(i))
            if cap is not None:
                n = min(n, cap)
            pairs += [
                {"correct_idx": c[j], "incorrect_idx": i[j], "problem_id": pid} for j in range(n)
            ]
        bin_pairs[name] = pairs
    targets = _bin_targets(difficulty_weights, bin_pairs, n_samples)
    selected = []
    for name in targets:
        pairs = bin_pairs[name]
        rng.shuffle(pairs)
        selected += pairs[: min(targets[name], len(pairs))]
    rng.shuffle(selected)
    if len(selected) < n_samples:
        detail = ", ".join(
            f"{k}: target {n}, available {len(bin_pairs[k])}" for k, n in targets.items()
        )
        raise SamplingShortfall(
            f"unique-pair sampling got {len(selected)} < n_samples {n_samples} ({detail})"
        )
    return selected[:n_samples]


def length_bin_labels(length_bins: Sequence[int]) -> list[str]:
    edges = list(length_bins)
    return [f"{a}-{b}" for a, b in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]


def length_bin(length: int, length_bins: Sequence[int]) -> str:
    """First `b` in length_bins[1:] with length < b gives "prev-b"; longer -> "last+"."""
    edges = list(length_bins)
    for a, b in zip(edges[:-1], edges[1:]):
        if length < b:
            return f"{a}-{b}"
    return f"{edges[-1]}+"


def _length_binned(pid, info, length_bins) -> tuple[dict, dict]:
    """({length bin: correct indices}, {length bin: incorrect indices}) of one problem, by the
    metadata's token lengths (which must match the index lists)."""
    c, i = info.get("correct_indices") or [], info.get("incorrect_indices") or []
    cl, il = info.get("correct_token_lengths") or [], info.get("incorrect_token_lengths") or []
    if len(cl) != len(c) or len(il) != len(i):
        raise ValueError(
            f"problem {pid!r}: token-length lists ({len(cl)}, {len(il)}) do not "
            f"match the index lists ({len(c)}, {len(i)}); rebuild the metadata"
        )
    cb: dict[str, list] = {}
    ib: dict[str, list] = {}
    for idx, n in zip(c, cl):
        cb.setdefault(length_bin(n, length_bins), []).append(idx)
    for idx, n in zip(i, il):
        ib.setdefault(length_bin(n, length_bins), []).append(idx)
    return cb, ib


def sample_length_balanced_pairs(
    problem_index_map: Mapping[str, Mapping],
    n_samples: int,
    seed: int,
    length_bins: Sequence[int] = DEFAULT_LENGTH_BINS,
    difficulty_bins: Mapping[str, Sequence[int]] | None = None,
    max_pairs_per_problem: int | None = None,
) -> list[dict]:
    """Pairs of same output-length bin `{correct_idx, incorrect_idx, problem_id, length_bin}`
    (§1.5); difficulty only filters. Bin labels visited in length order (deterministic)."""
    rng = random.Random(seed)
    cap = _pos_int_or_none(max_pairs_per_problem)
    order = {lab: k for k, lab in enumerate(length_bin_labels(length_bins))}
    all_pairs, per_bin = [], {lab: 0 for lab in order}
    for pid, info in problem_index_map.items():
        c, i = info.get("correct_indices") or [], info.get("incorrect_indices") or []
        if not c or not i:
            continue
        d = info.get("difficulty")
        if difficulty_bins:
            if d is None or not any(lo <= d <= hi for lo, hi in difficulty_bins.values()):
                continue
        cb, ib = _length_binned(pid, info, length_bins)
        problem_pairs = []
        for lab in sorted(cb.keys() & ib.keys(), key=order.__getitem__):
            cs, is_ = cb[lab], ib[lab]
            rng.shuffle(cs)
            rng.shuffle(is_)
            problem_pairs += [
                {
                    "correct_idx": cs[j],
                    "incorrect_idx": is_[j],
                    "problem_id": pid,
                    "length_bin": lab,
                }
                for j in range(min(len(cs), len(is_)))
            ]
        if cap is not None and len(problem_pairs) > cap:
            rng.shuffle(problem_pairs)
            problem_pairs = problem_pairs[:cap]
        for p in problem_pairs:
            per_bin[p["length_bin"]] += 1
        all_pairs += problem_pairs
    rng.shuffle(all_pairs)
    if len(all_pairs) < n_samples:
        detail = ", ".join(f"{k}: {v}" for k, v in per_bin.items() if v)
        raise SamplingShortfall(
            f"length-balanced sampling got {len(all_pairs)} < n_samples "
            f"{n_samples} (pairs per length bin: {detail or 'none'})"
        )
    return all_pairs[:n_samples]


def sample_pairs(
    problem_index_map: Mapping[str, Mapping], sampling: Mapping, seed: int
) -> list[dict]:
    """Dispatch on the original's `data_sampling` keys: use_length_balanced, n_samples,
    difficulty_bins, difficulty_weights, length_bins, max_pairs_per_problem."""
    n = int(sampling.get("n_samples", 100000))
    bins = sampling.get("difficulty_bins")
    cap = sampling.get("max_pairs_per_problem")
    if sampling.get("use_length_balanced", False):
        return sample_length_balanced_pairs(
            problem_index_map,
            n,
            seed,
            sampling.get("length_bins") or DEFAULT_LENGTH_BINS,
            bins,
            cap,
        )
    weights = sampling.get("difficulty_weights")
    if not bins or not weights:
        raise ValueError(
            "data_sampling needs difficulty_bins and difficulty_weights unless "
            "use_length_balanced is true"
        )
    return sample_unique_pairs(problem_index_map, n, weights, bins, seed, cap)


def pointwise_indices(pairs: Sequence[Mapping]) -> list[int]:
    """Correct-only samples: the correct side of each pair, in pair order (original pointwise)."""
    return [p["correct_idx"] for p in pairs]


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """`items[rank::world_size]`: per-process shards, disjoint and covering."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
    return list(items[rank::world_size])
