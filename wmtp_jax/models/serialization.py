"""Model directories: save / load a model's parameters and everything needed to rebuild it.

Layout (`FORMAT`)::

    <dir>/model_config.json   {"format": "wmtp_jax.model/v1", "kind": "mtp"|"llama"|"critic",
                               "args": ModelArgs.to_dict(), "lm_head": bool (llama),
                               "value_head": {"type", "dropout", "bias_init"} (critic),
                               "lora": LoRAConfig dict | null, "rope": "rotate_half",
                               "source": {...}}
    <dir>/params/             orbax checkpoint of `nnx.state(model, nnx.Param).to_pure_dict()`
    <dir>/tokenizer/          optional tokenizer files carried from the source checkpoint

Writes are atomic (a `<dir>.tmp-*` sibling renamed into place; removed on any error). Loading
restores through an abstract target (`nnx.eval_shape`, `ShapeDtypeStruct` + `NamedSharding` on
the given mesh), so a directory restores onto any mesh and any device count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from .args import ModelArgs
from .llama import Llama
from .lora import LoRAConfig
from .mtp import MTPTransformer
from .partitioning import DEFAULT_RULES, Rules, state_shardings
from .value import ValueModel

FORMAT = "wmtp_jax.model/v1"
KINDS = ("mtp", "llama", "critic")
CONFIG_FILE = "model_config.json"
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.tiktoken",
    "tiktoken.model",
)


# ---- atomic output directory -------------------------------------------------------------------


@contextlib.contextmanager
def atomic_dir(dst, *, force: bool = False):
    """Yield a fresh temporary sibling of `dst`; on success it replaces `dst`, on error it is
    removed.

    An existing `dst` is an error unless `force`; it is only removed once the new content is
    complete.
    """
    dst = Path(os.path.abspath(dst))
    if dst.exists() and not force:
        raise FileExistsError(
            f"{dst}: destination already exists (pass --force / force=True to replace it)"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class UnsafeFileError(ValueError):
    """A file to carry into an output directory is not a regular file inside its source dir."""


def _source_root(f: Path) -> Path:
    """The directory a source file must stay in: its own directory; `<model>` for
    `<model>/tokenizer/<file>`; `<repo>` for a Hugging Face cache `<repo>/snapshots/<rev>/<file>`
    (whose files are symlinks into `<repo>/blobs/`)."""
    d = Path(os.path.abspath(f.parent))
    if d.name == "tokenizer":
        return d.parent
    if d.parent.name == "snapshots":
        return d.parent.parent
    return d


def copy_files(files: Iterable[Path], dst: Path) -> list[str]:
    """Copy `files` into `dst` (created only if there is something to copy); their names.

    The one way model/tokenizer files are carried into an output directory. Each is written as
    a new regular file (mode 0644) from its content. A symlink is followed only when it resolves
    inside the file's source directory (`_source_root`); one that leaves it, or anything but a
    regular file (FIFO, device, directory), raises UnsafeFileError naming it, so a hostile model
    directory cannot copy host files (e.g. `tokenizer.json -> /etc/shadow`) into the output.
    """
    files = [Path(f) for f in files]
    for f in files:
        root = os.path.realpath(_source_root(f))
        real = os.path.realpath(f)
        if os.path.commonpath([root, real]) != root:
            raise UnsafeFileError(
                f"{f}: a symlink to {real}, outside the source directory "
                f"{root}; refusing to copy it (copy the file in instead)"
            )
    if files:
        dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        fd = os.open(os.path.realpath(f), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeFileError(f"{f}: not a regular file; refusing to copy it")
            with open(fd, "rb", closefd=False) as src, open(dst / f.name, "wb") as out:
                shutil.copyfileobj(src, out)
        finally:
            os.close(fd)
        os.chmod(dst / f.name, 0o644)
    return [f.name for f in files]


def copy_tokenizer(files: Iterable[Path], dst: Path) -> list[str]:
    """Copy tokenizer files into `dst` with `copy_files` (regular files, no escaping symlink)."""
    return copy_files(files, dst)


def tokenizer_dir_files(directory) -> list[Path]:
    """Every file directly in a tokenizer directory (sorted; none when it does not exist)."""
    d = Path(directory)
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def find_tokenizer_files(*dirs) -> list[Path]:
    """Tokenizer files in the first of `dirs` that has any (also looks in `<d>/tokenizer/`)."""
    for d in dirs:
        for cand in (Path(d), Path(d) / "tokenizer"):
            found = [cand / n for n in TOKENIZER_FILES if (cand / n).is_file()]
            if found:
                return found
    return []


# ---- config ----------------------------------------------------------------------------------


def _lora_dict(lora) -> dict | None:
    if lora is None or isinstance(lora, dict):
        return lora
    if hasattr(lora, "to_dict"):
        return lora.to_dict()
    d = dataclasses.asdict(lora)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def make_config(
    kind: str,
    args: ModelArgs,
    *,
    lm_head: bool = True,
    value_head: dict | None = None,
    lora=None,
    source: dict | None = None,
) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {list(KINDS)}")
    cfg: dict[str, Any] = {"format": FORMAT, "kind": kind, "args": args.to_dict()}
    if kind == "llama":
        cfg["lm_head"] = bool(lm_head)
    if kind == "critic":
        vh = {"type": "mlp", "dropout": 0.0, "bias_init": None, **(value_head or {})}
        cfg["value_head"] = {k: vh[k] for k in ("type", "dropout", "bias_init")}
    cfg.update(lora=_lora_dict(lora), rope="rotate_half", source=source or {})
    return cfg


def read_config(directory) -> dict:
    """Read and validate `<dir>/model_config.json`."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not a wmtp_jax model directory)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON (line {e.lineno}: {e.msg})") from None
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    if cfg.get("kind") not in KINDS:
        raise ValueError(f"{path}: kind {cfg.get('kind')!r}, expected one of {list(KINDS)}")
    ModelArgs.from_dict(cfg.get("args", {}), source=f"{path} args")
    return cfg


