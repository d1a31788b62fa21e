"""HF LlamaForCausalLM semantics (critic backbone, Rho-1 reference) on the shared Block module.

HF checkpoints are rotate-half natively, so weights load without a permute
(`conversion.mapping.hf_key_table`). Positions default to 0..S-1 for every row, as transformers'
LlamaModel does even with a right-padded attention mask; padded keys are masked. With
`args.tie_embeddings` the LM head is `tok_embeddings.embedding.T` (no `output` parameter).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax.ops.layout import constrain_batch

from .args import ModelArgs
from .cache import cache_entry, cache_len, empty_cache
from .primitives import Embed, Linear, RMSNorm
from .stacking import attention_inputs, scan_blocks, stack_blocks


class Llama(nnx.Module):
    """tok_embeddings → `layers` (n_layers blocks, lax.scan) → norm → output (if `lm_head`)."""

    def __init__(self, args: ModelArgs, *, rngs: nnx.Rngs, lm_head: bool = True, lora=None):
        self.args, self.lora, self.lm_head = args, lora, lm_head
        kw = dict(dtype=args.dtype, param_dtype=args.param_dtype)
        self.tok_embeddings = Embed(args.vocab_size, args.dim, rngs=rngs, **kw)
        self.layers = stack_blocks(args.n_layers, args, rngs=rngs, lora=lora, axis_name="layers")
        self.norm = RMSNorm(args.dim, eps=args.norm_eps, **kw)
        self.output = (
            Linear(args.dim, args.vocab_size, names=("embed", "vocab"), rngs=rngs, **kw)
            if lm_head and not args.tie_embeddings
            else None
        )

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> dict:
        """{"layers": {"k", "v"}} zero buffers `[L, B, KV, T, hd]`."""
        return {"layers": empty_cache(self.args.n_layers, self.args, batch_size, max_len, dtype)}

    def hidden_states(
        self,
        tokens: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        cache: dict | None = None,
        segment_ids: jax.Array | None = None,
    ):
        """Last hidden state after the final norm `[B, S, D]` (HF `last_hidden_state`), compute
        dtype; `(hidden, new_cache)` when `cache` is given. Packed rows: `segment_ids` `[B, S]`
        instead of `attention_mask` (see `stacking.attention_inputs`)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, S] int, got shape {tokens.shape}")
        cos, sin, mask, start = attention_inputs(
            self.args, tokens.shape, positions, attention_mask, cache_len(cache), segment_ids
        )
        h = self.tok_embeddings(tokens)
        h, kv = scan_blocks(
            self.layers,
            h,
            cos,
            sin,
            mask,
            cache_entry(cache and cache["layers"]),
            start,
            remat=self.args.remat,
        )
        h = self.norm(constrain_batch(h))
        return h if cache is None else (h, {"layers": {"k": kv[0], "v": kv[1]}})

    def __call__(
        self,
        tokens: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        cache: dict | None = None,
        segment_ids: jax.Array | None = None,
    ):
        """Logits `[B, S, V]` float32 (the final-norm hidden state when built without `lm_head`);
        `(out, new_cache)` when `cache` is given (same cache rules as MTPTransformer)."""
        out = self.hidden_states(
            tokens, attention_mask, positions=positions, cache=cache, segment_ids=segment_ids
        )
        h, new_cache = out if cache is not None else (out, None)
        if self.output is not None:
            h = self.output(h, out_dtype=jnp.float32)
        elif self.lm_head:
            h = self.tok_embeddings.attend(h, out_dtype=jnp.float32)
        return h if cache is None else (h, new_cache)
