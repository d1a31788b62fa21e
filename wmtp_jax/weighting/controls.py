"""Control weightings for the WMTP study: the method's weights with their information removed
(`permute`) and ground-truth weights (`oracle`). Both keep the mean weight over the valid tokens
of the batch, so only the placement of the weights differs from `verifiable`.

  permute: w' = w permuted uniformly at random among the batch's valid tokens (same multiset)
  oracle:  w' = c · (1 + (r − 1) · critical) · mask, c = Σ w·mask / Σ (1 + (r − 1)·critical)·mask
           (critical `[B,S]`: tokens where an execution-verified mutant deviates; r = ratio)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONTROLS = ("none", "permute", "oracle")  # weighting.control: the method, or one of the two


def permute_valid(weights, mask, key) -> jax.Array:
    """`weights` `[B,S]` permuted uniformly at random among the positions where `mask` > 0
    (one permutation over the whole batch); masked positions keep their value. Jit-friendly:
    two argsorts, no host loop."""
    w = jnp.asarray(weights, jnp.float32).reshape(-1)
    valid = jnp.asarray(mask).reshape(-1) > 0
    n = w.shape[0]
    # the valid positions in order, then the others
    slots = jnp.argsort(jnp.where(valid, 0, 1), stable=True)
    # the valid positions in a random order, then the others
    u = jax.random.uniform(key, (n,))
    source = jnp.argsort(jnp.where(valid, u, 2.0 + jnp.arange(n)), stable=True)
    # the i-th valid slot takes the weight of the i-th random valid source
    out = w.at[slots].set(w[source])
    return out.reshape(jnp.shape(weights))


def oracle_weights(critical, mask, reference, ratio: float) -> jax.Array:
    """`ratio`: 1 weights on critical tokens, scaled so Σ w·mask = Σ reference·mask (the same
    mean over the valid tokens as `reference`, e.g. verifiable's weights of this batch);
    `[B,S]` float32, 0 where mask is 0."""
    m = jnp.asarray(mask, jnp.float32)
    base = (1.0 + (ratio - 1.0) * jnp.asarray(critical, jnp.float32)) * m
    total = jnp.sum(jnp.asarray(reference, jnp.float32) * m)
    return base * (total / jnp.maximum(jnp.sum(base), 1e-8))


def apply_control(control: str, weights, mask, *, key=None, critical=None, ratio: float = 1.0):
    """The weights the policy CE uses under `control`: "none" (returns `weights`), "permute",
    "oracle"."""
    if control == "none":
        return weights
    if control == "permute":
        return permute_valid(weights, mask, key)
    if control == "oracle":
        if critical is None:
            raise ValueError("weighting.control=oracle needs batches with `critical` tokens")
        return oracle_weights(critical, mask, weights, ratio)
    raise ValueError(f"weighting.control: expected none|permute|oracle, got {control!r}")
