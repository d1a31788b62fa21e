"""Random q, k, v and packed segment ids shared by the attention tests."""

import jax.numpy as jnp
import numpy as np


def qkv(b, s, h, kv, hd, seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(r.standard_normal(shape), dtype)
        for shape in ((b, s, h, hd), (b, s, kv, hd), (b, s, kv, hd))
    )


def packed_ids(b, s, seed=0):
    """Rows of 1-3 packed segments of random lengths, then padding (id 0); row 0 unpadded."""
    r = np.random.default_rng(seed)
    ids = np.zeros((b, s), np.int32)
    for i in range(b):
        cuts = np.sort(r.choice(np.arange(1, s), size=2, replace=False))
        end = s if i == 0 else int(r.integers(cuts[1], s + 1))
        ids[i, : cuts[0]], ids[i, cuts[0] : cuts[1]], ids[i, cuts[1] : end] = 1, 2, 3
    return jnp.asarray(ids)
