"""Value heads and the critic: `ValueModel` = Llama backbone (no LM head) + `value_head`.

Heads read the backbone's last hidden state (after the final norm), computed in float32:
  linear  : h → 1
  sigmoid : σ(h → 1)
  mlp     : h → h/4 → GELU(erf) → dropout → h/8 → GELU(erf) → dropout → 1
The last layer's weight starts at zero and its bias at `bias_init`, so the initial value is
exactly `bias_init` (σ(bias_init) for sigmoid) everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .args import ModelArgs
from .llama import Llama
from .primitives import Linear

_zeros = nnx.initializers.zeros


def _final(d_in: int, in_name: str, bias_init: float | None, rngs) -> Linear:
    lin = Linear(d_in, 1, names=(in_name, None), use_bias=True, kernel_init=_zeros, rngs=rngs)
    lin.bias[...] = jnp.full((1,), 0.0 if bias_init is None else bias_init, jnp.float32)
    return lin


class LinearValueHead(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs, bias_init: float | None = None):
        self.proj = _final(dim, "embed", bias_init, rngs)

    def __call__(self, h):
        return self.proj(h.astype(jnp.float32))


class SigmoidValueHead(LinearValueHead):
    def __call__(self, h):
        return jax.nn.sigmoid(super().__call__(h))


class MLPValueHead(nnx.Module):
    def __init__(
        self, dim: int, *, rngs: nnx.Rngs, dropout: float = 0.0, bias_init: float | None = None
    ):
        h1, h2 = dim // 4, dim // 8
        self.fc1 = Linear(dim, h1, names=("embed", "value_hidden"), use_bias=True, rngs=rngs)
        self.fc2 = Linear(h1, h2, names=("value_hidden", "value_hidden"), use_bias=True, rngs=rngs)
        self.fc3 = _final(h2, "value_hidden", bias_init, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        # PyTorch default bias init U(±1/√fan_in) on the hidden layers.
        for lin, fan_in in ((self.fc1, dim), (self.fc2, h1)):
            lin.bias[...] = jax.random.uniform(
                rngs.params(), lin.bias.shape, jnp.float32, -(fan_in**-0.5), fan_in**-0.5
            )

    def _drop(self, x):
        return self.dropout(x) if self.dropout is not None else x

    def __call__(self, h):
        x = self._drop(jax.nn.gelu(self.fc1(h.astype(jnp.float32)), approximate=False))
        x = self._drop(jax.nn.gelu(self.fc2(x), approximate=False))
        return self.fc3(x)


VALUE_HEADS = {"linear": LinearValueHead, "sigmoid": SigmoidValueHead, "mlp": MLPValueHead}


def create_value_head(
    dim: int,
    head_type: str = "mlp",
    *,
    rngs: nnx.Rngs,
    dropout: float = 0.0,
    bias_init: float | None = None,
) -> nnx.Module:
    if head_type not in VALUE_HEADS:
        raise ValueError(f"unknown value head type {head_type!r}; valid: {sorted(VALUE_HEADS)}")
    if head_type == "mlp":
        return MLPValueHead(dim, rngs=rngs, dropout=dropout, bias_init=bias_init)
    return VALUE_HEADS[head_type](dim, rngs=rngs, bias_init=bias_init)


class ValueModel(nnx.Module):
    """Critic: values `[B, S, 1]` float32 = value_head(backbone.hidden_states(tokens, mask))."""

    def __init__(
        self,
        args: ModelArgs,
        *,
        rngs: nnx.Rngs,
        head_type: str = "mlp",
        dropout: float = 0.0,
        bias_init: float | None = None,
        lora=None,
    ):
        self.args, self.lora, self.head_type = args, lora, head_type
        self.backbone = Llama(args, rngs=rngs, lm_head=False, lora=lora)
        self.value_head = create_value_head(
            args.dim, head_type, rngs=rngs, dropout=dropout, bias_init=bias_init
        )

    def __call__(
        self,
        tokens: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Packed rows: `segment_ids` (and optional per-segment `positions`) instead of the
        attention mask."""
        h = self.backbone.hidden_states(
            tokens, attention_mask, positions=positions, segment_ids=segment_ids
        )
        return self.value_head(h)
