"""Per-row token sampling from float32 logits (pure, jit-safe).

greedy = argmax; otherwise logits / T, then top-k, then nucleus top-p as the original (HF) does:
keep the sorted tokens whose preceding cumulative mass is ≤ top_p (the token crossing the
threshold and the top-1 are always kept; ties with the last kept logit are kept too).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be ≥ 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"top_k={self.top_k} must be ≥ 0 and max_new_tokens={self.max_new_tokens} ≥ 1"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(
    logits: Array, temperature, top_p, *, top_k: int = 0, use_top_p: bool = True
) -> Array:
    """logits `[..., V]` -> float32 logits / T with tokens outside top-k ∩ nucleus set to -inf."""
    x = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    neg = jnp.finfo(jnp.float32).min
    if top_k:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, neg, x)
    if use_top_p:
        srt = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        keep = (before <= top_p).at[..., 0].set(True)
        # smallest kept logit = threshold (kept tokens are a prefix of the sorted order)
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < thresh, neg, x)
    return x


def sample_tokens(
    keys: Array,
    step,
    logits: Array,
    temperature,
    top_p,
    *,
    greedy: bool,
    top_k: int = 0,
    use_top_p: bool = True,
) -> Array:
    """keys `[B, 2]` (one PRNG key per row), logits `[B, V]` -> token ids `[B]` int32.

    Row b draws with `fold_in(keys[b], step)`, so a sample does not depend on its batch mates.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
    draw = lambda k, l: jax.random.categorical(jax.random.fold_in(k, step), l)
    return jax.vmap(draw)(keys, x).astype(jnp.int32)
