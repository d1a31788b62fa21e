"""Config parts shared by every pipeline (ml_collections).

A pipeline config file does::

    from wmtp_jax.configs import common

    def get_config(variant="micro"):
        config = common.get_config("verifiable", variant)
        with config.unlocked():        # pipeline-specific keys
            config.weighting = ...
        return common.finalize(config)  # validates and locks

Key names follow the original's YAML config vocabulary (docs/semantics.md). Unknown keys
are errors (locked config); `validate_config` checks values and names the bad key: it is the one
validation entry (the common keys, then the pipeline's own `validate` in configs/<pipeline>.py).
"""

from __future__ import annotations

import importlib
import math

import ml_collections

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# = wmtp_jax.ops.attention.IMPLEMENTATIONS
ATTENTION = ("auto", "xla", "blockwise", "cudnn", "cpu_flash")
LR_SCHEDULERS = ("constant", "cosine", "linear")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
VARIANTS = ("micro", "small", "7b")


def get_config(pipeline: str, variant: str = "micro") -> ml_collections.ConfigDict:
    """The common (unlocked) ConfigDict for `pipeline`, with `variant` defaults applied."""
    c = ml_collections.ConfigDict()
    c.pipeline = pipeline
    c.variant = variant
    c.output_dir = f"storage/checkpoints/{pipeline}/{pipeline}-{variant}"
    c.seed = 42
    c.resume = True  # continue from the latest checkpoint in output_dir when there is one

    t = c.training = ml_collections.ConfigDict()
    t.max_steps = -1  # optimizer steps; -1 = n_epochs × steps per epoch of the train data
    t.n_epochs = 1.0
    t.batch_size = 8  # GLOBAL micro-batch (sequences over all processes/devices)
    t.gradient_accumulation_steps = 1
    t.learning_rate = 1e-4
    t.max_grad_norm = 1.0  # ≤ 0: no clipping (norm still logged)
    t.eval_every_steps = 100  # ≤ 0: only at the end
    t.log_interval = 10
    t.lr_scheduler = ml_collections.ConfigDict(
        {"type": "cosine", "warmup_ratio": 0.03, "min_lr_ratio": 0.005}
    )

    k = c.checkpoint = ml_collections.ConfigDict()
    k.every_steps = 500  # ≤ 0: no periodic checkpoints
    k.keep = 3  # periodic checkpoints kept (the best is kept separately)
    k.save_final = True
    k.save_best = True
    k.save_lora_only = False  # True: only trainable params (LoRA + heads) + base-model path

    m = c.mesh = ml_collections.ConfigDict()
    m.data, m.fsdp, m.tensor = 1, -1, 1  # -1 = the rest of the devices

    r = c.runtime = ml_collections.ConfigDict()
    r.sharding = "FULL_SHARD"
    r.dtype = "bfloat16"  # compute dtype; params and optimizer state stay float32
    r.remat = "none"
    # training attention (wmtp_jax.ops.attention): auto picks by platform (TPU: splash, GPU: cudnn)
    r.attention = "auto"
    # Persistent XLA compilation cache: a re-run, resume or evaluation skips recompiling ("" = off).
    r.compilation_cache = "storage/jax_cache"

    f = c.mlflow = ml_collections.ConfigDict()
    f.tracking_uri = "sqlite:///storage/mlflow/mlflow.db"
    f.experiment = "wmtp"  # "" disables MLflow (metrics.jsonl in output_dir is always written)
    # MLflow outages never stop training (calls are retried in the background); at the end the
    # run waits this long for queued calls, then leaves unsent rows to the next resumed run.
    f.sync_timeout = 120.0

    e = c.experiment = ml_collections.ConfigDict()
    e.name = f"{pipeline}-{variant}"
    e.description = ""
    e.tags = (pipeline, variant)

    c.logging = ml_collections.ConfigDict({"level": "INFO"})
    c.distributed = ml_collections.ConfigDict(
        {"coordinator_address": "", "num_processes": -1, "process_id": -1}
    )

    if variant in ("micro", "small"):  # small: micro + a real model (configs/parts.apply_small)
        apply_micro(c)
    elif variant == "7b":
        apply_7b(c)
    else:
        raise ValueError(f"unknown config variant {variant!r}; valid: {VARIANTS}")
    return c


