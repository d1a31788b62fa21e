"""Token weights from advantages (whitening + exp + clip) and the TD-statistics EMA state
(with the pooled moments of a step's micro-batches folded into it).

The EMA is functional state (a NamedTuple of arrays): it jits, shards (replicated scalars) and
checkpoints like any other pytree. Statistics are population statistics over every valid token of
the array passed in; under jit a batch sharded over a mesh is reduced globally by XLA.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from wmtp_jax.ops._utils import as_mask, as_values, masked_mean, masked_std

WHITEN_EPS = 1e-8


def build_weights(
    td_errors,
    loss_mask,
    beta=1.0,
    min_weight=0.1,
    max_weight=5.0,
    external_mean=None,
    external_std=None,
) -> jax.Array:
    """w = clip(exp(((A − μ)/(σ + 1e-8))/β), min_weight, max_weight) · mask, float32 `[B,S]`.

    μ, σ: `external_mean`/`external_std` when both are given (EMA), else the masked mean and
    unbiased std of the valid entries; ≤ 1 valid entry (batch stats) → w = mask. No gradient.
    """
    a = jax.lax.stop_gradient(as_values(td_errors, "td_errors"))
    m = as_mask(loss_mask, a.shape)
    if external_mean is not None and external_std is not None:
        mu = jnp.asarray(external_mean, jnp.float32)
        sigma = jnp.asarray(external_std, jnp.float32)
        degenerate = jnp.asarray(False)
    else:
        mu, sigma = masked_mean(a, m), masked_std(a, m, ddof=1)
        degenerate = jnp.sum(m) <= 1
    w = jnp.clip(jnp.exp(((a - mu) / (sigma + WHITEN_EPS)) / beta), min_weight, max_weight)
    return jnp.where(degenerate, 1.0, w) * m


def compute_weight_clipping_ratio(
    td_errors, loss_mask, mean, std, beta=1.0, min_weight=0.1, max_weight=5.0
) -> jax.Array:
    """Fraction of valid tokens whose unclipped exp(((A − μ)/(σ + 1e-8))/β) lies outside
    [min_weight, max_weight] (`weight/clipping_ratio`)."""
    a = as_values(td_errors, "td_errors")
    m = as_mask(loss_mask, a.shape)
    raw = jnp.exp(((a - mean) / (std + WHITEN_EPS)) / beta)
    return masked_mean(((raw < min_weight) | (raw > max_weight)).astype(jnp.float32), m)


class TDStatsEMA(NamedTuple):
    """EMA of the TD/advantage mean and std (the original's TDStatsEMA), float32/int32 scalars."""

    mean: jax.Array
    std: jax.Array
    step_count: jax.Array
    momentum: jax.Array
    warmup_steps: jax.Array


def td_ema_init(momentum: float = 0.1, warmup_steps: int = 10) -> TDStatsEMA:
    """Fresh state: mean 0, std 1, step_count 0."""
    return TDStatsEMA(
        mean=jnp.zeros((), jnp.float32),
        std=jnp.ones((), jnp.float32),
        step_count=jnp.zeros((), jnp.int32),
        momentum=jnp.asarray(momentum, jnp.float32),
        warmup_steps=jnp.asarray(warmup_steps, jnp.int32),
    )


def td_ema_update(state: TDStatsEMA, td_errors, loss_mask) -> TDStatsEMA:
    """Fold one (global) batch into the EMA.

    Batch stats over valid entries: mean, population std sqrt(max(var, 1e-8)). No valid entry →
    state unchanged (step not counted). step_count += 1; while step_count ≤ warmup_steps,
    ema = a·ema + (1−a)·batch with a = (step_count−1)/warmup_steps (first update = batch stats);
    afterwards ema = (1−momentum)·ema + momentum·batch. Mean and std are smoothed separately.
    """
    a = jax.lax.stop_gradient(as_values(td_errors, "td_errors"))
    m = as_mask(loss_mask, a.shape)
    n = jnp.sum(m)
    mu = masked_mean(a, m)
    var = jnp.sum(jnp.where(m > 0, (a - mu) ** 2, 0.0)) / jnp.maximum(n, 1.0)
    sd = jnp.sqrt(jnp.maximum(var, 1e-8))
    step = state.step_count + 1
    warm = step <= state.warmup_steps
    alpha = jnp.where(
        warm,
        (step - 1).astype(jnp.float32) / jnp.maximum(state.warmup_steps, 1).astype(jnp.float32),
        1.0 - state.momentum,
    )
    new = state._replace(
        mean=alpha * state.mean + (1.0 - alpha) * mu,
        std=alpha * state.std + (1.0 - alpha) * sd,
        step_count=step,
    )
    return jax.tree.map(lambda x, y: jnp.where(n > 0, x, y), new, state)


def td_ema_stats(state: TDStatsEMA) -> tuple[jax.Array, jax.Array]:
    """(ema_mean, ema_std) to pass as build_weights(external_mean=, external_std=)."""
    return state.mean, state.std


def td_ema_metrics(state: TDStatsEMA) -> dict:
    """`td/ema_mean`, `td/ema_std` (+ step count, warm-up flag) for logging."""
    return {
        "td/ema_mean": state.mean,
        "td/ema_std": state.std,
        "td/ema_step_count": state.step_count,
        "td/ema_is_warmup": (state.step_count <= state.warmup_steps).astype(jnp.float32),
    }


def merge_moments(acc: dict, x: jax.Array, mask: jax.Array) -> dict:
    """Chan et al. parallel update of (n, mean, M2) with the valid entries of x."""
    nb = jnp.sum(mask)
    mb = jnp.sum(x * mask) / jnp.maximum(nb, 1.0)
    m2b = jnp.sum(jnp.where(mask > 0, (x - mb) ** 2, 0.0))
    n = acc["n"] + nb
    d = mb - acc["mean"]
    frac = nb / jnp.maximum(n, 1.0)
    return {"n": n, "mean": acc["mean"] + d * frac, "m2": acc["m2"] + m2b + d * d * acc["n"] * frac}


def fold_ema(ema: TDStatsEMA, acc: dict) -> TDStatsEMA:
    """td_ema_update with the step's pooled batch: a two-point sample μ ± σ has exactly the
    pooled mean μ and population std σ (no valid entry → EMA unchanged)."""
    mu = acc["mean"]
    sd = jnp.sqrt(jnp.maximum(acc["m2"] / jnp.maximum(acc["n"], 1.0), 0.0))
    on = (acc["n"] > 0).astype(jnp.float32)
    return td_ema_update(ema, jnp.stack([mu - sd, mu + sd])[None], jnp.stack([on, on])[None])
