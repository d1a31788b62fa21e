"""Name and tensor mapping between PyTorch checkpoints and wmtp_jax parameter trees.

This module is the contract between `wmtp_jax.models` and `conversion`: pure numpy, no torch.

wmtp_jax parameter trees (`nnx.state(model, nnx.Param).to_pure_dict()`), kernels are `[in, out]`:

MTPTransformer (Meta MTP layout; L = n_layers - n_future_tokens trunk blocks,
K = n_future_tokens heads)
    tok_embeddings/embedding               [V, D]
    layers/attention/{wq,wk,wv,wo}/kernel  [L, D, H*hd] [L, D, KV*hd] [L, D, KV*hd] [L, H*hd, D]
    layers/feed_forward/{w1,w3}/kernel     [L, D, F];  layers/feed_forward/w2/kernel [L, F, D]
    layers/{attention_norm,ffn_norm}/scale [L, D]
    heads/...                              same block keys, leading axis K
                                           (heads[0] = Meta layers[L],
                                            heads[j] = extra_heads[j-1])
    norm/scale                             [D]
    output/kernel                          [D, V]
Llama (HF layout, same block module, leading axis n_layers; `output` absent without an LM head)
    tok_embeddings/embedding, layers/..., norm/scale, output/kernel
ValueModel: backbone/<Llama without output>, value_head/...

RoPE: wmtp_jax uses the rotate-half (HF / GPT-NeoX) convention. Meta checkpoints pair adjacent
dims, so wq/wk of *every* Meta block (trunk, head 0 and extra heads) are permuted on import
(`permute_meta_to_rotate_half`) and permuted back on export. HF checkpoints need no permute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np

# Block sub-keys: wmtp_jax path (relative to a block) <-> Meta name <-> HF name.
BLOCK_KEYS = (
    # (jax path,                          meta key,                      hf key)
    (("attention", "wq", "kernel"), "attention.wq.weight", "self_attn.q_proj.weight"),
    (("attention", "wk", "kernel"), "attention.wk.weight", "self_attn.k_proj.weight"),
    (("attention", "wv", "kernel"), "attention.wv.weight", "self_attn.v_proj.weight"),
    (("attention", "wo", "kernel"), "attention.wo.weight", "self_attn.o_proj.weight"),
    (("feed_forward", "w1", "kernel"), "feed_forward.w1.weight", "mlp.gate_proj.weight"),
    (("feed_forward", "w2", "kernel"), "feed_forward.w2.weight", "mlp.down_proj.weight"),
    (("feed_forward", "w3", "kernel"), "feed_forward.w3.weight", "mlp.up_proj.weight"),
    (("attention_norm", "scale"), "attention_norm.weight", "input_layernorm.weight"),
    (("ffn_norm", "scale"), "ffn_norm.weight", "post_attention_layernorm.weight"),
)


def permute_meta_to_rotate_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a torch `[n_heads*hd, D]` q/k weight: interleaved pairs -> rotate-half.

    (HF's permute.)
    """
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def permute_rotate_half_to_meta(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `permute_meta_to_rotate_half`."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def _is_linear(jax_sub: tuple[str, ...]) -> bool:
    return jax_sub[-1] == "kernel"


def torch_to_jax_tensor(
    w: np.ndarray, jax_sub: tuple[str, ...], *, meta_rope: bool, n_heads: int, n_kv_heads: int
) -> np.ndarray:
    """One torch block tensor -> its wmtp_jax layout (transpose linears, permute Meta q/k)."""
    if meta_rope and jax_sub[1] in ("wq", "wk"):
        w = permute_meta_to_rotate_half(w, n_heads if jax_sub[1] == "wq" else n_kv_heads)
    return np.ascontiguousarray(w.T) if _is_linear(jax_sub) else w


def jax_to_torch_tensor(
    w: np.ndarray, jax_sub: tuple[str, ...], *, meta_rope: bool, n_heads: int, n_kv_heads: int
) -> np.ndarray:
    """Inverse of `torch_to_jax_tensor`."""
    if _is_linear(jax_sub):
        w = np.ascontiguousarray(w.T)
    if meta_rope and jax_sub[1] in ("wq", "wk"):
        w = permute_rotate_half_to_meta(w, n_heads if jax_sub[1] == "wq" else n_kv_heads)
    return w


# ---- key layout ---------------------------------------------------------------------------------


def meta_key_table(n_trunk: int, n_future: int) -> Iterator[tuple[str, tuple, int | None]]:
    """Yield (meta key, jax path, index into the stacked axis or None) for every Meta MTP tensor."""
    yield "tok_embeddings.weight", ("tok_embeddings", "embedding"), None
    yield "norm.weight", ("norm", "scale"), None
    yield "output.weight", ("output", "kernel"), None
    for i in range(n_trunk + 1):
        group, idx = ("layers", i) if i < n_trunk else ("heads", 0)
        for sub, mk, _ in BLOCK_KEYS:
            yield f"layers.{i}.{mk}", (group, *sub), idx
    for j in range(n_future - 1):
        for sub, mk, _ in BLOCK_KEYS:
            yield f"extra_heads.{j}.{mk}", ("heads", *sub), j + 1


def hf_key_table(
    n_layers: int, *, lm_head: bool = True, prefix: str = "model."
) -> Iterator[tuple[str, tuple, int | None]]:
    """Yield (HF key, jax path, layer index or None) for every LlamaForCausalLM tensor."""
    yield f"{prefix}embed_tokens.weight", ("tok_embeddings", "embedding"), None
    yield f"{prefix}norm.weight", ("norm", "scale"), None
    if lm_head:
        yield "lm_head.weight", ("output", "kernel"), None
    for i in range(n_layers):
        for sub, _, hk in BLOCK_KEYS:
            yield f"{prefix}layers.{i}.{hk}", ("layers", *sub), i


_LINEAR_TOP = {("output", "kernel")}


def top_to_jax(w: np.ndarray, path: tuple) -> np.ndarray:
    """Non-block tensors: `output` is a linear (transpose), embeddings and norms are unchanged."""
    return np.ascontiguousarray(w.T) if path in _LINEAR_TOP else w


def top_to_torch(w: np.ndarray, path: tuple) -> np.ndarray:
    return np.ascontiguousarray(w.T) if path in _LINEAR_TOP else w


_META_KEY_RE = re.compile(
    r"^(tok_embeddings\.weight|norm\.weight|output\.weight|"
    r"(layers|extra_heads)\.\d+\.[a-z_]+\.[a-z0-9_]+\.weight|"
    r"(layers|extra_heads)\.\d+\.(attention_norm|ffn_norm)\.weight)$"
)


def looks_like_meta_key(k: str) -> bool:
    return bool(_META_KEY_RE.match(k))


Transform = Callable[[np.ndarray], np.ndarray]
