"""Benchmarks for wmtp_jax.ops (not a test): run `python scripts/bench_ops.py [--quick]`.

1. GAE advantages, B=8, S=2048: one jitted reverse `lax.scan` vs the original's per-token Python
   loop (torch tensors, two `.item()` reads per token), as a time ratio.
2. Peak temporary memory of loss+grad for the MTP CE at B=2, S=2048, K=4, V=32000: dense logits
   vs `chunked_mtp_ce_loss`, from `jit(...).lower(...).compile().memory_analysis()` (no allocation,
   works on CPU).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.ops import (
    chunked_mtp_ce_loss,
    compute_gae_advantage,
    compute_mtp_ce_loss,
    head_logits,
)


def gae_reference_loop(values, loss_mask, gamma=1.0, lam=0.95, initial_value=0.5):
    """The original compute_td_targets/compute_gae_advantage method (Python loop over B × T)."""
    import torch

    b, s = values.shape
    term = (torch.arange(s).unsqueeze(0) * loss_mask).max(dim=1).values.long()
    targets = torch.zeros(b, s, dtype=values.dtype)
    for i in range(b):
        last = 0.0
        for t in range(int(term[i].item()), -1, -1):
            cur = values[i, t].item()
            prev = initial_value if t == 0 else values[i, t - 1].item()
            last = gamma * cur - prev + gamma * lam * last
            targets[i, t] = cur + last
    return (targets * loss_mask - values) * loss_mask


def bench_gae(b=8, s=2048, reps=20):
    import torch

    rng = np.random.default_rng(0)
    v = rng.uniform(size=(b, s)).astype(np.float32)
    m = np.zeros((b, s), np.float32)
    for i in range(b):
        m[i, 100 : s - 50 * i] = 1
    f = jax.jit(compute_gae_advantage)
    out = f(v, jnp.ones(b), m).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(v, jnp.ones(b), m)
    out.block_until_ready()
    t_jax = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    ref = gae_reference_loop(torch.from_numpy(v), torch.from_numpy(m))
    t_loop = time.perf_counter() - t0
    np.testing.assert_allclose(np.asarray(out), ref.numpy(), atol=1e-4)
    return t_jax, t_loop


def temp_bytes(fn, *shapes):
    compiled = jax.jit(fn).lower(*shapes).compile()
    mem = compiled.memory_analysis()
    return mem.temp_size_in_bytes, mem.argument_size_in_bytes, mem.output_size_in_bytes


def bench_memory(b=2, s=2048, k=4, v=32000, d=4096, chunk_sizes=(512, 1024, 2048)):
    f32 = jnp.float32
    args = (
        jax.ShapeDtypeStruct((b, s, k, d), f32),
        jax.ShapeDtypeStruct((d,), f32),
        jax.ShapeDtypeStruct((d, v), f32),
        jax.ShapeDtypeStruct((b, s), jnp.int32),
        jax.ShapeDtypeStruct((b, s), jnp.int32),
        jax.ShapeDtypeStruct((b, s), f32),
    )
    grad = lambda loss: jax.value_and_grad(loss, argnums=(0, 1, 2))

    def dense(h, sc, w, y, am, wt):
        return compute_mtp_ce_loss(head_logits(h, sc, w), y, am, wt)["weighted_ce_loss"]

    rows = [("dense", temp_bytes(grad(dense), *args))]
    for c in chunk_sizes:

        def chunked(h, sc, w, y, am, wt, c=c):
            return chunked_mtp_ce_loss(h, sc, w, y, am, wt, chunk_size=c)["weighted_ce_loss"]

        rows.append((f"chunked (chunk_size={c})", temp_bytes(grad(chunked), *args)))
    return rows


def bench_loss_time(b=1, s=256, k=4, v=32000, d=256, chunk_size=1024, reps=3):
    """Wall time of loss+grad, dense vs chunked (remat recomputes the logits in the backward)."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(b, s, k, d)), jnp.float32)
    sc = jnp.ones((d,), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)) / np.sqrt(d), jnp.float32)
    y = jnp.asarray(rng.integers(0, v, size=(b, s)))
    am = jnp.ones((b, s), jnp.int32)
    fns = {
        "dense": lambda h, sc, w: compute_mtp_ce_loss(head_logits(h, sc, w), y, am)[
            "weighted_ce_loss"
        ],
        "chunked": lambda h, sc, w: chunked_mtp_ce_loss(h, sc, w, y, am, chunk_size=chunk_size)[
            "weighted_ce_loss"
        ],
    }
    out = {}
    for name, fn in fns.items():
        f = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
        jax.block_until_ready(f(h, sc, w))
        t0 = time.perf_counter()
        for _ in range(reps):
            r = f(h, sc, w)
        jax.block_until_ready(r)
        out[name] = (time.perf_counter() - t0) / reps
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller GAE case (B=2, S=512)")
    a = ap.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    b, s = (2, 512) if a.quick else (8, 2048)
    t_jax, t_loop = bench_gae(b, s)
    print(
        f"GAE B={b} S={s}: jitted scan {t_jax * 1e3:.3f} ms, per-token Python loop "
        f"{t_loop * 1e3:.1f} ms, speed-up x{t_loop / t_jax:.0f}"
    )
    rows = bench_memory()
    dense_temp = rows[0][1][0]
    print("MTP CE loss+grad, B=2 S=2048 K=4 V=32000 D=4096 float32 (memory_analysis):")
    for name, (temp, arg, out) in rows:
        print(
            f"  {name:28s} temp {temp / 2**30:7.3f} GiB  ({100 * temp / dense_temp:5.1f}% of dense)"
            f"  args {arg / 2**30:.3f} GiB  outputs {out / 2**30:.3f} GiB"
        )
    t = bench_loss_time()
    print(
        f"MTP CE loss+grad time, B=1 S=256 K=4 V=32000 D=256: dense {t['dense'] * 1e3:.0f} ms, "
        f"chunked(1024) {t['chunked'] * 1e3:.0f} ms (x{t['chunked'] / t['dense']:.2f})"
    )


if __name__ == "__main__":
    main()
