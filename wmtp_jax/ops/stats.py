"""Logging statistics (jit-safe, return dicts of float32 scalars; no host sync).

Keys follow the original's MLflow names (`td/mean`, `weight/entropy`, `value/mse`) or, for the
critic diagnostics, the original's dict keys (`pairwise_accuracy`, `mean_abs_td`, ...), which the
critic pipeline prefixes (`train/`, `value/`, `val_`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.ops._utils import as_mask, as_values, masked_mean, masked_min_max, masked_std
from wmtp_jax.ops.critic_loss import MEAN_EPS, pair_mean, pair_values


def _flat_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """A float32 mask of x's shape; a `[B,S]` mask broadcasts over the heads of `[B,S,K]` x."""
    if mask is None:
        return jnp.ones(x.shape, jnp.float32)
    mask = jnp.asarray(mask).astype(jnp.float32)
    if x.ndim == 3 and mask.ndim == 2:
        mask = mask[..., None]
    if mask.shape[:2] != x.shape[:2]:
        raise ValueError(f"mask: shape {mask.shape} does not match {x.shape}")
    return jnp.broadcast_to(mask, x.shape)


def _moments(x, mask, prefix: str) -> dict:
    x = jnp.asarray(x).astype(jnp.float32)
    m = _flat_mask(x, mask)
    lo, hi = masked_min_max(x, m)
    return {
        f"{prefix}/mean": masked_mean(x, m),
        f"{prefix}/std": masked_std(x, m, ddof=1),
        f"{prefix}/min": lo,
        f"{prefix}/max": hi,
    }


def compute_td_stats(td_errors, loss_mask=None) -> dict:
    """td/mean, td/std (unbiased), td/min, td/max over valid entries (0 when empty)."""
    return _moments(td_errors, loss_mask, "td")


def compute_weight_statistics(weights, loss_mask=None) -> dict:
    """weight/{mean,std,min,max,entropy} over valid entries; `[B,S,K]` weights use the `[B,S]` mask
    on every head. entropy = −mean(w·log(w + 1e-10)) (the original's training metric)."""
    w = jnp.asarray(weights).astype(jnp.float32)
    m = _flat_mask(w, loss_mask)
    out = _moments(w, m, "weight")
    out["weight/entropy"] = masked_mean(-w * jnp.log(w + 1e-10), m)
    return out


def compute_value_function_stats(values, returns, loss_mask=None) -> dict:
    """value/mse (masked mean of (V − G)²), value/mean, value/std, value/return_mean.
    returns: scalar, `[B]`, `[B,1]` or `[B,S]` (e.g. 1.0 for correct solutions)."""
    v = as_values(values)
    g = jnp.asarray(returns, jnp.float32)
    g = g[..., 0] if g.ndim == 3 else (g[:, None] if g.ndim == 1 else g)
    g = jnp.broadcast_to(g, v.shape)
    m = _flat_mask(v, loss_mask)
    return {
        "value/mse": masked_mean((v - g) ** 2, m),
        "value/mean": masked_mean(v, m),
        "value/std": masked_std(v, m, ddof=1),
        "value/return_mean": masked_mean(g, m),
    }


def compute_pairwise_accuracy(
    v_pos, v_neg, mask_pos, mask_neg, valid=None, segment_ids=None
) -> dict:
    """pairwise_accuracy = mean(v̄_pos > v̄_neg), mean_pos, mean_neg, margin, correct_pairs,
    total_pairs (v̄ the masked mean value of each sequence); means over the pairs with
    `valid` = 1 when given (`[B]`, 0 = a padding pair); packed pairs: `segment_ids` = (pos ids,
    neg ids), one pair per segment slot (see pair_values)."""
    pos, neg, valid = pair_values(v_pos, v_neg, mask_pos, mask_neg, valid, segment_ids)
    won = (pos > neg).astype(jnp.float32)
    mean_pos, mean_neg = pair_mean(pos, valid), pair_mean(neg, valid)
    if valid is None:
        correct, total = jnp.sum(won), jnp.asarray(pos.shape[0], jnp.float32)
    else:
        correct = jnp.sum(won * jnp.asarray(valid, jnp.float32))
        total = jnp.sum(jnp.asarray(valid, jnp.float32))
    return {
        "pairwise_accuracy": pair_mean(won, valid),
        "mean_pos": mean_pos,
        "mean_neg": mean_neg,
        "margin": mean_pos - mean_neg,
        "correct_pairs": correct,
        "total_pairs": total,
    }


def compute_token_variance(values, mask) -> jax.Array:
    """Per-sequence masked population variance around the masked mean, averaged over the batch."""
    v = as_values(values)
    m = as_mask(mask, v.shape, "mask")
    n = jnp.sum(m, axis=1, keepdims=True)
    mu = jnp.sum(v * m, axis=1, keepdims=True) / (n + MEAN_EPS)
    return jnp.mean(jnp.sum((v - mu) ** 2 * m, axis=1) / (n[:, 0] + MEAN_EPS))


def compute_td_error_stats(values, mask) -> dict:
    """δ_t = v_{t+1} − v_t where both are valid; per sequence mean_abs_td = Σ|δ|/max(n, 1),
    max_td = max |δ| (0 if none), spikiness = max_td/(mean_abs_td + 1e-8); batch means."""
    v = as_values(values)
    m = as_mask(mask, v.shape, "mask")
    td = jnp.abs(v[:, 1:] - v[:, :-1])
    tm = m[:, 1:] * m[:, :-1]
    mean_abs = jnp.sum(td * tm, axis=1) / jnp.maximum(jnp.sum(tm, axis=1), 1.0)
    max_td = jnp.max(jnp.where(tm > 0, td, 0.0), axis=1, initial=0.0)
    spik = max_td / (mean_abs + MEAN_EPS)
    return {
        "mean_abs_td": jnp.mean(mean_abs),
        "max_td": jnp.mean(max_td),
        "spikiness": jnp.mean(spik),
    }


def compute_position_correlation(values, mask) -> jax.Array:
    """Mean over sequences with ≥ 3 valid tokens of Pearson(v, position) on valid tokens
    (denominator ‖v_c‖·‖p_c‖ + 1e-8); 0 if none. Vectorised over the batch."""
    v = as_values(values)
    m = as_mask(mask, v.shape, "mask")
    pos = jnp.broadcast_to(jnp.arange(v.shape[1], dtype=jnp.float32), v.shape)
    n = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
    vc = (v - jnp.sum(v * m, axis=1, keepdims=True) / n) * m
    pc = (pos - jnp.sum(pos * m, axis=1, keepdims=True) / n) * m
    corr = jnp.sum(vc * pc, axis=1) / (
        jnp.sqrt(jnp.sum(vc * vc, axis=1)) * jnp.sqrt(jnp.sum(pc * pc, axis=1)) + 1e-8
    )
    ok = (jnp.sum(m, axis=1) >= 3).astype(jnp.float32)
    return jnp.sum(corr * ok) / jnp.maximum(jnp.sum(ok), 1.0)
