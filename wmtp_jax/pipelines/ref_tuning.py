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
from wmtp_jax.data import loaders
from wmtp_jax.models import load
from wmtp_jax.models.serialization import tokenizer_dir_files
from wmtp_jax.pipelines.bootstrap import setup
from wmtp_jax.train.checkpoint import export_model
from wmtp_jax.train.loop import TrainTask, fit
from wmtp_jax.train.mesh import rules_for


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


def load_data(config) -> loaders.Loaders:
    """Tokenizer (right padding required) and loaders of config.dataset."""
    entry = config.models.policy
    data = loaders.load(config, entry, pairwise=False)
    if data.tokenizer.padding_side != "right":
        raise ValueError(f"{loaders.tokenizer_path(entry)}: padding_side must be right")
    return data


def build_model(config, mesh):
    """The trainable llama of models.policy.path (+ LoRA on the HF projection names)."""
    return load.load_trainable(
        config.models.policy.path,
        kind="llama",
        config=config,
        rules=rules_for(config.runtime.sharding).params,
        lora=load.lora_config(config, hf_names=True),
        mesh=mesh,
        seed=int(config.seed),
    )


def export_llama(config):
    """export_fn: the tuned model as a `llama` dir (with its LM head and the tokenizer)."""
    entry = config.models.policy
    tok_dir = Path(loaders.tokenizer_path(entry))

    def export(m, directory):
        return export_model(
            directory,
            m,
            kind="llama",
            args=m.args,
            lora=load.lora_config(config, hf_names=True),
            lm_head=True,
            tokenizer=tokenizer_dir_files(tok_dir),
            source={"pipeline": "ref_tuning", "base": entry.path},
        )

    return export


def build(config, mesh, *, model=None, data: loaders.Loaders | None = None) -> TrainTask:
    """The ref-tuning TrainTask. model / data: already built; default: loaded from
    config.models.policy and config.dataset."""
    if data is None:
        data = load_data(config)
    if model is None:
        model = build_model(config, mesh)
    return TrainTask(
        model=model,
        loss_fn=loss_fn,
        train_iter=data.train,
        trainable=load.trainable_filter(config),
        eval_fn=eval_fn,
        val_iter_fn=data.val_iter_fn,
        best_metric="val/loss",
        best_mode="min",
        count_tokens=loaders.count_response_tokens,
        batches_per_epoch=loaders.steps_per_epoch(data),
        export_fn=export_llama(config),
    )


def run(config):
    mesh = setup(config)
    return fit(config, build(config, mesh), mesh=mesh)
