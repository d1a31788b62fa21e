"""Self-speculative greedy decoding with the MTP heads (blockwise parallel decoding).

At position p the K heads of one forward predict tokens p+1 .. p+K. A round feeds the confirmed
next token x_0 (head 1's greedy choice) and K−1 drafts x_1..x_{K−1} (heads 2..K at the previous
round's last accepted position) at positions p .. p+K−1 with all heads:

    g_j    = argmax head-1 logits at p+j          (greedy token for position p+j+1)
    a      = #leading j ∈ 1..K−1 with x_j == g_{j−1}   (accepted drafts)
    emit     x_0 .. x_a                            (a+1 tokens, each the exact greedy choice)
    next   x_0' = g_a,   drafts' = argmax heads 2..K at p+a,   p' = p+a+1

Shapes are static (always K positions, per-row `a` masks the rest). Cache slots p+a+1 .. p+K−1
hold rejected keys; no query sees them before the next round overwrites them (slot = absolute
position, key visible iff slot ≤ query position), which is the "roll back". Every head's cache is
written at every position, so heads 2..K attend to a complete history too; but only head 1 runs
its whole block at all K positions: heads 2..K write K/V there and run their block (and the vocab
projection) only at the accepted position p+a, after head 1 has verified (`draft_heads`).

The output is token-for-token the plain greedy output (up to float ties between differently
shaped matmuls). Acceptance rate = accepted / drafted over rows still generating.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flax import nnx

from wmtp_jax.models.layers import (_kv, apply_rope, attention_inputs, cache_mask, rope_cos_sin,
                                    scan_blocks, vmap_blocks, write_cache)

from .sampler import model_forward


def _first_index(mask, default):
    """mask `[B, K]` -> index of the first True per row, `default` where none."""
    k = mask.shape[-1]
    idx = jnp.where(mask, jnp.arange(k)[None], k)
    first = jnp.min(idx, axis=-1)
    return jnp.where(first < k, first, default)


def draft_heads(stack, h, h_q, cos, sin, cos_q, sin_q, mask_q, kv, start, pos_q):
    """Heads 1..K−1 (0-based) of the stacked head blocks, run lazily for drafting.

    h `[B, S, D]` (trunk output at the round's S positions, written to each head's cache at
    `start`), h_q `[B, 1, D]` (the trunk output at the one position `pos_q` `[B]` that drafts are
    needed for). Each head writes its K/V for all S positions (two small projections), then runs
    its whole block (attention over its cache, FFN) for the one query only: S× less block work
    than running every head at every position, with the same draft (the same keys are visible).
    Returns (y `[K−1, B, 1, D]`, kv with entries 1..K−1 updated).
    """
    graphdef, params, rest = nnx.split(stack, nnx.Param, ...)
    tail = lambda t: jax.tree.map(lambda a: a[1:], t)

    def one(params, rest, kv):
        block = nnx.merge(graphdef, params, rest)
        att = block.attention
        b, s, _ = h.shape
        x = block.attention_norm(h)
        k = apply_rope(att.wk(x).reshape(b, s, att.n_kv_heads, att.head_dim), cos, sin)
        v = att.wv(x).reshape(b, s, att.n_kv_heads, att.head_dim)
        kv = (write_cache(kv[0], k, start), write_cache(kv[1], v, start))
        return block(h_q, cos_q, sin_q, mask_q, kv, pos_q)

    y, new_kv = jax.vmap(one)(tail(params), tail(rest), tail(kv))
    return y, tuple(full.at[1:].set(part) for full, part in zip(kv, new_kv))


def speculative_loop(model, prompts, prompt_lens, live, *, n_heads: int, max_new_tokens: int,
                     eos_id: int, cache_dtype=None):
    """prompts `[B, L]` right-padded, prompt_lens `[B]`, live `[B]` -> (tokens `[B, max_new]`
    with EOS after each row's end, dict(forwards, drafted, accepted)).

    A round: the trunk and head 1 run at the K positions (verification), then heads 2..K run only
    at the accepted position p+a (`draft_heads`); only K + K−1 vocab projections are made.
    """
    b, l = prompts.shape
    k = n_heads
    args = model.args
    t_len = l + max_new_tokens + k
    cache = model.init_cache(b, t_len, cache_dtype)
    pos0 = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    _, cache = model_forward(model, prompts, pos0, cache, all_heads=True)
    last = prompt_lens.astype(jnp.int32) - 1
    tok = jnp.take_along_axis(prompts, last[:, None], axis=1).astype(jnp.int32)
    logits, cache = model_forward(model, tok, last[:, None], cache, all_heads=True)
    greedy = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)       # [B, K]
    nxt, drafts = greedy[:, 0], greedy[:, 1:]
    out = jnp.full((b, max_new_tokens + k), eos_id, jnp.int32)
    n_gen = jnp.zeros((b,), jnp.int32)
    zero = jnp.int32(0)
    rows = jnp.arange(b)
    argmax = lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32)

    def cond(s):
        return ~jnp.all(s[-1])

    def body(s):
        i, cache, nxt, drafts, pos, out, n_gen, drafted, accepted, done = s
        cache = dict(cache)
        x = jnp.concatenate([nxt[:, None], drafts], axis=1)                       # [B, K]
        positions = pos[:, None] + jnp.arange(k, dtype=jnp.int32)[None]
        cos, sin, mask, start = attention_inputs(args, x.shape, positions, cache_len=t_len)
        h = model.tok_embeddings(x)
        if model.layers is not None:
            h, kv = scan_blocks(model.layers, h, cos, sin, mask, _kv(cache["layers"]), start)
            cache["layers"] = {"k": kv[0], "v": kv[1]}
        y0, kv = vmap_blocks(model.heads, h, cos, sin, mask, _kv(cache["heads"]), start, n=1)
        g = argmax(model.project(y0[0]))                                           # [B, K]
        match = drafts == g[:, :-1]
        a = jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)          # [B]
        pos_a = pos + a
        cos_a, sin_a = rope_cos_sin(pos_a[:, None], args.head_dim, args.rope_theta)
        y, kv = draft_heads(model.heads, h, h[rows, a][:, None], cos, sin, cos_a, sin_a,
                            cache_mask(pos_a[:, None], t_len), kv, start, pos_a)
        cache["heads"] = {"k": kv[0], "v": kv[1]}
        new_drafts = argmax(model.project(jnp.moveaxis(y[:, :, 0], 0, 1)))        # [B, K-1]
        emitted = jnp.arange(k)[None] <= a[:, None]
        eos_at = _first_index((x == eos_id) & emitted, default=k)
        n_emit = jnp.minimum(jnp.minimum(eos_at, a + 1), max_new_tokens - n_gen)
        write = jax.vmap(lambda o, t, j: jax.lax.dynamic_update_slice(o, t, (j,)))
        out = jnp.where(done[:, None], out, write(out, x, n_gen))
        n_gen = jnp.where(done, n_gen, n_gen + n_emit)
        drafted = drafted + jnp.sum(jnp.where(done, 0, k - 1))
        accepted = accepted + jnp.sum(jnp.where(done, 0, a))
        nxt = jnp.where(done, nxt, g[rows, a])
        drafts = jnp.where(done[:, None], drafts, new_drafts)
        pos = jnp.where(done, pos, pos + a + 1)
        done = done | (eos_at < k) | (n_gen >= max_new_tokens)
        return i + 1, cache, nxt, drafts, pos, out, n_gen, drafted, accepted, done

    init = (zero, cache, nxt, drafts, last + 1, out, n_gen, zero, zero, ~live)
    rounds, _, _, _, _, out, n_gen, drafted, accepted, _ = jax.lax.while_loop(cond, body, init)
    out = out[:, :max_new_tokens]
    out = jnp.where(jnp.arange(max_new_tokens)[None] < n_gen[:, None], out, eos_id)
    return out, dict(forwards=rounds + 2, drafted=drafted, accepted=accepted)


def compare_with_greedy(model, prompt_ids, *, eos_id: int, max_new_tokens: int = 64,
                        batch_size: int = 8, min_bucket: int = 16) -> dict:
    """Plain vs self-speculative greedy on the same prompts: equality, acceptance, tokens/s.

    Each sampler runs twice; the second (compiled) run is timed. tokens_per_step = tokens a row
    emits per decoding forward = 1 + (K − 1) · acceptance_rate (plain greedy: 1).
    """
    from .sampler import Sampler, SamplingConfig, n_heads_of

    cfg = SamplingConfig(max_new_tokens=max_new_tokens)
    out, stats = {}, {}
    for name, spec in (("greedy", False), ("speculative", True)):
        s = Sampler(model, eos_id=eos_id, batch_size=batch_size, min_bucket=min_bucket,
                    speculative=spec)
        s.sample(prompt_ids, 1, cfg)
        s.reset_stats()
        out[name] = s.sample(prompt_ids, 1, cfg)
        stats[name] = dict(s.stats)
    g, sp = stats["greedy"], stats["speculative"]
    acceptance = sp["accepted"] / max(sp["drafted"], 1)
    return {"identical": out["greedy"] == out["speculative"],
            "tokens": g["tokens"],
            "acceptance_rate": acceptance,
            "tokens_per_step": 1 + (n_heads_of(model) - 1) * acceptance,
            "greedy_tokens_per_s": g["tokens"] / max(g["seconds"], 1e-9),
            "speculative_tokens_per_s": sp["tokens"] / max(sp["seconds"], 1e-9),
            "greedy_forwards": g["forwards"], "speculative_forwards": sp["forwards"]}
