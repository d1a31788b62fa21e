"""Rho-1 selection: alignment, quantile rule (np.quantile, ties kept), modes, no gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.ops import compute_mtp_selective_weights, masked_quantile

select = jax.jit(compute_mtp_selective_weights, static_argnames=("mode",))


def np_ce(z, y):
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return lse - np.take_along_axis(z, np.maximum(y, 0)[..., None], -1)[..., 0]


def np_select(pol, ref, labels, m, k_pct, mode):
    b, s, kh, _ = pol.shape
    w = np.zeros((b, s, kh))
    for k in range(1, kh + 1):
        n = s - k
        if n <= 0:
            continue
        y = labels[:, k : k + n]
        cp = np_ce(pol[:, :n, k - 1].astype(np.float64), y)
        cr = np_ce(ref[:, k - 1 : k - 1 + n].astype(np.float64), y)
        score = {"signed": cp - cr, "absolute": np.abs(cp - cr), "difficult": cr}[mode]
        valid = m[:, k : k + n] > 0
        if valid.sum() == 0:
            continue
        thr = np.quantile(score[valid], 1 - k_pct)
        w[:, :n, k - 1] = (score >= thr) & valid
    return w


def data(seed=0, b=3, s=10, k=3, v=7):
    rng = np.random.default_rng(seed)
    pol = rng.normal(size=(b, s, k, v)).astype(np.float32)
    ref = rng.normal(size=(b, s, v)).astype(np.float32)
    labels = rng.integers(0, v, size=(b, s))
    labels[:, :3] = -100
    labels[2, 7:] = -100
    return pol, ref, labels, (labels != -100).astype(np.float32)


@pytest.mark.parametrize("mode", ["signed", "absolute", "difficult"])
def test_matches_reference_selection(mode):
    pol, ref, labels, m = data()
    w, stats = select(pol, ref, labels, m, 0.6, mode=mode)
    expected = np_select(pol, ref, labels, m, 0.6, mode)
    np.testing.assert_array_equal(np.asarray(w), expected)
    assert w.dtype == jnp.float32 and w.shape == (3, 10, 3)
    np.testing.assert_allclose(
        stats["selection_ratio"], expected.sum() / sum(m[:, k:].sum() for k in (1, 2, 3)), rtol=1e-6
    )
    np.testing.assert_allclose(stats["avg_heads_per_position"], expected.sum() / m.sum(), rtol=1e-6)


def test_ties_kept_padding_and_tail_zero_and_empty_head():
    pol = np.zeros((1, 4, 3, 5), np.float32)  # all scores tie → all valid tokens kept
    ref = np.zeros((1, 4, 5), np.float32)
    labels = np.array([[-100, 1, 2, -100]])
    w, st = select(pol, ref, labels, labels != -100, 0.3)
    np.testing.assert_array_equal(np.asarray(w)[0], [[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert float(st["head_2_count"]) == 0 and float(st["head_2_threshold"]) == 0


def test_quantile_matches_numpy_and_no_gradient():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11)), jnp.float32)
    valid = jnp.asarray(np.arange(11)[None] < np.array([[11], [4]]))
    for q in (0.0, 0.3, 0.5, 1.0):
        got = jax.jit(masked_quantile)(x, valid, q)
        np.testing.assert_allclose(got, [np.quantile(x[0], q), np.quantile(x[1, :4], q)], rtol=1e-6)
    pol, ref, labels, m = data(2)
    g = jax.jit(
        jax.grad(
            lambda p: jnp.sum(
                compute_mtp_selective_weights(p, ref, labels, m)[1]["head_0_excess_mean"]
            )
        )
    )(pol)
    assert np.all(np.asarray(g) == 0)


def test_bf16_inputs():
    pol, ref, labels, m = data(3)
    w, st = select(jnp.asarray(pol, jnp.bfloat16), jnp.asarray(ref, jnp.bfloat16), labels, m, 0.5)
    assert all(np.isfinite(float(x)) for x in st.values())
    assert 0.3 < float(st["selection_ratio"]) < 0.7
