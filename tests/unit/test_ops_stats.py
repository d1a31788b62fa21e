"""Logging statistics: the original's metric names and values."""

import jax
import numpy as np

from wmtp_jax.ops import (
    compute_td_stats,
    compute_value_function_stats,
    compute_weight_statistics,
)


def test_td_and_weight_statistics():
    x = np.array([[0.2, -0.5, 0.1, 9.0], [0.3, -0.3, 0.0, 9.0]], np.float32)
    m = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], np.float32)
    st = jax.jit(compute_td_stats)(x, m)
    v = x[m > 0]
    np.testing.assert_allclose(
        [st["td/mean"], st["td/std"], st["td/min"], st["td/max"]],
        [v.mean(), v.std(ddof=1), v.min(), v.max()],
        rtol=1e-5,
    )
    w = np.abs(x) + 0.1
    ws = jax.jit(compute_weight_statistics)(w, m)
    wv = w[m > 0]
    np.testing.assert_allclose(ws["weight/entropy"], -np.mean(wv * np.log(wv + 1e-10)), rtol=1e-5)
    assert set(ws) == {"weight/mean", "weight/std", "weight/min", "weight/max", "weight/entropy"}
    # 3-D weights: the [B,S] mask applies to every head
    w3 = np.repeat(w[..., None], 4, -1)
    np.testing.assert_allclose(
        jax.jit(compute_weight_statistics)(w3, m)["weight/mean"], wv.mean(), rtol=1e-5
    )
    empty = jax.jit(compute_td_stats)(x, np.zeros_like(m))
    assert all(float(val) == 0.0 for val in empty.values())


def test_value_function_stats():
    v = np.array([[[0.2], [0.6], [0.9]]], np.float32)
    st = jax.jit(compute_value_function_stats)(v, 1.0, np.array([[0, 1, 1]]))
    np.testing.assert_allclose(st["value/mse"], (0.16 + 0.01) / 2, rtol=1e-5)
    np.testing.assert_allclose(st["value/mean"], 0.75, rtol=1e-6)
    np.testing.assert_allclose(st["value/return_mean"], 1.0)
