"""Baseline: uniform MTP cross entropy on correct solutions (the original's run_baseline.py).

loss = compute_mtp_ce_loss(policy(input_ids), labels, attention_mask)["unweighted_ce_loss"]
(per head Σ(ce·m)/Σm, mean over heads with ≥ 1 valid token). Best checkpoint = lowest val/loss.
"""

from __future__ import annotations

from functools import partial

from wmtp_jax.pipelines import common


def loss_fn(model, frozen, batch, rng, extra, *, chunk_size: int = 0):
    """One micro-batch → (loss, (metrics, extra)); metrics: train/loss (the loop's),
    per-head CE `head_<k>_ce` and the number of valid target tokens."""
    out = common.policy_mtp_loss(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["attention_mask"],
        chunk_size=chunk_size,
        **common.packing_of(batch),
    )
    metrics = {
        f"head_{k}_ce": out["head_unweighted_ce_loss"][k]
        for k in range(out["head_unweighted_ce_loss"].shape[0])
    }
    return out["unweighted_ce_loss"], (metrics, extra)


def eval_fn(model, frozen, batch, extra, *, chunk_size: int = 0):
    """val/loss = unweighted MTP CE of one validation batch."""
    out = common.policy_mtp_loss(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["attention_mask"],
        chunk_size=chunk_size,
        **common.packing_of(batch),
    )
    return {"loss": out["unweighted_ce_loss"]}


def build_policy(config, mesh):
    """Trainable MTP policy from models.policy.path (+ LoRA when training.use_lora)."""
    return common.load_trainable(
        config.models.policy.path,
        kind="mtp",
        config=config,
        lora=common.lora_config(config),
        mesh=mesh,
        seed=int(config.seed),
    )


def export_policy(config, policy):
    """export_fn: the trained policy as an `mtp` model dir with the tokenizer carried along."""
    from pathlib import Path

    from wmtp_jax.train.checkpoint import export_model

    tok = Path(common.tokenizer_path(config.models.policy))

    def export(model, directory):
        from wmtp_jax.models.io import tokenizer_dir_files

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


def make_task(config, mesh):
    from wmtp_jax.train.loop import TrainTask

    tok = common.load_tokenizer(config.models.policy)
    train, val_iter_fn, _ = common.make_loaders(config, tok, pairwise=False)
    policy = build_policy(config, mesh)
    cs = int(config.training.loss_chunk_size)
    return TrainTask(
        model=policy,
        loss_fn=partial(loss_fn, chunk_size=cs),
        train_iter=train,
        trainable=common.trainable_filter(config),
        eval_fn=partial(eval_fn, chunk_size=cs),
        val_iter_fn=val_iter_fn,
        best_metric="val/loss",
        best_mode="min",
        count_tokens=common.count_response_tokens,
        batches_per_epoch=train.steps_per_epoch,
        export_fn=export_policy(config, policy),
    )


def run(config):
    from wmtp_jax.train.loop import fit

    mesh = common.setup(config)
    return fit(config, make_task(config, mesh), mesh=mesh)