# ---- save ------------------------------------------------------------------------------------


def _floating_dtype_name(params: dict) -> str:
    counts: dict[str, int] = {}
    for leaf in jax.tree.leaves(params):
        if np.issubdtype(np.dtype(leaf.dtype), np.floating) or str(leaf.dtype) == "bfloat16":
            counts[str(leaf.dtype)] = counts.get(str(leaf.dtype), 0) + int(np.prod(leaf.shape))
    return max(counts, key=counts.get) if counts else "float32"


def save_model(
    directory,
    model_or_params,
    *,
    kind: str,
    args: ModelArgs,
    lm_head: bool = True,
    value_head: dict | None = None,
    lora=None,
    source: dict | None = None,
    tokenizer: Iterable[Path] = (),
    force: bool = False,
) -> Path:
    """Write a model directory atomically; returns its path.

    model_or_params: an NNX module (its `nnx.Param` state, LoRA factors included) or the nested
    pure dict of parameters (numpy or jax arrays, possibly sharded). numpy leaves of a dict are
    replaced in place by CPU jax arrays, one at a time: orbax writes jax arrays without a staging
    copy, so peak memory stays near one model copy. `args.param_dtype` is recorded as the stored
    dtype. `tokenizer`: files copied into `<dir>/tokenizer/`. Single-process writer (multi-host
    training saves through `wmtp_jax.train.checkpoint`).
    """
    if isinstance(model_or_params, nnx.Module):
        if lora is None:
            lora = getattr(model_or_params, "lora", None)
        params = nnx.to_pure_dict(nnx.state(model_or_params, nnx.Param))
    else:
        params = model_or_params
        _numpy_to_jax_inplace(params)
    args = args.replace(param_dtype=_floating_dtype_name(params))
    cfg = make_config(kind, args, lm_head=lm_head, value_head=value_head, lora=lora, source=source)
    with atomic_dir(directory, force=force) as tmp:
        ckptr = _writer()
        ckptr.save(tmp / "params", args=ocp.args.PyTreeSave(params))
        ckptr.close()
        copy_tokenizer(tokenizer, tmp / "tokenizer")
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return Path(os.path.abspath(directory))


def _writer() -> ocp.Checkpointer:
    """Orbax writer that stages at most ~256 MiB (plus one array) of host copies at a time;
    uncompressed (weights barely compress, and compression buffers cost a model copy)."""
    handler = ocp.BasePyTreeCheckpointHandler(
        use_compression=False, save_concurrent_bytes=2**28, save_device_host_concurrent_bytes=2**28
    )
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(handler_impl=handler))


def _numpy_to_jax_inplace(tree: dict):
    cpu = jax.local_devices(backend="cpu")[0]
    for k, v in tree.items():
        if isinstance(v, dict):
            _numpy_to_jax_inplace(v)
        elif isinstance(v, np.ndarray):
            tree[k] = jax.device_put(v, cpu)
            del v


# ---- load ------------------------------------------------------------------------------------


def _checkpoint_tree(directory: Path) -> dict:
    path = directory / "params"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: parameter checkpoint not found")
    return ocp.PyTreeCheckpointer().metadata(path.absolute()).item_metadata.tree


def load_params(directory, *, dtype=None) -> tuple[dict, dict]:
    """(config, nested numpy parameter dict) of a model directory; `dtype` casts on read."""
    directory = Path(directory)
    cfg = read_config(directory)
    meta = _checkpoint_tree(directory)
    restore_args = jax.tree.map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype), meta
    )
    params = ocp.PyTreeCheckpointer().restore(
        (directory / "params").absolute(), args=ocp.args.PyTreeRestore(restore_args=restore_args)
    )
    return cfg, params


