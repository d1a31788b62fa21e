"""Critic losses and diagnostics against the original's formulas (numpy) and its test values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.ops import (
    compute_lambda_value_loss,
    compute_pairwise_accuracy,
    compute_position_correlation,
    compute_td_error_stats,
    compute_token_variance,
    create_output_end_mask,
    first_divergence_loss,
    first_divergence_targets,
    get_scheduled_lambda,
    pairwise_ranking_loss,
)


def batch(seed=0, b=3, s=8):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(b, s, 1)).astype(np.float32)
    m = np.zeros((b, s), np.float32)
    m[0, 2:6] = 1
    m[1, 1:8] = 1
    m[2, 5] = 1
    return v, m, rng


def test_pairwise_ranking_loss_and_accuracy():
    vp, mp, rng = batch(0)
    vn = rng.normal(size=vp.shape).astype(np.float32)
    mn = np.roll(mp, 1, axis=1)
    mean = lambda v, m: (v[..., 0] * m).sum(1) / (m.sum(1) + 1e-8)
    d = mean(vp, mp) - mean(vn, mn)
    np.testing.assert_allclose(
        jax.jit(pairwise_ranking_loss)(vp, vn, mp, mn), np.mean(np.log1p(np.exp(-d))), rtol=1e-5
    )
    acc = jax.jit(compute_pairwise_accuracy)(vp, vn, mp, mn)
    np.testing.assert_allclose(acc["pairwise_accuracy"], np.mean(d > 0))
    np.testing.assert_allclose(acc["margin"], mean(vp, mp).mean() - mean(vn, mn).mean(), rtol=1e-5)
    assert float(acc["total_pairs"]) == 3
    eq = jax.jit(pairwise_ranking_loss)(vp, vp, mp, mp)
    np.testing.assert_allclose(eq, np.log(2), rtol=1e-6)  # equal values → ln 2
    g = jax.jit(jax.grad(pairwise_ranking_loss, argnums=(0, 1)))(vp, vn, mp, mn)
    assert float(jnp.abs(g[0]).sum()) > 0 and float(jnp.abs(g[1]).sum()) > 0


def test_lambda_value_loss_huber_and_mse():
    v, m, _ = batch(1)
    am = np.ones_like(m)
    r = jnp.array([1.0, 0.0, 1.0])
    f = jax.jit(compute_lambda_value_loss, static_argnames=("loss_type",))
    mse = f(v, r, am, m, 1.0, 1.0, loss_type="mse")
    err = v[..., 0] - np.asarray(r)[:, None]
    # λ = γ = 1: the Monte-Carlo MSE, per-sequence mean of (V − R)² over the mask, then the mean
    mc = np.mean([(err[i] ** 2 * m[i]).sum() / m[i].sum() for i in range(3)])
    np.testing.assert_allclose(mse, mc, rtol=1e-5)
    x = np.abs(err)
    hub = np.where(x < 0.5, 0.5 * err**2 / 0.5, x - 0.25)
    exp = np.mean([(hub[i] * m[i]).sum() / m[i].sum() for i in range(3)])
    np.testing.assert_allclose(
        f(v, r, am, m, 1.0, 1.0, loss_type="huber", huber_delta=0.5), exp, rtol=1e-5
    )
    # |err| = 1, δ = 0.5: Huber/δ (0.75) < MSE (1)
    one = jnp.zeros((1, 2, 1))
    assert (
        float(f(one, jnp.ones(1), jnp.ones((1, 2)), jnp.ones((1, 2)), 1.0, 1.0, loss_type="huber"))
        == 0.75
    )
    # gradient reaches V only through the prediction, only on masked tokens, never through targets
    g = jax.jit(jax.grad(lambda z: compute_lambda_value_loss(z, r, am, m, 1.0, 0.9, "mse")))(
        jnp.asarray(v)
    )
    assert np.all(np.asarray(g)[..., 0][m == 0] == 0)
    assert float(f(v, r, am, np.zeros_like(m), loss_type="mse")) == 0.0
    with pytest.raises(ValueError, match="loss_fn"):
        compute_lambda_value_loss(v, r, am, m, loss_type="l1")


def test_scheduled_lambda():
    kw = dict(warmup_steps=10, decay_steps=20, lam_start=1.0, lam_end=0.9)
    assert get_scheduled_lambda(5, **kw) == 1.0
    assert get_scheduled_lambda(20, **kw) == pytest.approx(0.95)
    assert get_scheduled_lambda(20, schedule_type="cosine", **kw) == pytest.approx(0.95)
    assert get_scheduled_lambda(25, schedule_type="cosine", **kw) == pytest.approx(
        0.9 + 0.1 * 0.5 * (1 + np.cos(0.75 * np.pi))
    )
    assert get_scheduled_lambda(30, **kw) == 0.9
    assert get_scheduled_lambda(0, warmup_steps=0, decay_steps=0, lam_end=0.8) == 0.8
    assert get_scheduled_lambda(999, schedule_type="constant", lam_start=0.995) == 0.995
    traced = jax.jit(lambda s: get_scheduled_lambda(s, **kw))
    for step in (5, 20, 30):
        np.testing.assert_allclose(float(traced(step)), get_scheduled_lambda(step, **kw), rtol=1e-6)


def test_output_end_mask():
    am = jnp.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(
        jax.jit(create_output_end_mask)(am), [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    )


def test_diagnostics_match_reference_loops():
    v, m, _ = batch(2)
    x = v[..., 0]
    var = np.mean(
        [
            ((x[i] - (x[i] * m[i]).sum() / (m[i].sum() + 1e-8)) ** 2 * m[i]).sum()
            / (m[i].sum() + 1e-8)
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(jax.jit(compute_token_variance)(v, m), var, rtol=1e-5)
    td, tm = np.abs(x[:, 1:] - x[:, :-1]), m[:, 1:] * m[:, :-1]
    mean_abs = (td * tm).sum(1) / np.maximum(tm.sum(1), 1)
    max_td = np.array([td[i][tm[i] > 0].max() if tm[i].sum() else 0.0 for i in range(3)])
    st = jax.jit(compute_td_error_stats)(v, m)
    np.testing.assert_allclose(st["mean_abs_td"], mean_abs.mean(), rtol=1e-5)
    np.testing.assert_allclose(st["max_td"], max_td.mean(), rtol=1e-5)
    np.testing.assert_allclose(st["spikiness"], (max_td / (mean_abs + 1e-8)).mean(), rtol=1e-5)
    corrs = [
        np.corrcoef(x[i][m[i] > 0], np.arange(8)[m[i] > 0])[0, 1] for i in range(2)
    ]  # row 2 has 1 token
    np.testing.assert_allclose(
        jax.jit(compute_position_correlation)(v, m), np.mean(corrs), rtol=1e-4
    )
    assert float(jax.jit(compute_position_correlation)(v, np.zeros_like(m))) == 0.0


def test_first_divergence_targets_and_loss():
    pos = np.array([[5, 6, 7, 8, 0], [1, 2, 3, 0, 0]])
    neg = np.array([[5, 6, 9, 8, 0], [1, 2, 3, 4, 0]])  # row 1: neg runs on where pos ended
    t_pos, t_neg = jax.jit(first_divergence_targets)(pos, neg)
    np.testing.assert_array_equal(t_pos, [[0.5, 0.5, 1, 1, 1], [0.5, 0.5, 0.5, 1, 1]])
    np.testing.assert_array_equal(t_neg, [[0.5, 0.5, 0, 0, 0], [0.5, 0.5, 0.5, 0, 0]])
    m = np.array([[0, 1, 1, 1, 0], [0, 1, 1, 1, 0]], np.float32)
    vp = np.full((2, 5), 0.5, np.float32)
    vn = np.full((2, 5), 0.5, np.float32)
    # pos rows: errors (0, −.5, −.5), (0, 0, −.5) over 3 tokens; neg: (0, .5, .5), (0, 0, .5)
    want = ((0.5 / 3 + 0.25 / 3) / 2 + (0.5 / 3 + 0.25 / 3) / 2) / 2
    got = jax.jit(first_divergence_loss)(vp, vn, pos, neg, m, m)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the exact targets give zero loss and a zero gradient
    z = jax.jit(first_divergence_loss)(t_pos, t_neg, pos, neg, m, m)
    assert float(z) == 0.0
    g = jax.grad(first_divergence_loss, argnums=(0, 1))(vp, vn, pos, neg, m, m)
    assert float(jnp.abs(g[0][:, 0]).sum()) == 0.0  # masked tokens get no gradient
