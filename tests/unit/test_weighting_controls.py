"""The study's control weightings: permuted weights keep the multiset on the valid tokens; oracle
weights have the reference's mean and the configured ratio."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.weighting import apply_control, oracle_weights, permute_valid


def test_permute_keeps_the_multiset_of_valid_weights():
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 3.0, (4, 9)).astype(np.float32)
    m = (rng.uniform(size=(4, 9)) < 0.6).astype(np.float32)
    f = jax.jit(permute_valid)
    got = np.asarray(f(w, m, jax.random.key(1)))
    np.testing.assert_array_equal(np.sort(got[m > 0]), np.sort(w[m > 0]))
    np.testing.assert_array_equal(got[m == 0], w[m == 0])  # masked positions untouched
    assert not np.array_equal(got, w)  # it moves them
    again = np.asarray(f(w, m, jax.random.key(1)))
    np.testing.assert_array_equal(got, again)  # same key, same permutation
    other = np.asarray(f(w, m, jax.random.key(2)))
    assert not np.array_equal(got, other)


def test_permute_is_uniform_over_positions():
    # a single large weight among 5 valid tokens lands on each with probability 1/5
    w = jnp.asarray([[5.0, 1.0, 1.0, 0.0, 1.0, 1.0]])
    m = jnp.asarray([[1, 1, 1, 0, 1, 1]])
    keys = jax.random.split(jax.random.key(0), 2000)
    got = jax.vmap(lambda k: permute_valid(w, m, k))(keys)
    freq = np.asarray((got[:, 0] == 5.0).mean(0))
    assert freq[3] == 0
    np.testing.assert_allclose(freq[[0, 1, 2, 4, 5]], 0.2, atol=0.035)  # 3.9 binomial sd


def test_oracle_weights_ratio_and_mean():
    crit = np.array([[0, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    m = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    ref = np.array([[1.0, 2.0, 0.5, 9.0], [1.5, 1.0, 7.0, 7.0]], np.float32)
    got = np.asarray(jax.jit(oracle_weights, static_argnums=3)(crit, m, ref, 3.0))
    # base = 1,3,1,_ / 3,1 (sum 9); reference over valid tokens sums to 6 → scale 2/3
    np.testing.assert_allclose(got, [[2 / 3, 2, 2 / 3, 0], [2, 2 / 3, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose((got * m).sum(), (ref * m).sum(), rtol=1e-6)


def test_apply_control():
    w = jnp.ones((1, 3))
    m = jnp.ones((1, 3))
    assert apply_control("none", w, m) is w
    with pytest.raises(ValueError, match="critical"):
        apply_control("oracle", w, m)
    with pytest.raises(ValueError, match="none\\|permute\\|oracle"):
        apply_control("shuffle", w, m)
