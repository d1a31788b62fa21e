"""Shared pipeline helpers: data iterators, trainable models (base weights + LoRA), frozen
inference models sharded on the mesh, the MTP CE of a policy, and the end-of-run report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from wmtp_jax import ops

# ---- data ------------------------------------------------------------------------------------


def tokenizer_path(entry) -> str:
    """models.<role>.tokenizer_path, else `<path>/tokenizer`."""
    return entry.tokenizer_path or str(Path(entry.path) / "tokenizer")


def load_tokenizer(entry):
    from wmtp_jax.data import load_tokenizer as _load

    return _load(tokenizer_path(entry))


def sampling_dict(config, *, validation: bool = False, pairwise: bool | None = None) -> dict:
    """data_sampling as the sampler's plain dict (validation: n_samples = val_n_samples)."""
    s = config.data_sampling
    d = {
        "n_samples": int(s.val_n_samples if validation else s.n_samples),
        "use_pairwise": bool(s.use_pairwise if pairwise is None else pairwise),
        "max_pairs_per_problem": s.max_pairs_per_problem or None,
        "difficulty_bins": {k: list(v) for k, v in s.difficulty_bins.items()},
        "difficulty_weights": dict(s.difficulty_weights),
        "use_length_balanced": bool(s.use_length_balanced),
        "length_bins": list(s.length_bins),
    }
    return d


def make_source(config, split: str, *, pairwise: bool, validation: bool = False):
    """Sampled records of `split` (all processes see the same global list; the loader shards)."""
    from wmtp_jax.data import load_samples

    return load_samples(
        config.dataset.path,
        split,
        sampling_dict(config, validation=validation, pairwise=pairwise),
        seed=int(config.data_sampling.seed),
    )


def make_collator(config, tokenizer, *, pairwise: bool):
    from wmtp_jax.data import AlpacaCollator, PairwiseCollator

    cls = PairwiseCollator if pairwise else AlpacaCollator
    return cls(
        tokenizer,
        max_length=int(config.dataset.max_length),
        append_eos=bool(config.data.append_eos),
    )


def make_loaders(config, tokenizer, *, pairwise: bool):
    """(endless shuffled train loader, val_iter_fn, n_val_records).

    Batches: per-process rows of a global batch of `training.batch_size`, static length
    `dataset.max_length`, plus `valid` (0 on padding rows of the last validation batch)."""
    from wmtp_jax.data import DataLoader

    collate = make_collator(config, tokenizer, pairwise=pairwise)
    bs = int(config.training.batch_size)
    train_src = make_source(config, config.dataset.train, pairwise=pairwise)
    train = DataLoader(
        train_src,
        collate,
        bs,
        seed=int(config.seed),
        shuffle=True,
        num_threads=int(config.data.num_threads),
    )
    val_src = make_source(config, config.dataset.validation, pairwise=pairwise, validation=True)

    def val_iter_fn():
        return DataLoader(
            val_src,
            collate,
            bs,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
            num_threads=int(config.data.num_threads),
        )

    if config.data.get("packing", False):
        from wmtp_jax.data.packing import packed_loaders

        train, val_iter_fn = packed_loaders(
            config, tokenizer, collate, train_src, train, val_iter_fn
        )
    logging.info(
        "data: %d train / %d validation %s records from %s (max_length %d)",
        len(train_src),
        len(val_src),
        "pair" if pairwise else "pointwise",
        config.dataset.path,
        config.dataset.max_length,
    )
    return train, val_iter_fn, len(val_src)


# ---- models ----------------------------------------------------------------------------------


def lora_config(config, *, hf_names: bool = False):
    """LoRAConfig from training.lora when training.use_lora, else None (HF names mapped)."""
    if not config.training.use_lora:
        return None
    from wmtp_jax.models.lora import HF_TO_META_TARGET, LoRAConfig

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
    from wmtp_jax.models import io

    _, saved = io.load_params(directory)
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


def build_sharded(make: Callable[[], nnx.Module], mesh=None, strategy: str = "FULL_SHARD"):
    """Random-init `make()` directly in its sharded layout on `mesh` (or on one device)."""
    if mesh is None:
        return make()
    from wmtp_jax.models.partitioning import init_sharded
    from wmtp_jax.train.mesh import rules_for

    return init_sharded(make, mesh, rules_for(strategy).params)


def load_trainable(
    directory,
    *,
    kind: str,
    config,
    lora=None,
    mesh=None,
    seed: int = 0,
    make: Callable | None = None,
):
    """The model of `directory` rebuilt with float32 params, the runtime compute dtype and
    `lora` factors (A random, B zero) attached; base weights restored from the directory."""
    from wmtp_jax.models import io

    if make is None:
        cfg = dict(io.read_config(directory))
        args = io.ModelArgs.from_dict(cfg["args"]).replace(**runtime_overrides(config))
        if lora is None and not cfg.get("lora"):
            return io.load_model(
                directory,
                kind=kind,
                dtype="float32",
                args_overrides=runtime_overrides(config),
                mesh=mesh,
                rules=_rules(config),
                seed=seed,
            )
        if cfg.get("lora") and lora is not None:
            raise ValueError(
                f"{directory}: already carries LoRA factors; merge them before "
                f"adding new ones (training.use_lora)"
            )
        cfg["lora"] = lora.to_dict() if lora is not None else cfg.get("lora")
        make = io.model_factory(cfg, args, seed=seed)
    model = build_sharded(make, mesh, config.runtime.sharding)
    return load_into(model, directory)


