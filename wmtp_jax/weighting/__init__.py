"""The WMTP weighting method, shared by the verifiable pipeline and the critic-credit study:
critic values → advantages (GAE | TD) → whitening (EMA | batch) → token weights, and the EMA
state folded over a step's micro-batches; the study's controls (permuted and oracle weights).
Built on wmtp_jax.ops; imports nothing above it."""

from wmtp_jax.weighting.controls import CONTROLS, apply_control, oracle_weights, permute_valid
from wmtp_jax.weighting.scheme import (
    ADVANTAGES,
    WHITENINGS,
    WeightingConfig,
    advance_extra,
    advantages,
    batch_weights,
    critic_values,
    init_extra,
    token_weights,
)

__all__ = [
    "ADVANTAGES",
    "CONTROLS",
    "WHITENINGS",
    "WeightingConfig",
    "advance_extra",
    "advantages",
    "apply_control",
    "batch_weights",
    "critic_values",
    "init_extra",
    "oracle_weights",
    "permute_valid",
    "token_weights",
]
