"""The WMTP weighting method, shared by the verifiable pipeline and the critic-credit study:
critic values → advantages (GAE | TD) → whitening (EMA | batch) → token weights, and the EMA
state folded over a step's micro-batches. Built on wmtp_jax.ops; imports nothing above it."""

from wmtp_jax.weighting.scheme import (
    WeightingConfig,
    advance_extra,
    advantages,
    batch_weights,
    critic_values,
    init_extra,
    token_weights,
)

__all__ = [
    "WeightingConfig",
    "advance_extra",
    "advantages",
    "batch_weights",
    "critic_values",
    "init_extra",
    "token_weights",
]
