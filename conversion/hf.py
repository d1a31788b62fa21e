"""HF LLaMA checkpoints (`LlamaForCausalLM` / `LlamaModel`) <-> wmtp_jax `llama` model directories.

Input: `config.json` plus `model.safetensors`, a sharded `model.safetensors.index.json`, other
`*.safetensors`, or legacy `pytorch_model.bin` / `pytorch_model.bin.index.json`. Keys without the
`model.` prefix (a bare `LlamaModel`) import without an LM head; tied embeddings
(`tie_word_embeddings`) import as an untied `output`. HF weights already use rotate-half RoPE: no
permute. hf-to-flax always writes kind `llama`; a critic (`kind critic`) directory is written by
critic training from such a backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

from conversion.mapping import hf_key_table
from conversion.meta import _check_dst, _load_exportable
from conversion.torch_io import ConversionError, TensorSource, read_json, save_safetensors_sharded
from conversion.trees import dtype_from_name, torch_to_tree, tree_dtype, tree_to_torch
from wmtp_jax.models.args import ModelArgs
from wmtp_jax.models.io import atomic_dir, copy_tokenizer, find_tokenizer_files, save_model


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
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "pytorch_model*.bin"):
        found = sorted(src.glob(pattern))
        if found:
            return found
    raise ConversionError(f"{src}: no model.safetensors, *.safetensors or pytorch_model*.bin weights found")


def hf_to_flax(src, dst, *, dtype: str | None = None, force: bool = False) -> dict:
    """Convert an HF LLaMA directory into a `llama` model directory; returns a summary."""
    src, dst = Path(src), Path(dst)
    _check_dst(src, dst, force)
    cfg = read_json(src / "config.json")
    try:
        args = ModelArgs.from_hf_config(cfg, source=str(src / "config.json"))
    except (ValueError, TypeError) as e:
        raise ConversionError(str(e)) from None
    source = TensorSource.from_files(hf_files(src))
    if "model.embed_tokens.weight" in source:
        prefix = "model."
    elif "embed_tokens.weight" in source:
        prefix = ""
    else:
        raise ConversionError(f"{source.files}: missing tensor 'model.embed_tokens.weight'")
    lm_head = "lm_head.weight" in source
    if not lm_head and prefix and cfg.get("tie_word_embeddings"):
        key = "model.embed_tokens.weight"
        source._add("lm_head.weight", source.file(key), source.shape(key), lambda: source.get(key))
        lm_head = True
    table = list(hf_key_table(args.n_layers, lm_head=lm_head, prefix=prefix))
    what = (f"a LLaMA model per {src / 'config.json'} (num_hidden_layers={args.n_layers}, "
            f"hidden_size={args.dim}, num_attention_heads={args.n_heads}, num_key_value_heads={args.kv_heads})")
    tree = torch_to_tree(source, table, args, meta_rope=False, dtype=dtype_from_name(dtype), what=what,
                         ignore=lambda k: k.endswith("rotary_emb.inv_freq"))
    stored = tree_dtype(tree)
    args = args.replace(param_dtype=stored, dtype=stored)
    tok = find_tokenizer_files(src, src.parent)
    save_model(dst, tree, kind="llama", args=args, lm_head=lm_head, force=force, tokenizer=tok,
               source={"format": "hf", "path": str(src.absolute()), "config": cfg, "files": source.files})
    return {"tensors": len(table), "dtype": stored, "lm_head": lm_head, "tokenizer": [p.name for p in tok],
            "dst": str(dst)}


_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def flax_to_hf(src, dst, *, dtype: str | None = None, force: bool = False,
               max_shard_bytes: int = 5 * 2**30) -> dict:
    """Write `config.json` + `model.safetensors` (sharded above `max_shard_bytes`) from a `llama`
    directory, loadable by `transformers.LlamaForCausalLM.from_pretrained`."""
    src, dst = Path(src), Path(dst)
    _check_dst(src, dst, force)
    cfg, params = _load_exportable(src, "llama", "flax-to-hf")
    args = ModelArgs.from_dict(cfg["args"])
    table = list(hf_key_table(args.n_layers, lm_head=cfg.get("lm_head", True)))
    state = tree_to_torch(params, table, args, meta_rope=False, dtype=dtype_from_name(dtype),
                          what=f"{src}/model_config.json (kind llama)")
    out_dtype = _TORCH_DTYPE.get(str(next(iter(state.values())).dtype), "float32")
    src_cfg = (cfg.get("source") or {}).get("config") or {}
    hf_cfg = {**src_cfg, **args.to_hf_config(), "torch_dtype": out_dtype}
    if "dtype" in src_cfg:
        hf_cfg["dtype"] = out_dtype
    if not cfg.get("lm_head", True):
        hf_cfg["architectures"] = ["LlamaModel"]
    with atomic_dir(dst, force=force) as tmp:
        files = save_safetensors_sharded(state, tmp, max_shard_bytes=max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        tok = copy_tokenizer(find_tokenizer_files(src / "tokenizer"), tmp)
    return {"tensors": len(state), "dtype": out_dtype, "files": files, "tokenizer": tok, "dst": str(dst)}
