"""Transformer building blocks shared by the Meta MTP policy and the HF-layout LLaMA.

Conventions: Linear kernels are `[in, out]`; every Param carries logical axis names
(`out_sharding`, docs/design.md); weights are stored in `args.param_dtype` and computed in
`args.dtype`; RoPE is rotate-half (HF / GPT-NeoX); Meta checkpoints are permuted on import
(`conversion.mapping.permute_meta_to_rotate_half`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax.ops.attention import attention
from wmtp_jax.ops.chunked_loss import rms_norm
from wmtp_jax.ops.dense import dense
from wmtp_jax.ops.segments import segment_positions

from .args import ModelArgs

Array = jax.Array
KV = tuple[Array, Array]  # (k, v) cache buffers, each [B, KV, T, hd] (or [N, B, KV, T, hd] stacked)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# U(±1/sqrt(fan_in)): PyTorch's nn.Linear default (kaiming_uniform(a=√5)), used for LoRA A too.
torch_linear_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def to_dtype(name) -> Any:
    if not isinstance(name, str):
        return jnp.dtype(name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {sorted(DTYPES)}")
    return DTYPES[name]


def param(value: Array, names: Sequence[str | None], kind=nnx.Param) -> nnx.Param:
    """A Param annotated with logical axis names (no eager placement; see partitioning.py)."""
    if len(names) != value.ndim:
        raise ValueError(f"logical names {tuple(names)} do not match the param shape {value.shape}")
    return kind(value, out_sharding=tuple(names), eager_sharding=False)


class Linear(nnx.Module):
    """y = x W (+ b) + (alpha/r) · dropout(x) A B.

    `x W` goes through `dense` (its weight-gradient VJP) unless `dense_vjp` is off: the blocks
    turn it off under remat, and LoRA does.

    kernel `[in, out]`; optional LoRA factors `lora_a [in, r]` (U(±1/√in)) and `lora_b [r, out]`
    (zeros) stored as `nnx.LoRAParam` on this module, so base paths stay `.../<name>/kernel`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        names: tuple[str, str],
        rngs: nnx.Rngs,
        use_bias: bool = False,
        dtype="float32",
        param_dtype="float32",
        kernel_init=torch_linear_init,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        lora_dropout: float = 0.0,
        dense_vjp: bool = True,
    ):
        self.in_features, self.out_features = in_features, out_features
        # `dense`'s VJP, except with LoRA (frozen kernel: autodiff skips its gradient, a custom
        # VJP would not) and inside remat (the policies see a custom VJP, not a dot to save)
        self.dense_vjp = dense_vjp and not lora_rank
        self.dtype, pdt = to_dtype(dtype), to_dtype(param_dtype)
        self.kernel = param(kernel_init(rngs.params(), (in_features, out_features), pdt), names)
        self.bias = param(jnp.zeros((out_features,), pdt), names[1:]) if use_bias else None
        self.lora_rank = lora_rank
        self.lora_scale = float(lora_alpha) / lora_rank if lora_rank else 0.0
        if lora_rank:
            a = torch_linear_init(rngs.params(), (in_features, lora_rank), pdt)
            self.lora_a = param(a, (names[0], "lora_rank"), nnx.LoRAParam)
            self.lora_b = param(
                jnp.zeros((lora_rank, out_features), pdt), ("lora_rank", names[1]), nnx.LoRAParam
            )
            self.lora_dropout = nnx.Dropout(lora_dropout, rngs=rngs) if lora_dropout > 0 else None

    def __call__(self, x: Array, *, out_dtype=None) -> Array:
        dt = self.dtype
        x = x.astype(dt)
        if self.dense_vjp:
            y = dense(x, self.kernel[...].astype(dt), out_dtype=out_dtype)
        else:
            y = jnp.einsum(
                "...i,io->...o", x, self.kernel[...].astype(dt), preferred_element_type=out_dtype
            )
        if self.lora_rank:
            xd = self.lora_dropout(x) if self.lora_dropout is not None else x
            z = jnp.einsum("...i,ir->...r", xd, self.lora_a[...].astype(dt))
            y = y + (
                self.lora_scale * jnp.einsum("...r,ro->...o", z, self.lora_b[...].astype(dt))
            ).astype(y.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding `[V, D]`, N(0, 1) init as torch nn.Embedding."""

    def __init__(
        self, vocab_size: int, dim: int, *, rngs: nnx.Rngs, dtype="float32", param_dtype="float32"
    ):
        self.dtype = to_dtype(dtype)
        init = jax.random.normal(rngs.params(), (vocab_size, dim), to_dtype(param_dtype))
        self.embedding = param(init, ("vocab", "embed"))

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, x: Array, *, out_dtype=None) -> Array:
        """Tied output projection `x · embeddingᵀ`: `[..., D]` -> `[..., V]`."""
        x = x.astype(self.dtype)
        return dense(x, self.embedding[...].astype(self.dtype).T, out_dtype=out_dtype)


class RMSNorm(nnx.Module):
    """Meta / HF RMSNorm: `(x.f32 · rsqrt(mean(x², -1) + eps)).astype(x.dtype) · scale`."""

    def __init__(self, dim: int, *, eps: float = 1e-5, dtype="float32", param_dtype="float32"):
        self.eps, self.dtype = eps, to_dtype(dtype)
        self.scale = param(jnp.ones((dim,), to_dtype(param_dtype)), ("norm",))

    def __call__(self, x: Array) -> Array:
        return rms_norm(x, self.scale[...], self.eps, x.dtype).astype(self.dtype)


# ---- RoPE (rotate-half) ---------------------------------------------------------------------


def rope_inv_freq(args: ModelArgs, positions: Array) -> Array:
    """Inverse frequencies `[hd/2]` float32 as transformers computes them for `args.rope`:

    default   1/θ^(2i/hd)
    linear    default / factor
    dynamic   NTK: θ' = θ·(f·n/M − (f − 1))^(hd/(hd−2)) with n = max(max(positions) + 1, M),
              M = max_position_embeddings (recomputed per forward, as transformers' dynamic
              update does for a growing sequence)
    llama3    wavelength 2π/inv above M₀/low_freq_factor: inv/factor; below M₀/high_freq_factor:
              inv; between: (1 − s)·inv/factor + s·inv, s = (M₀/wavelen − low)/(high − low)
    """
    hd = args.head_dim
    exps = jnp.arange(0, hd, 2, dtype=jnp.float32) / hd
    inv = 1.0 / (jnp.float32(args.rope_theta) ** exps)
    r = args.rope
    if r is None:
        return inv
    kind, f = r["rope_type"], float(r["factor"])
    if kind == "linear":
        return inv / f
    if kind == "dynamic":
        m = float(args.max_seq_len)
        n = jnp.maximum(jnp.max(positions).astype(jnp.float32) + 1.0, m)
        base = args.rope_theta * ((f * n / m) - (f - 1.0)) ** (hd / (hd - 2))
        return 1.0 / (base**exps)
    old = float(r["original_max_position_embeddings"])
    low, high = float(r["low_freq_factor"]), float(r["high_freq_factor"])
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old / low, inv / f, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / f + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return jnp.where(medium, smoothed, scaled)


def rope_cos_sin(positions: Array, inv_freq: Array) -> tuple[Array, Array]:
    """positions `[B, S]`, inv_freq `[hd/2]` -> cos, sin `[B, S, hd]` float32 (freqs doubled)."""
    ang = positions.astype(jnp.float32)[..., None] * inv_freq
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x `[B, S, N, hd]`: x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1]."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, :, None] + rot * sin[:, :, None]).astype(x.dtype)


# ---- masks and cache writes -----------------------------------------------------------------


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


# ---- attention, FFN, block ------------------------------------------------------------------


def _lora_kw(lora, name: str) -> dict:
    if lora is None or name not in lora.targets:
        return {}
    return dict(lora_rank=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout)


class Attention(nnx.Module):
    """GQA self-attention: `wmtp_jax.ops.attention` (causal, optional segment ids; the
    implementation is `args.attention`) or, with a KV cache, `cached_attention`."""

    def __init__(self, args: ModelArgs, *, rngs: nnx.Rngs, lora=None):
        d, h, kv, hd = args.dim, args.n_heads, args.kv_heads, args.head_dim
        kw = dict(rngs=rngs, dtype=args.dtype, param_dtype=args.param_dtype)
        kw["dense_vjp"] = args.remat == "none"
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, hd
        self.implementation = args.attention
        self.wq = Linear(d, h * hd, names=("embed", "heads"), **kw, **_lora_kw(lora, "wq"))
        self.wk = Linear(d, kv * hd, names=("embed", "kv_heads"), **kw, **_lora_kw(lora, "wk"))
        self.wv = Linear(d, kv * hd, names=("embed", "kv_heads"), **kw, **_lora_kw(lora, "wv"))
        self.wo = Linear(h * hd, d, names=("heads", "embed"), **kw, **_lora_kw(lora, "wo"))

    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        mask: Array | None = None,
        kv: KV | None = None,
        start: Array | None = None,
        kv_index=None,
    ):
        """x `[B, S, D]`; without `kv`, mask is None (causal) or segment ids `[B, S]` int (0 =
        padding; see `wmtp_jax.ops.attention`); with `kv` the new keys are written at `start`
        `[B]` (into entry `kv_index` of stacked buffers) and the query attends to the whole buffer
        under `mask` (see `cache_mask`)."""
        b, s, _ = x.shape
        q = apply_rope(self.wq(x).reshape(b, s, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).reshape(b, s, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).reshape(b, s, self.n_kv_heads, self.head_dim)
        if kv is not None:
            kv = tuple(write_cache(buf, new, start, kv_index) for buf, new in zip(kv, (k, v)))
            k, v = (buf if kv_index is None else buf[kv_index] for buf in kv)
            out = cached_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
            return self.wo(out.reshape(b, s, -1)), kv
        out = attention(q, k, v, segment_ids=mask, implementation=self.implementation)
        return self.wo(out.reshape(b, s, -1)), kv


class FeedForward(nnx.Module):
    """SwiGLU: `w2(silu(w1 x) · w3 x)`."""

    def __init__(self, args: ModelArgs, *, rngs: nnx.Rngs, lora=None):
        d, f = args.dim, args.hidden_dim
        kw = dict(rngs=rngs, dtype=args.dtype, param_dtype=args.param_dtype)
        kw["dense_vjp"] = args.remat == "none"
        self.w1 = Linear(d, f, names=("embed", "mlp"), **kw, **_lora_kw(lora, "w1"))
        self.w2 = Linear(f, d, names=("mlp", "embed"), **kw, **_lora_kw(lora, "w2"))
        self.w3 = Linear(d, f, names=("embed", "mlp"), **kw, **_lora_kw(lora, "w3"))

    def __call__(self, x: Array) -> Array:
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


class Block(nnx.Module):
    """Pre-norm block: `h = x + attn(attention_norm(x))`, `out = h + ffn(ffn_norm(h))`."""

    def __init__(self, args: ModelArgs, *, rngs: nnx.Rngs, lora=None):
        kw = dict(eps=args.norm_eps, dtype=args.dtype, param_dtype=args.param_dtype)
        self.attention_norm = RMSNorm(args.dim, **kw)
        self.attention = Attention(args, rngs=rngs, lora=lora)
        self.ffn_norm = RMSNorm(args.dim, **kw)
        self.feed_forward = FeedForward(args, rngs=rngs, lora=lora)

    def __call__(self, x, cos, sin, mask=None, kv=None, start=None, kv_index=None):
        a, kv = self.attention(self.attention_norm(x), cos, sin, mask, kv, start, kv_index)
        h = x + a
        return h + self.feed_forward(self.ffn_norm(h)), kv


# ---- stacked blocks: nnx.vmap to create, lax.scan / jax.vmap over the stacked state to apply ----

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


def empty_cache(n: int, args: ModelArgs, batch_size: int, max_len: int, dtype=None) -> dict:
    """{"k", "v"} zero buffers `[n, B, KV, T, hd]` in the compute dtype (or `dtype`)."""
    shape = (n, batch_size, args.kv_heads, max_len, args.head_dim)
    dt = to_dtype(dtype or args.dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def cache_len(cache: dict | None) -> int | None:
    return None if cache is None else jax.tree.leaves(cache)[0].shape[3]


def _kv(entry: dict | None):
    return None if entry is None else (entry["k"], entry["v"])
