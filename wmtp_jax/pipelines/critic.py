"""Critic: an independent value model on pairs (the original's run_critic.py).

One forward of the 2B sequences [pos; neg] → values [2B,S,1] → split. `value_loss.type`:
  pairwise_ranking: coef · mean_b −log σ(v̄_pos − v̄_neg), v̄ the masked mean value;
  lambda_return:    coef · (L_λ(v_pos, R=1) + L_λ(v_neg, R=0)) / 2, L_λ = Huber(δ)/δ or MSE
                    against λ-returns ending at the last real token, λ from lambda_schedule
                    (validation always λ = 1, pure Monte Carlo).
Parameter groups: "lora" (training.lora.learning_rate / weight_decay) and "value_head"
(training.value_head.*). Without LoRA, `backbone_frozen` trains only the head. Diagnostics as the
original (pairwise accuracy, margin, token variance, spikiness, mean |TD|, position corr.).
Best = highest val/margin. Output: `<output_dir>/final_model`, a `critic` dir (load_critic).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax.numpy as jnp
from flax import nnx

from wmtp_jax import ops
from wmtp_jax.data import loaders
from wmtp_jax.models import load, serialization
from wmtp_jax.models.value import ValueModel
from wmtp_jax.pipelines.bootstrap import setup
from wmtp_jax.train.checkpoint import export_model
from wmtp_jax.train.loop import TrainTask, fit
from wmtp_jax.train.mesh import rules_for

VALUE_HEAD = "value_head"


class ValueLossConfig(NamedTuple):
    type: str = "pairwise_ranking"
    coef: float = 1.0
    gamma: float = 1.0
    loss_fn: str = "huber"
    huber_delta: float = 0.5
    schedule: tuple = ("linear", 1.0, 0.95, 250, 500)  # type, start, end, warmup, decay

    @classmethod
    def from_config(cls, c):
        v = c.training.value_loss
        s = v.lambda_schedule
        start = float(s.value) if s.type == "constant" else float(s.start)
        return cls(
            v.type,
            float(v.coef),
            float(v.gamma),
            v.loss_fn,
            float(v.huber_delta),
            (s.type, start, float(s.end), int(s.warmup_steps), int(s.decay_steps)),
        )

    def lam(self, step):
        kind, start, end, warm, decay = self.schedule
        return ops.get_scheduled_lambda(step, warm, decay, start, end, kind)


def split_values(model, batch):
    """One forward of [pos; neg] → (v_pos, v_neg) float32 [B,S], masks [B,S], attention masks.
    Packed pairs (data.packing): segment ids and positions instead of the attention mask."""
    b = batch["pos_input_ids"].shape[0]
    cat = lambda k: jnp.concatenate([batch[f"pos_{k}"], batch[f"neg_{k}"]], axis=0)
    ids = cat("input_ids")
    if "pos_segment_ids" in batch:
        v = model(ids, segment_ids=cat("segment_ids"), positions=cat("positions"))
    else:
        v = model(ids, cat("attention_mask"))
    v = v[..., 0].astype(jnp.float32)
    m_pos = ops.loss_mask_of(batch["pos_labels"], batch["pos_attention_mask"])
    m_neg = ops.loss_mask_of(batch["neg_labels"], batch["neg_attention_mask"])
    return v[:b], v[b:], m_pos, m_neg


def _row_weights(batch, b):
    return batch["valid"].astype(jnp.float32) if "valid" in batch else jnp.ones((b,), jnp.float32)


def pair_segments(batch):
    """(pos ids, neg ids) `[B,S]` of packed pairs (data.packing), else None."""
    if "pos_segment_ids" in batch:
        return batch["pos_segment_ids"], batch["neg_segment_ids"]
    return None


def value_loss(v_pos, v_neg, m_pos, m_neg, batch, vl: ValueLossConfig, lam):
    """The critic objective (scalar); padding rows (`valid` = 0) do not count."""
    if vl.type == "pairwise_ranking":
        valid = _row_weights(batch, v_pos.shape[0])
        seg = pair_segments(batch)
        return vl.coef * ops.pairwise_ranking_loss(v_pos, v_neg, m_pos, m_neg, valid, seg)
    b = v_pos.shape[0]

    def side(v, name, m, reward):
        am = batch[f"{name}_attention_mask"]
        return ops.compute_lambda_value_loss(
            v,
            jnp.full((b,), reward, jnp.float32),
            am,
            m,
            vl.gamma,
            lam,
            vl.loss_fn,
            vl.huber_delta,
            ops.create_output_end_mask(am),
            segment_ids=batch.get(f"{name}_segment_ids"),
        )

    return vl.coef * (side(v_pos, "pos", m_pos, 1.0) + side(v_neg, "neg", m_neg, 0.0)) / 2


def diagnostics(v_pos, v_neg, m_pos, m_neg, batch) -> dict:
    """The original's critic diagnostics (keys without prefix; the caller names them). Packed
    pairs: the per-pair ones only (accuracy, means, margin); the per-sequence token statistics
    need one sequence per row."""
    valid = _row_weights(batch, v_pos.shape[0])
    seg = pair_segments(batch)
    acc = ops.compute_pairwise_accuracy(v_pos, v_neg, m_pos, m_neg, valid, seg)
    out = {k: acc[k] for k in ("pairwise_accuracy", "mean_pos", "mean_neg", "margin")}
    if seg is not None:
        return out
    for side, v, m in (("pos", v_pos, m_pos), ("neg", v_neg, m_neg)):
        td = ops.compute_td_error_stats(v, m)
        out.update(
            {
                f"{side}_token_variance": ops.compute_token_variance(v, m),
                f"{side}_spikiness": td["spikiness"],
                f"{side}_mean_abs_td": td["mean_abs_td"],
                f"{side}_position_corr": ops.compute_position_correlation(v, m),
            }
        )
    return out


def loss_fn(model, frozen, batch, rng, extra, *, vl: ValueLossConfig, ga: int):
    v_pos, v_neg, m_pos, m_neg = split_values(model, batch)
    step = extra["micro_batches"] // ga
    lam = vl.lam(step) if vl.type == "lambda_return" else 1.0
    loss = value_loss(v_pos, v_neg, m_pos, m_neg, batch, vl, lam)
    d = diagnostics(v_pos, v_neg, m_pos, m_neg, batch)
    metrics = {"pairwise_accuracy": d.pop("pairwise_accuracy")}
    metrics.update({f"value/{k}": v for k, v in d.items()})
    if vl.type == "lambda_return":
        metrics["lambda"] = jnp.asarray(lam, jnp.float32)
    return loss, (metrics, {"micro_batches": extra["micro_batches"] + 1})


def eval_fn(model, frozen, batch, extra, *, vl: ValueLossConfig):
    """val/loss (λ = 1), val/pairwise_accuracy, val/margin, ... (best = max val/margin)."""
    v_pos, v_neg, m_pos, m_neg = split_values(model, batch)
    return {
        "loss": value_loss(v_pos, v_neg, m_pos, m_neg, batch, vl, 1.0),
        **diagnostics(v_pos, v_neg, m_pos, m_neg, batch),
    }


# ---- model ----------------------------------------------------------------------------------


def _backbone_key(model_tree: dict, saved: dict) -> tuple:
    """Where the saved llama tree sits in the critic's tree (the subtree holding its keys)."""
    want = set(saved) - {"output"}
    if want <= set(model_tree):
        return ()
    for k, sub in model_tree.items():
        if isinstance(sub, dict) and want <= set(sub):
            return (k,)
    raise ValueError(
        f"cannot place llama keys {sorted(want)} in the critic's parameter tree "
        f"(top-level keys {sorted(model_tree)})"
    )


