"""Rotary position embeddings, rotate-half (HF / GPT-NeoX) convention; Meta checkpoints are
permuted on import (`conversion.mapping.permute_meta_to_rotate_half`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .args import ModelArgs

Array = jax.Array


def rope_inv_freq(args: ModelArgs, positions: Array) -> Array:
    """Inverse frequencies `[hd/2]` float32 as transformers computes them for `args.rope`:

    default   1/θ^(2i/hd)
    linear    default / factor
    dynamic   NTK: θ' = θ·(f·n/M − (f − 1))^(hd/(hd−2)) with n = max(max(positions) + 1, M),
              M = max_position_embeddings (recomputed per forward, as transformers' dynamic
              update does for a growing sequence)
    llama3    wavelength 2π/inv above M₀/low_freq_factor: inv/factor; below M₀/high_freq_factor:
              inv; between: (1 − s)·inv/factor + s·inv, s = (M₀/wavelen − low)/(high − low)
    """
    hd = args.head_dim
    exps = jnp.arange(0, hd, 2, dtype=jnp.float32) / hd
    inv = 1.0 / (jnp.float32(args.rope_theta) ** exps)
    r = args.rope
    if r is None:
        return inv
    kind, f = r["rope_type"], float(r["factor"])
    if kind == "linear":
        return inv / f
    if kind == "dynamic":
        m = float(args.max_seq_len)
        n = jnp.maximum(jnp.max(positions).astype(jnp.float32) + 1.0, m)
        base = args.rope_theta * ((f * n / m) - (f - 1.0)) ** (hd / (hd - 2))
        return 1.0 / (base**exps)
    old = float(r["original_max_position_embeddings"])
    low, high = float(r["low_freq_factor"]), float(r["high_freq_factor"])
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old / low, inv / f, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / f + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return jnp.where(medium, smoothed, scaled)


def rope_cos_sin(positions: Array, inv_freq: Array) -> tuple[Array, Array]:
    """positions `[B, S]`, inv_freq `[hd/2]` -> cos, sin `[B, S, hd]` float32 (freqs doubled)."""
    ang = positions.astype(jnp.float32)[..., None] * inv_freq
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x `[B, S, N, hd]`: x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1]."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, :, None] + rot * sin[:, :, None]).astype(x.dtype)
