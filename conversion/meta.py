"""Meta MTP checkpoints (`facebook/multi-token-prediction` layout) <-> wmtp_jax `mtp` model
directories.

Input directory: `params.json` plus one of
  * `consolidated.pth` (the released 7B_*_{1,4} checkpoints: one file),
  * `consolidated.00.pth`, `consolidated.01.pth`, ... (fairscale model-parallel shards, concatenated
    as the fairscale layers split them: column-parallel wq/wk/wv/w1/w3/output on dim 0,
    row-parallel wo/w2 on dim 1, `ParallelEmbedding` tok_embeddings on dim 1, norms replicated),
  * `*.safetensors` with the same tensor names (e.g. the original project's
    `safetensors/model.safetensors`).
`params.json` may also sit in `configs/` and the weights in `safetensors/` (the original project's
storage layout). `rope.freqs`, a buffer of some LLaMA releases, is ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from conversion.mapping import meta_key_table
from conversion.torch_io import ConversionError, TensorSource, read_json, save_torch
from conversion.trees import (
    dtype_from_name,
    first_existing,
    torch_to_tree,
    tree_dtype,
    tree_to_torch,
)
from wmtp_jax.models.args import ModelArgs
from wmtp_jax.models.lora import merge_lora
from wmtp_jax.models.serialization import (
    atomic_dir,
    copy_tokenizer,
    find_tokenizer_files,
    load_model,
    load_params,
    save_model,
)

_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
_COLUMN = (
    "attention.wq.",
    "attention.wk.",
    "attention.wv.",
    "feed_forward.w1.",
    "feed_forward.w3.",
)
_ROW = ("attention.wo.", "feed_forward.w2.")


def shard_dim(key: str) -> int | None:
    """Model-parallel dimension of a Meta tensor (None: replicated on every shard)."""
    if key == "tok_embeddings.weight":
        return 1
    if key == "output.weight" or any(s in key for s in _COLUMN):
        return 0
    if any(s in key for s in _ROW):
        return 1
    return None


def _meta_args(src: Path) -> tuple[Path, dict, ModelArgs]:
    path = first_existing([src / "params.json", src / "configs" / "params.json"])
    if path is None:
        raise ConversionError(
            f"{src / 'params.json'}: not found (a Meta checkpoint directory needs params.json)"
        )
    params = read_json(path)
    try:
        return path, params, ModelArgs.from_meta_params(params, source=str(path))
    except (ValueError, TypeError) as e:
        raise ConversionError(str(e)) from None


def meta_source(src: Path) -> TensorSource:
    """TensorSource over the weights of a Meta checkpoint directory (see module docstring)."""
    for d in (src, src / "safetensors"):
        if (d / "consolidated.pth").is_file():
            return TensorSource.from_files([d / "consolidated.pth"])
        shards = sorted(
            (p for p in d.glob("consolidated.*.pth") if _SHARD_RE.match(p.name)),
            key=lambda p: int(_SHARD_RE.match(p.name).group(1)),
        )
        if len(shards) == 1:
            return TensorSource.from_files(shards)
        if shards:
            return TensorSource.from_meta_shards(shards, shard_dim)
        st = sorted(d.glob("*.safetensors"))
        if st:
            return TensorSource.from_files(st)
    raise ConversionError(
        f"{src}: no consolidated.pth, consolidated.NN.pth or *.safetensors weights found"
    )


def _describe(args: ModelArgs, path: Path) -> str:
    return (
        f"a Meta MTP model per {path} (n_layers={args.n_layers}, "
        f"n_future_tokens={args.n_future_tokens}, "
        f"dim={args.dim}, n_heads={args.n_heads}, n_kv_heads={args.kv_heads})"
    )


def meta_to_flax(src, dst, *, dtype: str | None = None, force: bool = False) -> dict:
    """Convert a Meta MTP checkpoint directory into an `mtp` model directory; returns a summary."""
    src, dst = Path(src), Path(dst)
    _check_dst(src, dst, force)
    params_path, params_json, args = _meta_args(src)
    source = meta_source(src)
    table = list(meta_key_table(args.n_trunk_layers, args.n_future_tokens))
    tree = torch_to_tree(
        source,
        table,
        args,
        meta_rope=True,
        dtype=dtype_from_name(dtype),
        what=_describe(args, params_path),
        ignore=lambda k: k == "rope.freqs",
    )
    stored = tree_dtype(tree)
    args = args.replace(param_dtype=stored, dtype=stored)
    tok = find_tokenizer_files(src, src.parent)
    save_model(
        dst,
        tree,
        kind="mtp",
        args=args,
        force=force,
        tokenizer=tok,
        source={
            "format": "meta",
            "path": str(src.absolute()),
            "params_json": params_json,
            "files": source.files,
        },
    )
    return {
        "tensors": len(table),
        "dtype": stored,
        "tokenizer": [p.name for p in tok],
        "dst": str(dst),
    }


def flax_to_meta(src, dst, *, dtype: str | None = None, force: bool = False) -> dict:
    """Write `params.json` + `consolidated.pth` (+ tokenizer files) from an `mtp` model
    directory."""
    src, dst = Path(src), Path(dst)
    _check_dst(src, dst, force)
    cfg, params = _load_exportable(src, "mtp", "flax-to-meta")
    args = ModelArgs.from_dict(cfg["args"])
    if args.rope_scaling is not None or args.attn_head_dim not in (None, args.dim // args.n_heads):
        raise ConversionError(
            f"{src}: rope_scaling={args.rope} / head_dim={args.head_dim} "
            f"cannot be written in Meta's params.json (plain RoPE, "
            f"head_dim = dim / n_heads)"
        )
    if args.tie_embeddings:  # Meta's format has no tying: output.weight is the embedding
        params["output"] = {"kernel": params["tok_embeddings"]["embedding"].T}
        args = args.replace(tie_embeddings=False)
    table = list(meta_key_table(args.n_trunk_layers, args.n_future_tokens))
    state = tree_to_torch(
        params,
        table,
        args,
        meta_rope=True,
        dtype=dtype_from_name(dtype),
        what=f"{src}/model_config.json (kind mtp)",
    )
    orig = (cfg.get("source") or {}).get("params_json")
    params_json = orig if orig and _same_meta(orig, args) else args.to_meta_params()
    with atomic_dir(dst, force=force) as tmp:
        save_torch(state, tmp / "consolidated.pth")
        (tmp / "params.json").write_text(json.dumps(params_json, indent=2) + "\n")
        tok = copy_tokenizer(find_tokenizer_files(src / "tokenizer"), tmp)
    return {
        "tensors": len(state),
        "dtype": str(next(iter(state.values())).dtype),
        "tokenizer": tok,
        "dst": str(dst),
    }


def _same_meta(params_json: dict, args: ModelArgs) -> bool:
    try:
        a = ModelArgs.from_meta_params(params_json)
    except (ValueError, TypeError):
        return False
    return a.to_meta_params() == args.to_meta_params()


def _check_dst(src: Path, dst: Path, force: bool):
    if dst.absolute() == src.absolute():
        raise ConversionError(f"{dst}: destination is the source directory")
    if dst.exists() and not force:
        raise ConversionError(f"{dst}: destination already exists (pass --force to replace it)")


def _load_exportable(src: Path, kind: str, command: str) -> tuple[dict, dict]:
    try:
        cfg, params = load_params(src)
    except (FileNotFoundError, ValueError) as e:
        raise ConversionError(str(e)) from None
    if cfg["kind"] != kind:
        raise ConversionError(
            f"{src}/model_config.json: kind {cfg['kind']!r}; {command} needs kind {kind!r}"
        )
    if cfg.get("lora"):  # export W + (alpha/r) A B: rebuild the module and merge
        del params
        merged = merge_lora(load_model(src, kind=kind))
        params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(merged, nnx.Param)))
    return cfg, params
