"""Models of a training run: trainable models restored from a model dir (float32 master params,
the run's compute dtype, LoRA factors attached), frozen inference models (LoRA merged), random
init directly in the sharded layout, and the config readers they take their options from.

Sharding rules are passed in (`rules`: the strategy's parameter rules, train.mesh.rules_for).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from wmtp_jax.models import serialization
from wmtp_jax.models.lora import HF_TO_META_TARGET, LoRAConfig, merge_lora
from wmtp_jax.models.partitioning import DEFAULT_RULES, Rules, init_sharded

# ---- config readers --------------------------------------------------------------------------


def lora_config(config, *, hf_names: bool = False) -> LoRAConfig | None:
    """LoRAConfig from training.lora when training.use_lora, else None (HF names mapped)."""
    if not config.training.use_lora:
        return None
    lo = config.training.lora
    targets = tuple(HF_TO_META_TARGET.get(t, t) if hf_names else t for t in lo.target_modules)
    return LoRAConfig(
        rank=int(lo.rank), alpha=float(lo.alpha), dropout=float(lo.dropout), targets=targets
    )


def runtime_overrides(config) -> dict:
    """ModelArgs overrides of the trained model: float32 master params, runtime compute dtype,
    remat policy and attention implementation."""
    return {
        "dtype": config.runtime.dtype,
        "param_dtype": "float32",
        "remat": config.runtime.remat,
        "attention": config.runtime.attention,
    }


def trainable_filter(config, extra: Any = None):
    """LoRA-only (`nnx.LoRAParam`, plus `extra`) or every parameter."""
    if not config.training.use_lora:
        return nnx.Param
    return nnx.LoRAParam if extra is None else nnx.Any(nnx.LoRAParam, extra)


# ---- parameter trees -------------------------------------------------------------------------


def _overlay(target: dict, base: dict, path: str, directory) -> dict:
    """`target` (pure dict) with every leaf of `base` written in (shapes checked)."""
    out = dict(target)
    for k, v in base.items():
        where = f"{path}/{k}" if path else str(k)
        if k not in target:
            raise ValueError(
                f"{directory}: parameter {where} has no counterpart in the model "
                f"being trained (model keys here: {sorted(map(str, target))[:8]})"
            )
        if isinstance(v, dict):
            out[k] = _overlay(target[k], v, where, directory)
        else:
            t = target[k]
            if tuple(t.shape) != tuple(v.shape):
                raise ValueError(
                    f"{directory}: parameter {where} has shape {tuple(v.shape)}, "
                    f"the model expects {tuple(t.shape)}"
                )
            out[k] = jax.device_put(np.asarray(v, dtype=np.dtype(t.dtype)), t.sharding)
    return out


def load_into(model: nnx.Module, directory, *, subtree: tuple = (), drop: tuple = ()) -> nnx.Module:
    """Write the parameters of model dir `directory` into `model` (in place, keeping shardings).

    subtree: where the saved tree goes inside the model's tree (e.g. a critic's backbone);
    drop: top-level saved keys to skip (e.g. the llama `output` head under a value head)."""
    _, saved = serialization.load_params(directory)
    saved = {k: v for k, v in saved.items() if k not in drop}
    state = nnx.state(model, nnx.Param)
    pure = state.to_pure_dict()
    node = pure
    for key in subtree:
        node = node[key]
    merged_sub = _overlay(node, saved, "/".join(subtree), directory)
    if subtree:
        parent = pure
        for key in subtree[:-1]:
            parent = parent[key]
        parent[subtree[-1]] = merged_sub
    else:
        pure = merged_sub
    state.replace_by_pure_dict(pure)
    nnx.update(model, state)
    return model


# ---- models ----------------------------------------------------------------------------------


def build_sharded(make: Callable[[], nnx.Module], mesh=None, rules: Rules = DEFAULT_RULES):
    """Random-init `make()` directly in its sharded layout on `mesh` (or on one device)."""
    if mesh is None:
        return make()
    return init_sharded(make, mesh, rules)


def load_trainable(
    directory,
    *,
    kind: str,
    config,
    rules: Rules,
    lora: LoRAConfig | None = None,
    mesh=None,
    seed: int = 0,
):
    """The model of `directory` rebuilt with float32 params, the runtime compute dtype and
    `lora` factors (A random, B zero) attached; base weights restored from the directory."""
    cfg = dict(serialization.read_config(directory))
    args = serialization.ModelArgs.from_dict(cfg["args"]).replace(**runtime_overrides(config))
    if lora is None and not cfg.get("lora"):
        return serialization.load_model(
            directory,
            kind=kind,
            dtype="float32",
            args_overrides=runtime_overrides(config),
            mesh=mesh,
            rules=rules,
            seed=seed,
        )
    if cfg.get("lora") and lora is not None:
        raise ValueError(
            f"{directory}: already carries LoRA factors; merge them before "
            f"adding new ones (training.use_lora)"
        )
    cfg["lora"] = lora.to_dict() if lora is not None else cfg.get("lora")
    model = build_sharded(serialization.model_factory(cfg, args, seed=seed), mesh, rules)
    return load_into(model, directory)


def load_frozen(directory, *, kind: str, dtype: str, config, rules: Rules, mesh=None):
    """An inference-only model (critic / reference) in `dtype`, sharded with the strategy's
    parameter `rules`; LoRA factors, when the directory has them, are merged into the weights."""
    d = Path(directory)
    if not (d / serialization.CONFIG_FILE).exists():
        raise FileNotFoundError(f"{d}: no model directory ({serialization.CONFIG_FILE} missing)")
    model = serialization.load_model(
        d,
        kind=kind,
        dtype=dtype,
        mesh=mesh,
        rules=rules,
        args_overrides={"remat": "none", "attention": config.runtime.attention},
    )
    if serialization.read_config(d).get("lora"):
        model = merge_lora(model)
    model.eval()
    return model
