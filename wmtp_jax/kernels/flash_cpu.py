"""`flash_attention_cpu`: the fused C++ flash attention (`flash_cpu.cc`) as a JAX function with
a custom VJP (forward saves out and the float32 log-sum-exp; backward recomputes P per block).

q `[..., S, H, D]`, k, v `[..., S, KV, D]`, seg `[..., S]` int32 (0 = padding; key j visible to
query i iff seg[j] == seg[i] != 0 and, causal, j ≤ i) -> `[..., S, H, D]`. Computes in float32
(other dtypes are cast in and out); the kernel is built for D ∈ `HEAD_DIMS`, other head dims ≤ 256
are zero-padded to the next one (q·k and the scale 1/√D unchanged). Queries with no visible key
give 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.kernels import build
from wmtp_jax.kernels.platform import current_platform

HEAD_DIMS = (16, 32, 64, 128, 256)


def unavailable(head_dim: int | None = None, backend: str | None = None) -> str | None:
    """None when the kernel can run here, else a one-line reason (`backend`: default
    `current_platform()`, the compile target)."""
    backend = backend or current_platform()
    if backend != "cpu":
        return f"runs on the CPU backend only, the backend is {backend!r}"
    if head_dim is not None and not 1 <= head_dim <= HEAD_DIMS[-1]:
        return f"needs head_dim ≤ {HEAD_DIMS[-1]}, got {head_dim}"
    return build.unavailable()


def _call(name, outs, *args, causal, scale):
    return jax.ffi.ffi_call(name, outs, vmap_method="broadcast_all")(
        *args, causal=np.int32(causal), scale=np.float32(scale)
    )


def _forward(q, k, v, seg, causal, scale):
    *lead, s, h, _ = q.shape
    outs = (
        jax.ShapeDtypeStruct(q.shape, jnp.float32),
        jax.ShapeDtypeStruct((*lead, h, s), jnp.float32),
    )
    return _call("wmtp_flash_fwd", outs, q, k, v, seg, causal=causal, scale=scale)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, seg, causal, scale):
    return _forward(q, k, v, seg, causal, scale)[0]


def _flash_fwd(q, k, v, seg, causal, scale):
    out, lse = _forward(q, k, v, seg, causal, scale)
    return out, (q, k, v, seg, out, lse)


def _flash_bwd(causal, scale, res, dout):
    q, k, v, seg, out, lse = res
    outs = tuple(jax.ShapeDtypeStruct(t.shape, jnp.float32) for t in (q, k, v))
    dq, dk, dv = _call(
        "wmtp_flash_bwd",
        outs,
        *(q, k, v, seg, out, lse, dout.astype(jnp.float32)),
        causal=causal,
        scale=scale,
    )
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention_cpu(q, k, v, seg, *, causal: bool = True, backend: str | None = None):
    """See the module docstring. Raises ValueError when the kernel cannot run here or is being
    traced for another platform (`backend`, default `current_platform()`)."""
    why = unavailable(q.shape[-1], backend)
    if why:
        raise ValueError(f"attention implementation 'cpu_flash' {why}")
    hd = q.shape[-1]
    pad = next(d for d in HEAD_DIMS if d >= hd) - hd
    widen = [(0, 0)] * (q.ndim - 1) + [(0, pad)]
    f32 = [
        jnp.pad(t.astype(jnp.float32), widen) if pad else t.astype(jnp.float32) for t in (q, k, v)
    ]
    out = _flash(*f32, seg.astype(jnp.int32), bool(causal), float(hd) ** -0.5)
    return (out[..., :hd] if pad else out).astype(q.dtype)
