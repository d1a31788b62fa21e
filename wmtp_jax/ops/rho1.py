"""Rho-1 token selection for MTP heads (reference-model excess loss), no gradient.

Head k (1-based) at source t predicts x_{t+k}; the reference's next-token logits at t+k−1 predict
the same token. Per head, over all valid tokens of the batch (pooled across sequences):
score = CE_policy − CE_ref (signed) | |CE_policy − CE_ref| (absolute) | CE_ref (difficult);
keep score ≥ quantile(valid scores, 1 − k_percent) (linear interpolation, ties kept).
Packed rows (`segment_ids`): a (source, head) pair whose target lies in another segment is not
valid, so the pooled quantile sees exactly the unpacked batch's valid tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.ops._utils import IGNORE_INDEX, as_mask, token_ce
from wmtp_jax.ops.mtp_loss import _shift_pad
from wmtp_jax.ops.segments import as_segments, same_segment_ahead

MODES = ("signed", "absolute", "difficult")


def masked_quantile(x: jax.Array, valid: jax.Array, q) -> jax.Array:
    """torch.quantile (linear) of x[valid] along the last axis; NaN-free 0 when nothing is valid."""
    n = jnp.sum(valid, axis=-1)
    xs = jnp.sort(jnp.where(valid, x, jnp.inf), axis=-1)
    pos = (jnp.maximum(n, 1) - 1).astype(jnp.float32) * q
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    x_lo = jnp.take_along_axis(xs, lo[..., None], axis=-1)[..., 0]
    x_hi = jnp.take_along_axis(xs, hi[..., None], axis=-1)[..., 0]
    out = x_lo + (pos - lo) * (x_hi - x_lo)
    return jnp.where(n > 0, out, 0.0)


def _check_inputs(policy_logits, ref_logits, labels, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"rho1_mode: expected one of {MODES}, got {mode!r}")
    if policy_logits.ndim != 4 or ref_logits.ndim != 3:
        raise ValueError(
            f"policy_logits [B,S,K,V] / ref_logits [B,S,V] expected, got "
            f"{policy_logits.shape} / {ref_logits.shape}"
        )
    b, s, _, v = policy_logits.shape
    if ref_logits.shape != (b, s, v) or tuple(labels.shape) != (b, s):
        raise ValueError(
            f"ref_logits {ref_logits.shape} / labels {labels.shape} do not match "
            f"policy_logits {policy_logits.shape}"
        )


def _head_stats(i: int, sel, valid, ce_pol, ce_ref, thr) -> dict:
    """Head i's count (selected), valid, mean policy / reference CE, excess and threshold."""
    n = jnp.sum(valid.astype(jnp.float32))
    mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(n, 1.0)
    return {
        f"head_{i}_count": jnp.sum(sel),
        f"head_{i}_valid": n,
        f"head_{i}_ce_mean": mean(ce_pol),
        f"head_{i}_ref_ce_mean": mean(ce_ref),
        f"head_{i}_excess_mean": mean(ce_pol - ce_ref),
        f"head_{i}_threshold": thr,
    }


def compute_mtp_selective_weights(
    policy_logits,
    ref_logits,
    labels,
    loss_mask,
    k_percent=0.6,
    mode: str = "signed",
    segment_ids=None,
):
    """policy_logits `[B,S,K,V]`, ref_logits `[B,S,V]`, labels/loss_mask `[B,S]` →
    (weights `[B,S,K]` float32 in {0,1} indexed by source position, stats dict of scalars).

    Stats: head_{i}_count (selected), head_{i}_valid, head_{i}_ce_mean (policy CE),
    head_{i}_ref_ce_mean, head_{i}_excess_mean (CE_policy − CE_ref), head_{i}_threshold,
    selection_ratio (selected / Σ_heads valid), avg_heads_per_position (selected / Σloss_mask).
    """
    _check_inputs(policy_logits, ref_logits, labels, mode)
    b, s, k_heads, _ = policy_logits.shape
    policy_logits = jax.lax.stop_gradient(policy_logits)
    ref_logits = jax.lax.stop_gradient(ref_logits)
    labels = jnp.asarray(labels).astype(jnp.int32)
    m = as_mask(loss_mask, (b, s))

    # reference NTP CE: ref_ce[t'] scores ref_logits[t'] against labels[t'+1]
    ref_ce = token_ce(ref_logits, _shift_pad(labels, 1, IGNORE_INDEX))
    weights, stats = [], {}
    total_sel = jnp.zeros((), jnp.float32)
    total_valid = jnp.zeros((), jnp.float32)
    for k in range(1, k_heads + 1):
        tgt = _shift_pad(labels, k, IGNORE_INDEX)
        valid = (_shift_pad(m, k, 0.0) > 0) & (tgt != IGNORE_INDEX)
        if segment_ids is not None:
            valid = valid & same_segment_ahead(as_segments(segment_ids, (b, s)), k)
        ce_pol = token_ce(policy_logits[:, :, k - 1], tgt)
        ce_ref = _shift_pad(ref_ce, k - 1, 0.0)  # ref position t+k-1 for source t
        excess = ce_pol - ce_ref
        score = {"signed": excess, "absolute": jnp.abs(excess), "difficult": ce_ref}[mode]
        thr = masked_quantile(score.reshape(-1), valid.reshape(-1), 1.0 - k_percent)
        sel = ((score >= thr) & valid).astype(jnp.float32)
        weights.append(sel)
        stats.update(_head_stats(k - 1, sel, valid, ce_pol, ce_ref, thr))
        total_sel += jnp.sum(sel)
        total_valid += stats[f"head_{k - 1}_valid"]
    stats["selection_ratio"] = total_sel / jnp.maximum(total_valid, 1.0)
    stats["avg_heads_per_position"] = total_sel / jnp.maximum(jnp.sum(m), 1.0)
    return jnp.stack(weights, -1), stats
