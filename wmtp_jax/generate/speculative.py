"""Self-speculative greedy decoding with the MTP heads (blockwise parallel decoding).

At position p the K heads of one forward predict tokens p+1 .. p+K. A round feeds the confirmed
(already emitted) token x_0 (head 1's greedy choice) and K−1 drafts x_1..x_{K−1} (heads 2..K at
the previous round's last accepted position) at positions p .. p+K−1 with all heads:

    g_j    = argmax head-1 logits at p+j          (greedy token for position p+j+1)
    a      = #leading j ∈ 1..K−1 with x_j == g_{j−1}   (accepted drafts)
    emit     x_1 .. x_a, g_a                       (a+1 tokens, each the exact greedy choice)
    next   x_0' = g_a,   drafts' = argmax heads 2..K at p+a,   p' = p+a+1

The first x_0 (from the forward after the prefill) is emitted before any round, so a call with
max_new_tokens = 1 runs none.

Shapes are static (always K positions, per-row `a` masks the rest). Cache slots p+a+1 .. p+K−1
hold rejected keys; no query sees them before the next round overwrites them (slot = absolute
position, key visible iff slot ≤ query position), which is the "roll back". Every head's cache is
written at every position, so heads 2..K attend to a complete history too.

The output is token-for-token the plain greedy output (up to float ties between differently
shaped matmuls), stops included: each emitted token is checked for EOS / end ids and for a text
stop (`stops.stop_hit`), and a round emits nothing after the first one that ends the row.
Acceptance rate = accepted / drafted over rows still generating.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .decode import NO_TOKEN, model_forward
from .stops import stop_hit


def _first_index(mask, default):
    """mask `[B, K]` -> index of the first True per row, `default` where none."""
    k = mask.shape[-1]
    idx = jnp.where(mask, jnp.arange(k)[None], k)
    first = jnp.min(idx, axis=-1)
    return jnp.where(first < k, first, default)


def _prefill(model, prompts, prompt_lens, cache, as_eos):
    """Prompts into the cache, then the forward of each row's last prompt token: (cache, last
    prompt position `[B]`, greedy tokens of the K heads there `[B, K]`)."""
    b, l = prompts.shape
    pos0 = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    _, cache = model_forward(model, prompts, pos0, cache, all_heads=True)
    last = prompt_lens.astype(jnp.int32) - 1
    tok = jnp.take_along_axis(prompts, last[:, None], axis=1).astype(jnp.int32)
    logits, cache = model_forward(model, tok, last[:, None], cache, all_heads=True)
    return cache, last, as_eos(jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32))


def _emit(out, drafts, g_a, a, at, stops, eos_id: int):
    """A round's tokens y = x_1..x_a, g_a written into `out` at `at` `[B]`: (new out, index of
    the first EOS in y, index of the first y_j completing a text stop; K where none, j ≤ a)."""
    k = drafts.shape[1] + 1
    j = jnp.arange(k)[None]
    y = jnp.where(j < a[:, None], jnp.concatenate([drafts, drafts[:, :1]], axis=1), g_a[:, None])
    write = jax.vmap(lambda o, t, j: jax.lax.dynamic_update_slice(o, t, (j,)))
    new = write(out, y, at)
    # a text stop completed by y_j ends the row after y_j (tokens before it are in `new`)
    hit = jnp.stack([stop_hit(new, at + jj, stops) for jj in range(k)], axis=1)
    stop_at = _first_index(hit & (j <= a[:, None]), default=k)
    eos_at = _first_index((y == eos_id) & (j <= a[:, None]), default=k)
    return new, eos_at, stop_at


def speculative_loop(
    model,
    prompts,
    prompt_lens,
    live,
    *,
    n_heads: int,
    max_new_tokens: int,
    eos_id: int,
    stops: tuple,
    end_ids,
    cache_dtype=None,
):
    """prompts `[B, L]` right-padded, prompt_lens `[B]`, live `[B]`, stops (`StopTexts.arrays`),
    end_ids `[E]` -> (tokens `[B, max_new]` with EOS after each row's end,
    dict(forwards, drafted, accepted))."""
    b, l = prompts.shape
    k = n_heads
    as_eos = lambda t: jnp.where(jnp.isin(t, end_ids), eos_id, t)
    cache = model.init_cache(b, l + max_new_tokens + k, cache_dtype)
    cache, last, greedy = _prefill(model, prompts, prompt_lens, cache, as_eos)
    nxt, drafts = greedy[:, 0], greedy[:, 1:]
    # x_0 is emitted at once (a call with max_new_tokens = 1 runs no round)
    lead = stops[2].shape[1] + 1  # window of the text-stop check
    out = jnp.full((b, lead + max_new_tokens + k), NO_TOKEN, jnp.int32).at[:, lead].set(nxt)
    first_eos = nxt == eos_id
    n_gen = jnp.where(live & ~first_eos, 1, 0).astype(jnp.int32)
    done = ~live | first_eos | stop_hit(out, jnp.full((b,), lead), stops) | (max_new_tokens <= 1)
    zero = jnp.int32(0)
    rows = jnp.arange(b)

    def cond(s):
        return ~jnp.all(s[-1])

    def body(s):
        i, cache, nxt, drafts, pos, out, n_gen, drafted, accepted, done = s
        x = jnp.concatenate([nxt[:, None], drafts], axis=1)  # [B, K]
        positions = pos[:, None] + jnp.arange(k, dtype=jnp.int32)[None]
        logits, cache = model_forward(model, x, positions, cache, all_heads=True)  # [B,K,K,V]
        g = as_eos(jnp.argmax(logits, axis=-1).astype(jnp.int32))  # [B, K pos, K head]
        match = drafts == g[:, :-1, 0]
        a = jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)  # [B]
        new, eos_at, stop_at = _emit(out, drafts, g[rows, a, 0], a, lead + n_gen, stops, eos_id)
        n_emit = jnp.minimum(jnp.minimum(eos_at, a + 1), max_new_tokens - n_gen)
        n_emit = jnp.minimum(n_emit, stop_at + 1)
        out = jnp.where(done[:, None], out, new)
        n_gen = jnp.where(done, n_gen, n_gen + n_emit)
        drafted = drafted + jnp.sum(jnp.where(done, 0, k - 1))
        accepted = accepted + jnp.sum(jnp.where(done, 0, a))
        nxt = jnp.where(done, nxt, g[rows, a, 0])
        drafts = jnp.where(done[:, None], drafts, g[rows, a, 1:])
        pos = jnp.where(done, pos, pos + a + 1)
        done = done | (eos_at < k) | (stop_at < n_emit) | (n_gen >= max_new_tokens)
        return i + 1, cache, nxt, drafts, pos, out, n_gen, drafted, accepted, done

    init = (zero, cache, nxt, drafts, last + 1, out, n_gen, zero, zero, done)
    rounds, _, _, _, _, out, n_gen, drafted, accepted, _ = jax.lax.while_loop(cond, body, init)
    out = out[:, lead : lead + max_new_tokens]
    out = jnp.where(jnp.arange(max_new_tokens)[None] < n_gen[:, None], out, eos_id)
    return out, dict(forwards=rounds + 2, drafted=drafted, accepted=accepted)
