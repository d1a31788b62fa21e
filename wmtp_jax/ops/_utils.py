"""Shared helpers for wmtp_jax.ops: shape checks, float32 casts, masked reductions, token CE."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def loss_mask_of(labels: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Float32 `[B,S]`: 1 where the label is a target (not IGNORE_INDEX) and the token is real."""
    return ((labels != IGNORE_INDEX) & (attention_mask > 0)).astype(jnp.float32)


def as_values(x: jax.Array, name: str = "values") -> jax.Array:
    """[B,S,1] or [B,S] -> float32 [B,S]."""
    x = jnp.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape [B,S] or [B,S,1], got {x.shape}")
    return x.astype(jnp.float32)


def as_mask(mask: jax.Array, shape: tuple, name: str = "loss_mask") -> jax.Array:
    """Any-dtype mask -> float32 of `shape` (checked)."""
    mask = jnp.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1 and len(shape) == 2:
        mask = mask[..., 0]
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(mask.shape)}")
    return mask.astype(jnp.float32)


def as_rewards(rewards, batch: int) -> jax.Array:
    """Scalar, [B] or [B,1] -> float32 [B]."""
    r = jnp.asarray(rewards, jnp.float32)
    if r.ndim == 0:
        return jnp.broadcast_to(r, (batch,))
    if r.size != batch or (r.ndim == 2 and r.shape[1] != 1) or r.ndim > 2:
        raise ValueError(f"rewards: expected shape [B]={batch} or [B,1], got {r.shape}")
    return r.reshape(batch)


def token_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-token cross entropy in float32: logsumexp(z) - z[label].

    Ignored labels (<0) score 0-safe.
    """
    z = logits.astype(jnp.float32)
    safe = jnp.where(labels < 0, 0, labels).astype(jnp.int32)
    picked = jnp.take_along_axis(z, safe[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(z, axis=-1) - picked


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ(x·m)/max(Σm, 1) over all entries (0 when empty)."""
    return jnp.sum(jnp.where(mask > 0, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_std(x: jax.Array, mask: jax.Array, ddof: int = 1) -> jax.Array:
    """Masked std (ddof=1: unbiased, torch.std). 0 when fewer than ddof+1 entries."""
    n = jnp.sum(mask)
    mu = masked_mean(x, mask)
    ss = jnp.sum(jnp.where(mask > 0, (x - mu) ** 2, 0.0))
    return jnp.where(n > ddof, jnp.sqrt(ss / jnp.maximum(n - ddof, 1.0)), 0.0)


def masked_min_max(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked min and max (0 when empty)."""
    valid = mask > 0
    any_valid = jnp.any(valid)
    lo = jnp.min(jnp.where(valid, x, jnp.inf))
    hi = jnp.max(jnp.where(valid, x, -jnp.inf))
    return jnp.where(any_valid, lo, 0.0), jnp.where(any_valid, hi, 0.0)


def last_valid_index(mask: jax.Array) -> jax.Array:
    """[B,S] -> [B] int32: index of the last mask=1 position (0 for an empty row)."""
    idx = jnp.arange(mask.shape[1], dtype=jnp.int32)[None, :]
    return jnp.max(jnp.where(mask > 0, idx, 0), axis=1)
