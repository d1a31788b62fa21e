"""Stacked blocks: created with `nnx.vmap` as one module with a leading layer axis, applied with
`lax.scan` (sequential layers) or `jax.vmap` (parallel MTP heads), with remat policies; and the
inputs every stack needs (RoPE tables, mask, cache write start)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax.ops.segments import segment_positions

from .args import ModelArgs
from .blocks import Block
from .cache import cache_mask
from .rope import rope_cos_sin, rope_inv_freq

Array = jax.Array

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def maybe_remat(fn, policy: str):
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; valid: {sorted(REMAT_POLICIES)}")
    if policy == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[policy], prevent_cse=False)


def stack_blocks(n: int, args: ModelArgs, *, rngs: nnx.Rngs, lora=None, axis_name: str) -> Block:
    """`n` Blocks with params stacked on a leading axis named `axis_name` (`layers` /
    `mtp_heads`)."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axis_name})
    def create(r):
        return Block(args, rngs=r, lora=lora)

    return create(rngs)


def _block_fn(graphdef):
    """Pure per-block function over (params, rest-state, kv) used by scan / vmap."""

    def fn(x, params, rest, kv, cos, sin, mask, start, kv_index=None):
        block = nnx.merge(graphdef, params, rest)
        y, kv = block(x, cos, sin, mask, kv, start, kv_index)
        return y, nnx.state(block, nnx.Not(nnx.Param)), kv

    return fn


def scan_blocks(
    stack: Block, x: Array, cos, sin, mask=None, kv=None, start=None, *, remat: str = "none"
):
    """Sequentially apply stacked blocks (`lax.scan`, compile time flat in depth).

    kv: None or (k, v) each `[L, B, KV, T, hd]`; returns (x, new kv or None). The cache rides in
    the scan carry and block i writes its new slots into entry i in place (as scan xs/ys each
    step would copy the whole cache).
    """
    graphdef, params, rest = nnx.split(stack, nnx.Param, ...)
    fn = maybe_remat(_block_fn(graphdef), remat)
    n = jax.tree.leaves(params)[0].shape[0]

    def body(carry, xs):
        h, c = carry
        p, r, i = xs
        h, r, c = fn(h, p, r, c, cos, sin, mask, start, None if c is None else i)
        return (h, c), r

    (x, kv), rest = jax.lax.scan(body, (x, kv), (params, rest, jnp.arange(n)))
    if jax.tree.leaves(rest):  # dropout RNG counters advanced
        nnx.update(stack, rest)
    return x, kv


def vmap_blocks(
    stack: Block,
    x: Array,
    cos,
    sin,
    mask=None,
    kv=None,
    start=None,
    *,
    n: int | None = None,
    remat: str = "none",
    unroll: bool = False,
):
    """Apply the first `n` (default all) stacked blocks in parallel to the same input.

    All blocks: one vmap (cache entries vmapped too). The first n < all (e.g. head 1 alone when
    decoding), or `unroll` (ModelArgs.unroll_heads): an unrolled loop,
    writing entries 0..n−1 of the stacked cache in place.
    Returns (y `[n, B, S, D]`, kv with the first n entries updated, or None).
    """
    graphdef, params, rest = nnx.split(stack, nnx.Param, ...)
    total = jax.tree.leaves(params)[0].shape[0]
    n = total if n is None else n
    fn = maybe_remat(_block_fn(graphdef), remat)
    if n == total and not unroll:
        y, rest, kv = jax.vmap(fn, in_axes=(None, 0, 0, 0, None, None, None, None))(
            x, params, rest, kv, cos, sin, mask, start
        )
    else:
        ys, rests = [], []
        for j in range(n):
            pick = lambda t: jax.tree.map(lambda a: a[j], t)
            yj, rj, kv = fn(
                x, pick(params), pick(rest), kv, cos, sin, mask, start, None if kv is None else j
            )
            ys.append(yj)
            rests.append(rj)
        y = jnp.stack(ys)
        rest = jax.tree.map(lambda full, *part: full.at[:n].set(jnp.stack(part)), rest, *rests)
    if jax.tree.leaves(rest):
        nnx.update(stack, rest)
    return y, kv


def attention_inputs(
    args: ModelArgs,
    shape: tuple[int, int],
    positions=None,
    attention_mask=None,
    cache_len: int | None = None,
    segment_ids=None,
):
    """Everything a stack of blocks needs besides x: (cos, sin, mask, start).

    positions `[B, S]` default 0..S-1 per row (as HF and Meta). Without a cache the mask is None
    (causal) or the 0/1 attention mask as int32 segment ids (0 = padding, never attended); with
    a cache of length T it is `cache_mask` and
    `start = positions[:, 0]` is where each row's new keys are written.
    Packed rows: `segment_ids` `[B, S]` (1, 2, ... per sequence, 0 = padding) are the mask as
    they are (attention never crosses a segment) and positions default to restarting at 0 in
    every segment (`ops.segments.segment_positions`); no attention_mask with them.
    """
    b, s = shape
    if segment_ids is not None:
        if cache_len is not None or attention_mask is not None:
            raise ValueError("segment_ids go without attention_mask and without a KV cache")
        if segment_ids.shape != (b, s):
            raise ValueError(f"segment_ids has shape {segment_ids.shape}, expected {(b, s)}")
        seg = jnp.asarray(segment_ids).astype(jnp.int32)
        if positions is None:
            positions = segment_positions(seg)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    elif positions.shape != (b, s):
        raise ValueError(f"positions has shape {positions.shape}, expected tokens' shape {(b, s)}")
    cos, sin = rope_cos_sin(positions, rope_inv_freq(args, positions))
    if cache_len is not None:
        if attention_mask is not None:
            raise ValueError(
                "attention_mask with a KV cache is not supported: right-pad prompts "
                "and pass per-row `positions` instead"
            )
        return cos, sin, cache_mask(positions, cache_len), positions[:, 0]
    if segment_ids is not None:
        return cos, sin, seg, None
    if attention_mask is not None:
        if attention_mask.shape != (b, s):
            raise ValueError(f"attention_mask has shape {attention_mask.shape}, expected {(b, s)}")
        return cos, sin, (attention_mask != 0).astype(jnp.int32), None
    return cos, sin, None, None