def build_critic(config, mesh):
    """ValueModel on the llama backbone of models.value_model.path (+ LoRA), head per config."""
    path = config.models.value_model.path
    args = serialization.ModelArgs.from_dict(serialization.read_config(path)["args"]).replace(
        **load.runtime_overrides(config)
    )
    model = random_critic(config, mesh, args)
    _, saved = serialization.load_params(path)
    sub = _backbone_key(nnx.state(model, nnx.Param).to_pure_dict(), saved)
    return load.load_into(model, path, subtree=sub, drop=("output",))


def random_critic(config, mesh, args: serialization.ModelArgs) -> ValueModel:
    """A random-init ValueModel of backbone `args` with the configured head and LoRA, created
    directly in its sharded layout on `mesh`."""
    t = config.training
    make = lambda: ValueModel(
        args,
        rngs=nnx.Rngs(int(config.seed)),
        head_type=t.value_head.type,
        dropout=float(t.value_head.dropout),
        bias_init=float(t.value_loss.bias_init),
        lora=load.lora_config(config, hf_names=True),
    )
    return load.build_sharded(make, mesh, rules_for(config.runtime.sharding).params)


def trainable(config):
    head = nnx.All(nnx.Param, nnx.PathContains(VALUE_HEAD))
    if config.training.use_lora:
        return nnx.Any(nnx.LoRAParam, head)
    return head if config.training.backbone_frozen else nnx.Param


