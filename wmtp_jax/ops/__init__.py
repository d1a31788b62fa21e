"""Pure, jit/grad/vmap-safe WMTP math in float32: MTP cross entropy (dense and chunked),
TD / GAE / λ-return scans, whitening weights and the TD-stats EMA, critic losses, Rho-1
selection, and logging statistics. Names and argument names follow the PyTorch original."""

from wmtp_jax.ops._utils import IGNORE_INDEX, loss_mask_of
from wmtp_jax.ops.chunked_loss import chunked_mtp_ce_loss, head_logits, rms_norm
from wmtp_jax.ops.critic_loss import (
    compute_lambda_value_loss,
    create_output_end_mask,
    first_divergence_loss,
    first_divergence_targets,
    get_scheduled_lambda,
    pairwise_ranking_loss,
    prefix_value_loss,
    segment_mean_value,
    sequence_mean_value,
)
from wmtp_jax.ops.mtp_loss import (
    compute_mtp_ce_loss,
    compute_ntp_loss,
    head_metrics,
    weigh_heads,
)
from wmtp_jax.ops.policy_loss import policy_mtp_loss
from wmtp_jax.ops.rho1 import compute_mtp_selective_weights, masked_quantile
from wmtp_jax.ops.stats import (
    compute_pairwise_accuracy,
    compute_position_correlation,
    compute_td_error_stats,
    compute_td_stats,
    compute_token_variance,
    compute_value_function_stats,
    compute_weight_statistics,
)
from wmtp_jax.ops.td import (
    compute_gae_advantage,
    compute_lambda_return,
    compute_td_errors,
    compute_td_targets,
)
from wmtp_jax.ops.whitening import (
    TDStatsEMA,
    build_weights,
    compute_weight_clipping_ratio,
    fold_ema,
    merge_moments,
    td_ema_init,
    td_ema_metrics,
    td_ema_stats,
    td_ema_update,
)

__all__ = [
    "IGNORE_INDEX",
    "TDStatsEMA",
    "build_weights",
    "chunked_mtp_ce_loss",
    "compute_gae_advantage",
    "first_divergence_loss",
    "first_divergence_targets",
    "prefix_value_loss",
    "compute_lambda_return",
    "compute_lambda_value_loss",
    "compute_mtp_ce_loss",
    "compute_mtp_selective_weights",
    "compute_ntp_loss",
    "compute_pairwise_accuracy",
    "compute_position_correlation",
    "compute_td_error_stats",
    "compute_td_errors",
    "compute_td_stats",
    "compute_td_targets",
    "compute_token_variance",
    "compute_value_function_stats",
    "compute_weight_clipping_ratio",
    "compute_weight_statistics",
    "head_metrics",
    "create_output_end_mask",
    "fold_ema",
    "get_scheduled_lambda",
    "head_logits",
    "loss_mask_of",
    "masked_quantile",
    "merge_moments",
    "pairwise_ranking_loss",
    "policy_mtp_loss",
    "rms_norm",
    "segment_mean_value",
    "sequence_mean_value",
    "td_ema_init",
    "td_ema_metrics",
    "td_ema_stats",
    "td_ema_update",
    "weigh_heads",
]
