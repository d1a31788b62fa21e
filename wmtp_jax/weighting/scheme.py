"""Token weights of the WMTP method (docs/semantics.md "Losses and weights"):

    V = stop_gradient(critic(ids, attention_mask))                                    [B,S]
    A = GAE (δ_t = γv_t − v_{t−1}, A_t = δ_t + γλA_{t+1}) | TD errors                   [B,S]
    (μ, σ) = EMA state (before this step) | batch stats (masked mean, unbiased std)
    w = clip(exp(((A − μ)/(σ + 1e-8))/β), min, max) · loss_mask                       [B,S]

The EMA folds the advantages of all GA micro-batches of a step (Chan's parallel moments) after
the step's last micro-batch, i.e. between optimizer steps (`init_extra` / `advance_extra`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from wmtp_jax import ops
from wmtp_jax.ops._utils import masked_mean, masked_std


class WeightingConfig(NamedTuple):
    """Static hyper-parameters of the weights (training.* and weighting.*)."""

    advantage: str = "gae"
    whitening: str = "ema"
    gamma: float = 1.0
    lam: float = 0.95
    initial_value: float = 0.5
    beta: float = 1.0
    min_weight: float = 0.1
    max_weight: float = 3.0

    @classmethod
    def from_config(cls, c):
        t = c.training
        return cls(
            c.weighting.advantage,
            c.weighting.whitening,
            float(t.gamma),
            float(t.td_lambda),
            float(t.initial_value),
            float(t.beta),
            float(t.weight_clip_min),
            float(t.weight_clip_max),
        )


# ---- EMA state folded over the GA micro-batches of a step -------------------------------------


def init_extra(momentum: float, warmup_steps: int) -> dict:
    """{"ema": TDStatsEMA, "acc": running (count, mean, M2) of this step's valid advantages,
    "micro": micro-batches seen in this step}."""
    z = lambda: jnp.zeros((), jnp.float32)  # distinct buffers (the train state is donated)
    return {
        "ema": ops.td_ema_init(momentum, warmup_steps),
        "acc": {"n": z(), "mean": z(), "m2": z()},
        "micro": jnp.zeros((), jnp.int32),
    }


def advance_extra(extra: dict, adv: jax.Array, mask: jax.Array, ga: int) -> dict:
    """Add one micro-batch; after the GA-th, fold into the EMA and reset the accumulator."""
    acc = ops.merge_moments(extra["acc"], adv, mask)
    micro = extra["micro"] + 1
    last = micro >= ga
    ema = jax.tree.map(
        lambda a, b: jnp.where(last, a, b), ops.fold_ema(extra["ema"], acc), extra["ema"]
    )
    zero = jax.tree.map(jnp.zeros_like, acc)
    acc = jax.tree.map(lambda a, b: jnp.where(last, a, b), zero, acc)
    return {"ema": ema, "acc": acc, "micro": jnp.where(last, 0, micro)}


# ---- values, advantages, weights ---------------------------------------------------------------


def critic_values(frozen, input_ids, attention_mask, segment_ids=None, positions=None):
    """Frozen critic forward, float32 `[B,S]`, never differentiated (packed rows: segment ids
    instead of the attention mask)."""
    if segment_ids is None:
        v = frozen(input_ids, attention_mask)
    else:
        v = frozen(input_ids, segment_ids=segment_ids, positions=positions)
    return jax.lax.stop_gradient(v[..., 0].astype(jnp.float32))


def advantages(values, rewards, loss_mask, wc: WeightingConfig, segment_ids=None) -> jax.Array:
    """GAE or TD errors; with `segment_ids` per packed sequence (rewards `[B]` or per token)."""
    if wc.advantage == "gae":
        return ops.compute_gae_advantage(
            values, rewards, loss_mask, wc.gamma, wc.lam, wc.initial_value, segment_ids
        )
    return ops.compute_td_errors(
        values, rewards, loss_mask, wc.gamma, wc.initial_value, segment_ids
    )


def batch_weights(adv, loss_mask, wc: WeightingConfig):
    """(weights, (μ, σ)) whitened with the batch's own statistics over its valid tokens
    (masked mean, unbiased std); ≤ 1 valid token → w = mask (`ops.build_weights`)."""
    mu = masked_mean(adv, loss_mask)
    sd = masked_std(adv, loss_mask, ddof=1)
    w = ops.build_weights(adv, loss_mask, wc.beta, wc.min_weight, wc.max_weight)
    return w, (mu, sd)


def token_weights(values, rewards, loss_mask, wc: WeightingConfig, ema=None, segment_ids=None):
    """(weights [B,S], advantages [B,S], (μ, σ) used). ema=None or batch whitening → batch stats.
    The statistics are over the valid tokens, packed or not."""
    adv = advantages(values, rewards, loss_mask, wc, segment_ids)
    if ema is not None and wc.whitening == "ema":
        mu, sd = ops.td_ema_stats(ema)
        w = ops.build_weights(adv, loss_mask, wc.beta, wc.min_weight, wc.max_weight, mu, sd)
        return w, adv, (mu, sd)
    w, stats = batch_weights(adv, loss_mask, wc)
    return w, adv, stats
