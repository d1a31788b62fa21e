"""Verifiable (WMTP): TD-weighted MTP with a frozen, independently trained critic
(the original's run_verifiable.py; docs/semantics.md "Losses and weights").

Per micro-batch:  w = token weights of the frozen critic's values (wmtp_jax.weighting:
                      advantages GAE | TD, whitening EMA | batch)                   [B,S]
                  loss = compute_mtp_ce_loss(policy(ids), labels, mask, w)["weighted_ce_loss"]
(2-D weights: head k at position t is weighted by w[t+k], the predicted token's weight.)
The EMA state (`weighting.init_extra` / `advance_extra`) is checkpointed with the train state.
Validation whitens with batch statistics. Best checkpoint = lowest val/loss (unweighted CE).
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp

from wmtp_jax import ops
from wmtp_jax.data import loaders
from wmtp_jax.data.packing import packing_of
from wmtp_jax.models import load
from wmtp_jax.pipelines import baseline, specs, viz
from wmtp_jax.pipelines.bootstrap import load_frozen_entry, setup
from wmtp_jax.pipelines.evaluation import closing_eval
from wmtp_jax.train.loop import TrainTask, fit
from wmtp_jax.weighting import (
    WeightingConfig,
    advance_extra,
    apply_control,
    critic_values,
    init_extra,
    token_weights,
)

# ---- rows and losses -------------------------------------------------------------------------


def rows(batch):
    """(input_ids, attention_mask, labels, rewards [N]) of a pointwise batch, or of a pairwise
    batch with the correct (reward 1) and incorrect (reward 0) sides stacked
    (data.use_negatives)."""
    if "pos_input_ids" in batch:
        cat = lambda k: jnp.concatenate([batch[f"pos_{k}"], batch[f"neg_{k}"]], axis=0)
        b = batch["pos_input_ids"].shape[0]
        rewards = jnp.concatenate([jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32)])
        return cat("input_ids"), cat("attention_mask"), cat("labels"), rewards
    rewards = batch.get("is_correct", jnp.ones(batch["input_ids"].shape[:1], jnp.float32))
    return batch["input_ids"], batch["attention_mask"], batch["labels"], rewards.astype(jnp.float32)


def packing(batch) -> dict:
    """{"segment_ids", "positions"} of a packed batch, stacked [pos; neg] like `rows` for a
    pairwise one; both None when the batch is not packed (data.packing)."""
    if "pos_segment_ids" in batch:
        cat = lambda k: jnp.concatenate([batch[f"pos_{k}"], batch[f"neg_{k}"]], axis=0)
        return {"segment_ids": cat("segment_ids"), "positions": cat("positions")}
    return packing_of(batch)


def packed_rewards(batch, rewards):
    """Per-token rewards `[N,S]` of a packed pairwise batch (1 on pos tokens, 0 on neg), else
    `rewards` as `rows` gave them (a packed pointwise `is_correct` is already per token)."""
    if "pos_segment_ids" not in batch:
        return rewards
    ones = jnp.ones(batch["pos_input_ids"].shape, jnp.float32)
    return jnp.concatenate([ones, jnp.zeros_like(ones)], axis=0)


def loss_fn(
    model,
    frozen,
    batch,
    rng,
    extra,
    *,
    wc: WeightingConfig,
    ga: int,
    chunk_size: int = 0,
    control: tuple = ("none", 1.0),
    head_weights=None,
):
    """`control` = (weighting.control, weighting.oracle_ratio): the study's controls replace the
    weights after they are computed (wmtp_jax.weighting.controls); the EMA still sees the
    critic's advantages."""
    ids, am, labels, rewards = rows(batch)
    pk = packing(batch)
    rewards = packed_rewards(batch, rewards)
    m = ops.loss_mask_of(labels, am)
    values = critic_values(frozen, ids, am, **pk)
    w, adv, (mu, sd) = token_weights(values, rewards, m, wc, extra["ema"], pk["segment_ids"])
    w = apply_control(
        control[0], w, m, key=rng, critical=batch.get("critical"), ratio=float(control[1])
    )
    out = ops.policy_mtp_loss(
        model, ids, labels, am, w, chunk_size=chunk_size, head_weights=head_weights, **pk
    )
    new_extra = advance_extra(extra, adv, m, ga)
    metrics = {
        **ops.head_metrics(out),
        "weighted_ce_loss": out["weighted_ce_loss"],
        "unweighted_ce_loss": out["unweighted_ce_loss"],
        "loss_ratio": out["weighted_ce_loss"] / (out["unweighted_ce_loss"] + 1e-8),
        **ops.compute_td_stats(adv, m),
        **ops.td_ema_metrics(new_extra["ema"]),
        **ops.compute_value_function_stats(values, rewards, m),
        **ops.compute_weight_statistics(w, m),
        "weight/clipping_ratio": ops.compute_weight_clipping_ratio(
            adv, m, mu, sd, wc.beta, wc.min_weight, wc.max_weight
        ),
    }
    return out["weighted_ce_loss"], (metrics, new_extra)


