"""Multi-token-prediction cross entropy (dense logits) and the NTP loss for reference tuning.

Head k (1-based) at source position t predicts token t+k: it scores `logits[:, t, k-1]` against
`labels[:, t+k]` under the mask `attention_mask[:, t+k] · (labels[:, t+k] != -100)`.
Per head: Σ(ce·w·m)/Σm (normalised by the valid-token count, not by Σw); the loss is the mean over
heads with ≥ 1 valid token (0 if none). Everything is float32 whatever the logits dtype.
Packed rows (`segment_ids` `[B,S]`, 0 = padding): the mask also needs segment_ids[t+k] =
segment_ids[t], so no head ever predicts a token of the next packed sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.ops._utils import IGNORE_INDEX, token_ce
from wmtp_jax.ops.segments import as_segments, same_segment_ahead


def _shift_pad(x: jax.Array, k: int, fill) -> jax.Array:
    """x[:, k:] right-padded with `fill` back to length S (all `fill` when k >= S)."""
    s = x.shape[1]
    tail = x[:, min(k, s) :]
    pad = jnp.full((x.shape[0], s - tail.shape[1]) + x.shape[2:], fill, x.dtype)
    return jnp.concatenate([tail, pad], axis=1)


def align_head_targets(
    labels: jax.Array,
    attention_mask: jax.Array,
    n_future: int,
    weights: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
):
    """Targets, masks and weights of every head aligned at the *source* position t.

    Returns `targets [B,S,K]` int32 (IGNORE_INDEX where invalid), `mask [B,S,K]` f32 and
    `weights [B,S,K]` f32 under stop_gradient (ones when `weights` is None). 2-D weights `[B,S]`
    index the predicted token (t+k); 3-D `[B,S,K']` (K' >= K) index the source position t.
    With `segment_ids` `[B,S]` head k's mask at t is also 0 unless seg[t+k] = seg[t] ≠ 0.
    """
    labels = jnp.asarray(labels)
    b, s = labels.shape
    if tuple(attention_mask.shape) != (b, s):
        raise ValueError(
            f"attention_mask: expected shape {(b, s)} like labels, got {attention_mask.shape}"
        )
    am = jnp.asarray(attention_mask).astype(jnp.float32)
    valid = (labels != IGNORE_INDEX).astype(jnp.float32) * am
    if weights is not None:
        weights = jax.lax.stop_gradient(jnp.asarray(weights)).astype(jnp.float32)
        if weights.ndim == 2 and weights.shape != (b, s):
            raise ValueError(f"weights: 2-D weights must be [B,S]={(b, s)}, got {weights.shape}")
        if weights.ndim == 3 and (weights.shape[:2] != (b, s) or weights.shape[2] < n_future):
            raise ValueError(
                f"weights: 3-D weights must be [B,S,K>={n_future}]=({b},{s},..), "
                f"got {weights.shape}"
            )
        if weights.ndim not in (2, 3):
            raise ValueError(f"weights: expected [B,S] or [B,S,K], got {weights.shape}")
    tgts, masks, ws = [], [], []
    for k in range(1, n_future + 1):
        tgts.append(_shift_pad(labels.astype(jnp.int32), k, IGNORE_INDEX))
        mk = _shift_pad(valid, k, 0.0)
        if segment_ids is not None:
            mk = mk * same_segment_ahead(as_segments(segment_ids, (b, s)), k)
        masks.append(mk)
        if weights is None:
            ws.append(jnp.ones((b, s), jnp.float32))
        elif weights.ndim == 2:
            ws.append(_shift_pad(weights, k, 0.0))
        else:
            ws.append(weights[:, :, k - 1])
    return jnp.stack(tgts, -1), jnp.stack(masks, -1), jnp.stack(ws, -1)


def reduce_head_losses(ce: jax.Array, mask: jax.Array, weights: jax.Array) -> dict:
    """ce, mask, weights `[B,S,K]` aligned at the source position -> the loss dict.

    Keys: weighted_ce_loss, unweighted_ce_loss (scalars), head_weighted_ce_loss,
    head_unweighted_ce_loss, head_valid_tokens, head_ce_metric (`[K]`; the logged per-head
    unweighted CE, equal to head_unweighted_ce_loss up to rounding), n_valid_heads.
    """
    on = mask > 0
    ce = jnp.where(on, ce, 0.0)  # keeps garbage at masked positions out of the sums
    n = jnp.sum(mask, axis=(0, 1))
    denom = jnp.maximum(n, 1.0)
    head_w = jnp.sum(jnp.where(on, ce * weights * mask, 0.0), axis=(0, 1)) / denom
    head_u = jnp.sum(ce * mask, axis=(0, 1)) / denom
    counted = (n > 0).astype(jnp.float32)
    n_heads = jnp.sum(counted)
    norm = jnp.maximum(n_heads, 1.0)
    return {
        "weighted_ce_loss": jnp.sum(head_w * counted) / norm,
        "unweighted_ce_loss": jnp.sum(head_u * counted) / norm,
        "head_weighted_ce_loss": head_w,
        "head_unweighted_ce_loss": head_u,
        "head_valid_tokens": n,
        "n_valid_heads": n_heads,
        # the logged per-head CE is its own reduction (a dot): exposing head_u as an output
        # would change how XLA fuses the loss's reduction and move the loss by an ulp
        "head_ce_metric": jnp.einsum("bsk,bsk->k", ce, mask) / denom,
    }


def weigh_heads(out: dict, head_weights) -> dict:
    """The loss dict with its two scalar losses re-reduced over heads with `head_weights` `[K]`
    (≥ 0, not all 0): Σ_k c_k·h_k·L_k / Σ_k c_k·h_k, c_k = 1 if head k has a valid token.
    h = ones gives the same values (the mean over counted heads); None returns `out` as it is."""
    if head_weights is None:
        return out
    h = jnp.asarray(head_weights, jnp.float32)
    k = out["head_unweighted_ce_loss"].shape[0]
    if h.shape != (k,):
        raise ValueError(f"head_weights: expected shape ({k},), got {h.shape}")
    c = (out["head_valid_tokens"] > 0).astype(jnp.float32) * h
    norm = jnp.maximum(jnp.sum(c), 1e-30)
    return dict(
        out,
        weighted_ce_loss=jnp.sum(out["head_weighted_ce_loss"] * c) / norm,
        unweighted_ce_loss=jnp.sum(out["head_unweighted_ce_loss"] * c) / norm,
    )


def head_metrics(out: dict) -> dict:
    """{"ce_head_<k>": unweighted CE of head k} (float32 scalars) from a loss dict."""
    per_head = out["head_ce_metric"].astype(jnp.float32)
    return {f"ce_head_{k}": per_head[k] for k in range(per_head.shape[0])}


def compute_mtp_ce_loss(
    logits: jax.Array,
    labels: jax.Array,
    attention_mask: jax.Array,
    weights: jax.Array | None = None,
    n_future: int | None = None,
    segment_ids: jax.Array | None = None,
) -> dict:
    """Weighted / unweighted MTP cross entropy from dense logits `[B,S,K,V]`.

    labels, attention_mask `[B,S]`; weights None, `[B,S]` (predicted-token index t+k) or `[B,S,K]`
    (source index t), never differentiated. `n_future` uses the first n_future heads (default K).
    segment_ids `[B,S]` (packed rows): targets never cross a segment end.
    Returns {"weighted_ce_loss", "unweighted_ce_loss", per-head arrays, ...}
    (see reduce_head_losses).
    """
    if logits.ndim != 4:
        raise ValueError(f"logits: expected [B,S,K,V], got {logits.shape}")
    b, s, k_all, _ = logits.shape
    if tuple(labels.shape) != (b, s):
        raise ValueError(
            f"labels: expected shape {(b, s)} from logits {logits.shape}, got {labels.shape}"
        )
    n_future = k_all if n_future is None else int(n_future)
    if not 1 <= n_future <= k_all:
        raise ValueError(f"n_future={n_future} must be in [1, {k_all}] (logits {logits.shape})")
    targets, mask, w = align_head_targets(labels, attention_mask, n_future, weights, segment_ids)
    # one CE over [B, S, K, V]: slicing per head and stacking would copy the logits once more
    # and pad each head's gradient back to the full [B, S, K, V] (3x less memory traffic)
    ce = token_ce(logits if n_future == k_all else logits[:, :, :n_future], targets)
    return reduce_head_losses(ce, mask, w)


def compute_ntp_loss(
    logits: jax.Array,
    labels: jax.Array,
    attention_mask: jax.Array,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Next-token CE for `[B,S,V]` logits: logits[:, :-1] vs labels[:, 1:], mask
    (labels[:, 1:] != -100)·attention_mask[:, 1:] (· same segment with `segment_ids`), mean over
    valid tokens (0 if none)."""
    if logits.ndim != 3:
        raise ValueError(f"logits: expected [B,S,V], got {logits.shape}")
    out = compute_mtp_ce_loss(logits[:, :, None], labels, attention_mask, segment_ids=segment_ids)
    return out["unweighted_ce_loss"]
