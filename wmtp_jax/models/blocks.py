"""The transformer block: GQA self-attention (with the optional KV cache), SwiGLU feed-forward,
pre-norm residual block; LoRA on the targeted Linear layers."""

from __future__ import annotations

import jax
from flax import nnx

from wmtp_jax.ops.attention import attention
from wmtp_jax.ops.layout import constrain_batch

from .args import ModelArgs
from .cache import KV, cached_attention, write_cache
from .primitives import Linear, RMSNorm
from .rope import apply_rope

Array = jax.Array


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
        x = constrain_batch(x)
        a, kv = self.attention(self.attention_norm(x), cos, sin, mask, kv, start, kv_index)
        h = x + a
        return h + self.feed_forward(self.ffn_norm(h)), kv
