"""A pipeline's real train task with abstract models: shapes only, no weights read.

Each model a pipeline runs (its trained model; the frozen critic of verifiable, the frozen
reference of rho1) is built as `nnx.eval_shape` of the constructor training uses, with the same
run settings: trained models get float32 master parameters and the run's compute dtype, remat
and attention (`specs.runtime(config).overrides()`, LoRA per `training.use_lora`); frozen
models the dtype of their config entry, remat off and LoRA merged (`load.load_frozen`). The
pipeline's own `build(config, mesh, <models>, data=NO_DATA)` then gives the TrainTask, so the
loss, trainable filter, optimizer groups and extra state are exactly the run's.

Shapes come from the configured model dir (`model_config.json`) when it exists, else from an
architecture preset: the one named on the command line, or the one the dir's name stands for
(`wmtp_jax.models.architectures.preset_for_path`; micro dirs → the bootstrap's micro shapes).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from wmtp_jax.bench.train_step import NO_DATA
from wmtp_jax.configs.common import ConfigError
from wmtp_jax.models import architectures, serialization
from wmtp_jax.models.args import ModelArgs
from wmtp_jax.pipelines import baseline, bootstrap, critic, ref_tuning, rho1, specs, verifiable

PIPELINES = ("baseline", "verifiable", "rho1", "critic", "ref_tuning")
MICRO_PRESETS = {"micro-mtp": "mtp", "micro-llama": "llama"}
_MICRO_DIRS = {
    "micro-mtp": "micro-mtp",
    "micro-llama": "micro-llama",
    "critic-micro": "micro-llama",
    "ref_tuning-micro": "micro-llama",
}


@dataclasses.dataclass(frozen=True)
class Role:
    """One model of a pipeline: its config entry key, model kind, and whether it is trained."""

    entry: str  # key under config.models
    path_key: str  # the entry key of the model dir ("path")
    kind: str  # mtp | llama | critic
    trained: bool


ROLES = {
    "baseline": {"policy": Role("policy", "path", "mtp", True)},
    "verifiable": {
        "policy": Role("policy", "path", "mtp", True),
        "critic": Role("value_model", "path", "critic", False),
    },
    "rho1": {
        "policy": Role("policy", "path", "mtp", True),
        "reference": Role("reference", "path", "llama", False),
    },
    "critic": {"model": Role("value_model", "path", "llama", True)},
    "ref_tuning": {"model": Role("policy", "path", "llama", True)},
}


def preset_shape(name: str, max_seq_len: int) -> ModelArgs:
    """A named preset (`architectures.PRESETS`) or a micro shape (`micro-mtp`, `micro-llama`)."""
    if name == "micro-mtp":
        return bootstrap.micro_policy_args(bootstrap.MICRO_VOCAB_SIZE, max_seq_len)
    if name == "micro-llama":
        return bootstrap.micro_llama_args(bootstrap.MICRO_VOCAB_SIZE, max_seq_len)
    return architectures.preset_args(name)


def shape_source(path: str, preset: str | None) -> tuple[dict, str]:
    """(model config dict {"kind", "args", ...}, where the shape came from) for a configured
    model path: the named preset, else the dir's `model_config.json`, else the preset of its
    name. ConfigError (exit 2) when there is none."""
    if preset:
        return {"args": None}, f"preset {preset}"
    if (Path(path) / serialization.CONFIG_FILE).is_file():
        return dict(serialization.read_config(path)), f"{path}/{serialization.CONFIG_FILE}"
    parts = Path(str(path)).parts
    name = next((_MICRO_DIRS[p] for p in reversed(parts) if p in _MICRO_DIRS), None)
    name = name or architectures.preset_for_path(path)
    if name is None:
        names = ", ".join((*architectures.PRESETS, *MICRO_PRESETS))
        raise ConfigError(
            f"{path}: no model dir and no architecture preset for it; name one "
            f"(--policy_preset / --frozen_preset): {names}"
        )
    return {"args": None, "preset": name}, f"preset {name} (no {path})"


def role_args(config, role: Role, preset: str | None, overrides: dict) -> tuple[ModelArgs, dict]:
    """(ModelArgs with the run's settings, info {"source", "kind"}) of one role."""
    entry = config.models[role.entry]
    path = str(entry[role.path_key])
    cfg, source = shape_source(path, preset)
    seq = int(config.dataset.max_length)
    if cfg["args"] is None:
        args = preset_shape(preset or cfg["preset"], seq)
    else:
        args = ModelArgs.from_dict(cfg["args"], source=source)
    if overrides:
        args = args.replace(**overrides)
    if args.max_seq_len < seq:
        args = args.replace(max_seq_len=seq)
    if role.trained:
        args = args.replace(**specs.runtime(config).overrides())
    else:
        dtype = str(entry.dtype)
        args = args.replace(
            dtype=dtype, param_dtype=dtype, remat="none", attention=config.runtime.attention
        )
    value_head = cfg.get("value_head") or {}
    return args, {"source": source, "kind": role.kind, "value_head": value_head}


def abstract_model(config, pipeline: str, name: str, role: Role, args: ModelArgs, info: dict):
    """`nnx.eval_shape` of the module training builds for this role (nothing allocated)."""
    seed = int(config.seed)
    if pipeline == "critic":
        make = critic.critic_factory(config, args)
    elif role.trained:
        hf = role.kind == "llama"
        lora = specs.lora(config, hf_names=hf)
        cfg = {"kind": role.kind, "lm_head": True, "lora": lora.to_dict() if lora else None}
        make = serialization.model_factory(cfg, args, seed=seed)
    else:  # frozen: LoRA merged, the stored head
        cfg = {"kind": role.kind, "lm_head": True, "value_head": info["value_head"], "lora": None}
        make = serialization.model_factory(cfg, args, seed=seed)
    model = nnx.eval_shape(make)
    if not role.trained:
        model.eval()
    return model


def abstract_task(config, mesh, *, policy_preset=None, frozen_preset=None, policy_args=None):
    """(TrainTask of `config.pipeline` on abstract models, {role: {"args", "source", ...}}).

    policy_preset / frozen_preset: architecture presets of the trained and the frozen model
    (None: from the config's model dirs or their names); policy_args: ModelArgs overrides of the
    trained model (e.g. {"n_future_tokens": 2})."""
    pipeline = str(config.pipeline)
    if pipeline not in ROLES:
        raise ConfigError(
            f"config.pipeline={pipeline!r} has no train step to compile; valid: {PIPELINES}"
        )
    models, info = {}, {}
    for name, role in ROLES[pipeline].items():
        preset = policy_preset if role.trained else frozen_preset
        try:
            args, meta = role_args(config, role, preset, policy_args if role.trained else {})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"models.{role.entry}: {e}") from None
        models[name] = abstract_model(config, pipeline, name, role, args, meta)
        info[name] = {**meta, "args": args, "trained": role.trained}
    kw = dict(data=NO_DATA)
    if pipeline == "baseline":
        task = baseline.build(config, mesh, policy=models["policy"], **kw)
    elif pipeline == "verifiable":
        task = verifiable.build(
            config, mesh, policy=models["policy"], critic=models["critic"], **kw
        )
    elif pipeline == "rho1":
        task = rho1.build(
            config, mesh, policy=models["policy"], reference=models["reference"], **kw
        )
    elif pipeline == "critic":
        task = critic.build(config, mesh, model=models["model"], **kw)
    else:
        task = ref_tuning.build(config, mesh, model=models["model"], **kw)
    return task, info


