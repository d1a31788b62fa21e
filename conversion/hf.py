"""HF LLaMA checkpoints (`LlamaForCausalLM` / `LlamaModel`) <-> wmtp_jax `llama` model directories.

Input: `config.json` plus `model.safetensors`, a sharded `model.safetensors.index.json`, other
`*.safetensors`, or legacy `pytorch_model.bin` / `pytorch_model.bin.index.json`. Keys without the
`model.` prefix (a bare `LlamaModel`) import without an LM head; tied embeddings
(`tie_word_embeddings`) stay one parameter (`tie_embeddings`; flax-to-hf writes a tied model
again). A `.gguf` file (or a directory holding one and no config.json) is dequantised to float32
by transformers' GGUF loader first. HF weights already use rotate-half RoPE: no permute.
hf-to-flax writes kind `llama`; hf-to-mtp an `mtp` policy whose head 0 is the source model's last
block; a critic (`kind critic`) directory is written by critic training from a `llama` backbone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from conversion.mapping import hf_key_table
from conversion.meta import _check_dst, _load_exportable
from conversion.torch_io import ConversionError, TensorSource, read_json, save_safetensors_sharded
from conversion.trees import (
    dtype_from_name,
    flatten,
    torch_to_tree,
    tree_dtype,
    tree_to_torch,
    unflatten,
)
from wmtp_jax.models.args import ModelArgs
from wmtp_jax.models.serialization import (
    atomic_dir,
    copy_tokenizer,
    find_tokenizer_files,
    save_model,
)


def hf_files(src: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (src / index).is_file():
            wm = read_json(src / index).get("weight_map")
            if not isinstance(wm, dict):
                raise ConversionError(f"{src / index}: no 'weight_map' object")
            files = [src / f for f in dict.fromkeys(wm.values())]
            absent = [str(f) for f in files if not f.is_file()]
            if absent:
                raise ConversionError(f"{src / index}: listed shard(s) not found: {absent}")
            return files
    for pattern in (
        "model.safetensors",
        "*.safetensors",
        "pytorch_model.bin",
        "pytorch_model*.bin",
    ):
        found = sorted(src.glob(pattern))
        if found:
            return found
    raise ConversionError(
        f"{src}: no model.safetensors, *.safetensors or pytorch_model*.bin weights found"
    )


def read_hf(src: Path, *, dtype: str | None = None) -> tuple[dict, ModelArgs, dict, bool, str]:
    """(config.json dict, ModelArgs, wmtp_jax `llama` parameter tree, lm_head, source files).

    Tied embeddings (`tie_word_embeddings`) import as the one `tok_embeddings` parameter (a stored
    `lm_head.weight` copy is ignored); bias tensors are refused by name.
    """
    cfg = read_json(src / "config.json")
    try:
        args = ModelArgs.from_hf_config(cfg, source=str(src / "config.json"))
    except (ValueError, TypeError) as e:
        raise ConversionError(str(e)) from None
    source = TensorSource.from_files(hf_files(src))
    biases = [k for k in source.keys() if k.endswith(".bias")]
    if biases:
        raise ConversionError(
            f"{source.file(biases[0])}: bias tensor(s) {biases[:3]} are not "
            f"supported (LLaMA blocks have no biases)"
        )
    if "model.embed_tokens.weight" in source:
        prefix = "model."
    elif "embed_tokens.weight" in source:
        prefix = ""
    else:
        raise ConversionError(f"{source.files}: missing tensor 'model.embed_tokens.weight'")
    lm_head = bool(prefix) and ("lm_head.weight" in source or args.tie_embeddings)
    table = list(
        hf_key_table(args.n_layers, lm_head=lm_head and not args.tie_embeddings, prefix=prefix)
    )
    what = (
        f"a LLaMA model per {src / 'config.json'} (num_hidden_layers={args.n_layers}, "
        f"hidden_size={args.dim}, num_attention_heads={args.n_heads}, "
        f"num_key_value_heads={args.kv_heads})"
    )
    ignored = lambda k: (
        k.endswith("rotary_emb.inv_freq") or (args.tie_embeddings and k == "lm_head.weight")
    )
    tree = torch_to_tree(
        source,
        table,
        args,
        meta_rope=False,
        dtype=dtype_from_name(dtype),
        what=what,
        ignore=ignored,
    )
    stored = tree_dtype(tree)
    return cfg, args.replace(param_dtype=stored, dtype=stored), tree, lm_head, source.files


def _hf_source(src: Path, workdir: Path) -> Path:
    """An HF directory for `src`: itself, or a GGUF file (or a directory holding one GGUF and no
    config.json) dequantised by transformers into `workdir`."""
    if src.is_file() and src.suffix == ".gguf":
        return dequantize_gguf(src, workdir)
    if src.is_dir() and not (src / "config.json").exists():
        ggufs = sorted(src.glob("*.gguf"))
        if len(ggufs) == 1:
            return dequantize_gguf(ggufs[0], workdir)
        if ggufs:
            raise ConversionError(
                f"{src}: several GGUF files {[g.name for g in ggufs]}; pass one as --src"
            )
    return src


def dequantize_gguf(path, out_dir) -> Path:
    """Dequantise a LLaMA-family GGUF file to a float32 HF directory (config, safetensors, tokenizer
    with its chat template) with transformers' GGUF loader (needs the `gguf` package)."""
    path, out_dir = Path(path), Path(out_dir)
    try:
        import gguf  # noqa: F401  (transformers imports it lazily; fail here with a clear message)

        # heavy; the GGUF path only
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ConversionError(
            f"{path}: reading GGUF needs `pip install gguf accelerate` ({e})"
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ConversionError(
            f"{path}: transformers cannot load this GGUF ({type(e).__name__}: {e})"
        ) from None
    # the loader dequantised every tensor; drop the quantizer marker so the floats can be saved
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


def _convert_hf(src, dst, force: bool, write) -> dict:
    src, dst = Path(src), Path(dst)
    _check_dst(src, dst, force)
    parent = Path(os.path.abspath(dst)).parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{dst.name}.gguf-", dir=parent) as work:
        hf_dir = _hf_source(src, Path(work))
        origin = {"format": "gguf" if hf_dir != src else "hf", "path": str(src.absolute())}
        return write(hf_dir, origin)


def hf_to_flax(src, dst, *, dtype: str | None = None, force: bool = False) -> dict:
    """Convert an HF LLaMA directory (or GGUF file) into a `llama` model directory; returns a
    summary."""

    def write(hf_dir: Path, origin: dict) -> dict:
        cfg, args, tree, lm_head, files = read_hf(hf_dir, dtype=dtype)
        n = len(flatten(tree))
        tok = find_tokenizer_files(hf_dir, hf_dir.parent)
        save_model(
            dst,
            tree,
            kind="llama",
            args=args,
            lm_head=lm_head,
            force=force,
            tokenizer=tok,
            source={**origin, "config": cfg, "files": files},
        )
        return {
            "tensors": n,
            "dtype": args.param_dtype,
            "lm_head": lm_head,
            "tied": args.tie_embeddings,
            "tokenizer": [p.name for p in tok],
            "dst": str(dst),
        }

    return _convert_hf(src, dst, force, write)


HEAD_INITS = ("copy", "random")


def llama_tree_to_mtp(
    tree: dict, args: ModelArgs, n_future: int, head_init: str = "copy", seed: int = 0
) -> tuple[dict, ModelArgs]:
    """A `llama` tree of L blocks -> an `mtp` tree: trunk = blocks 0..L−2, head 0 = block L−1,
    heads 1..K−1 copies of it (`copy`) or freshly initialised (`random`: linears U(±1/√fan_in) as
    torch nn.Linear, norms 1). Head 0 then computes exactly the source model."""
    if head_init not in HEAD_INITS:
        raise ConversionError(f"--head-init {head_init!r}; choose one of {list(HEAD_INITS)}")
    if n_future < 1:
        raise ConversionError(f"--n-future {n_future} must be ≥ 1")
    if "output" not in tree and not args.tie_embeddings:
        raise ConversionError(
            "the source model has no LM head (a bare LlamaModel); an MTP policy needs one"
        )
    n = args.n_layers
    flat = flatten(tree.pop("layers"))
    out = dict(tree)
    if n > 1:
        out["layers"] = unflatten({p: v[: n - 1] for p, v in flat.items()})
    rng = np.random.default_rng(seed)
    heads = {}
    for p, v in flat.items():
        last = v[n - 1]
        if head_init == "copy" or n_future == 1:
            extra = np.broadcast_to(last, (n_future - 1, *last.shape))
        elif p[-1] == "scale":
            extra = np.ones((n_future - 1, *last.shape), last.dtype)
        else:
            bound = 1.0 / np.sqrt(last.shape[0])  # kernels are [in, out]
            extra = rng.uniform(-bound, bound, (n_future - 1, *last.shape)).astype(last.dtype)
        heads[p] = np.concatenate([last[None], extra], axis=0)
    out["heads"] = unflatten(heads)
    del flat
    return out, args.replace(n_layers=n - 1 + n_future, n_future_tokens=n_future)


def hf_to_mtp(
    src,
    dst,
    *,
    n_future: int,
    head_init: str = "copy",
    seed: int = 0,
    dtype: str | None = None,
    force: bool = False,
) -> dict:
    """Convert an HF LLaMA directory (or GGUF file) into an `mtp` policy with `n_future` heads
    (see `llama_tree_to_mtp`); returns a summary."""

    def write(hf_dir: Path, origin: dict) -> dict:
        cfg, args, tree, _, files = read_hf(hf_dir, dtype=dtype)
        tree, margs = llama_tree_to_mtp(tree, args, n_future, head_init, seed)
        n = len(flatten(tree))
        tok = find_tokenizer_files(hf_dir, hf_dir.parent)
        save_model(
            dst,
            tree,
            kind="mtp",
            args=margs,
            force=force,
            tokenizer=tok,
            source={
                **origin,
                "config": cfg,
                "files": files,
                "hf_to_mtp": {
                    "n_future": n_future,
                    "head_init": head_init,
                    "seed": seed,
                    "source_layers": args.n_layers,
                },
            },
        )
        return {
            "tensors": n,
            "dtype": margs.param_dtype,
            "n_layers": margs.n_layers,
            "n_trunk_layers": margs.n_trunk_layers,
            "n_future_tokens": n_future,
            "head_init": head_init,
            "tied": margs.tie_embeddings,
            "tokenizer": [p.name for p in tok],
            "dst": str(dst),
        }

    return _convert_hf(src, dst, force, write)


_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def flax_to_hf(
    src, dst, *, dtype: str | None = None, force: bool = False, max_shard_bytes: int = 5 * 2**30
) -> dict:
    """Write `config.json` + `model.safetensors` (sharded above `max_shard_bytes`) from a `llama`
    directory, loadable by `transformers.LlamaForCausalLM.from_pretrained`."""
    src, dst = Path(src), Path(dst)
    _check_dst(src, dst, force)
    cfg, params = _load_exportable(src, "llama", "flax-to-hf")
    args = ModelArgs.from_dict(cfg["args"])
    lm_head = cfg.get("lm_head", True) and not args.tie_embeddings
    table = list(hf_key_table(args.n_layers, lm_head=lm_head))
    state = tree_to_torch(
        params,
        table,
        args,
        meta_rope=False,
        dtype=dtype_from_name(dtype),
        what=f"{src}/model_config.json (kind llama)",
    )
    out_dtype = _TORCH_DTYPE.get(str(next(iter(state.values())).dtype), "float32")
    src_cfg = {
        k: v
        for k, v in ((cfg.get("source") or {}).get("config") or {}).items()
        if k != "quantization_config"
    }
    hf_cfg = {**src_cfg, **args.to_hf_config(), "torch_dtype": out_dtype}
    if "dtype" in src_cfg:
        hf_cfg["dtype"] = out_dtype
    if not cfg.get("lm_head", True):
        hf_cfg["architectures"] = ["LlamaModel"]
    with atomic_dir(dst, force=force) as tmp:
        files = save_safetensors_sharded(state, tmp, max_shard_bytes=max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        tok = copy_tokenizer(find_tokenizer_files(src / "tokenizer"), tmp)
    return {
        "tensors": len(state),
        "dtype": out_dtype,
        "files": files,
        "tokenizer": tok,
        "dst": str(dst),
    }