def _batch_whitened(frozen, batch, wc: WeightingConfig):
    """(ids, attention mask, labels, loss mask, weights, packing kwargs) of a validation batch,
    weights whitened over the batch (the original's validation)."""
    ids, am, labels, rewards = rows(batch)
    pk = packing(batch)
    rewards = packed_rewards(batch, rewards)
    m = ops.loss_mask_of(labels, am)
    values = critic_values(frozen, ids, am, **pk)
    w, _, _ = token_weights(values, rewards, m, wc, None, pk["segment_ids"])
    return ids, am, labels, m, w, pk


def eval_fn(model, frozen, batch, extra, *, wc: WeightingConfig, chunk_size=0, head_weights=None):
    """Batch whitening (the original's validation): weighted / unweighted CE, loss = unweighted,
    per-head CE."""
    ids, am, labels, _, w, pk = _batch_whitened(frozen, batch, wc)
    out = ops.policy_mtp_loss(
        model, ids, labels, am, w, chunk_size=chunk_size, head_weights=head_weights, **pk
    )
    return {
        **ops.head_metrics(out),
        "weighted_ce_loss": out["weighted_ce_loss"],
        "unweighted_ce_loss": out["unweighted_ce_loss"],
        "loss": out["unweighted_ce_loss"],
    }


def validation_weights(frozen, batch, *, wc: WeightingConfig):
    """(input_ids, loss mask, weights) `[N,S]` of a validation batch (batch whitening): what the
    weight picture draws (a packed row shows its sequences one after the other)."""
    ids, _, _, m, w, _ = _batch_whitened(frozen, batch, wc)
    return ids, m, w


# ---- run ------------------------------------------------------------------------------------


def load_critic(config, mesh):
    return load_frozen_entry(config, config.models.value_model, kind="critic", mesh=mesh)


def build(
    config, mesh, *, policy=None, critic=None, data: loaders.Loaders | None = None
) -> TrainTask:
    """The verifiable TrainTask. policy / critic / data: already built (e.g. random-init for the
    benchmark); default: loaded from config.models and config.dataset."""
    if data is None:
        pairwise = bool(config.data.use_negatives)
        critical = config.weighting.control == "oracle"
        data = loaders.load(
            specs.data_spec(config),
            specs.tokenizer(config.models.policy),
            pairwise=pairwise,
            critical=critical,
        )
    if policy is None:
        policy = baseline.build_policy(config, mesh)
    if critic is None:
        critic = load_critic(config, mesh)
    wc = WeightingConfig.from_config(config)
    kw = dict(
        chunk_size=int(config.training.loss_chunk_size),
        head_weights=baseline.head_weights(config, policy),
    )
    ga = int(config.training.gradient_accumulation_steps)
    t = config.training
    return TrainTask(
        model=policy,
        frozen=critic,
        loss_fn=partial(
            loss_fn,
            wc=wc,
            ga=ga,
            control=(config.weighting.control, float(config.weighting.oracle_ratio)),
            **kw,
        ),
        train_iter=data.train,
        trainable=load.trainable_filter(config.training.use_lora),
        extra_state=init_extra(float(t.td_ema_momentum), int(t.td_ema_warmup_steps)),
        eval_fn=partial(eval_fn, wc=wc, **kw),
        val_iter_fn=data.val_iter_fn,
        best_metric="val/loss",
        best_mode="min",
        count_tokens=loaders.count_response_tokens,
        batches_per_epoch=loaders.steps_per_epoch(data),
        export_fn=baseline.export_policy(config, policy),
        on_end=partial(
            viz.log_weight_picture,
            config=config,
            tokenizer=data.tokenizer,
            wc=wc,
            val_iter_fn=data.val_iter_fn,
            weigh=partial(validation_weights, wc=wc),
        ),
        **baseline.policy_task_kwargs(config),
    )


def run(config):
    mesh = setup(config)
    return closing_eval(config, fit(config, build(config, mesh), mesh=mesh))
