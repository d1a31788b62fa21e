"""build_weights (whitening, clipping, degenerate batches) and the TD-stats EMA state."""

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.ops import (
    build_weights,
    compute_weight_clipping_ratio,
    td_ema_init,
    td_ema_stats,
    td_ema_update,
)

bw = jax.jit(build_weights)
update = jax.jit(td_ema_update)


def test_build_weights_formula_with_batch_stats():
    a = np.array([[0.1, -0.3, 0.5, 2.0], [0.0, 0.7, -1.0, 9.0]], np.float32)
    m = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], np.float32)
    valid = a[m > 0]
    z = (a - valid.mean()) / (valid.std(ddof=1) + 1e-8)
    expected = np.clip(np.exp(z / 0.5), 0.1, 5.0) * m
    np.testing.assert_allclose(bw(a, m, 0.5), expected, rtol=1e-5)
    assert np.all(np.asarray(bw(a, m, 0.5))[m == 0] == 0)


def test_build_weights_external_stats_and_clip():
    a = jnp.array([[0.0, 1.0, -10.0, 10.0]])
    w = bw(a, jnp.ones((1, 4)), 1.0, 0.2, 3.0, 0.0, 1.0)
    np.testing.assert_allclose(w, [[1.0, np.e, 0.2, 3.0]], rtol=1e-6)
    # only one of the two externals → batch statistics (as the original)
    np.testing.assert_allclose(
        bw(a, jnp.ones((1, 4)), 1.0, 0.2, 3.0, 0.0, None), bw(a, jnp.ones((1, 4)), 1.0, 0.2, 3.0)
    )


def test_build_weights_degenerate_batches_give_mask():
    a = jnp.array([[3.0, -2.0, 5.0]])
    np.testing.assert_allclose(bw(a, jnp.array([[0, 1, 0]])), [[0, 1, 0]])
    np.testing.assert_allclose(bw(a, jnp.zeros((1, 3))), [[0, 0, 0]])
    assert np.all(np.isfinite(bw(a[..., None], jnp.ones((1, 3)))))  # [B,S,1] accepted


def test_clipping_ratio():
    a = jnp.array([[0.0, 1.0, -10.0, 10.0]])
    r = compute_weight_clipping_ratio(a, jnp.array([[1, 1, 1, 0]]), 0.0, 1.0, 1.0, 0.2, 3.0)
    np.testing.assert_allclose(r, 1 / 3, rtol=1e-6)


def test_ema_defaults_first_update_and_warmup_blend():
    s = td_ema_init()
    assert tuple(map(float, td_ema_stats(s))) == (0.0, 1.0)
    m = jnp.ones((1, 4))
    s = update(s, jnp.full((1, 4), 1.0), m)
    assert float(s.mean) == 1.0 and int(s.step_count) == 1
    np.testing.assert_allclose(float(s.std), 1e-4, rtol=1e-6)  # √1e-8 for a constant batch
    s4 = td_ema_init(warmup_steps=4)._replace(mean=jnp.float32(1.0), step_count=jnp.int32(1))
    np.testing.assert_allclose(
        float(update(s4, jnp.full((1, 2), 2.0), m[:, :2]).mean), 0.25 * 1 + 0.75 * 2
    )


def test_ema_after_warmup_momentum_and_population_std():
    s = td_ema_init(momentum=0.1, warmup_steps=1)._replace(
        mean=jnp.float32(1.0), std=jnp.float32(1.0), step_count=jnp.int32(1)
    )
    x = jnp.array([[1.0, 3.0, 100.0]])
    s = update(s, x, jnp.array([[1, 1, 0]]))  # batch mean 2, pop std 1
    np.testing.assert_allclose([float(s.mean), float(s.std)], [0.9 + 0.2, 0.9 + 0.1], rtol=1e-6)
    for mom, exp in ((0.0, 1.0), (1.0, 2.0)):
        s0 = td_ema_init(momentum=mom, warmup_steps=0)._replace(mean=jnp.float32(1.0))
        np.testing.assert_allclose(float(update(s0, x, jnp.array([[1, 1, 0]])).mean), exp)


def test_ema_empty_mask_is_noop_and_state_is_a_pytree():
    s = update(td_ema_init(), jnp.ones((2, 3)), jnp.ones((2, 3)))
    s2 = update(s, jnp.ones((2, 3)) * 7, jnp.zeros((2, 3)))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s2)))
    assert len(jax.tree.leaves(s)) == 5 and all(x.shape == () for x in jax.tree.leaves(s))
