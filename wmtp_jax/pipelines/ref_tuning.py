"""Ref-tuning: NTP supervised fine-tuning of the HF-layout LLaMA (the original's run_ref_tuning.py).

loss = compute_ntp_loss(model(ids, attention_mask), labels, attention_mask): logits[:, :-1]
against labels[:, 1:], mask (labels ≠ −100)·attention_mask, mean over valid tokens. The
collator pads on the right (the tokenizer is forced to right padding; the original's was not).
Best = lowest val/loss. Output: `<output_dir>/final_model`, a `llama` dir (load_llama) that
rho1 uses as its reference (LoRA factors, if any, are stored and merged on load).
"""

from __future__ import annotations

from pathlib import Path

from wmtp_jax import ops
from wmtp_jax.pipelines import common


def ntp_loss(model, batch):
    """Packed batches (data.packing): segment ids replace the attention mask."""
    seg, am = batch.get("segment_ids"), batch["attention_mask"]
    if seg is None:
        logits = model(batch["input_ids"], attention_mask=am)
    else:
        logits = model(batch["input_ids"], segment_ids=seg, positions=batch.get("positions"))
    return ops.compute_ntp_loss(logits, batch["labels"], am, segment_ids=seg)


def loss_fn(model, frozen, batch, rng, extra):
    return ntp_loss(model, batch), ({}, extra)


def eval_fn(model, frozen, batch, extra):
    return {"loss": ntp_loss(model, batch)}


def make_task(config, mesh):
    from wmtp_jax.train.checkpoint import export_model
    from wmtp_jax.train.loop import TrainTask

    entry = config.models.policy
    tok = common.load_tokenizer(entry)
    if tok.padding_side != "right":
        raise ValueError(f"{common.tokenizer_path(entry)}: padding_side must be right")
    train, val_iter_fn, _ = common.make_loaders(config, tok, pairwise=False)
    lora = common.lora_config(config, hf_names=True)
    model = common.load_trainable(
        entry.path, kind="llama", config=config, lora=lora, mesh=mesh, seed=int(config.seed)
    )
    tok_dir = Path(common.tokenizer_path(entry))

    def export(m, directory):
        from wmtp_jax.models.io import tokenizer_dir_files

        return export_model(
            directory,
            m,
            kind="llama",
            args=m.args,
            lora=lora,
            lm_head=True,
            tokenizer=tokenizer_dir_files(tok_dir),
            source={"pipeline": "ref_tuning", "base": entry.path},
        )

    return TrainTask(
        model=model,
        loss_fn=loss_fn,
        train_iter=train,
        trainable=common.trainable_filter(config),
        eval_fn=eval_fn,
        val_iter_fn=val_iter_fn,
        best_metric="val/loss",
        best_mode="min",
        count_tokens=common.count_response_tokens,
        batches_per_epoch=train.steps_per_epoch,
        export_fn=export,
    )


def run(config):
    from wmtp_jax.train.loop import fit

    mesh = common.setup(config)
    return fit(config, make_task(config, mesh), mesh=mesh)
