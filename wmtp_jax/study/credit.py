"""Critic credit against ground truth: does −δ_t (the critic's TD error, negated) single out the
tokens of an incorrect solution that differ from its nearest correct one?

Per held-out incorrect solution (the test split): its mutated span (metadata `mutated_span`, else
`wmtp_jax.data.spans.mutated_span` against the problem's correct solutions) and its tokens as the
collator encodes them; a response token is *inside* when its character range [a, b) overlaps the
span [s, e) (a < e and b > s). Tokens without characters (EOS) are left out of the pool.
Per token: score = −δ_t, δ = `ops.compute_td_errors(v, R = 0, mask, γ, v₋₁)` exactly as the
verifiable pipeline (v the frozen critic's values); weight = the verifiable weights of the
verifiable advantages whitened with the mean / std of all held-out response tokens
(`wmtp_jax.weighting.batch_weights`). AUROC(inside vs outside) pools the tokens of all solutions
(ties count 1/2); its interval resamples solutions (and seeds). Pairwise accuracy:
v̄(correct) > v̄(incorrect) over every (correct, incorrect) pair of a held-out problem (v̄ the mean
value over response tokens).
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wmtp_jax import ops
from wmtp_jax.data.collate import RESPONSE_HEADER, AlpacaCollator, _prompt
from wmtp_jax.data.records import JsonlRecords
from wmtp_jax.data.sources import load_problem_index_map, resolve_split
from wmtp_jax.data.spans import mutated_span
from wmtp_jax.data.tokenizer import load_tokenizer
from wmtp_jax.pipelines import specs, verifiable
from wmtp_jax.study.intervals import percentile_interval
from wmtp_jax.weighting import WeightingConfig, advantages, batch_weights, critic_values

# ---- pure math -------------------------------------------------------------------------------


def token_inside(offsets, span) -> np.ndarray:
    """bool `[T]`: token t's characters [a_t, b_t) overlap the half-open span [s, e) (empty
    tokens, a_t = b_t, never do)."""
    off = np.asarray(offsets, np.int64).reshape(-1, 2)
    s, e = int(span[0]), int(span[1])
    return (off[:, 0] < e) & (off[:, 1] > s) & (off[:, 1] > off[:, 0])


def auroc(scores, labels, weights=None) -> float:
    """P(score⁺ > score⁻) + ½ P(score⁺ = score⁻) for positives (labels true) vs negatives,
    each element counted `weights` times (default 1); NaN without both classes."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64)
    if not (s.shape == y.shape == w.shape):
        raise ValueError(f"auroc: shapes differ {s.shape}, {y.shape}, {w.shape}")
    uniq, inv = np.unique(s, return_inverse=True)
    pos = np.bincount(inv, w * y, len(uniq))
    neg = np.bincount(inv, w * ~y, len(uniq))
    den = pos.sum() * neg.sum()
    if den <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / den)


