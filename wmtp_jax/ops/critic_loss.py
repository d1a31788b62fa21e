"""Critic (value model) losses: pairwise ranking, λ-return regression, Monte-Carlo MSE, the
first-divergence regression, and the helpers the critic pipeline uses (λ schedule, terminal
masks). Float32 throughout."""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from wmtp_jax.ops._utils import as_mask, as_values
from wmtp_jax.ops.segments import as_segments, segment_sum
from wmtp_jax.ops.td import compute_lambda_return

MEAN_EPS = 1e-8
LOSS_FNS = ("huber", "mse")  # value_loss.loss_fn
LAMBDA_SCHEDULES = ("linear", "cosine", "constant")  # value_loss.lambda_schedule.type


def sequence_mean_value(values, mask) -> jax.Array:
    """v̄ = Σ(v·m)/(Σm + 1e-8) per row → `[B]`."""
    v = as_values(values)
    m = as_mask(mask, v.shape, "mask")
    return jnp.sum(v * m, axis=1) / (jnp.sum(m, axis=1) + MEAN_EPS)


def pair_mean(x: jax.Array, valid=None) -> jax.Array:
    """Mean of per-pair `x` `[B]`; with `valid` `[B]` (0 = a padding pair):
    Σ(x·valid) / max(Σvalid, 1)."""
    if valid is None:
        return jnp.mean(x)
    valid = jnp.asarray(valid, jnp.float32)
    return jnp.sum(x * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def pair_values(v_pos, v_neg, mask_pos, mask_neg, valid=None, segment_ids=None):
    """(v̄_pos, v̄_neg, pair weights) of a pairwise batch. Rows: v̄ `[B]` the masked mean per
    row, weights = `valid` (or None). Packed pairs (`segment_ids` = (pos ids, neg ids) `[B,S]`,
    both sides sharing ids): v̄ `[B,S]` per segment slot, weights = 1 where the pair exists."""
    if segment_ids is None:
        return sequence_mean_value(v_pos, mask_pos), sequence_mean_value(v_neg, mask_neg), valid
    pos, present = segment_mean_value(v_pos, mask_pos, segment_ids[0])
    neg, _ = segment_mean_value(v_neg, mask_neg, segment_ids[1])
    return pos, neg, present


def pairwise_ranking_loss(
    v_pos, v_neg, mask_pos, mask_neg, valid=None, segment_ids=None
) -> jax.Array:
    """Bradley-Terry: mean over pairs of −log σ(v̄_pos − v̄_neg), v̄ the masked mean of the raw
    values; the mean over the pairs with weight 1 (`valid`, or the packed pairs present; see
    pair_values and pair_mean)."""
    pos, neg, w = pair_values(v_pos, v_neg, mask_pos, mask_neg, valid, segment_ids)
    return pair_mean(-jax.nn.log_sigmoid(pos - neg), w)


def shared_prefix_mask(pos_ids, neg_ids) -> jax.Array:
    """float32 `[B,S]`: 1 at positions t where the two rows agree on every token ≤ t (their
    common prefix; a padding position counts as a token, so a row that ends first diverges)."""
    same = (jnp.asarray(pos_ids) == jnp.asarray(neg_ids)).astype(jnp.float32)
    return jnp.cumprod(same, axis=1)


def first_divergence_targets(pos_ids, neg_ids, shared_value: float = 0.5):
    """Per-token value targets `[B,S]` of a (correct, incorrect) pair of one prompt:
    `shared_value` on the common prefix (both continuations are possible: the pair's Monte-Carlo
    success rate is 1/2), then the outcome: 1 on the correct row, 0 on the incorrect one from
    the first token where they differ. A critic fitting them drops its value on the incorrect
    row exactly at the first divergent token, so −δ peaks there."""
    shared = shared_prefix_mask(pos_ids, neg_ids)
    t_pos = shared * shared_value + (1.0 - shared)
    t_neg = shared * shared_value
    return t_pos, t_neg


def first_divergence_loss(
    v_pos,
    v_neg,
    pos_ids,
    neg_ids,
    mask_pos,
    mask_neg,
    loss_type: str = "mse",
    huber_delta: float = 0.5,
    shared_value: float = 0.5,
) -> jax.Array:
    """Regress both rows' values onto `first_divergence_targets`; per-sequence masked mean of
    (V − target)² (or Huber/δ), mean over sequences with ≥ 1 token, then the mean of the two
    sides (rows without tokens, e.g. padding pairs, do not count)."""
    t_pos, t_neg = first_divergence_targets(pos_ids, neg_ids, shared_value)
    return prefix_value_loss(v_pos, v_neg, t_pos, t_neg, mask_pos, mask_neg, loss_type, huber_delta)


def prefix_value_loss(
    v_pos,
    v_neg,
    target_pos,
    target_neg,
    mask_pos,
    mask_neg,
    loss_type: str = "mse",
    huber_delta: float = 0.5,
) -> jax.Array:
    """Regress both rows' values onto given per-token targets `[B,S]` (the prefix_mc critic:
    the empirical success probability of each prefix among the problem's solutions sharing it);
    per-sequence masked mean of (V − target)² (or Huber/δ), mean over sequences with ≥ 1
    token, then the mean of the two sides."""
    out = []
    for v, t, m in ((v_pos, target_pos, mask_pos), (v_neg, target_neg, mask_neg)):
        v = as_values(v)
        m = as_mask(m, v.shape, "mask")
        err = v - jax.lax.stop_gradient(jnp.asarray(t, jnp.float32))
        out.append(_per_sequence_mean(_point_loss(err, loss_type, huber_delta), m))
    return (out[0] + out[1]) / 2


def _point_loss(err: jax.Array, loss_type: str, delta: float) -> jax.Array:
    if loss_type == "huber":
        return huber_over_delta(err, delta)
    if loss_type == "mse":
        return err**2
    raise ValueError(f"value_loss.loss_fn: expected 'huber' or 'mse', got {loss_type!r}")


def _per_sequence_mean(loss: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean per row, then the mean over rows with ≥ 1 token (0 if none)."""
    n = jnp.sum(mask, axis=1)
    seq = jnp.sum(loss * mask, axis=1) / (n + MEAN_EPS)
    has = (n > 0).astype(jnp.float32)
    return jnp.sum(seq * has) / jnp.maximum(jnp.sum(has), 1.0)


def huber_over_delta(x: jax.Array, delta: float) -> jax.Array:
    """torch smooth_l1_loss(beta=δ): 0.5x²/δ if |x| < δ else |x| − 0.5δ (= optax.huber_loss/δ)."""
    ax = jnp.abs(x)
    return jnp.where(ax < delta, 0.5 * x * x / delta, ax - 0.5 * delta)


def compute_lambda_value_loss(
    value_logits,
    rewards,
    attention_mask,
    loss_mask,
    gamma=1.0,
    lam=0.95,
    loss_type: str = "huber",
    huber_delta: float = 0.5,
    output_end_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Regress V onto stop_gradient(λ-returns) on attention_mask·loss_mask tokens.

    loss_type: "huber" (smooth-L1 with β = huber_delta) or "mse"; per-sequence masked mean,
    then the mean over sequences with ≥ 1 token.
    Packed rows (`segment_ids` `[B,S]`, rewards `[B]` or per token): every segment is a sequence;
    its λ-return chain is all of its tokens, ending at its last one (what `output_end_mask`
    gives an unpacked row), and the per-sequence means are per segment.
    """
    v = as_values(value_logits, "value_logits")
    if segment_ids is not None:
        return _segment_lambda_value_loss(
            v, rewards, attention_mask, loss_mask, gamma, lam, loss_type, huber_delta, segment_ids
        )
    targets = jax.lax.stop_gradient(
        compute_lambda_return(v, rewards, loss_mask, gamma, lam, output_end_mask)
    )
    mask = as_mask(attention_mask, v.shape, "attention_mask") * as_mask(loss_mask, v.shape)
    if loss_type == "huber":
        loss = huber_over_delta(v - targets, huber_delta)
    elif loss_type == "mse":
        loss = (v - targets) ** 2
    else:
        raise ValueError(f"value_loss.loss_fn: expected 'huber' or 'mse', got {loss_type!r}")
    return _per_sequence_mean(loss, mask)


def _segment_lambda_value_loss(v, rewards, am, loss_mask, gamma, lam, loss_type, delta, seg):
    seg = as_segments(seg, v.shape)
    am = as_mask(am, v.shape, "attention_mask")
    targets = jax.lax.stop_gradient(
        compute_lambda_return(v, rewards, am, gamma, lam, segment_ids=seg)
    )
    mask = am * as_mask(loss_mask, v.shape)
    if loss_type == "huber":
        loss = huber_over_delta(v - targets, delta)
    elif loss_type == "mse":
        loss = (v - targets) ** 2
    else:
        raise ValueError(f"value_loss.loss_fn: expected 'huber' or 'mse', got {loss_type!r}")
    n_slots = v.shape[1] + 1  # ids ≤ S: a segment has ≥ 1 token
    n = segment_sum(mask, seg, n_slots)[:, 1:]
    per_seq = segment_sum(loss * mask, seg, n_slots)[:, 1:] / (n + MEAN_EPS)
    has = (n > 0).astype(jnp.float32)
    return jnp.sum(per_seq * has) / jnp.maximum(jnp.sum(has), 1.0)


def segment_mean_value(values, mask, segment_ids) -> tuple[jax.Array, jax.Array]:
    """Packed rows: (v̄ `[B,S]` per segment slot j = Σ(v·m)/(Σm + 1e-8) over segment id j + 1,
    present `[B,S]` float32: 1 where segment id j + 1 exists in the row). The packed counterpart
    of `sequence_mean_value`."""
    v = as_values(values)
    seg = as_segments(segment_ids, v.shape)
    m = as_mask(mask, v.shape, "mask")
    n_slots = v.shape[1] + 1
    total = segment_sum(v * m, seg, n_slots)[:, 1:]
    count = segment_sum(m, seg, n_slots)[:, 1:]
    present = segment_sum((seg > 0).astype(jnp.float32), seg, n_slots)[:, 1:] > 0
    return total / (count + MEAN_EPS), present.astype(jnp.float32)


def get_scheduled_lambda(
    current_step,
    warmup_steps: int = 250,
    decay_steps: int = 500,
    lam_start: float = 1.0,
    lam_end: float = 0.95,
    schedule_type: str = "linear",
):
    """Hold λ = start for warmup_steps, decay to end over decay_steps (linear | cosine), then end;
    `constant` always gives start. Python numbers in → float out; a traced step → float32 array."""
    if schedule_type not in LAMBDA_SCHEDULES:
        raise ValueError(
            f"lambda_schedule.type: expected linear|cosine|constant, got {schedule_type!r}"
        )
    if schedule_type == "constant":
        return lam_start
    if isinstance(current_step, numbers.Number):
        if current_step < warmup_steps:
            return lam_start
        if current_step < warmup_steps + decay_steps:
            p = (current_step - warmup_steps) / decay_steps
            if schedule_type == "cosine":
                return lam_end + (lam_start - lam_end) * 0.5 * (1.0 + math.cos(math.pi * p))
            return lam_start - p * (lam_start - lam_end)
        return lam_end
    step = jnp.asarray(current_step, jnp.float32)
    p = jnp.clip((step - warmup_steps) / max(decay_steps, 1), 0.0, 1.0)
    if schedule_type == "cosine":
        mid = lam_end + (lam_start - lam_end) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
    else:
        mid = lam_start - p * (lam_start - lam_end)
    return jnp.where(
        step < warmup_steps, lam_start, jnp.where(step < warmup_steps + decay_steps, mid, lam_end)
    ).astype(jnp.float32)


def create_output_end_mask(attention_mask) -> jax.Array:
    """1.0 at index Σattention_mask − 1 (the last real token under right padding) for non-empty
    rows; float32 `[B,S]`."""
    am = jnp.asarray(attention_mask)
    n = jnp.sum(am.astype(jnp.int32), axis=1)
    idx = jnp.maximum(n - 1, 0)
    hit = jnp.arange(am.shape[1])[None, :] == idx[:, None]
    return (hit & (n > 0)[:, None]).astype(jnp.float32)
