"""MTP cross entropy that never materialises `[B,S,K,V]` logits.

All K heads share the final RMSNorm and the output projection, so every (b, t, k) token is the
same computation `ce(norm(h[b,t,k]) @ W, target[b,t,k])`. Per row, the S·K (position, head) latents
are flattened and scanned in chunks of `chunk_size`; the batch axis stays inside every step (so a
batch sharded over the mesh stays sharded). Each chunk's body is rematerialised
(`jax.checkpoint`), so forward and backward hold only one `[B, chunk_size, V]` logits block at a
time (the per-head memory trick of Meta MTP, plus tiling over positions). Loss and gradients equal
the dense path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.ops._utils import token_ce
from wmtp_jax.ops.dense import dense
from wmtp_jax.ops.layout import constrain_batch
from wmtp_jax.ops.mtp_loss import align_head_targets, reduce_head_losses


def rms_norm(
    x: jax.Array, norm_scale: jax.Array, eps: float = 1e-5, compute_dtype=jnp.float32
) -> jax.Array:
    """Meta RMSNorm: (x·rsqrt(mean(x², -1) + eps)) in float32, cast to compute_dtype, × scale.

    The model's `RMSNorm` calls it with compute_dtype = x.dtype.
    """
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return normed.astype(compute_dtype) * norm_scale.astype(compute_dtype)


def head_logits(
    head_latents: jax.Array,
    norm_scale: jax.Array,
    output_kernel: jax.Array,
    *,
    norm_eps: float = 1e-5,
    compute_dtype=jnp.float32,
) -> jax.Array:
    """Dense reference: float32 logits `[..., V]` = output(norm(head_latents)).

    `output_kernel [D,V]`.
    """
    y = rms_norm(head_latents, norm_scale, norm_eps, compute_dtype)
    return dense(y, output_kernel.astype(compute_dtype), out_dtype=jnp.float32)


def chunked_mtp_ce_loss(
    head_latents: jax.Array,
    norm_scale: jax.Array,
    output_kernel: jax.Array,
    labels: jax.Array,
    attention_mask: jax.Array,
    weights: jax.Array | None = None,
    *,
    norm_eps: float = 1e-5,
    chunk_size: int = 512,
    compute_dtype=jnp.float32,
    segment_ids: jax.Array | None = None,
) -> dict:
    """`compute_mtp_ce_loss(head_logits(head_latents, ...), labels, attention_mask, weights)`
    without the `[B,S,K,V]` logits.

    head_latents `[B,S,K,D]` (pre-norm outputs of the K head blocks), norm_scale `[D]`,
    output_kernel `[D,V]`, labels/attention_mask `[B,S]`, weights None | `[B,S]` | `[B,S,K]`.
    chunk_size: (position, head) pairs per row per scan step (all B rows go together); peak extra
    memory is a few `[B, chunk_size, V]` float32 blocks. S·K divisible by chunk_size avoids padding.
    segment_ids `[B,S]` (packed rows): targets never cross a segment end.
    Returns the same dict as compute_mtp_ce_loss.
    """
    if head_latents.ndim != 4:
        raise ValueError(f"head_latents: expected [B,S,K,D], got {head_latents.shape}")
    b, s, k, d = head_latents.shape
    if tuple(labels.shape) != (b, s):
        raise ValueError(
            f"labels: expected shape {(b, s)} from head_latents {head_latents.shape}, "
            f"got {labels.shape}"
        )
    if tuple(norm_scale.shape) != (d,):
        raise ValueError(f"norm_scale: expected shape {(d,)}, got {norm_scale.shape}")
    if output_kernel.ndim != 2 or output_kernel.shape[0] != d:
        raise ValueError(f"output_kernel: expected [D={d}, V], got {output_kernel.shape}")
    targets, mask, w = align_head_targets(labels, attention_mask, k, weights, segment_ids)

    # rows stay a (possibly sharded) non-scanned axis; the scan runs over chunks of the S·K axis
    n = s * k
    c = max(1, min(int(chunk_size), n))
    n_chunks = -(-n // c)
    x = head_latents.reshape(b, n, d)
    t = targets.reshape(b, n)
    if n_chunks * c != n:  # zero rows normalise to 0 -> finite logits; their mask is 0
        x = jnp.pad(x, ((0, 0), (0, n_chunks * c - n), (0, 0)))
        t = jnp.pad(t, ((0, 0), (0, n_chunks * c - n)))
    x = jnp.moveaxis(x.reshape(b, n_chunks, c, d), 1, 0)
    t = jnp.moveaxis(t.reshape(b, n_chunks, c), 1, 0)

    @jax.checkpoint
    def chunk_ce(x_c, t_c, scale, kernel):
        logits = head_logits(
            constrain_batch(x_c), scale, kernel, norm_eps=norm_eps, compute_dtype=compute_dtype
        )
        return token_ce(logits, t_c)

    def body(carry, xs):
        return carry, chunk_ce(xs[0], xs[1], norm_scale, output_kernel)

    _, ce = jax.lax.scan(body, None, (x, t))  # [n_chunks, B, c]
    ce = jnp.moveaxis(ce, 0, 1).reshape(b, n_chunks * c)[:, :n].reshape(b, s, k)
    return reduce_head_losses(ce, mask, w)
