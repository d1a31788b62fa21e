"""A run's config checked against this machine before anything starts: the output directory,
the mesh against the devices, the model and dataset paths. `configs.common.validate_config`
checks the values themselves; both raise `ConfigError` (`<key>: <reason>`), which the command
line prints as one `error:` line (exit 2).

Micro and small runs create their missing dataset and models (`pipelines.bootstrap`), so a path
that does not exist yet is only an error for the other variants, and for the models the bootstrap
trains (verifiable's critic, rho1's reference): it trains them only into their default run
directory, so another path must exist.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from wmtp_jax.configs import parts
from wmtp_jax.configs.common import ConfigError
from wmtp_jax.data.sources import available_splits, resolve_split
from wmtp_jax.train.lock import LOCK_FILE
from wmtp_jax.train.mesh import resolve_mesh_shape

BOOTSTRAPPED = ("micro", "small")  # variants whose missing storage the bootstrap creates
# (pipeline, role) → the model dir its bootstrap trains (another pipeline's run exports it)
TRAINED_PREREQUISITES = {
    ("verifiable", "value_model"): parts.critic_output,
    ("rho1", "reference"): parts.reference_output,
}


def _fail(key: str, value, reason: str):
    value = str(value) if isinstance(value, Path) else value
    raise ConfigError(f"{key}: {value!r} is invalid; {reason}")


def check(config) -> None:
    """Every check below; raises ConfigError naming the key."""
    check_output_dir(config)
    check_mesh(config)
    check_models(config)
    check_dataset(config)
    check_evaluated(config)


def check_directory(key: str, path, *, must_exist: bool, hint: str = "") -> None:
    """`path` is a directory, or (unless must_exist) can be created: every ancestor that exists
    is a directory."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            _fail(key, p, "it is a file, need a directory")
        return
    if must_exist:
        _fail(key, p, f"no such directory{hint}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                _fail(key, p, f"it lies under the file {parent}, need a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                _fail(key, p, f"cannot be created: {parent} is not writable")
            return


def check_output_dir(config) -> None:
    """output_dir is (or can be created as) a directory whose lock file, if any, is a file."""
    out = str(config.output_dir)
    if out == "auto":  # evaluation: derived from the checkpoint
        return
    check_directory("output_dir", out, must_exist=False)
    lock = Path(out) / LOCK_FILE
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        kind = "a symlink" if lock.is_symlink() else "a directory" if lock.is_dir() else "special"
        _fail("output_dir", out, f"its lock file {lock} is {kind}, need a regular file (remove it)")


def check_mesh(config) -> None:
    """mesh.* divides this machine's devices; the global batch divides over data × fsdp and
    the processes."""
    m = config.mesh
    try:
        data, fsdp, _ = resolve_mesh_shape(m.data, m.fsdp, m.tensor, jax.device_count())
    except ValueError as e:
        raise ConfigError(f"mesh: {str(e).removeprefix('mesh ')}") from None
    if "training" not in config:
        return
    bs, dp, n_proc = int(config.training.batch_size), data * fsdp, jax.process_count()
    if bs % dp or bs % n_proc:
        _fail(
            "training.batch_size",
            bs,
            f"need a multiple of the data-parallel size data×fsdp={dp} and of the process "
            f"count {n_proc}",
        )


def check_models(config) -> None:
    """Each `models.<role>.path` (and tokenizer_path) is a directory; for a variant that is not
    bootstrapped it must exist, and so must a trained prerequisite at another than its default
    path (`TRAINED_PREREQUISITES`)."""
    variant = config.get("variant")
    bootstrapped = variant in BOOTSTRAPPED
    for role, entry in config.get("models", {}).items():
        default = TRAINED_PREREQUISITES.get((config.get("pipeline"), role))
        if bootstrapped and default is not None and not Path(entry.path).exists():
            made = default(variant)
            if Path(entry.path).absolute() != Path(made).absolute():
                _fail(
                    f"models.{role}.path",
                    entry.path,
                    f"no such directory (the {variant} bootstrap trains this model only into "
                    f"its default {made})",
                )
        check_directory(f"models.{role}.path", entry.path, must_exist=not bootstrapped)
        tok = str(entry.get("tokenizer_path", ""))
        if tok:
            check_directory(f"models.{role}.tokenizer_path", tok, must_exist=not bootstrapped)


def check_dataset(config) -> None:
    """dataset.path is a directory holding the train and validation splits (a micro / small
    dataset that the bootstrap will create is skipped)."""
    if "dataset" not in config or "train" not in config.dataset:
        return
    path = Path(str(config.dataset.path))
    bootstrapped = config.get("variant") in BOOTSTRAPPED
    hint = " (prepare it: python -m wmtp_jax.data.prepare)"
    check_directory("dataset.path", path, must_exist=not bootstrapped, hint=hint)
    if bootstrapped and not ((path / "processed").is_dir() and "train" in available_splits(path)):
        return  # the bootstrap generates the synthetic dataset
    for key in ("train", "validation"):
        split = config.dataset[key]
        try:
            resolve_split(path, split)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"dataset.{key}: {str(split)!r} is invalid; {e}") from None


def check_evaluated(config) -> None:
    """evaluation: `checkpoint` (required), `base_model` and `tokenizer_path` (when set) are
    existing directories; `data_dir` is a directory where it exists."""
    if not isinstance(config.get("checkpoint"), str):  # training configs: a section
        return
    if not config.checkpoint:
        _fail("checkpoint", "", "required: a model dir, a training run dir or one step dir")
    check_directory("checkpoint", config.checkpoint, must_exist=True)
    for key in ("base_model", "tokenizer_path"):
        if config.get(key):
            check_directory(key, config[key], must_exist=True)
    if config.get("data_dir"):
        check_directory("data_dir", config.data_dir, must_exist=False)
