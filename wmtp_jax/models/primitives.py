"""Transformer primitives shared by every model: dtypes, logical-axis params, Linear (with
optional LoRA), Embed and RMSNorm.

Conventions: Linear kernels are `[in, out]`; every Param carries logical axis names
(`out_sharding`, docs/design.md); weights are stored in `param_dtype` and computed in `dtype`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax.ops.chunked_loss import rms_norm
from wmtp_jax.ops.dense import dense

Array = jax.Array

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
