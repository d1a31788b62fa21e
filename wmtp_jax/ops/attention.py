"""Self-attention for training and prefill: one interface, several implementations.

    attention(q, k, v, causal=True, segment_ids=None, lengths=None, implementation="auto")

q `[B, S, H, hd]`, k, v `[B, S, KV, hd]` (GQA: H a multiple of KV; query head h reads KV head
h // (H/KV)) -> `[B, S, H, hd]` = softmax(q·kᵀ/√hd + mask) v, with float32 logits and softmax.

Visibility of key j to query i in row b (never a dense mask built by the caller):

* causal: j ≤ i;
* segment_ids `[B, S]` int: seg[i] == seg[j] and seg[j] ≠ 0. Id 0 is padding (never attended);
  packed sequences use ids 1, 2, ...: attention never crosses segments;
* lengths `[B]` int (right padding): j < lengths[b], i.e. positions ≥ lengths[b] get id 0.

A query with no visible key (a padding position) gets an unspecified finite output (0 in
`blockwise`, a uniform average in `xla`): callers must ignore it, as the losses do.

Implementations (`IMPLEMENTATIONS`; `runtime.attention` in the configs):

* `xla`: `jax.nn.dot_product_attention(implementation="xla")`: materialises `[B, H, S, S]`
  logits and probabilities (segment ids become an internal `[B, 1, S, S]` mask).
* `blockwise`: flash-style online softmax in plain JAX (`blockwise_attention`), with a
  recomputing custom VJP; never materialises `[S, S]` in either direction.
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (fused flash attention on an
  NVIDIA GPU, bfloat16 / float16; lengths use cuDNN's padding mask, segment ids an internal
  mask). Refused with a clear error elsewhere.
* `auto`: `resolve` picks by backend, dtype and shape, never a path that fails on the backend.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
from absl import logging

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn")
BLOCK_SIZE = 128  # query and key block length of `blockwise`
MAX_STAGES = 16  # longer sequences get longer blocks (compile time grows with the stage count)
AUTO_BLOCKWISE_MIN_SEQ = {"cpu": 1, "gpu": 1024, "tpu": 1024}  # below: xla (one block anyway)

_logged: set = set()


# ---- dispatch -------------------------------------------------------------------------------

def cudnn_unavailable(dtype, head_dim: int, backend: Optional[str] = None) -> Optional[str]:
    """Why `cudnn` cannot run here (a one-line reason), or None when it can."""
    backend = backend or jax.default_backend()
    if backend != "gpu":
        return f"needs an NVIDIA GPU with cuDNN, the backend is {backend!r}"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"supports bfloat16/float16 only, got {jnp.dtype(dtype).name}"
    if head_dim % 8 or head_dim > 128:
        return f"needs head_dim a multiple of 8 and ≤ 128, got {head_dim}"
    try:  # version / compute capability, as jax checks them (an unsupported GPU raises)
        from jax._src.cudnn.fused_attention_stablehlo import (check_compute_capability,
                                                              check_cudnn_version)
        check_cudnn_version()
        if not check_compute_capability("8.0"):
            return "needs compute capability ≥ 8.0 (Ampere or newer)"
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        return f"cuDNN check failed: {e}"
    return None


def check_backend(implementation: str, backend: Optional[str] = None) -> None:
    """Early check of a configured implementation (before any model is built): ValueError for
    an unknown name, or `cudnn` without a GPU (dtype and head_dim are checked when tracing)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; valid: "
                         f"{IMPLEMENTATIONS}")
    backend = backend or jax.default_backend()
    if implementation == "cudnn" and backend != "gpu":
        raise ValueError(f"runtime.attention='cudnn' needs an NVIDIA GPU with cuDNN, the backend "
                         f"is {backend!r}; use auto, xla or blockwise")


