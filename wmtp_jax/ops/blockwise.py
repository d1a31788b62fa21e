"""`blockwise`: flash-style causal attention in plain JAX, with segment ids (packed rows) and
GQA; the `blockwise` implementation of `wmtp_jax.ops.attention` (see its docstring for the
interface and the visibility rule).

S is cut into blocks of `block_size_for(S)`; each query block runs an online softmax over its
key blocks, skips fully masked block pairs, and the custom VJP recomputes each block's
probabilities (FlashAttention-2), so neither direction materialises `[S, S]`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from wmtp_jax.ops.segments import segments_of

Array = jax.Array

BLOCK_SIZE = 128  # query and key block length of `blockwise`


def block_size_for(seq_len: int, block_size: int | None = None) -> int:
    """Block length: `block_size` (default BLOCK_SIZE), at most S."""
    blk = BLOCK_SIZE if block_size is None else int(block_size)
    if blk < 1:
        raise ValueError(f"attention block_size must be ≥ 1, got {blk}")
    return min(blk, seq_len)


def blockwise_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = True,
    segment_ids: Array | None = None,
    lengths: Array | None = None,
    block_size: int | None = None,
) -> Array:
    """Flash-style attention: S is cut into n blocks of `block_size_for(S)` (zero-padded to a
    multiple; padded keys get id 0). Each query block runs an online softmax (running max, sum
    and output in float32) over its key blocks in a loop; causal attention visits key blocks
    0..qi only, so the masked upper triangle is never computed. With segment ids or lengths, a
    block pair with no visible (query, key) in any row (far apart segments, all-padding blocks) is
    skipped at run time (`lax.cond` on a per-block segment-range test). The custom VJP saves q,
    k, v, the output and the float32 log-sum-exp and recomputes each block's probabilities
    (FlashAttention-2), so neither direction holds more than one block pair's logits
    `[B, H, block, block]` at a time.
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


def _live(seg: Array | None, n: int, blk: int) -> Array:
    """bool `[n, n]` (query block, key block): False when the pair has no visible (query, key)
    in any row. Conservative test per row: the blocks' ranges [min nonzero id, max id] overlap."""
    sb = seg.reshape(seg.shape[0], n, blk)
    hi = sb.max(-1)
    lo = jnp.where(sb != 0, sb, jnp.iinfo(jnp.int32).max).min(-1)
    return ((lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None])).any(0)


def _blocks(q, k, v, n, blk):
    """q → `[n, B, KV, G, blk, hd]`, k, v → `[n, B, KV, blk, hd]` (block index leading)."""
    b, _, h, hd = q.shape
    kvh = k.shape[2]
    qb = q.reshape(b, n, blk, kvh, h // kvh, hd).transpose(1, 0, 3, 4, 2, 5)
    kb, vb = (t.reshape(b, n, blk, kvh, hd).transpose(1, 0, 3, 2, 4) for t in (k, v))
    return qb, kb, vb


def _unblock_q(x):
    """`[n, B, KV, G, blk, hd]` → `[B, S, H, hd]`."""
    n, b, kvh, g, blk, hd = x.shape
    return x.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * blk, kvh * g, hd)


def _unblock_kv(x):
    """`[n, B, KV, blk, hd]` → `[B, S, KV, hd]`."""
    n, b, kvh, blk, hd = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, n * blk, kvh, hd)


def _logits(qblk, kblk, sn, qi, ki, blk, causal, scale):
    """float32 logits `[B, KV, G, blk, blk]` of query block qi `[B, KV, G, blk, hd]` against key
    block ki `[B, KV, blk, hd]`; invisible entries −inf (causal by absolute position, segment
    ids `sn` `[n, B, blk]` or None)."""
    x = jnp.einsum("bhgqd,bhkd->bhgqk", qblk, kblk, preferred_element_type=jnp.float32) * scale
    vis = None
    if causal:
        pos = jnp.arange(blk)
        vis = (ki * blk + pos[None, :] <= qi * blk + pos[:, None])[None]  # [1, blk, blk]
    if sn is not None:
        sq, sk = sn[qi], sn[ki]
        sv = (sq[:, :, None] == sk[:, None, :]) & (sk[:, None, :] != 0)
        vis = sv if vis is None else sv & vis
    return x if vis is None else jnp.where(vis[:, None, None], x, -jnp.inf)


def _when(live, qi, ki, fn, carry):
    """fn(carry) for a live block pair (always when live is None), else carry (`lax.cond`)."""
    if live is None:
        return fn(carry)
    return jax.lax.cond(live[qi, ki], fn, lambda c: c, carry)


