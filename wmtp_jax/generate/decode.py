"""The plain KV-cache decode loop: prefill a static preallocated cache, then decode in a
`lax.while_loop` (no per-token host sync, early exit when every row is finished).

Layout: prompts are right-padded to a bucket length `L` and every row keeps its own absolute
positions; cache slot t holds position t. The prefill writes slots 0..L-1 (the pad slots hold
garbage that no query can see: a key is visible iff its slot ≤ the query position, and decode step
t overwrites slot t before any query reaches it). The prefill logits are discarded (XLA drops the
vocab projection); the first decode step re-feeds the last prompt token at position n_b − 1, so
row b's first sample comes from exactly its own prompt.

Stops: EOS (and any extra end ids, mapped to EOS) and textual stops (`stops.stop_hit`) end a row
on device.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp

from .sampling import sample_tokens
from .stops import stop_hit

Array = jax.Array
NO_TOKEN = -2  # lead slots of the output buffer (before the first generated token)


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def model_forward(model, tokens: Array, positions: Array, cache, *, all_heads: bool):
    """One cached forward of an MTPTransformer or Llama -> (logits `[B, S, K, V]` f32, cache)."""
    kw = dict(positions=positions, cache=cache)
    if _accepts(type(model).__call__, "return_all_heads"):
        kw["return_all_heads"] = all_heads
    elif all_heads:
        raise ValueError(f"{type(model).__name__} has no MTP heads (return_all_heads)")
    out = model(tokens, **kw)
    logits, cache = out[0], out[-1]
    if logits.ndim == 3:  # Llama: [B, S, V]
        logits = logits[:, :, None]
    return logits.astype(jnp.float32), cache


def n_heads_of(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "n_future_tokens", 1) or 1)


def decode_loop(
    model,
    prompts: Array,
    prompt_lens: Array,
    keys: Array,
    live: Array,
    temperature,
    top_p,
    stops: tuple,
    end_ids: Array,
    *,
    max_new_tokens: int,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
    eos_id,
    cache_dtype=None,
):
    """prompts `[B, L]` right-padded, prompt_lens `[B]` ≥ 1, keys `[B, 2]`, live `[B]` bool,
    stops: `StopTexts.arrays()`, end_ids `[E]` further end-of-sequence ids (emitted as EOS) ->
    (tokens `[B, max_new_tokens]` with EOS after each row's end, number of decode steps)."""
    b, l = prompts.shape
    cache = model.init_cache(b, l + max_new_tokens, cache_dtype)
    pos0 = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    _, cache = model_forward(model, prompts, pos0, cache, all_heads=False)
    last = prompt_lens.astype(jnp.int32) - 1
    tok = jnp.take_along_axis(prompts, last[:, None], axis=1)[:, 0].astype(jnp.int32)
    lead = stops[2].shape[1] + 1  # window of the text-stop check
    out = jnp.full((b, lead + max_new_tokens), NO_TOKEN, jnp.int32)

    def cond(s):
        i, _, _, _, _, done = s
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(s):
        i, cache, tok, pos, out, done = s
        logits, cache = model_forward(model, tok[:, None], pos[:, None], cache, all_heads=False)
        nxt = sample_tokens(
            keys,
            i,
            logits[:, 0, 0],
            temperature,
            top_p,
            greedy=greedy,
            top_k=top_k,
            use_top_p=use_top_p,
        )
        nxt = jnp.where(done | jnp.isin(nxt, end_ids), eos_id, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, lead + i))
        hit = stop_hit(out, jnp.full((b,), lead + i), stops)
        done = done | (nxt == eos_id) | hit
        return i + 1, cache, nxt, pos + 1, out, done

    init = (jnp.int32(0), cache, tok, last, out, ~live)
    steps, _, _, _, out, _ = jax.lax.while_loop(cond, body, init)
    out = out[:, lead:]
    filled = jnp.arange(max_new_tokens)[None] < steps
    return jnp.where(filled, out, eos_id), steps
