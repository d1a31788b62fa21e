"""Config parts shared by every pipeline (ml_collections).

A pipeline config file composes its config from tables, each key set once per variant:

    def get_config(variant="micro"):
        return common.build(
            "baseline", variant, "uniform-weight MTP baseline",
            parts.policy_models(variant), parts.data(variant, use_pairwise=False), ...
        )

`build` joins `base` (the keys every pipeline shares) with the pipeline's tables, refusing a key
given twice, then `finalize` validates and locks. Key names follow the original's YAML config
vocabulary (docs/semantics.md). Unknown keys are errors (locked config); `validate_config` checks
values and names the bad key: it is the one validation entry (the common keys, then the
pipeline's own `validate` in configs/<pipeline>.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ml_collections

from wmtp_jax import registry
from wmtp_jax.models import DTYPES as _MODEL_DTYPES
from wmtp_jax.models import REMAT_POLICIES as _MODEL_REMAT
from wmtp_jax.ops.attention import IMPLEMENTATIONS
from wmtp_jax.train.mesh import STRATEGIES
from wmtp_jax.train.optimizer import SCHEDULES

# the allowed values, from the modules that implement them
SHARDING_STRATEGIES = STRATEGIES
DTYPES = tuple(_MODEL_DTYPES)
REMAT_POLICIES = tuple(_MODEL_REMAT)
ATTENTION = IMPLEMENTATIONS
LR_SCHEDULERS = SCHEDULES
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
VARIANTS = ("micro", "small", "7b")


def base(pipeline: str, variant: str, description: str, output_dir: str = "") -> dict:
    """The keys every pipeline has and none sets itself: the run's identity, mesh, runtime and
    tracking. `variant`: micro and small (and the study's smoke) run on a laptop CPU in float32;
    7b has the production shapes (bf16 compute, full remat, FSDP)."""
    cpu = variant != "7b"
    return {
        "pipeline": pipeline,
        "variant": variant,
        "output_dir": output_dir or f"storage/checkpoints/{pipeline}/{pipeline}-{variant}",
        "seed": 42,
        "resume": True,  # continue from the latest checkpoint in output_dir when there is one
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},  # -1 = the rest of the devices
        "runtime": {
            "sharding": "FULL_SHARD",
            # compute dtype; params and optimizer state stay float32
            "dtype": "float32" if cpu else "bfloat16",
            "remat": "none" if cpu else "full",
            # training attention (wmtp_jax.ops.attention): auto picks by platform
            # (TPU: splash, GPU: cudnn, CPU: cpu_flash where it builds)
            "attention": "auto",
            # persistent XLA compilation cache: a re-run, resume or evaluation skips recompiling
            # ("" = off)
            "compilation_cache": "storage/jax_cache",
        },
        "mlflow": {
            "tracking_uri": "sqlite:///storage/mlflow/mlflow.db",
            # "" disables MLflow (metrics.jsonl in output_dir is always written)
            "experiment": "wmtp",
            # MLflow outages never stop training (calls are retried in the background); at the
            # end the run waits this long for queued calls, then leaves unsent rows to the next
            # resumed run.
            "sync_timeout": 120.0,
        },
        "experiment": {
            "name": f"{pipeline}-{variant}",
            "description": description,
            "tags": (pipeline, variant),
        },
        "logging": {"level": "INFO"},
        "distributed": {
            "coordinator_address": "",
            "num_processes": -1,
            "process_id": -1,
            # seconds for every process to reach the coordinator (one error line after it)
            "initialization_timeout": 300.0,
        },
    }


def schedule(
    variant: str,
    *,
    max_steps: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    learning_rate: float | None,
    eval_every_steps: int,
    warmup_ratio: float,
    min_lr_ratio: float,
    checkpoint_every_steps: int,
    save_lora_only: bool,
) -> dict:
    """training.* step schedule and checkpoint.* of a training pipeline. The arguments differ
    between pipelines; the rest is the same for every pipeline of a variant (log every step on
    `:small`, which runs a few steps). learning_rate None: no training.learning_rate (a pipeline
    whose parameter groups carry their own)."""
    training = {
        "max_steps": max_steps,  # optimizer steps; -1 = n_epochs × steps per epoch of the data
        "n_epochs": 1.0,
        "batch_size": batch_size,  # GLOBAL micro-batch (sequences over all processes/devices)
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_grad_norm": 1.0,  # ≤ 0: no clipping (norm still logged)
        "eval_every_steps": eval_every_steps,  # ≤ 0: only at the end
        "log_interval": 1 if variant == "small" else 5,
        "lr_scheduler": {
            "type": "cosine",
            "warmup_ratio": warmup_ratio,
            "min_lr_ratio": min_lr_ratio,
        },
    }
    if learning_rate is not None:
        training["learning_rate"] = learning_rate
    checkpoint = {
        "every_steps": checkpoint_every_steps,  # ≤ 0: no periodic checkpoints
        "keep": 3 if variant == "7b" else 2,  # periodic checkpoints kept (the best separately)
        "save_final": True,
        "save_best": True,
        # True: only trainable params (LoRA + heads) + base-model path
        "save_lora_only": save_lora_only,
    }
    return {"training": training, "checkpoint": checkpoint}


def generic_schedule(variant: str) -> dict:
    """The step schedule of a pipeline kept outside the package (`get_config`): a short CPU run
    (micro, small) or the production shapes (7b)."""
    if variant == "7b":
        return schedule(
            variant,
            max_steps=-1,
            batch_size=32,
            gradient_accumulation_steps=4,
            learning_rate=1e-5,
            eval_every_steps=200,
            warmup_ratio=0.03,
            min_lr_ratio=0.005,
            checkpoint_every_steps=200,
            save_lora_only=False,
        )
    return schedule(
        "micro",
        max_steps=40,
        batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        eval_every_steps=20,
        warmup_ratio=0.05,
        min_lr_ratio=0.1,
        checkpoint_every_steps=20,
        save_lora_only=False,
    )


def merge(*tables: Mapping, prefix: str = "") -> dict:
    """The union of nested tables; a key given by two tables is an error (set each key once)."""
    out: dict = {}
    for table in tables:
        for key, value in table.items():
            if key not in out:
                out[key] = dict(value) if isinstance(value, Mapping) else value
            elif isinstance(out[key], dict) and isinstance(value, Mapping):
                out[key] = merge(out[key], value, prefix=f"{prefix}{key}.")
            else:
                raise ValueError(f"config key {prefix}{key!s} is set twice")
    return out


def check_variant(variant: str, variants=VARIANTS) -> None:
    if variant not in variants:
        raise ValueError(f"unknown config variant {variant!r}; valid: {variants}")


def compose(pipeline: str, variant: str, description: str, *tables: Mapping, output_dir: str = ""):
    """The unlocked ConfigDict of `base` joined with `tables`."""
    return ml_collections.ConfigDict(
        merge(base(pipeline, variant, description, output_dir), *tables)
    )


def build(pipeline: str, variant: str, description: str, *tables: Mapping, output_dir: str = ""):
    """The validated, locked config of `base` joined with `tables`."""
    return finalize(compose(pipeline, variant, description, *tables, output_dir=output_dir))


def get_config(pipeline: str, variant: str = "micro") -> ml_collections.ConfigDict:
    """The (unlocked) config of a pipeline kept outside the package (e.g. the tests' toy one):
    `base` and `generic_schedule`; it adds its own keys and calls `finalize`."""
    check_variant(variant)
    return compose(pipeline, variant, "", generic_schedule(variant))


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validate (`validate_config`: the common keys, then the pipeline's own) and lock."""
    validate_config(c)
    c.lock()
    return c


class ConfigError(ValueError):
    """A config value is invalid; the message (`<key>: <reason>`) names the key."""


SEED_LIMIT = 2**32  # seeds are numpy / JAX uint32 seeds


def _check(ok: bool, key: str, value, want: str):
    if not ok:
        raise ConfigError(f"{key}: {value!r} is invalid; {want}")


def value_at(c, key: str):
    """The value at dotted `key`."""
    node = c
    for part in key.split("."):
        node = node[part]
    return node


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def check_int(c, key: str, lo: int | None = None, hi: int | None = None, *, also=()) -> None:
    """`key` is an integer in [lo, hi] (either bound may be None), or one of `also`."""
    v = value_at(c, key)
    if v in also and (is_int(v) or v is None):
        return
    want = "need an integer" + (f" ≥ {lo}" if lo is not None else "")
    want += (" and" if lo is not None and hi is not None else "") + (
        f" ≤ {hi}" if hi is not None else ""
    )
    want += f" (or {' / '.join(map(str, also))})" if also else ""
    _check(is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi), key, v, want)


def check_number(
    c, key: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False
) -> None:
    """`key` is a finite number in [lo, hi] (or (lo, hi] with lo_open)."""
    v = value_at(c, key)
    want = "need a finite number"
    if lo is not None:
        want += f" {'>' if lo_open else '≥'} {lo:g}"
    if hi is not None:
        want += f"{' and' if lo is not None else ''} ≤ {hi:g}"
    ok = is_number(v) and (lo is None or (v > lo if lo_open else v >= lo))
    _check(ok and (hi is None or v <= hi), key, v, want)


def check_seed(c, key: str) -> None:
    check_int(c, key, 0, SEED_LIMIT - 1)


def check_floats_finite(c, prefix: str = "") -> None:
    """Every float value in the config is finite (no nan / inf)."""
    for key, v in c.items():
        if isinstance(v, ml_collections.ConfigDict):
            check_floats_finite(v, f"{prefix}{key}.")
        elif isinstance(v, float):
            _check(math.isfinite(v), f"{prefix}{key}", v, "need a finite number")


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
    return registry.config_module(pipeline)


def validate_common(c: ml_collections.ConfigDict) -> None:
    """Check the common keys' values; raises ConfigError naming the key."""
    _check(isinstance(c.pipeline, str) and c.pipeline != "", "pipeline", c.pipeline, "need a name")
    _check(
        isinstance(c.output_dir, str) and c.output_dir.strip() != "" and "\0" not in c.output_dir,
        "output_dir",
        c.output_dir,
        "need a directory path",
    )
    check_floats_finite(c)
    check_seed(c, "seed")
    if "training" in c:  # training pipelines (not evaluation, not the study)
        validate_training(c.training)
    if isinstance(c.get("checkpoint"), ml_collections.ConfigDict):  # evaluation: a path
        check_int(c, "checkpoint.keep", 1)
        check_int(c, "checkpoint.every_steps")
    _validate_run(c)


def validate_training(t: ml_collections.ConfigDict) -> None:
    """training.*: the step schedule."""
    t = ml_collections.ConfigDict({"training": t})  # so the keys below carry their prefix
    check_int(t, "training.max_steps", 1, also=(-1,))
    if t.training.max_steps == -1:
        check_number(t, "training.n_epochs", 0, lo_open=True)
    check_int(t, "training.batch_size", 1)
    check_int(t, "training.gradient_accumulation_steps", 1)
    if "learning_rate" in t.training:  # the critic's parameter groups carry their own
        check_number(t, "training.learning_rate", 0, 1, lo_open=True)
    check_int(t, "training.log_interval", 1)
    check_int(t, "training.eval_every_steps")
    check_number(t, "training.max_grad_norm")
    s = t.training.lr_scheduler
    _check(s.type in LR_SCHEDULERS, "training.lr_scheduler.type", s.type, f"one of {LR_SCHEDULERS}")
    check_number(t, "training.lr_scheduler.warmup_ratio", 0, 1)
    _check(s.warmup_ratio < 1, "training.lr_scheduler.warmup_ratio", s.warmup_ratio, "need < 1")
    check_number(t, "training.lr_scheduler.min_lr_ratio", 0, 1)


def _validate_run(c: ml_collections.ConfigDict) -> None:
    """mesh.*, runtime.*, logging.*, mlflow.*, distributed.*."""
    for ax in ("data", "fsdp", "tensor"):
        check_int(c, f"mesh.{ax}", 1, also=(-1,))
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
    check_number(c, "mlflow.sync_timeout", 0)
    d = c.distributed
    check_int(c, "distributed.num_processes", 1, also=(-1,))
    hi = d.num_processes - 1 if d.num_processes > 0 else None
    check_int(c, "distributed.process_id", 0, hi, also=(-1,))