def _forward(q, k, v, seg, causal, blk, skip):
    """(out `[B, S, H, hd]` in q's dtype, residuals): for each query block (`lax.map`), a loop
    over its key blocks (0..qi when causal: the masked upper triangle is never visited)."""
    b, s, h, hd = q.shape
    n = s // blk
    scale = hd**-0.5
    qb, kb, vb = _blocks(q, k, v, n, blk)
    sn = None if seg is None else seg.reshape(b, n, blk).transpose(1, 0, 2)
    live = _live(seg, n, blk) if skip else None

    def q_block(qi):
        qblk = qb[qi]

        def k_step(ki, carry):
            def update(carry):
                m_o, l_o, a_o = carry
                x = _logits(qblk, kb[ki], sn, qi, ki, blk, causal, scale)
                m_n = jnp.maximum(m_o, x.max(-1))
                m_safe = jnp.where(jnp.isfinite(m_n), m_n, 0.0)
                p = jnp.exp(x - m_safe[..., None])
                alpha = jnp.exp(m_o - m_safe)
                pv = jnp.einsum(
                    "bhgqk,bhkd->bhgqd",
                    p.astype(vb.dtype),
                    vb[ki],
                    preferred_element_type=jnp.float32,
                )
                return m_n, alpha * l_o + p.sum(-1), alpha[..., None] * a_o + pv

            return _when(live, qi, ki, update, carry)

        stat = qblk.shape[:-1]
        init = (
            jnp.full(stat, -jnp.inf, jnp.float32),
            jnp.zeros(stat, jnp.float32),
            jnp.zeros(qblk.shape, jnp.float32),
        )
        m, l, acc = jax.lax.fori_loop(0, qi + 1 if causal else n, k_step, init)
        empty = l == 0
        out = (acc / jnp.where(empty, 1.0, l)[..., None]).astype(q.dtype)
        return out, jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))

    out, lse = jax.lax.map(q_block, jnp.arange(n))
    return _unblock_q(out), (q, k, v, seg, out, lse)


def _backward(causal, blk, skip, res, dout):
    """FlashAttention-2 backward: for each key block (`lax.scan`, dQ carried), a loop over the
    query blocks that see it, recomputing P = exp(logits − lse)."""
    q, k, v, seg, ob, lse = res
    b, s, h, hd = q.shape
    n = s // blk
    scale = hd**-0.5
    qb, kb, vb = _blocks(q, k, v, n, blk)
    dob = _blocks(dout, k, v, n, blk)[0]
    delta = jnp.sum(dob.astype(jnp.float32) * ob.astype(jnp.float32), -1)  # rowsum(dO ∘ O)
    sn = None if seg is None else seg.reshape(b, n, blk).transpose(1, 0, 2)
    live = _live(seg, n, blk) if skip else None

    def k_block(dq, ki):
        kblk, vblk = kb[ki], vb[ki]

        def q_step(qi, carry):
            def update(carry):
                dq, dk, dv = carry
                qblk, do = qb[qi], dob[qi]
                x = _logits(qblk, kblk, sn, qi, ki, blk, causal, scale)
                p = jnp.exp(x - lse[qi][..., None])  # invisible → 0; empty rows: lse = inf
                dv = dv + jnp.einsum(
                    "bhgqk,bhgqd->bhkd", p.astype(do.dtype), do, preferred_element_type=jnp.float32
                )
                dp = jnp.einsum("bhgqd,bhkd->bhgqk", do, vblk, preferred_element_type=jnp.float32)
                ds = (p * (dp - delta[qi][..., None]) * scale).astype(qblk.dtype)
                dq = dq.at[qi].add(
                    jnp.einsum("bhgqk,bhkd->bhgqd", ds, kblk, preferred_element_type=jnp.float32)
                )
                dk = dk + jnp.einsum(
                    "bhgqk,bhgqd->bhkd", ds, qblk, preferred_element_type=jnp.float32
                )
                return dq, dk, dv

            return _when(live, qi, ki, update, carry)

        zeros = jnp.zeros(kblk.shape, jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(ki if causal else 0, n, q_step, (dq, zeros, zeros))
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(k_block, jnp.zeros(qb.shape, jnp.float32), jnp.arange(n))
    return (
        _unblock_q(dq).astype(q.dtype),
        _unblock_kv(dk).astype(k.dtype),
        _unblock_kv(dv).astype(v.dtype),
        None,
    )


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, seg, causal, blk, skip):
    return _forward(q, k, v, seg, causal, blk, skip)[0]


def _flash_fwd(q, k, v, seg, causal, blk, skip):
    return _forward(q, k, v, seg, causal, blk, skip)


_flash.defvjp(_flash_fwd, _backward)