def param_groups(config):
    t = config.training
    groups = {
        VALUE_HEAD: {
            "learning_rate": float(t.value_head.learning_rate),
            "weight_decay": float(t.value_head.weight_decay),
        }
    }
    if t.use_lora or not t.backbone_frozen:
        groups["lora"] = {
            "learning_rate": float(t.lora.learning_rate),
            "weight_decay": float(t.lora.weight_decay),
        }
    return dict(sorted(groups.items()))  # "lora" first: train/learning_rate = the LoRA LR


def export_critic(config, args: serialization.ModelArgs):
    """export_fn: the trained critic as a `critic` model dir with the tokenizer carried along."""
    entry, t = config.models.value_model, config.training
    head = {
        "type": t.value_head.type,
        "dropout": float(t.value_head.dropout),
        "bias_init": float(t.value_loss.bias_init),
    }
    tok_dir = loaders.tokenizer_path(entry)

    def export(m, directory):
        return export_model(
            directory,
            m,
            kind="critic",
            args=args,
            value_head=head,
            lora=load.lora_config(config, hf_names=True),
            tokenizer=serialization.tokenizer_dir_files(tok_dir),
            source={"pipeline": "critic", "base": entry.path},
        )

    return export


def build(config, mesh, *, model=None, data: loaders.Loaders | None = None) -> TrainTask:
    """The critic TrainTask. model / data: already built (e.g. random-init for the benchmark);
    default: loaded from config.models.value_model and config.dataset (pairs)."""
    if data is None:
        data = loaders.load(config, config.models.value_model, pairwise=True)
    if model is None:
        model = build_critic(config, mesh)
    vl = ValueLossConfig.from_config(config)
    t = config.training
    return TrainTask(
        model=model,
        loss_fn=partial(loss_fn, vl=vl, ga=int(t.gradient_accumulation_steps)),
        train_iter=data.train,
        trainable=trainable(config),
        extra_state={"micro_batches": jnp.zeros((), jnp.int32)},
        param_labels=lambda path: VALUE_HEAD if VALUE_HEAD in path else "lora",
        param_groups=param_groups(config),
        eval_fn=partial(eval_fn, vl=vl),
        val_iter_fn=data.val_iter_fn,
        best_metric="val/margin",
        best_mode="max",
        count_tokens=loaders.count_response_tokens,
        batches_per_epoch=loaders.steps_per_epoch(data),
        export_fn=export_critic(config, model.args),
    )


def run(config):
    mesh = setup(config)
    return fit(config, build(config, mesh), mesh=mesh)