def _rules(config):
    from wmtp_jax.train.mesh import rules_for

    return rules_for(config.runtime.sharding).params


def load_frozen(directory, *, kind: str, dtype: str, config, mesh=None):
    """An inference-only model (critic / reference) in `dtype`, sharded with the strategy's
    parameter rules; LoRA factors, when the directory has them, are merged into the weights."""
    from wmtp_jax.models import io

    d = Path(directory)
    if not (d / io.CONFIG_FILE).exists():
        raise FileNotFoundError(f"{d}: no model directory ({io.CONFIG_FILE} missing)")
    model = io.load_model(
        d,
        kind=kind,
        dtype=dtype,
        mesh=mesh,
        rules=_rules(config),
        args_overrides={"remat": "none", "attention": config.runtime.attention},
    )
    if io.read_config(d).get("lora"):
        from wmtp_jax.models import lora as lora_lib

        model = lora_lib.merge_lora(model)
    model.eval()
    return model


def trainable_filter(config, extra: Any = None):
    """LoRA-only (`nnx.LoRAParam`, plus `extra`) or every parameter."""
    if not config.training.use_lora:
        return nnx.Param
    return nnx.LoRAParam if extra is None else nnx.Any(nnx.LoRAParam, extra)


# ---- losses ----------------------------------------------------------------------------------


def policy_mtp_loss(
    policy,
    input_ids,
    labels,
    attention_mask,
    weights=None,
    *,
    chunk_size: int = 0,
    segment_ids=None,
    positions=None,
) -> dict:
    """compute_mtp_ce_loss of `policy(input_ids)`; chunk_size > 0 uses the chunked CE on the
    head latents (no `[B,S,K,V]` logits). Packed batches pass `segment_ids` / `positions`
    (attention and targets stay inside each sequence). Returns the ops dict."""
    pk = dict(segment_ids=segment_ids, positions=positions)
    if chunk_size and chunk_size > 0:
        _, lat = policy.latents(input_ids, **pk)
        return ops.chunked_mtp_ce_loss(
            lat,
            policy.norm.scale[...],
            policy.output_kernel(),
            labels,
            attention_mask,
            weights,
            norm_eps=policy.args.norm_eps,
            chunk_size=int(chunk_size),
            compute_dtype=policy.args.dtype,
            segment_ids=segment_ids,
        )
    logits = policy(input_ids, return_all_heads=True, **pk)
    return ops.compute_mtp_ce_loss(logits, labels, attention_mask, weights, segment_ids=segment_ids)


def packing_of(batch) -> dict:
    """{"segment_ids", "positions"} of a packed batch (data.packing), else both None."""
    return {"segment_ids": batch.get("segment_ids"), "positions": batch.get("positions")}


def count_response_tokens(batch) -> int:
    """Tokens per micro-batch for throughput: attention-mask ones (pos + neg for pairs)."""
    keys = [k for k in batch if k.endswith("attention_mask")]
    return int(sum(np.asarray(batch[k]).sum() for k in keys))


# ---- run ------------------------------------------------------------------------------------


def report(result, what: str) -> None:
    """Log where a (prerequisite) run's checkpoint, MLflow run and metrics are."""
    lines = [
        f"[{what}] {result.status} at step {result.step}",
        f"  checkpoint : {result.checkpoint_dir}",
        f"  best       : {result.best_dir}",
        f"  model dir  : {result.output_dir / 'final_model'}",
        f"  metrics    : {result.metrics_file}",
        f"  mlflow     : run {result.mlflow_run_id} in {result.mlflow_tracking_uri}",
    ]
    keys = [k for k in ("train/loss", "val/loss") if k in result.metrics]
    if keys:
        lines.append("  final      : " + ", ".join(f"{k}={result.metrics[k]:.4f}" for k in keys))
    logging.info("\n".join(lines))


def validate(config) -> None:
    """Re-run the pipeline config's value checks (command-line overrides came after
    get_config); a bad value exits non-zero with a message naming the key."""
    import importlib
    import sys

    try:
        importlib.import_module(f"wmtp_jax.configs.{config.pipeline}").validate(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def check_model_lengths(config) -> None:
    """dataset.max_length must fit every configured model's max_seq_len (read from its
    model_config.json; models not created yet are skipped): RoPE has no positions beyond it."""
    from wmtp_jax.configs.common import ConfigError
    from wmtp_jax.models import io

    n = int(config.dataset.max_length)
    for role, entry in config.get("models", {}).items():
        path = Path(str(entry.get("path", "")))
        if not (path / io.CONFIG_FILE).is_file():
            continue
        limit = int(io.read_config(path)["args"].get("max_seq_len", 2048))
        if n > limit:
            raise ConfigError(
                f"config error: dataset.max_length={n} exceeds models.{role} "
                f"max_seq_len={limit} ({path / io.CONFIG_FILE}); lower "
                f"dataset.max_length or use a model with a longer context"
            )


def setup(config):
    """Validate, lock output_dir (a second run on it refuses before loading anything), bootstrap
    micro storage when needed, check lengths against the models, and build the mesh."""
    from wmtp_jax.pipelines.bootstrap import ensure_micro_storage
    from wmtp_jax.train.lock import claim_output_dir
    from wmtp_jax.train.mesh import mesh_from_config

    validate(config)
    claim_output_dir(config.output_dir)
    check_model_lengths(config)
    ensure_micro_storage(config)
    check_model_lengths(config)  # again: bootstrap may have just created the micro models
    return mesh_from_config(config)
