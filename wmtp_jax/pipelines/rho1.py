"""Rho-1: reference-selected MTP (the original's run_rho1.py; docs/semantics.md).

Per micro-batch: logits = policy(ids) [B,S,K,V] (ONE forward); ref = reference(ids) [B,S,V];
weights = compute_mtp_selective_weights(stop_gradient(logits), ref, labels, loss_mask,
k_percent, rho1_mode) — per head k the valid tokens with score ≥ the (1 − k_percent) quantile
(score = CE_policy − CE_ref, |·|, or CE_ref), 3-D 0/1 weights at the source position;
loss = compute_mtp_ce_loss(logits, labels, attention_mask, weights)["weighted_ce_loss"]
(Σ(ce·sel)/#valid). The reference is frozen, sharded for inference, LoRA merged.
Best = lowest val/loss (unweighted CE).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from wmtp_jax import ops
from wmtp_jax.data import loaders
from wmtp_jax.data.packing import packing_of
from wmtp_jax.models import load
from wmtp_jax.pipelines import baseline, specs
from wmtp_jax.pipelines.bootstrap import load_frozen_entry, setup
from wmtp_jax.train.loop import TrainTask, fit


def selective_loss(policy, reference, batch, *, k_percent: float, mode: str, head_weights=None):
    """(loss dict, weights [B,S,K], selection stats) from one policy forward."""
    ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    pk = packing_of(batch)  # packed batches: both models see the segments
    logits = policy(ids, return_all_heads=True, **pk)
    ref_logits = jax.lax.stop_gradient(reference(ids, **pk).astype(jnp.float32))
    m = ops.loss_mask_of(labels, am)
    seg = pk["segment_ids"]
    w, stats = ops.compute_mtp_selective_weights(
        jax.lax.stop_gradient(logits), ref_logits, labels, m, k_percent, mode, segment_ids=seg
    )
    out = ops.weigh_heads(
        ops.compute_mtp_ce_loss(logits, labels, am, w, segment_ids=seg), head_weights
    )
    return out, w, stats, m


def loss_fn(model, frozen, batch, rng, extra, *, k_percent: float, mode: str, head_weights=None):
    out, w, stats, m = selective_loss(
        model, frozen, batch, k_percent=k_percent, mode=mode, head_weights=head_weights
    )
    metrics = {
        **ops.head_metrics(out),
        "weighted_ce_loss": out["weighted_ce_loss"],
        "unweighted_ce_loss": out["unweighted_ce_loss"],
        "selection_ratio": stats["selection_ratio"],
        "avg_heads_per_pos": stats["avg_heads_per_position"],
        "excess_loss": stats["head_0_excess_mean"],
        **{
            f"rho1/{k}": v
            for k, v in stats.items()
            if k.startswith("head_") and not k.endswith("_valid")
        },
        **ops.compute_weight_statistics(w, m),
    }
    return out["weighted_ce_loss"], (metrics, extra)


def eval_fn(model, frozen, batch, extra, *, k_percent: float, mode: str, head_weights=None):
    """val/weighted_ce_loss, val/unweighted_ce_loss, val/head0_ce_loss, val/excess_loss,
    val/loss (= unweighted). Same normalisation as training (the original's differed)."""
    out, _, stats, _ = selective_loss(
        model, frozen, batch, k_percent=k_percent, mode=mode, head_weights=head_weights
    )
    return {
        "weighted_ce_loss": out["weighted_ce_loss"],
        "unweighted_ce_loss": out["unweighted_ce_loss"],
        "head0_ce_loss": out["head_unweighted_ce_loss"][0],
        "excess_loss": stats["head_0_excess_mean"],
        "loss": out["unweighted_ce_loss"],
    }


def load_reference(config, mesh):
    return load_frozen_entry(config, config.models.reference, kind="llama", mesh=mesh)


def build(
    config, mesh, *, policy=None, reference=None, data: loaders.Loaders | None = None
) -> TrainTask:
    """The Rho-1 TrainTask. policy / reference / data: already built; default: loaded from
    config.models and config.dataset."""
    if data is None:
        data = loaders.load(
            specs.data_spec(config), specs.tokenizer(config.models.policy), pairwise=False
        )
    if policy is None:
        policy = baseline.build_policy(config, mesh)
    if reference is None:
        reference = load_reference(config, mesh)
    if reference.args.vocab_size != policy.args.vocab_size:
        raise ValueError(
            f"models.reference vocab_size {reference.args.vocab_size} != policy "
            f"vocab_size {policy.args.vocab_size}: they must share the tokenizer"
        )
    kw = dict(
        k_percent=float(config.training.k_percent),
        mode=config.training.rho1_mode,
        head_weights=baseline.head_weights(config, policy),
    )
    return TrainTask(
        model=policy,
        frozen=reference,
        loss_fn=partial(loss_fn, **kw),
        train_iter=data.train,
        trainable=load.trainable_filter(config.training.use_lora),
        eval_fn=partial(eval_fn, **kw),
        val_iter_fn=data.val_iter_fn,
        best_metric="val/loss",
        best_mode="min",
        count_tokens=loaders.count_response_tokens,
        batches_per_epoch=loaders.steps_per_epoch(data),
        export_fn=baseline.export_policy(config, policy),
        **baseline.policy_task_kwargs(config),
    )


def run(config):
    mesh = setup(config)
    return fit(config, build(config, mesh), mesh=mesh)
