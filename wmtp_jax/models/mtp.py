"""Meta multi-token-prediction transformer (facebook/multi-token-prediction layout).

tokens → tok_embeddings → trunk `layers` (n_layers − n_future_tokens blocks, lax.scan) → h_trunk;
the K = n_future_tokens `heads` (one Block each, heads[0] = Meta `layers[-1]`,
heads[j] = Meta `extra_heads[j-1]`) all read h_trunk in parallel (one vmap over the stacked
head params); their latents go through the shared `norm` and `output`: logits `[B, S, K, V]`.
Head k (0-based) at position t predicts token t + k + 1. With `args.tie_embeddings` there is no
`output` parameter: the projection is `tok_embeddings.embedding.T` (one shared parameter).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wmtp_jax.ops.layout import constrain_batch

from .args import ModelArgs
from .cache import cache_entry, cache_len, empty_cache
from .primitives import Embed, Linear, RMSNorm
from .stacking import attention_inputs, scan_blocks, stack_blocks, vmap_blocks


class MTPTransformer(nnx.Module):
    """Meta MTP policy. Parameter tree: see `conversion/mapping.py` (`layers` absent if trunk
    empty)."""

    def __init__(self, args: ModelArgs, *, rngs: nnx.Rngs, lora=None):
        self.args, self.lora = args, lora
        kw = dict(dtype=args.dtype, param_dtype=args.param_dtype)
        self.tok_embeddings = Embed(args.vocab_size, args.dim, rngs=rngs, **kw)
        n_trunk = args.n_trunk_layers
        self.layers = (
            stack_blocks(n_trunk, args, rngs=rngs, lora=lora, axis_name="layers")
            if n_trunk > 0
            else None
        )
        self.heads = stack_blocks(
            args.n_future_tokens, args, rngs=rngs, lora=lora, axis_name="mtp_heads"
        )
        self.norm = RMSNorm(args.dim, eps=args.norm_eps, **kw)
        self.output = (
            None
            if args.tie_embeddings
            else Linear(args.dim, args.vocab_size, names=("embed", "vocab"), rngs=rngs, **kw)
        )

    # ---- pieces -------------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> dict:
        """{"layers": {"k","v"} `[L,B,KV,T,hd]` (absent if L = 0),
        "heads": {"k","v"} `[K,B,KV,T,hd]`}."""
        a = self.args
        cache = {"heads": empty_cache(a.n_future_tokens, a, batch_size, max_len, dtype)}
        if self.layers is not None:
            cache["layers"] = empty_cache(a.n_trunk_layers, a, batch_size, max_len, dtype)
        return cache

    def _run(self, tokens, positions, cache, n_heads, segment_ids=None):
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, S] int, got shape {tokens.shape}")
        cos, sin, mask, start = attention_inputs(
            self.args,
            tokens.shape,
            positions,
            cache_len=cache_len(cache),
            segment_ids=segment_ids,
        )
        ctx = (cos, sin, mask)
        h = self.tok_embeddings(tokens)
        new_cache = None if cache is None else dict(cache)
        if self.layers is not None:
            h, kv = scan_blocks(
                self.layers,
                h,
                *ctx,
                cache_entry(cache and cache["layers"]),
                start,
                remat=self.args.remat,
            )
            if kv is not None:
                new_cache["layers"] = {"k": kv[0], "v": kv[1]}
        y, kv = vmap_blocks(
            self.heads,
            h,
            *ctx,
            cache_entry(cache and cache["heads"]),
            start,
            n=n_heads,
            remat=self.args.remat,
            unroll=self.args.unroll_heads,
        )
        if kv is not None:
            new_cache["heads"] = {"k": kv[0], "v": kv[1]}
        return h, jnp.moveaxis(y, 0, 2), new_cache

    def latents(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ):
        """(h_trunk `[B,S,D]`, head_latents `[B,S,K,D]`) before the shared norm, compute dtype.
        `segment_ids` as in `__call__`.

        `self.project(head_latents)` equals the logits; the chunked loss uses
        `self.norm.scale`, `self.args.norm_eps` and `self.output_kernel()` `[D, V]` directly.
        """
        h, lat, _ = self._run(tokens, positions, None, None, segment_ids)
        return h, lat

    def project(self, x: jax.Array) -> jax.Array:
        """Shared final norm + output projection, float32 logits: `output(norm(x))`."""
        x = constrain_batch(x)
        if self.output is None:
            return self.tok_embeddings.attend(self.norm(x), out_dtype=jnp.float32)
        return self.output(self.norm(x), out_dtype=jnp.float32)

    def output_kernel(self) -> jax.Array:
        """The output projection `[D, V]` (the embedding transposed when tied)."""
        if self.output is None:
            return self.tok_embeddings.embedding[...].T
        return self.output.kernel[...]

    def __call__(
        self,
        tokens: jax.Array,
        *,
        return_all_heads: bool = True,
        return_hidden_states: bool = False,
        positions: jax.Array | None = None,
        cache: dict | None = None,
        segment_ids: jax.Array | None = None,
    ):
        """tokens `[B, S]` int32 → logits `[B, S, K, V]` float32 (K = 1, head 0 only, when
        `return_all_heads=False`; the other heads are then not run and their caches untouched).

        Returns `logits`, `(logits, norm(h_trunk))` with `return_hidden_states`, and with `cache`
        the updated cache appended last. With a cache, `positions` `[B, S]` are each row's absolute
        positions (contiguous per row; rows may differ): K/V are written there and each query
        attends to cache slots ≤ its position. The cache must be long enough (slots ≥ T are
        clamped by `dynamic_update_slice`).
        Packed rows (no cache): `segment_ids` `[B, S]` (1, 2, ... per sequence, 0 = padding) keep
        attention inside each sequence; positions then default to restarting per segment.
        """
        h, lat, new_cache = self._run(
            tokens, positions, cache, None if return_all_heads else 1, segment_ids
        )
        logits = self.project(lat)
        out = (logits, self.norm(h)) if return_hidden_states else (logits,)
        if cache is not None:
            out = out + (new_cache,)
        return out[0] if len(out) == 1 else out


def extra_heads_mask(path: str, shape: tuple, scale: float = 1.0) -> np.ndarray:
    """Warm-start multiplier of one parameter (`train.step.warm_start_multipliers`): `scale` on
    heads 1..K−1 of a stacked head parameter (`heads/...`, leading axis K), 0 on head 0, the
    trunk, the norm and the embeddings (tied output included)."""
    if not path.startswith("heads/"):
        return np.zeros((), np.float32)
    m = np.full((shape[0],) + (1,) * (len(shape) - 1), scale, np.float32)
    m[0] = 0.0
    return m