def _paths(tree, prefix=()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        out.update(_paths(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
    return out


def _check_tree(directory: Path, target: dict, meta: dict):
    want, have = _paths(target), _paths(meta)
    fmt = lambda ps: sorted("/".join(map(str, p)) for p in ps)[:5]
    if set(want) != set(have):
        raise ValueError(
            f"{directory}/params: parameter tree does not match {CONFIG_FILE}: missing "
            f"{fmt(set(want) - set(have))}, unexpected {fmt(set(have) - set(want))}"
        )
    for p, w in sorted(want.items(), key=lambda kv: "/".join(map(str, kv[0]))):
        if tuple(w.shape) != tuple(have[p].shape):
            raise ValueError(
                f"{directory}/params: parameter {'/'.join(map(str, p))} has shape "
                f"{tuple(have[p].shape)}, expected {tuple(w.shape)} from {CONFIG_FILE}"
            )


def lora_from_config(d: dict | None):
    if d is None:
        return None
    return LoRAConfig.from_dict(d) if hasattr(LoRAConfig, "from_dict") else LoRAConfig(**d)


def model_factory(cfg: dict, args: ModelArgs, *, seed: int = 0):
    """Zero-argument constructor of the module described by a model config."""
    lora = lora_from_config(cfg.get("lora"))
    kind = cfg["kind"]
    if kind == "mtp":
        return lambda: MTPTransformer(args, rngs=nnx.Rngs(seed), lora=lora)
    if kind == "llama":
        return lambda: Llama(args, rngs=nnx.Rngs(seed), lm_head=cfg.get("lm_head", True), lora=lora)
    vh = cfg.get("value_head") or {}
    return lambda: ValueModel(
        args,
        rngs=nnx.Rngs(seed),
        head_type=vh.get("type", "mlp"),
        dropout=vh.get("dropout", 0.0),
        bias_init=vh.get("bias_init"),
        lora=lora,
    )


def load_model(
    directory,
    *,
    kind: str | None = None,
    dtype=None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    args_overrides: dict | None = None,
    seed: int = 0,
):
    """Rebuild the NNX module of a model directory and restore its parameters.

    dtype: parameter and compute dtype (None keeps the stored dtype); args_overrides: further
    ModelArgs fields (e.g. {"dtype": "bfloat16", "remat": "full"}). With `mesh`, every parameter
    is restored directly into its sharding from `rules` (default DEFAULT_RULES); without, onto
    the first local device.
    """
    directory = Path(directory)
    cfg = read_config(directory)
    if kind is not None and cfg["kind"] != kind:
        raise ValueError(f"{directory}/{CONFIG_FILE}: kind {cfg['kind']!r}, expected {kind!r}")
    args = ModelArgs.from_dict(cfg["args"])
    if dtype is not None:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
        args = args.replace(param_dtype=name, dtype=name)
    args = args.replace(**(args_overrides or {}))
    make = model_factory(cfg, args, seed=seed)

    abstract = nnx.eval_shape(make)
    graphdef, params_abs, rest_abs = nnx.split(abstract, nnx.Param, ...)
    if mesh is not None:
        shardings = state_shardings(params_abs, mesh, rules or DEFAULT_RULES)
        rest_sharding = lambda _: NamedSharding(mesh, jax.sharding.PartitionSpec())
    else:
        one = SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: one, params_abs)
        rest_sharding = lambda _: one
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nnx.to_pure_dict(params_abs),
        nnx.to_pure_dict(shardings),
    )
    _check_tree(directory, target, _checkpoint_tree(directory))
    restored = ocp.PyTreeCheckpointer().restore(
        (directory / "params").absolute(),
        args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
        ),
    )
    nnx.replace_by_pure_dict(params_abs, restored)
    rest = _fresh_rest(rest_abs, seed)
    rest = jax.device_put(rest, jax.tree.map(rest_sharding, rest))
    return nnx.merge(graphdef, params_abs, rest)


def _fresh_rest(rest_abs, seed: int):
    """Concrete non-Param state (dropout RNG keys and counters) for an abstract one:
    keys split from `seed`, everything else zeros; no model initialisation is traced."""
    leaves, treedef = jax.tree.flatten(rest_abs)
    out = []
    for i, a in enumerate(leaves):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            k = jax.random.fold_in(jax.random.key(seed), i)
            out.append(jax.random.split(k, a.shape) if a.shape else k)
        else:
            out.append(jnp.zeros(a.shape, a.dtype))
    return jax.tree.unflatten(treedef, out)


def load_policy(directory, *, dtype=None, mesh=None, rules=None, **kw):
    """MTPTransformer of an `mtp` directory: `model(tokens, return_all_heads=True)` →
    `[B,S,K,V]`."""
    return load_model(directory, kind="mtp", dtype=dtype, mesh=mesh, rules=rules, **kw)


def load_llama(directory, *, dtype=None, mesh=None, rules=None, **kw):
    """Llama of a `llama` directory: `model(tokens, attention_mask=None)` → `[B,S,V]`."""
    return load_model(directory, kind="llama", dtype=dtype, mesh=mesh, rules=rules, **kw)


def load_critic(directory, *, dtype=None, mesh=None, rules=None, **kw):
    """ValueModel of a `critic` directory: `model(tokens, attention_mask)` → `[B,S,1]`."""
    return load_model(directory, kind="critic", dtype=dtype, mesh=mesh, rules=rules, **kw)