def resolve(implementation: str, seq_len: int, dtype, head_dim: int, *,
            segments: bool = False, backend: Optional[str] = None) -> str:
    """The implementation that runs: `implementation` itself, or `auto`'s choice.

    auto: GPU → cudnn when usable and there are no segment ids (its padding mask takes lengths
    only), else blockwise from S ≥ 1024, else xla; TPU the same without cudnn; CPU → blockwise
    (`AUTO_BLOCKWISE_MIN_SEQ`). Raises ValueError for an unknown name or an unusable cudnn.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; valid: "
                         f"{IMPLEMENTATIONS}")
    backend = backend or jax.default_backend()
    if implementation == "cudnn":
        why = cudnn_unavailable(dtype, head_dim, backend)
        if why:
            raise ValueError(f"attention implementation 'cudnn' {why}; use auto, xla or "
                             f"blockwise (runtime.attention)")
        return "cudnn"
    if implementation != "auto":
        return implementation
    if backend == "gpu" and not segments and cudnn_unavailable(dtype, head_dim, backend) is None:
        return "cudnn"
    return "blockwise" if seq_len >= AUTO_BLOCKWISE_MIN_SEQ.get(backend, 1024) else "xla"


def attention(q: Array, k: Array, v: Array, *, causal: bool = True,
              segment_ids: Optional[Array] = None, lengths: Optional[Array] = None,
              implementation: str = "auto", block_size: Optional[int] = None) -> Array:
    """q `[B, S, H, hd]`, k, v `[B, S, KV, hd]` -> `[B, S, H, hd]` (see the module docstring)."""
    b, s, h, hd = q.shape
    if k.shape != v.shape or k.ndim != 4 or k.shape[:2] != (b, s) or k.shape[3] != hd:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} must be [B, S, KV, hd] with "
                         f"q {q.shape}'s B, S and hd")
    if h % k.shape[2]:
        raise ValueError(f"attention: {h} query heads are not a multiple of {k.shape[2]} kv heads")
    if segment_ids is not None and segment_ids.shape != (b, s):
        raise ValueError(f"attention: segment_ids shape {segment_ids.shape}, expected {(b, s)}")
    if lengths is not None and lengths.shape != (b,):
        raise ValueError(f"attention: lengths shape {lengths.shape}, expected {(b,)}")
    impl = resolve(implementation, s, q.dtype, hd, segments=segment_ids is not None)
    key = (implementation, impl, s, jnp.dtype(q.dtype).name)
    if key not in _logged:  # once per distinct choice, at trace time
        _logged.add(key)
        logging.info("attention: %s -> %s (backend %s, S=%d, %s)", implementation, impl,
                     jax.default_backend(), s, key[3])
    if impl == "blockwise":
        return blockwise_attention(q, k, v, causal=causal, segment_ids=segment_ids,
                                   lengths=lengths, block_size=block_size)
    if impl == "cudnn" and segment_ids is None:
        lens = None if lengths is None else lengths.astype(jnp.int32)
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lens,
                                            key_value_seq_lengths=lens, implementation="cudnn")
    seg = segments_of(segment_ids, lengths, b, s)
    mask = None
    if seg is not None:
        mask = (seg[:, None, :, None] == seg[:, None, None, :]) & (seg[:, None, None, :] != 0)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=impl)


def segments_of(segment_ids: Optional[Array], lengths: Optional[Array], b: int, s: int
                ) -> Optional[Array]:
    """Canonical int32 `[B, S]` segment ids (0 = padding) from segment ids and/or lengths."""
    if segment_ids is None and lengths is None:
        return None
    seg = (jnp.ones((b, s), jnp.int32) if segment_ids is None
           else jnp.asarray(segment_ids).astype(jnp.int32))
    if lengths is not None:
        seg = jnp.where(jnp.arange(s)[None] < jnp.asarray(lengths)[:, None], seg, 0)
    return seg


def reference_attention(q: Array, k: Array, v: Array, *, causal: bool = True,
                        segment_ids: Optional[Array] = None, lengths: Optional[Array] = None
                        ) -> Array:
    """The dense definition (float32 `[B, H, S, S]` softmax; rows with no visible key → 0).

    For tests and documentation: what every implementation computes on visible rows."""
    b, s, h, hd = q.shape
    g = h // k.shape[2]
    kk, vv = (jnp.repeat(t.astype(jnp.float32), g, axis=2) for t in (k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), kk) * hd ** -0.5
    vis = _visible(s, segments_of(segment_ids, lengths, b, s), causal)
    logits = jnp.where(vis[:, None], logits, -jnp.inf)
    m = jnp.max(logits, -1, keepdims=True)
    p = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
    p = p / jnp.maximum(p.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return jnp.einsum("bhqk,bkhd->bqhd", p, vv).astype(q.dtype)


def _visible(s: int, seg: Optional[Array], causal: bool) -> Array:
    """bool `[B or 1, S, S]`: key j visible to query i (canonical segment ids `seg`)."""
    pos = jnp.arange(s)
    vis = ((pos[None, :] <= pos[:, None]) if causal else jnp.ones((s, s), bool))[None]
    if seg is not None:
        vis = vis & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    return vis


# ---- blockwise (flash-style) ----------------------------------------------------------------

def block_size_for(seq_len: int, block_size: Optional[int] = None) -> int:
    """Block length: `block_size` (default BLOCK_SIZE), at most S, and at least
    ⌈S / MAX_STAGES⌉ rounded up to a multiple of 128 (so at most MAX_STAGES diagonals)."""
    blk = BLOCK_SIZE if block_size is None else int(block_size)
    if blk < 1:
        raise ValueError(f"attention block_size must be ≥ 1, got {blk}")
    if block_size is None and seq_len > blk * MAX_STAGES:
        blk = -(-seq_len // (MAX_STAGES * 128)) * 128
    return min(blk, seq_len)


def blockwise_attention(q: Array, k: Array, v: Array, *, causal: bool = True,
                        segment_ids: Optional[Array] = None, lengths: Optional[Array] = None,
                        block_size: Optional[int] = None) -> Array:
    """Flash-style attention: S is cut into n blocks of `block_size_for(S)` (zero-padded to a
    multiple; padded keys are id 0) and the (query block, key block) pairs are visited one block
    diagonal d = qi − ki at a time, each diagonal one batched matmul over its n − |d| pairs.

    Causal attention visits d = 0..n−1 only (the upper triangle is never computed) and masks
    inside the d = 0 blocks only. With segment ids or lengths, a diagonal whose every block is
    invisible in every row (e.g. far apart segments, all-padding blocks) is skipped at run time
    (`lax.cond` on a per-block segment-range test). Running max / sum / output accumulate in
    float32. The custom VJP saves q, k, v, the output and the float32 log-sum-exp `[B, H, S]` and
    recomputes each block's probabilities (FlashAttention-2), so neither direction holds more than
    one diagonal's `[B, H, S, block]` logits.
    """
    b, s, h, hd = q.shape
    blk = block_size_for(s, block_size)
    n = -(-s // blk)
    pad = n * blk - s
    seg = segments_of(segment_ids, lengths, b, s)
    if pad:
        seg = jnp.ones((b, s), jnp.int32) if seg is None else seg
        seg = jnp.pad(seg, ((0, 0), (0, pad)))
        q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
    out = _flash(q, k, v, seg, causal, blk, segment_ids is not None or lengths is not None)
    return out[:, :s] if pad else out


def _diagonals(n: int, causal: bool):
    """(d, query-block slice, key-block slice) of every block diagonal d = qi − ki visited."""
    ds = range(n) if causal else range(-(n - 1), n)
    return [(d, slice(max(d, 0), n + min(d, 0)), slice(max(-d, 0), n - max(d, 0))) for d in ds]


def _live(seg: Optional[Array], n: int, blk: int, causal: bool, skip: bool):
    """Per diagonal: None (always visited) or a bool scalar, False when no block on it has a
    visible (query, key) pair in any row. Conservative test per row and block pair: the ranges
    [min nonzero id, max id] of the query and key blocks overlap."""
    if seg is None or not skip:
        return {d: None for d, _, _ in _diagonals(n, causal)}
    sb = seg.reshape(seg.shape[0], n, blk)
    hi = sb.max(-1)
    lo = jnp.where(sb != 0, sb, jnp.iinfo(jnp.int32).max).min(-1)
    pair = (lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None])  # [B, qi, ki]
    pair = pair.any(0)
    return {d: jnp.diagonal(pair, offset=-d).any() for d, _, _ in _diagonals(n, causal)}


def _blocks(q, k, v, n, blk):
    """q → `[B, KV, n, G, blk, hd]`, k, v → `[B, KV, n, blk, hd]`."""
    b, _, h, hd = q.shape
    kvh = k.shape[2]
    qb = q.reshape(b, n, blk, kvh, h // kvh, hd).transpose(0, 3, 1, 4, 2, 5)
    kb, vb = (t.reshape(b, n, blk, kvh, hd).transpose(0, 3, 1, 2, 4) for t in (k, v))
    return qb, kb, vb


def _unblock_q(x, s):
    """`[B, KV, n, G, blk, hd]` → `[B, S, H, hd]`."""
    b, kvh, n, g, blk, hd = x.shape
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, s, kvh * g, hd)


def _unblock_kv(x, s):
    """`[B, KV, n, blk, hd]` → `[B, S, KV, hd]`."""
    b, kvh, n, blk, hd = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(b, s, kvh, hd)


def _logits(qb, kb, seg, d, qs, ks, blk, causal, scale):
    """float32 logits of diagonal d `[B, KV, c, G, blk, blk]`, invisible entries −inf."""
    x = jnp.einsum("bhngqd,bhnkd->bhngqk", qb[:, :, qs], kb[:, :, ks],
                   preferred_element_type=jnp.float32) * scale
    vis = None
    if causal and d == 0:
        vis = jnp.tril(jnp.ones((blk, blk), bool))
    if seg is not None:
        n = seg.shape[1] // blk
        sb = seg.reshape(seg.shape[0], n, blk)
        sq, sk = sb[:, qs], sb[:, ks]  # [B, c, blk]
        sv = (sq[:, :, :, None] == sk[:, :, None, :]) & (sk[:, :, None, :] != 0)
        vis = sv if vis is None else sv & vis
        vis = vis[:, None, :, None]  # [B, 1, c, 1, blk, blk]
    return x if vis is None else jnp.where(vis, x, -jnp.inf)


def _maybe(pred, fn, operands):
    """fn(operands) when pred (None = always), else operands unchanged (lax.cond)."""
    if pred is None:
        return fn(operands)
    return jax.lax.cond(pred, fn, lambda o: o, operands)


def _forward(q, k, v, seg, causal, blk, skip):
    """(out `[B, S, H, hd]` in q's dtype, residuals) of the blockwise attention."""
    b, s, h, hd = q.shape
    n = s // blk
    scale = hd ** -0.5
    qb, kb, vb = _blocks(q, k, v, n, blk)
    stat = qb.shape[:-1]  # [B, KV, n, G, blk]
    m = jnp.full(stat, -jnp.inf, jnp.float32)
    l = jnp.zeros(stat, jnp.float32)
    acc = jnp.zeros(qb.shape, jnp.float32)
    live = _live(seg, n, blk, causal, skip)
    for d, qs, ks in _diagonals(n, causal):
        def step(carry, d=d, qs=qs, ks=ks):
            m_o, l_o, a_o = carry
            x = _logits(qb, kb, seg, d, qs, ks, blk, causal, scale)
            m_n = jnp.maximum(m_o, x.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_n), m_n, 0.0)
            p = jnp.exp(x - m_safe[..., None])
            alpha = jnp.exp(m_o - m_safe)
            pv = jnp.einsum("bhngqk,bhnkd->bhngqd", p.astype(vb.dtype), vb[:, :, ks],
                            preferred_element_type=jnp.float32)
            return m_n, alpha * l_o + p.sum(-1), alpha[..., None] * a_o + pv

        new = _maybe(live[d], step, (m[:, :, qs], l[:, :, qs], acc[:, :, qs]))
        m, l, acc = (t.at[:, :, qs].set(u) for t, u in zip((m, l, acc), new))
    empty = l == 0
    out = (acc / jnp.where(empty, 1.0, l)[..., None]).astype(q.dtype)
    lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
    return _unblock_q(out, s), (q, k, v, seg, out, lse)


