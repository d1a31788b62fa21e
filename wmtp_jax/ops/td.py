"""TD errors, GAE advantages / targets and λ-returns as reverse `lax.scan`s over time.

Values `[B,S,1]` or `[B,S]` (any dtype) are read under stop_gradient and computed in float32;
rewards are a scalar, `[B]` or `[B,1]`; all outputs are float32 `[B,S]`. T* denotes the last
valid (loss_mask = 1) position of a row (0 for an empty row, whose outputs are all 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.ops._utils import as_mask, as_rewards, as_values, last_valid_index


def _prepare(value_logits, rewards, loss_mask):
    v = jax.lax.stop_gradient(as_values(value_logits, "value_logits"))
    m = as_mask(loss_mask, v.shape)
    return v, as_rewards(rewards, v.shape[0]), m


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


def compute_td_errors(value_logits, rewards, loss_mask, gamma=1.0, initial_value=0.5) -> jax.Array:
    """δ_0 = γv_0 − initial_value, δ_t = γv_t − v_{t−1}, terminal δ_{T*} = R − v_{T*}; × loss_mask.

    Example: v = [0.5, 0.7, 0.9], R = 1 → [0.0, 0.2, 0.1].
    """
    v, r, m = _prepare(value_logits, rewards, loss_mask)
    delta = _token_deltas(v, gamma, initial_value)
    term = last_valid_index(m)
    is_term = jnp.arange(v.shape[1])[None, :] == term[:, None]
    return jnp.where(is_term, r[:, None] - v, delta) * m


def compute_td_targets(
    value_logits, rewards, loss_mask, gamma=1.0, lam=0.0, initial_value=0.5
) -> jax.Array:
    """GAE targets v_t + A_t with δ_t = γv_t − v_{t−1} (v_{−1} = initial_value) for t = T*..0
    (prompt included, terminal included), A_t = δ_t + γλ·A_{t+1}, A_{T*+1} = 0; × loss_mask.

    λ = γ = 1 is Monte Carlo: targets = R · loss_mask (the original's shortcut; rewards are
    otherwise unused). gamma/lam may be traced scalars.
    """
    v, r, m = _prepare(value_logits, rewards, loss_mask)
    active = jnp.arange(v.shape[1])[None, :] <= last_valid_index(m)[:, None]
    adv = _discounted_reverse_sum(_token_deltas(v, gamma, initial_value), active, gamma * lam)
    monte_carlo = jnp.logical_and(jnp.asarray(lam) == 1.0, jnp.asarray(gamma) == 1.0)
    return jnp.where(monte_carlo, r[:, None], v + adv) * m


def compute_gae_advantage(
    value_logits, rewards, loss_mask, gamma=1.0, lam=0.95, initial_value=0.5
) -> jax.Array:
    """A_t = (target_t − v_t) · loss_mask = Σ_{l=0}^{T*−t} (γλ)^l δ_{t+l} on valid tokens
    (R − v_t when λ = γ = 1). The verifiable pipeline's advantage."""
    v, _, m = _prepare(value_logits, rewards, loss_mask)
    targets = compute_td_targets(value_logits, rewards, loss_mask, gamma, lam, initial_value)
    return (targets - v) * m


def compute_lambda_return(
    values, rewards, loss_mask, gamma=1.0, lam=0.95, output_end_mask: jax.Array | None = None
) -> jax.Array:
    """λ-return targets G with G_{T*} = R and G_t = (1−λ)γV_{t'} + λγG_{t'} (t' the next chain
    position), zeros off the chain; rows without loss-mask tokens are all 0.

    With `output_end_mask` the chain is every position 0..T* where T* is the first end-mask index
    (prompt included; rows without an end position are 0). Without it the chain is the loss-mask
    positions and T* the last of them.
    """
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