def auroc_interval(
    scores_by_seed,
    labels,
    solution,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[float]:
    """Percentile interval of mean_seeds AUROC when seeds and solutions are resampled with
    replacement (a drawn solution brings all its tokens). scores_by_seed: `[S][T]`; labels,
    solution (solution index of each token): `[T]`."""
    scores = [np.asarray(x, np.float64) for x in scores_by_seed]
    sol = np.asarray(solution, np.int64)
    n_sol = int(sol.max()) + 1 if sol.size else 0
    if not scores or n_sol == 0:
        raise ValueError("auroc_interval: no tokens")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        seeds = rng.integers(0, len(scores), len(scores))
        counts = np.bincount(rng.integers(0, n_sol, n_sol), minlength=n_sol)
        w = counts[sol].astype(np.float64)
        out.append(np.mean([auroc(scores[k], labels, w) for k in seeds]))
    out = np.asarray(out)
    return percentile_interval(out[np.isfinite(out)], confidence)


def top1_inside(score, inside, solution) -> tuple[float, float]:
    """(fraction of solutions whose highest-scoring token is inside the span, the chance rate:
    the mean fraction of a solution's tokens that are inside). A critic that drops its value
    only at the first erroneous token can reach 1 here while its AUROC stays near
    0.5 + ½ · 1/(tokens in the span)."""
    s = np.asarray(score, np.float64)
    y = np.asarray(inside, bool)
    sol = np.asarray(solution, np.int64)
    order = np.lexsort((-s, sol))  # by solution, the highest score first (ties: first token)
    first = np.ones(len(order), bool)
    first[1:] = sol[order][1:] != sol[order][:-1]
    hits = y[order][first]
    n = np.bincount(sol)
    chance = np.bincount(sol, y.astype(np.float64))[n > 0] / n[n > 0]
    return float(hits.mean()), float(chance.mean())


def by_position(values, solution, n_bins: int = 5) -> list[float]:
    """Mean of `values` [T] per relative position in its solution: token i of a solution of n
    tokens (contiguous in `solution` [T]) has position i / (n − 1) (0 for n = 1), binned into
    `n_bins` equal bins (bin = min(⌊position · n_bins⌋, n_bins − 1)); NaN for an empty bin."""
    v = np.asarray(values, np.float64)
    sol = np.asarray(solution, np.int64)
    start = np.r_[0, np.flatnonzero(np.diff(sol)) + 1]
    length = np.diff(np.r_[start, len(sol)])
    first = np.repeat(start, length)
    span = np.maximum(np.repeat(length, length) - 1, 1)
    b = np.minimum((np.arange(len(sol)) - first) * n_bins // span, n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    total = np.bincount(b, v, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(x) for x in total / n]


def summarize(score, weight, inside) -> dict:
    """Per-seed numbers of one critic: auroc, mean weight inside / outside, token counts."""
    inside = np.asarray(inside, bool)
    weight = np.asarray(weight, np.float64)
    return {
        "auroc": auroc(score, inside),
        "mean_weight_inside": float(weight[inside].mean()) if inside.any() else float("nan"),
        "mean_weight_outside": float(weight[~inside].mean()) if (~inside).any() else float("nan"),
        "n_tokens_inside": int(inside.sum()),
        "n_tokens_outside": int((~inside).sum()),
    }


# ---- held-out solutions ----------------------------------------------------------------------


def held_out(dataset_dir, split: str = "test", max_solutions: int = 0):
    """(incorrect, correct): incorrect = [{"record", "span", "problem"}] of `split` (the first
    `max_solutions`, 0 = all); correct = {problem: correct records} for the pairwise accuracy."""
    path, meta = resolve_split(dataset_dir, split)
    recs = JsonlRecords(path)
    incorrect, correct = [], {}
    for pid, info in load_problem_index_map(meta).items():
        cs = [recs[i] for i in info.get("correct_indices") or []]
        if not cs:
            continue
        correct[pid] = cs
        for i in info.get("incorrect_indices") or []:
            r = recs[i]
            span = (r.get("metadata") or {}).get("mutated_span")
            if span is None:
                span = mutated_span(r["output"], [c["output"] for c in cs])
            incorrect.append({"record": r, "span": tuple(int(x) for x in span), "problem": pid})
    if max_solutions:
        incorrect = incorrect[:max_solutions]
    return incorrect, correct


def encode(tokenizer, records, max_length: int, append_eos: bool):
    """Collator batch `{input_ids, attention_mask, labels, is_correct}` `[N, L]` and each row's
    character offsets into its response (`[L, 2]`, (0, 0) where there is no character)."""
    batch = AlpacaCollator(tokenizer, max_length=max_length, append_eos=append_eos)(records)
    length = batch["input_ids"].shape[1]
    offsets = np.zeros((len(records), length, 2), np.int64)
    for r, rec in enumerate(records):
        head = _prompt(rec) + RESPONSE_HEADER
        enc = tokenizer(head + rec["output"], add_special_tokens=True, return_offsets_mapping=True)
        ids = list(enc["input_ids"])[:length]
        if ids != list(batch["input_ids"][r, : len(ids)]):
            raise ValueError("credit: offset tokenisation differs from the collator's")
        off = np.asarray(enc["offset_mapping"], np.int64)[:length] - len(head)
        off = np.where(off < 0, 0, off)  # prompt tokens (masked anyway)
        offsets[r, : len(ids)] = off
    return batch, offsets


def _forward(critic, ids, am, labels, rewards, *, wc):
    """values → (−δ, advantages, v̄, loss mask) for one padded batch (the verifiable formulas)."""
    m = ops.loss_mask_of(labels, am)
    v = critic_values(critic, ids, am)
    td = ops.compute_td_errors(v, rewards, m, wc.gamma, wc.initial_value)
    adv = advantages(v, rewards, m, wc)
    return -td, adv, ops.sequence_mean_value(v, m), m


def run_critic(critic, batch, wc, batch_size: int):
    """(neg_td, advantages, seq_mean_value, loss_mask) numpy over all rows, fixed-shape batches."""
    fwd = nnx.jit(partial(_forward, wc=wc))
    n = batch["input_ids"].shape[0]
    outs = []
    for lo in range(0, n, batch_size):
        sl = {k: v[lo : lo + batch_size] for k, v in batch.items()}
        pad = batch_size - sl["input_ids"].shape[0]
        if pad:
            sl = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in sl.items()}
        o = fwd(
            critic,
            jnp.asarray(sl["input_ids"]),
            jnp.asarray(sl["attention_mask"]),
            jnp.asarray(sl["labels"]),
            jnp.asarray(sl["is_correct"]),
        )
        outs.append([np.asarray(x)[: batch_size - pad] for x in o])
    return [np.concatenate([o[i] for o in outs]) for i in range(4)]


def measure(
    verifiable_config, *, split: str = "test", batch_size: int = 16, max_solutions: int = 0
) -> dict:
    """Critic credit of `models.value_model.path` (a verifiable config: its critic,
    data, weighting). Returns per-token arrays (score, weight, inside, solution) + summary."""
    c = verifiable_config
    tok = load_tokenizer(specs.tokenizer(c.models.policy))
    wc = WeightingConfig.from_config(c)
    L, eos = int(c.dataset.max_length), bool(c.data.append_eos)
    incorrect, correct = held_out(c.dataset.path, split, max_solutions)
    if not incorrect:
        raise ValueError(f"critic credit: no incorrect solutions in split {split!r}")
    critic = verifiable.load_critic(c, None)
    batch, offsets = encode(tok, [s["record"] for s in incorrect], L, eos)
    neg_td, adv, vbar_neg, m = run_critic(critic, batch, wc, batch_size)
    w = np.asarray(batch_weights(adv, m, wc)[0])
    score, weight, inside, solution = [], [], [], []
    for r, sol in enumerate(incorrect):
        pool = (m[r] > 0) & (offsets[r, :, 1] > offsets[r, :, 0])
        score.append(neg_td[r][pool])
        weight.append(w[r][pool])
        inside.append(token_inside(offsets[r][pool], sol["span"]))
        solution.append(np.full(int(pool.sum()), r, np.int32))
    # pairwise accuracy: every (correct, incorrect) pair of a held-out problem
    pids = sorted({s["problem"] for s in incorrect})
    cor = [(p, rec) for p in pids for rec in correct[p]]
    cbatch, _ = encode(tok, [rec for _, rec in cor], L, eos)
    vbar_pos = run_critic(critic, cbatch, wc, batch_size)[2]
    wins = [
        float(vp > vn)
        for (p, _), vp in zip(cor, vbar_pos)
        for s, vn in zip(incorrect, vbar_neg)
        if s["problem"] == p
    ]
    arrays = {
        "score": np.concatenate(score).astype(np.float32),
        "weight": np.concatenate(weight).astype(np.float32),
        "inside": np.concatenate(inside),
        "solution": np.concatenate(solution),
    }
    summary = summarize(arrays["score"], arrays["weight"], arrays["inside"])
    summary.update(
        n_solutions=len(incorrect),
        n_pairs=len(wins),
        pairwise_accuracy=float(np.mean(wins)) if wins else float("nan"),
        split=split,
    )
    return {"arrays": arrays, "summary": summary}
