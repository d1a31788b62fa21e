"""Baseline: uniform MTP cross entropy on correct solutions (the original's run_baseline.py).

loss = compute_mtp_ce_loss(policy(input_ids), labels, attention_mask)["unweighted_ce_loss"]
(per head Σ(ce·m)/Σm, mean over heads with ≥ 1 valid token). Best checkpoint = lowest val/loss.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from wmtp_jax import ops
from wmtp_jax.data import loaders
from wmtp_jax.data.packing import packing_of
from wmtp_jax.models import load
from wmtp_jax.models.serialization import tokenizer_dir_files
from wmtp_jax.pipelines.bootstrap import setup
from wmtp_jax.train.checkpoint import export_model
from wmtp_jax.train.loop import TrainTask, fit
from wmtp_jax.train.mesh import rules_for


def loss_fn(model, frozen, batch, rng, extra, *, chunk_size: int = 0):
    """One micro-batch → (loss, (metrics, extra)); metrics: train/loss (the loop's),
    per-head CE `head_<k>_ce` and the number of valid target tokens."""
    out = ops.policy_mtp_loss(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["attention_mask"],
        chunk_size=chunk_size,
        **packing_of(batch),
    )
    metrics = {
        f"head_{k}_ce": out["head_unweighted_ce_loss"][k]
        for k in range(out["head_unweighted_ce_loss"].shape[0])
    }
    return out["unweighted_ce_loss"], (metrics, extra)


def eval_fn(model, frozen, batch, extra, *, chunk_size: int = 0):
    """val/loss = unweighted MTP CE of one validation batch."""
    out = ops.policy_mtp_loss(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["attention_mask"],
        chunk_size=chunk_size,
        **packing_of(batch),
    )
    return {"loss": out["unweighted_ce_loss"]}


def build_policy(config, mesh):
    """Trainable MTP policy from models.policy.path (+ LoRA when training.use_lora)."""
    return load.load_trainable(
        config.models.policy.path,
        kind="mtp",
        config=config,
        rules=rules_for(config.runtime.sharding).params,
        lora=load.lora_config(config),
        mesh=mesh,
        seed=int(config.seed),
    )


def export_policy(config, policy):
    """export_fn: the trained policy as an `mtp` model dir with the tokenizer carried along."""
    tok = Path(loaders.tokenizer_path(config.models.policy))

    def export(model, directory):
        return export_model(
            directory,
            model,
            kind="mtp",
            args=model.args,
            lora=model.lora,
            tokenizer=tokenizer_dir_files(tok),
            source={"pipeline": config.pipeline, "base": config.models.policy.path},
        )

    return export


def build(config, mesh, *, policy=None, data: loaders.Loaders | None = None) -> TrainTask:
    """The baseline TrainTask. policy / data: already built (e.g. random-init for the benchmark);
    default: loaded from config.models.policy and config.dataset."""
    if data is None:
        data = loaders.load(config, config.models.policy, pairwise=False)
    if policy is None:
        policy = build_policy(config, mesh)
    cs = int(config.training.loss_chunk_size)
    return TrainTask(
        model=policy,
        loss_fn=partial(loss_fn, chunk_size=cs),
        train_iter=data.train,
        trainable=load.trainable_filter(config),
        eval_fn=partial(eval_fn, chunk_size=cs),
        val_iter_fn=data.val_iter_fn,
        best_metric="val/loss",
        best_mode="min",
        count_tokens=loaders.count_response_tokens,
        batches_per_epoch=loaders.steps_per_epoch(data),
        export_fn=export_policy(config, policy),
    )


def run(config):
    mesh = setup(config)
    return fit(config, build(config, mesh), mesh=mesh)
