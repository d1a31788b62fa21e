"""Baseline: uniform MTP cross entropy on correct solutions (the original's run_baseline.py).

loss = compute_mtp_ce_loss(policy(input_ids), labels, attention_mask)["unweighted_ce_loss"]
(per head Σ(ce·m)/Σm, mean over heads with ≥ 1 valid token; `training.head_loss_weights` makes
it a weighted mean). Best checkpoint = lowest val/loss.
`training.loss_heads` = 1 trains head 0 only (next-token CE on the same trunk: the ntp control).

Shared by the MTP-policy pipelines (baseline, verifiable, rho1): `build_policy`, `export_policy`
and `policy_task_kwargs` (the NTP→MTP warm start of `training.warm_start` and the greedy
validation probe).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from wmtp_jax import ops
from wmtp_jax.data import loaders
from wmtp_jax.data.packing import packing_of
from wmtp_jax.models import load, serialization
from wmtp_jax.models.mtp import extra_heads_mask
from wmtp_jax.models.serialization import tokenizer_dir_files
from wmtp_jax.pipelines import specs
from wmtp_jax.pipelines.bootstrap import setup
from wmtp_jax.pipelines.evaluation import closing_eval, greedy_probe
from wmtp_jax.train.checkpoint import export_model
from wmtp_jax.train.loop import TrainTask, fit
from wmtp_jax.train.mesh import rules_for


def loss_fn(
    model, frozen, batch, rng, extra, *, chunk_size: int = 0, n_future=None, head_weights=None
):
    """One micro-batch → (loss, (metrics, extra)); metrics: train/loss (the loop's) and the
    per-head CE `ce_head_<k>`."""
    out = ops.policy_mtp_loss(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["attention_mask"],
        chunk_size=chunk_size,
        n_future=n_future,
        head_weights=head_weights,
        **packing_of(batch),
    )
    return out["unweighted_ce_loss"], (ops.head_metrics(out), extra)


def eval_fn(model, frozen, batch, extra, *, chunk_size: int = 0, n_future=None, head_weights=None):
    """val/loss = unweighted MTP CE of one validation batch (head-weighted like training), and
    val/ce_head_<k>."""
    out = ops.policy_mtp_loss(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["attention_mask"],
        chunk_size=chunk_size,
        n_future=n_future,
        head_weights=head_weights,
        **packing_of(batch),
    )
    return {"loss": out["unweighted_ce_loss"], **ops.head_metrics(out)}


def build_policy(config, mesh):
    """Trainable MTP policy from models.policy.path (+ LoRA when training.use_lora)."""
    return load.load_trainable(
        config.models.policy.path,
        kind="mtp",
        runtime=specs.runtime(config),
        rules=rules_for(config.runtime.sharding).params,
        lora=specs.lora(config),
        mesh=mesh,
        seed=int(config.seed),
    )


def head_weights(config, policy):
    """`training.head_loss_weights` as a tuple of K floats, or None (uniform)."""
    w = tuple(float(x) for x in config.training.get("head_loss_weights", ()) or ())
    if not w:
        return None
    k = int(policy.args.n_future_tokens)
    if len(w) != k:
        raise ValueError(
            f"training.head_loss_weights has {len(w)} values; the policy has {k} heads"
        )
    return w


def made_by_hf_to_mtp(path) -> bool:
    """Whether the model dir was written by `conversion hf-to-mtp` (its model_config.json's
    source records `hf_to_mtp`): heads 1..K−1 are untrained copies, head 0 the source model."""
    try:
        cfg = serialization.read_config(path)
    except (FileNotFoundError, ValueError):
        return False
    return "hf_to_mtp" in (cfg.get("source") or {})


def warm_start_steps(config) -> int:
    """Optimizer steps of the NTP→MTP warm start (`training.warm_start`): `steps` when mode is
    on, or auto and the policy was made by hf-to-mtp; else 0."""
    ws = config.training.get("warm_start")
    if not ws or ws.mode == "off":
        return 0
    if ws.mode == "auto" and not made_by_hf_to_mtp(config.models.policy.path):
        return 0
    return int(ws.steps)


def policy_task_kwargs(config) -> dict:
    """TrainTask fields every MTP-policy pipeline shares: the warm start (trunk, norm,
    embeddings and head 0 frozen, heads 1..K−1 trained at learning rate × `lr_scale`) and the
    greedy pass@1 probe."""
    ws = config.training.get("warm_start")
    scale = float(ws.lr_scale) if ws else 1.0
    return {
        "warm_start_steps": warm_start_steps(config),
        "warm_start_mask": partial(extra_heads_mask, scale=scale),
        "probe": greedy_probe(config, specs.tokenizer(config.models.policy)),
    }


def export_policy(config, policy):
    """export_fn: the trained policy as an `mtp` model dir with the tokenizer carried along."""
    tok = Path(specs.tokenizer(config.models.policy))

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
        data = loaders.load(
            specs.data_spec(config), specs.tokenizer(config.models.policy), pairwise=False
        )
    if policy is None:
        policy = build_policy(config, mesh)
    kw = dict(
        chunk_size=int(config.training.loss_chunk_size),
        n_future=int(config.training.get("loss_heads", 0)) or None,
        head_weights=head_weights(config, policy),
    )
    return TrainTask(
        model=policy,
        loss_fn=partial(loss_fn, **kw),
        train_iter=data.train,
        trainable=load.trainable_filter(config.training.use_lora),
        eval_fn=partial(eval_fn, **kw),
        val_iter_fn=data.val_iter_fn,
        best_metric="val/loss",
        best_mode="min",
        count_tokens=loaders.count_response_tokens,
        batches_per_epoch=loaders.steps_per_epoch(data),
        export_fn=export_policy(config, policy),
        **policy_task_kwargs(config),
    )


def run(config):
    mesh = setup(config)
    return closing_eval(config, fit(config, build(config, mesh), mesh=mesh))
