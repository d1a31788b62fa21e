"""Segment-id helpers for packed rows: several sequences per row, each a *segment*.

segment_ids `[B,S]` int: 1, 2, ... per packed sequence, 0 on padding (the convention of
`wmtp_jax.ops.attention`). A segment is a maximal run of equal ids in a row; a segment end
behaves exactly like the end of an unpacked row (the TD / GAE / λ-return scans reset there,
MTP targets never cross it). Every function is pure, static-shape and jit/grad/vmap-safe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def as_segments(segment_ids: jax.Array, shape: tuple | None = None) -> jax.Array:
    """int32 `[B,S]` (shape checked against `shape` when given)."""
    seg = jnp.asarray(segment_ids).astype(jnp.int32)
    if seg.ndim != 2 or (shape is not None and tuple(seg.shape) != tuple(shape)):
        raise ValueError(f"segment_ids: expected shape {shape or '[B,S]'}, got {seg.shape}")
    return seg


def segment_starts(segment_ids: jax.Array) -> jax.Array:
    """bool `[B,S]`: t = 0 or seg[t] ≠ seg[t−1]."""
    seg = as_segments(segment_ids)
    first = jnp.ones((seg.shape[0], 1), bool)
    return jnp.concatenate([first, seg[:, 1:] != seg[:, :-1]], axis=1)


def segment_ends(segment_ids: jax.Array) -> jax.Array:
    """bool `[B,S]`: t = S−1 or seg[t+1] ≠ seg[t]."""
    seg = as_segments(segment_ids)
    last = jnp.ones((seg.shape[0], 1), bool)
    return jnp.concatenate([seg[:, 1:] != seg[:, :-1], last], axis=1)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """int32 `[B,S]`: t − (start of t's segment), i.e. 0, 1, ... restarting in every segment
    (padding runs count too; their positions are never used)."""
    seg = as_segments(segment_ids)
    idx = jnp.broadcast_to(jnp.arange(seg.shape[1], dtype=jnp.int32), seg.shape)
    start = jax.lax.cummax(jnp.where(segment_starts(seg), idx, 0), axis=1)
    return idx - start


def same_segment_ahead(segment_ids: jax.Array, k: int) -> jax.Array:
    """bool `[B,S]`: t + k < S and seg[t+k] = seg[t] ≠ 0 (head k at source t stays inside its
    segment)."""
    seg = as_segments(segment_ids)
    b, s = seg.shape
    k = int(k)
    if k <= 0:
        return seg != 0
    if k >= s:
        return jnp.zeros((b, s), bool)
    ahead = jnp.concatenate([seg[:, k:], jnp.zeros((b, k), jnp.int32)], axis=1)
    return (ahead == seg) & (seg != 0)


def last_valid_in_segment(mask: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(is_last, valid_ahead), bool `[B,S]` each, by one reverse scan:

    is_last[t]     : mask[t] = 1 and no later mask = 1 position in t's segment (T* of the segment);
    valid_ahead[t] : some position u ≥ t of t's segment has mask[u] = 1 (i.e. t ≤ T*).
    """
    m = jnp.asarray(mask) > 0
    ends = segment_ends(segment_ids)

    def step(seen, xs):
        m_t, end_t = xs
        seen = jnp.where(end_t, False, seen)
        return seen | m_t, (m_t & ~seen, seen | m_t)

    _, (is_last, ahead) = jax.lax.scan(
        step, jnp.zeros(m.shape[0], bool), (m.T, ends.T), reverse=True
    )
    return is_last.T, ahead.T


def segment_reverse_sum(delta: jax.Array, active: jax.Array, ends: jax.Array, decay) -> jax.Array:
    """A_t = δ_t + decay·A_{t+1} on active positions (0 elsewhere), with A_{t+1} := 0 at segment
    ends (`ends[t]`): the discounted reverse sum of every segment on its own. `[B,S]` float32."""

    def step(a_next, xs):
        d, act, end = xs
        a = jnp.where(act, d + decay * jnp.where(end, 0.0, a_next), 0.0)
        return a, a

    _, a = jax.lax.scan(
        step, jnp.zeros(delta.shape[0], delta.dtype), (delta.T, active.T, ends.T), reverse=True
    )
    return a.T


def segment_sum(x: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """`[B,S]` → `[B, num_segments]`: out[b, j] = Σ_t x[b,t]·[seg[b,t] = j] (ids ≥ num_segments
    dropped; column 0 collects padding)."""
    seg = as_segments(segment_ids, x.shape)
    b = x.shape[0]
    flat = (seg + jnp.arange(b, dtype=jnp.int32)[:, None] * num_segments).reshape(-1)
    flat = jnp.where(seg.reshape(-1) < num_segments, flat, b * num_segments)
    out = jax.ops.segment_sum(x.reshape(-1), flat, num_segments=b * num_segments + 1)
    return out[:-1].reshape(b, num_segments)


def segment_mean(x: jax.Array, mask: jax.Array, segment_ids: jax.Array, num_segments: int):
    """(mean `[B,N]` = Σ(x·m)/max(Σm, 1) per segment, count `[B,N]` = Σm per segment), float32;
    N = num_segments, column 0 = padding."""
    m = jnp.asarray(mask).astype(jnp.float32)
    xs = jnp.where(m > 0, jnp.asarray(x, jnp.float32), 0.0) * m
    total = segment_sum(xs, segment_ids, num_segments)
    count = segment_sum(m, segment_ids, num_segments)
    return total / jnp.maximum(count, 1.0), count


def segments_of(
    segment_ids: jax.Array | None, lengths: jax.Array | None, b: int, s: int
) -> jax.Array | None:
    """Canonical int32 `[B, S]` segment ids (0 = padding) from segment ids and/or lengths."""
    if segment_ids is None and lengths is None:
        return None
    seg = (
        jnp.ones((b, s), jnp.int32)
        if segment_ids is None
        else jnp.asarray(segment_ids).astype(jnp.int32)
    )
    if lengths is not None:
        seg = jnp.where(jnp.arange(s)[None] < jnp.asarray(lengths)[:, None], seg, 0)
    return seg
