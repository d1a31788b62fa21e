"""The static KV cache: buffers `[N, B, KV, T, hd]` per stack of N blocks, the slot mask, the
in-place writes and attention over the cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .args import ModelArgs
from .primitives import to_dtype

Array = jax.Array
KV = tuple[Array, Array]  # (k, v) cache buffers, each [B, KV, T, hd] (or [N, B, KV, T, hd] stacked)


def cache_mask(positions: Array, cache_len: int) -> Array:
    """positions `[B, S]` -> bool `[B, 1, S, T]`: cached key slot t visible iff t ≤ query
    position."""
    return (jnp.arange(cache_len)[None, None, :] <= positions[:, :, None])[:, None]


def write_cache(buf: Array, new: Array, start: Array, index=None) -> Array:
    """buf `[B, KV, T, hd]` (or stacked `[N, B, KV, T, hd]`, entry `index` written), new
    `[B, S, KV, hd]`, start `[B]`: row b's keys go to slots start_b .. start_b + S − 1.

    One scatter of the new slots only, in place on a loop-carried buffer (slots ≥ T are dropped).
    """
    b, s = new.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = start[:, None] + jnp.arange(s, dtype=start.dtype)[None]
    at = buf.at[rows, :, slots] if index is None else buf.at[index, rows, :, slots]
    return at.set(new.astype(buf.dtype), indices_are_sorted=True, unique_indices=True)


def cached_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """q `[B, S, H, hd]`, cache k, v `[B, KV, T, hd]`, mask bool `[B, 1, S, T]` -> `[B, S, H, hd]`.

    softmax(q·kᵀ/√hd) v with float32 logits and softmax; GQA groups the H query heads as
    `[KV, H/KV]`. The cache layout keeps (B, KV) major and T next to hd, so neither matmul needs
    the cache transposed (the `[B, T, KV, hd]` layout made XLA copy the whole cache per step).
    """
    b, s, h, hd = q.shape
    kvh = k.shape[1]
    q = q.reshape(b, s, kvh, h // kvh, hd)
    logits = jnp.einsum("bskgd,bktd->bkgst", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, :, None], logits * (hd**-0.5), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    # `bkgsd` then a transpose of the small output: XLA:CPU ran `->bskgd` as a transposed GEMM 4×
    # slower at S = 4 (the speculative round)
    out = jnp.einsum("bkgst,bktd->bkgsd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype).transpose(0, 3, 1, 2, 4).reshape(b, s, h, hd)


def empty_cache(n: int, args: ModelArgs, batch_size: int, max_len: int, dtype=None) -> dict:
    """{"k", "v"} zero buffers `[n, B, KV, T, hd]` in the compute dtype (or `dtype`)."""
    shape = (n, batch_size, args.kv_heads, max_len, args.head_dim)
    dt = to_dtype(dtype or args.dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def cache_len(cache: dict | None) -> int | None:
    return None if cache is None else jax.tree.leaves(cache)[0].shape[3]


def cache_entry(entry: dict | None) -> KV | None:
    """The (k, v) buffers of one stack's cache entry `{"k", "v"}` (None without a cache)."""
    return None if entry is None else (entry["k"], entry["v"])