def batch_spec(config, mesh, sharding) -> dict:
    """ShapeDtypeStructs of one stacked train batch `[GA, B, S]` in the collators' layout
    (pairs `pos_*` / `neg_*` for the critic and verifiable with data.use_negatives; packed rows
    add segment ids and positions)."""
    t = config.training
    packed = bool(config.data.get("packing", False))
    rows = int(config.data.get("pack_rows", 0) or 0) if packed else 0
    shape = (int(t.gradient_accumulation_steps), rows or int(t.batch_size))
    shape = (*shape, int(config.dataset.max_length))
    spec = lambda shp, dt: jax.ShapeDtypeStruct(shp, np.dtype(dt), sharding=sharding)
    one = {k: spec(shape, np.int32) for k in ("input_ids", "attention_mask", "labels")}
    if packed:
        one.update(segment_ids=spec(shape, np.int32), positions=spec(shape, np.int32))
    pairwise = config.pipeline == "critic" or (
        config.pipeline == "verifiable" and bool(config.data.get("use_negatives", False))
    )
    if pairwise:
        return {f"{side}_{k}": v for side in ("pos", "neg") for k, v in one.items()}
    if config.pipeline == "verifiable":
        one["is_correct"] = spec(shape if packed else shape[:2], np.float32)
    return one
