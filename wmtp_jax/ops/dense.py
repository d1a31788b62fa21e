"""`dense`: x `[..., I]` @ w `[I, O]` -> `[..., O]`, with a custom VJP that flattens the leading
dimensions and runs the two backward GEMMs on 2-D operands:

    dx = g Wᵀ,   dW = x₂ᵀ g₂   (x₂ `[N, I]`, g₂ `[N, O]`, N = ∏ leading dims)

Same values as autodiff of the N-D einsum (bit-identical in float32). The reason is speed on
XLA:CPU: autodiff's transposed N-D dot_general leads its layout assignment to copy the whole
`[N, O]` cotangent into a transposed layout before the dW GEMM; for the MTP logits
`[B, S, K, V]` that copy cost as much as the three GEMMs together.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array


def dense(x: Array, w: Array, out_dtype=None) -> Array:
    """x `[..., I]` @ w `[I, O]` -> `[..., O]` (dtype `out_dtype`, else the operands')."""
    return _dense(x, w, None if out_dtype is None else jnp.dtype(out_dtype))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, w, out_dtype):
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=out_dtype)


def _dense_fwd(x, w, out_dtype):
    return _dense(x, w, out_dtype), (x, w)


def _dense_bwd(out_dtype, res, g):
    x, w = res
    g2 = g.reshape(-1, g.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    dx = jnp.einsum("no,io->ni", g2, w, preferred_element_type=jnp.float32)
    dw = jnp.einsum("ni,no->io", x2, g2, preferred_element_type=jnp.float32)
    return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)
