"""TD errors, GAE advantages / targets and λ-returns as reverse `lax.scan`s over time.

Values `[B,S,1]` or `[B,S]` (any dtype) are read under stop_gradient and computed in float32;
rewards are a scalar, `[B]` or `[B,1]`; all outputs are float32 `[B,S]`. T* denotes the last
valid (loss_mask = 1) position of a row (0 for an empty row, whose outputs are all 0).

Packed rows: with `segment_ids` `[B,S]` (1, 2, ... per packed sequence, 0 = padding; see
`wmtp_jax.ops.segments`) every segment is treated as a row of its own: v_{−1} = initial_value at
each segment start, T* is the segment's last valid position, the reverse scans restart at each
segment end; rewards may then also be per token `[B,S]` (the reward of the token's sequence).
On valid tokens the outputs equal the unpacked ones of every sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.ops import segments as sg
from wmtp_jax.ops._utils import as_mask, as_rewards, as_values, last_valid_index


def _prepare(value_logits, rewards, loss_mask):
    v = jax.lax.stop_gradient(as_values(value_logits, "value_logits"))
    m = as_mask(loss_mask, v.shape)
    return v, as_rewards(rewards, v.shape[0]), m


def _prepare_segments(value_logits, rewards, loss_mask, segment_ids):
    """(v, per-token rewards `[B,S]`, mask, segment_ids) for packed rows."""
    v = jax.lax.stop_gradient(as_values(value_logits, "value_logits"))
    m = as_mask(loss_mask, v.shape)
    seg = sg.as_segments(segment_ids, v.shape)
    r = jnp.asarray(rewards, jnp.float32)
    r = r if r.shape == v.shape else jnp.broadcast_to(as_rewards(r, v.shape[0])[:, None], v.shape)
    return v, r, m, seg


def _segment_deltas(v, seg, gamma, initial_value):
    """δ_t = γ·v_t − v_{t−1}, with v_{t−1} = initial_value at every segment start."""
    prev = jnp.concatenate([jnp.zeros((v.shape[0], 1), v.dtype), v[:, :-1]], axis=1)
    prev = jnp.where(sg.segment_starts(seg), jnp.asarray(initial_value, v.dtype), prev)
    return gamma * v - prev


def _token_deltas(v: jax.Array, gamma, initial_value) -> jax.Array:
    """δ_t = γ·v_t − v_{t−1}, v_{−1} = initial_value."""
    prev = jnp.concatenate([jnp.full((v.shape[0], 1), initial_value, v.dtype), v[:, :-1]], axis=1)
    return gamma * v - prev


def _discounted_reverse_sum(delta: jax.Array, active: jax.Array, decay) -> jax.Array:
    """A_t = δ_t + decay·A_{t+1} on active positions (A = 0 elsewhere), scanned backwards over S."""

    def step(a_next, xs):
        d, act = xs
        a = jnp.where(act, d + decay * a_next, 0.0)
        return a, a

    _, a = jax.lax.scan(
        step, jnp.zeros(delta.shape[0], delta.dtype), (delta.T, active.T), reverse=True
    )
    return a.T


def compute_td_errors(
    value_logits, rewards, loss_mask, gamma=1.0, initial_value=0.5, segment_ids=None
) -> jax.Array:
    """δ_0 = γv_0 − initial_value, δ_t = γv_t − v_{t−1}, terminal δ_{T*} = R − v_{T*}; × loss_mask
    (per segment with `segment_ids`).

    Example: v = [0.5, 0.7, 0.9], R = 1 → [0.0, 0.2, 0.1].
    """
    if segment_ids is not None:
        v, r, m, seg = _prepare_segments(value_logits, rewards, loss_mask, segment_ids)
        is_term, _ = sg.last_valid_in_segment(m, seg)
        return jnp.where(is_term, r - v, _segment_deltas(v, seg, gamma, initial_value)) * m
    v, r, m = _prepare(value_logits, rewards, loss_mask)
    delta = _token_deltas(v, gamma, initial_value)
    term = last_valid_index(m)
    is_term = jnp.arange(v.shape[1])[None, :] == term[:, None]
    return jnp.where(is_term, r[:, None] - v, delta) * m


def compute_td_targets(
    value_logits, rewards, loss_mask, gamma=1.0, lam=0.0, initial_value=0.5, segment_ids=None
) -> jax.Array:
    """GAE targets v_t + A_t with δ_t = γv_t − v_{t−1} (v_{−1} = initial_value) for t = T*..0
    (prompt included, terminal included), A_t = δ_t + γλ·A_{t+1}, A_{T*+1} = 0; × loss_mask.

    λ = γ = 1 is Monte Carlo: targets = R · loss_mask (the original's shortcut; rewards are
    otherwise unused). gamma/lam may be traced scalars. Per segment with `segment_ids`.
    """
    monte_carlo = jnp.logical_and(jnp.asarray(lam) == 1.0, jnp.asarray(gamma) == 1.0)
    if segment_ids is not None:
        v, r, m, seg = _prepare_segments(value_logits, rewards, loss_mask, segment_ids)
        _, active = sg.last_valid_in_segment(m, seg)
        delta = _segment_deltas(v, seg, gamma, initial_value)
        adv = sg.segment_reverse_sum(delta, active, sg.segment_ends(seg), gamma * lam)
        return jnp.where(monte_carlo, r, v + adv) * m
    v, r, m = _prepare(value_logits, rewards, loss_mask)
    active = jnp.arange(v.shape[1])[None, :] <= last_valid_index(m)[:, None]
    adv = _discounted_reverse_sum(_token_deltas(v, gamma, initial_value), active, gamma * lam)
    return jnp.where(monte_carlo, r[:, None], v + adv) * m


def compute_gae_advantage(
    value_logits, rewards, loss_mask, gamma=1.0, lam=0.95, initial_value=0.5, segment_ids=None
) -> jax.Array:
    """A_t = (target_t − v_t) · loss_mask = Σ_{l=0}^{T*−t} (γλ)^l δ_{t+l} on valid tokens
    (R − v_t when λ = γ = 1). The verifiable pipeline's advantage (per segment with
    `segment_ids`)."""
    v = jax.lax.stop_gradient(as_values(value_logits, "value_logits"))
    m = as_mask(loss_mask, v.shape)
    targets = compute_td_targets(
        value_logits, rewards, loss_mask, gamma, lam, initial_value, segment_ids
    )
    return (targets - v) * m


def compute_lambda_return(
    values,
    rewards,
    loss_mask,
    gamma=1.0,
    lam=0.95,
    output_end_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """λ-return targets G with G_{T*} = R and G_t = (1−λ)γV_{t'} + λγG_{t'} (t' the next chain
    position), zeros off the chain; rows without loss-mask tokens are all 0.

    With `output_end_mask` the chain is every position 0..T* where T* is the first end-mask index
    (prompt included; rows without an end position are 0). Without it the chain is the loss-mask
    positions and T* the last of them. With `segment_ids` (loss-mask chain only) every segment
    is its own chain: the scan restarts at each segment end.
    """
    if segment_ids is not None:
        if output_end_mask is not None:
            raise ValueError("compute_lambda_return: output_end_mask with segment_ids unsupported")
        return _segment_lambda_return(values, rewards, loss_mask, gamma, lam, segment_ids)
    v, r, m = _prepare(values, rewards, loss_mask)
    has_tokens = jnp.any(m > 0, axis=1, keepdims=True)
    if output_end_mask is None:
        chain = m > 0
    else:
        e = as_mask(output_end_mask, v.shape, "output_end_mask") > 0
        end = jnp.argmax(e, axis=1)
        chain = (jnp.arange(v.shape[1])[None, :] <= end[:, None]) & jnp.any(
            e, axis=1, keepdims=True
        )
    chain = chain & has_tokens

    def step(carry, xs):
        g_next, v_next, seen = carry
        v_t, c_t = xs
        g = jnp.where(seen, (1.0 - lam) * gamma * v_next + lam * gamma * g_next, r)
        out = jnp.where(c_t, g, 0.0)
        carry = (jnp.where(c_t, g, g_next), jnp.where(c_t, v_t, v_next), seen | c_t)
        return carry, out

    zeros = jnp.zeros_like(r)
    _, g = jax.lax.scan(
        step, (zeros, zeros, jnp.zeros(r.shape, bool)), (v.T, chain.T), reverse=True
    )
    return g.T


def _segment_lambda_return(values, rewards, loss_mask, gamma, lam, segment_ids):
    """compute_lambda_return's loss-mask chain, restarted at every segment end."""
    v, r, m, seg = _prepare_segments(values, rewards, loss_mask, segment_ids)
    chain = m > 0
    ends = sg.segment_ends(seg)

    def step(carry, xs):
        v_t, c_t, r_t, end_t = xs
        g_next, v_next, seen = (jnp.where(end_t, jnp.zeros_like(x), x) for x in carry)
        seen = seen > 0
        g = jnp.where(seen, (1.0 - lam) * gamma * v_next + lam * gamma * g_next, r_t)
        out = jnp.where(c_t, g, 0.0)
        new = (jnp.where(c_t, g, g_next), jnp.where(c_t, v_t, v_next), (seen | c_t) * 1.0)
        return new, out

    z = jnp.zeros(v.shape[0], jnp.float32)
    _, g = jax.lax.scan(step, (z, z, z), (v.T, chain.T, r.T, ends.T), reverse=True)
    return g.T