def _backward(causal, blk, skip, res, dout):
    q, k, v, seg, ob, lse = res
    b, s, h, hd = q.shape
    n = s // blk
    scale = hd ** -0.5
    qb, kb, vb = _blocks(q, k, v, n, blk)
    dob = _blocks(dout, k, v, n, blk)[0]
    delta = jnp.sum(dob.astype(jnp.float32) * ob.astype(jnp.float32), -1)  # rowsum(dO ∘ O)
    dq = jnp.zeros(qb.shape, jnp.float32)
    dk = jnp.zeros(kb.shape, jnp.float32)
    dv = jnp.zeros(vb.shape, jnp.float32)
    live = _live(seg, n, blk, causal, skip)
    for d, qs, ks in _diagonals(n, causal):
        def step(carry, d=d, qs=qs, ks=ks):
            dq_o, dk_o, dv_o = carry
            x = _logits(qb, kb, seg, d, qs, ks, blk, causal, scale)
            p = jnp.exp(x - lse[:, :, qs][..., None])  # invisible → 0; empty rows: lse = inf
            do = dob[:, :, qs]
            dv_n = dv_o + jnp.einsum("bhngqk,bhngqd->bhnkd", p.astype(do.dtype), do,
                                     preferred_element_type=jnp.float32)
            dp = jnp.einsum("bhngqd,bhnkd->bhngqk", do, vb[:, :, ks],
                            preferred_element_type=jnp.float32)
            ds = (p * (dp - delta[:, :, qs][..., None]) * scale).astype(qb.dtype)
            dq_n = dq_o + jnp.einsum("bhngqk,bhnkd->bhngqd", ds, kb[:, :, ks],
                                     preferred_element_type=jnp.float32)
            dk_n = dk_o + jnp.einsum("bhngqk,bhngqd->bhnkd", ds, qb[:, :, qs],
                                     preferred_element_type=jnp.float32)
            return dq_n, dk_n, dv_n

        new = _maybe(live[d], step, (dq[:, :, qs], dk[:, :, ks], dv[:, :, ks]))
        dq = dq.at[:, :, qs].set(new[0])
        dk = dk.at[:, :, ks].set(new[1])
        dv = dv.at[:, :, ks].set(new[2])
    return (_unblock_q(dq, s).astype(q.dtype), _unblock_kv(dk, s).astype(k.dtype),
            _unblock_kv(dv, s).astype(v.dtype), None)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, seg, causal, blk, skip):
    return _forward(q, k, v, seg, causal, blk, skip)[0]


def _flash_fwd(q, k, v, seg, causal, blk, skip):
    return _forward(q, k, v, seg, causal, blk, skip)


_flash.defvjp(_flash_fwd, _backward)


__all__ = ["IMPLEMENTATIONS", "attention", "block_size_for", "check_backend",
           "blockwise_attention", "cudnn_unavailable", "reference_attention", "resolve",
           "segments_of"]
