"""The policy an evaluation scores: a model directory or a training checkpoint, restored.

A model dir (`wmtp_jax.models.serialization` format) may hold an `mtp` policy or a plain `llama`
(next-token) model with an LM head. A training run (or one of its step directories) is read
through `wmtp_jax.train.checkpoint`: the base model named by the run's config, overlaid with the
checkpoint's trainable (and stored frozen) parameters, LoRA rebuilt and merged.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from wmtp_jax.models import serialization
from wmtp_jax.models.load import lora_config
from wmtp_jax.models.lora import merge_lora
from wmtp_jax.models.partitioning import state_shardings
from wmtp_jax.train import checkpoint
from wmtp_jax.train.mesh import rules_for

GENERATIVE_KINDS = ("mtp", "llama")


def restore_training_checkpoint(step_dir: Path, *, base_model: str = "", dtype=None):
    """(MTPTransformer, run config, base model dir) from a training checkpoint: base weights of
    `base_model` (default the run's models.policy.path) + the checkpoint's trainable params (all,
    or LoRA factors) + its frozen params when stored; LoRA is rebuilt from the run's
    training.lora and merged."""
    run_cfg = ml_collections.ConfigDict(checkpoint.read_config(step_dir))
    base = base_model or run_cfg.models.policy.path
    if not (Path(base) / serialization.CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"base model {base!r} of checkpoint {step_dir} not found (set config.base_model)"
        )
    cfg = dict(serialization.read_config(base))
    lora = lora_config(run_cfg) if run_cfg.training.get("use_lora", False) else None
    cfg["lora"] = lora.to_dict() if lora is not None else None
    dtype = dtype or "float32"
    args = serialization.ModelArgs.from_dict(cfg["args"]).replace(dtype=dtype, param_dtype=dtype)
    make = serialization.model_factory(cfg, args)
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    _, base_params = serialization.load_params(base, dtype=np.float32)
    values = checkpoint.flatten(base_params)
    saved = checkpoint.read_params(step_dir)
    want = checkpoint.flatten(nnx.to_pure_dict(abstract))
    unknown = sorted("/".join(p) for p in saved if p not in want)
    if unknown:
        raise ValueError(
            f"{step_dir}/state: parameters {unknown[:5]} are not in the model "
            f"rebuilt from {base} (lora={cfg['lora']})"
        )
    values.update(saved)
    _fill(abstract, want, values, step_dir, base, dtype)
    if jax.tree.leaves(rest):
        rest = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[2])()
    model = nnx.merge(graphdef, abstract, rest)
    if model.lora is not None:
        model = merge_lora(model)
    return model, run_cfg, base


def _fill(abstract, want: dict, values: dict, step_dir, base, dtype):
    """Put `values` ({key path: array}) into the abstract parameter state, checking that every
    wanted path has a value of the wanted shape."""
    missing = sorted("/".join(p) for p in want if p not in values)
    if missing:
        raise ValueError(
            f"{step_dir}: no value for {missing[:5]} (neither in {base} nor in the checkpoint)"
        )
    for p, a in want.items():
        if tuple(values[p].shape) != tuple(a.shape):
            raise ValueError(
                f"{step_dir}: parameter {'/'.join(p)} has shape "
                f"{tuple(values[p].shape)}, the model expects {tuple(a.shape)}"
            )
    pure = nnx.to_pure_dict(abstract)
    for p in want:
        node = pure
        for k in p[:-1]:
            node = node[int(k) if k.isdigit() and int(k) in node else k]
        node[p[-1]] = jax.numpy.asarray(values[p], dtype)
    nnx.replace_by_pure_dict(abstract, pure)


def restore_policy(config, mesh=None):
    """(model, tokenizer dir, info dict) for `config.checkpoint` (model dir or run).

    A model dir may hold an `mtp` policy or a plain `llama` (next-token) model with an LM head,
    e.g. `python -m conversion hf-to-flax` of a public checkpoint: the starting model's pass@k.
    """
    path = Path(config.checkpoint)
    if not config.checkpoint:
        raise ValueError(
            "config.checkpoint is required: a model dir, a training run dir "
            "or <run>/checkpoints/<step>"
        )
    if (path / serialization.CONFIG_FILE).exists():
        return _restore_model_dir(config, path, mesh)
    try:
        step_dir, root, best, step = checkpoint.locate(path, best=bool(config.use_best))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"checkpoint={str(path)!r}: neither a model dir ({serialization.CONFIG_FILE}) "
            f"nor a training run ({e})"
        ) from None
    model, run_cfg, base = restore_training_checkpoint(
        step_dir, base_model=config.base_model, dtype=config.dtype or None
    )
    if mesh is not None:
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = jax.device_put(
            params, state_shardings(params, mesh, rules_for(config.runtime.sharding).params)
        )
        model = nnx.merge(graphdef, params, rest)
    tok = (
        config.tokenizer_path
        or run_cfg.models.policy.get("tokenizer_path")
        or str(Path(base) / "tokenizer")
    )
    info = {
        "checkpoint": str(step_dir),
        "kind": "training_checkpoint",
        "step": step,
        "best": best,
        "base_model": base,
        "root": str(root),
    }
    return model, tok, info


def _restore_model_dir(config, path: Path, mesh):
    cfg = serialization.read_config(path)
    if cfg["kind"] not in GENERATIVE_KINDS or not cfg.get("lm_head", True):
        raise ValueError(
            f"checkpoint={str(path)!r}: kind {cfg['kind']!r}"
            f"{'' if cfg.get('lm_head', True) else ' without an LM head'} cannot "
            f"generate; evaluation needs an 'mtp' policy or a 'llama' model"
        )
    model = serialization.load_model(path, kind=cfg["kind"], dtype=config.dtype or None, mesh=mesh)
    if model.lora is not None:
        model = merge_lora(model)
    tok = config.tokenizer_path or str(path / "tokenizer")
    info = {
        "checkpoint": str(path),
        "kind": "model_dir",
        "model_kind": cfg["kind"],
        "root": str(path),
    }
    return model, tok, info