def apply_micro(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Laptop-CPU defaults: float32, short run, frequent logs and checkpoints."""
    c.training.max_steps = 40
    c.training.batch_size = 4
    c.training.learning_rate = 1e-3
    c.training.eval_every_steps = 20
    c.training.log_interval = 5
    c.training.lr_scheduler.warmup_ratio = 0.05
    c.training.lr_scheduler.min_lr_ratio = 0.1
    c.checkpoint.every_steps = 20
    c.checkpoint.keep = 2
    c.runtime.dtype = "float32"
    return c


def apply_7b(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Production shapes (the original's production YAMLs): bf16 compute, remat, FSDP."""
    c.training.max_steps = -1
    c.training.n_epochs = 1.0
    c.training.batch_size = 32
    c.training.gradient_accumulation_steps = 4
    c.training.learning_rate = 1e-5
    c.training.max_grad_norm = 1.0
    c.training.eval_every_steps = 200
    c.training.log_interval = 5
    c.training.lr_scheduler.update({"type": "cosine", "warmup_ratio": 0.03, "min_lr_ratio": 0.005})
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 3
    c.runtime.update({"sharding": "FULL_SHARD", "dtype": "bfloat16", "remat": "full"})
    return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check the common keys and lock (a pipeline config file's `finalize` runs its own
    `validate` first)."""
    validate_common(c)
    c.lock()
    return c


class ConfigError(ValueError):
    """A config value is invalid; the message names the key."""


def _check(ok: bool, key: str, value, want: str):
    if not ok:
        raise ConfigError(f"config error: {key}={value!r} is invalid; {want}")


def validate_config(c: ml_collections.ConfigDict) -> None:
    """The one config validation: the common keys' values, then the pipeline's own checks
    (`validate(c)` of wmtp_jax.configs.<pipeline>, where there is one). Run at load and again
    after command-line overrides; raises ValueError (ConfigError) naming the key."""
    validate_common(c)
    module = pipeline_config_module(c.pipeline)
    if module is not None and hasattr(module, "validate"):
        module.validate(c)


def pipeline_config_module(pipeline: str):
    """wmtp_jax.configs.<pipeline>, or None when `pipeline` has no config module here."""
    if not isinstance(pipeline, str) or not pipeline.isidentifier() or pipeline in _NOT_PIPELINES:
        return None
    try:
        return importlib.import_module(f"wmtp_jax.configs.{pipeline}")
    except ModuleNotFoundError as e:
        if e.name == f"wmtp_jax.configs.{pipeline}":
            return None
        raise


_NOT_PIPELINES = ("common", "parts")


def validate_common(c: ml_collections.ConfigDict) -> None:
    """Check the common keys' values; raises ValueError naming the key."""
    t = c.training
    _check(isinstance(c.pipeline, str) and c.pipeline != "", "pipeline", c.pipeline, "need a name")
    _check(
        t.max_steps == -1 or t.max_steps > 0, "training.max_steps", t.max_steps, "need > 0 or -1"
    )
    _check(
        t.max_steps > 0 or (t.n_epochs > 0 and math.isfinite(t.n_epochs)),
        "training.n_epochs",
        t.n_epochs,
        "need > 0 when training.max_steps = -1",
    )
    _check(t.batch_size > 0, "training.batch_size", t.batch_size, "need > 0")
    _check(
        t.gradient_accumulation_steps >= 1,
        "training.gradient_accumulation_steps",
        t.gradient_accumulation_steps,
        "need ≥ 1",
    )
    _check(0 < t.learning_rate <= 1, "training.learning_rate", t.learning_rate, "need 0 < lr ≤ 1")
    _check(t.log_interval >= 1, "training.log_interval", t.log_interval, "need ≥ 1")
    _check(math.isfinite(t.max_grad_norm), "training.max_grad_norm", t.max_grad_norm, "need finite")
    s = t.lr_scheduler
    _check(s.type in LR_SCHEDULERS, "training.lr_scheduler.type", s.type, f"one of {LR_SCHEDULERS}")
    _check(
        0 <= s.warmup_ratio < 1,
        "training.lr_scheduler.warmup_ratio",
        s.warmup_ratio,
        "need 0 ≤ r < 1",
    )
    _check(
        0 <= s.min_lr_ratio <= 1,
        "training.lr_scheduler.min_lr_ratio",
        s.min_lr_ratio,
        "need 0 ≤ r ≤ 1",
    )
    if isinstance(c.checkpoint, ml_collections.ConfigDict):  # evaluation: checkpoint is a path
        _check(c.checkpoint.keep >= 1, "checkpoint.keep", c.checkpoint.keep, "need ≥ 1")
    for ax in ("data", "fsdp", "tensor"):
        v = c.mesh[ax]
        _check(v == -1 or v >= 1, f"mesh.{ax}", v, "need ≥ 1 or -1 (the rest of the devices)")
    _check(
        [c.mesh.data, c.mesh.fsdp, c.mesh.tensor].count(-1) <= 1,
        "mesh",
        dict(c.mesh),
        "at most one axis may be -1",
    )
    _check(
        c.runtime.sharding in SHARDING_STRATEGIES,
        "runtime.sharding",
        c.runtime.sharding,
        f"one of {SHARDING_STRATEGIES}",
    )
    _check(c.runtime.dtype in DTYPES, "runtime.dtype", c.runtime.dtype, f"one of {DTYPES}")
    _check(
        c.runtime.remat in REMAT_POLICIES,
        "runtime.remat",
        c.runtime.remat,
        f"one of {REMAT_POLICIES}",
    )
    _check(
        c.runtime.attention in ATTENTION,
        "runtime.attention",
        c.runtime.attention,
        f"one of {ATTENTION}",
    )
    _check(
        str(c.logging.level).upper() in LOG_LEVELS,
        "logging.level",
        c.logging.level,
        f"one of {LOG_LEVELS}",
    )
    _check(
        isinstance(c.output_dir, str) and c.output_dir != "",
        "output_dir",
        c.output_dir,
        "need a directory",
    )
