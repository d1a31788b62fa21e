"""Shared check for the models' KV-cache path (MTPTransformer and Llama)."""

import jax.numpy as jnp
import numpy as np


def check_prefill_then_decode(step, model, tok, lens, full, cache, prefill: int = 6):
    """Prefill right-padded prompts (row b: its first lens[b] tokens, padded to `prefill`), then
    decode token by token from each row's own position; every cached logit must equal the
    full-sequence forward `full` (atol 1e-4). `step(model, tokens, positions, cache)` ->
    (logits `[B, S, ...]`, cache). Returns the final cache."""
    b, s = tok.shape
    prompt = np.where(np.arange(prefill)[None] < lens[:, None], tok[:, :prefill], 0)
    positions = jnp.broadcast_to(jnp.arange(prefill), (b, prefill))
    logits, cache = step(model, jnp.asarray(prompt), positions, cache)
    for r in range(b):
        np.testing.assert_allclose(logits[r, : lens[r]], full[r, : lens[r]], atol=1e-4)
    pos = lens.copy()
    while pos.min() < s:
        p = np.minimum(pos, s - 1)
        logits, cache = step(
            model, jnp.asarray(tok[np.arange(b), p][:, None]), jnp.asarray(p[:, None]), cache
        )
        for r in np.flatnonzero(pos < s):
            np.testing.assert_allclose(logits[r, 0], full[r, pos[r]], atol=1e-4)
        pos = pos + 1
    return cache
