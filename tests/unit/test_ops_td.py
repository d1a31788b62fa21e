"""TD errors, GAE and λ-returns: hand-computed values, closed forms, numpy loops, edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.ops import (
    build_weights,
    compute_gae_advantage,
    compute_lambda_return,
    compute_mtp_ce_loss,
    compute_td_errors,
    compute_td_targets,
)

td_errors = jax.jit(compute_td_errors)
targets_fn = jax.jit(compute_td_targets)
gae = jax.jit(compute_gae_advantage)
lam_ret = jax.jit(compute_lambda_return)


def random_batch(seed, b=4, s=9):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0, 1, size=(b, s)).astype(np.float32)
    m = np.zeros((b, s), np.float32)
    m[0, 2:7] = 1  # prompt + padding
    m[1, :] = 1
    m[2, 4] = 1  # single valid token
    # row 3: no valid token
    return v, m, rng


def np_gae(v, m, gamma, lam, init=0.5):
    """A_t = Σ_{l=0}^{T*−t} (γλ)^l δ_{t+l}, δ_t = γv_t − v_{t−1}, double loop, float64."""
    b, s = v.shape
    out = np.zeros((b, s))
    for i in range(b):
        term = max([t for t in range(s) if m[i, t]] or [0])
        for t in range(term + 1):
            out[i, t] = sum(
                (gamma * lam) ** l * (gamma * v[i, t + l] - (v[i, t + l - 1] if t + l else init))
                for l in range(term - t + 1)
            )
    return out * m


def np_lambda_return(v, r, m, gamma, lam, end=None):
    """Transcription of the original's per-row loop."""
    b, s = v.shape
    out = np.zeros((b, s))
    for i in range(b):
        valid = [t for t in range(s) if m[i, t]]
        if not valid:
            continue
        if end is not None:
            ends = [t for t in range(s) if end[i, t]]
            if not ends:
                continue
            chain = list(range(ends[0] + 1))
        else:
            chain = valid
        out[i, chain[-1]] = g = r[i]
        for j in range(len(chain) - 2, -1, -1):
            g = (1 - lam) * gamma * v[i, chain[j + 1]] + lam * gamma * g
            out[i, chain[j]] = g
    return out


def test_td_errors_hand_computed():
    v = jnp.array([[[0.5], [0.7], [0.9]]])
    np.testing.assert_allclose(
        td_errors(v, jnp.array([1.0]), jnp.ones((1, 3))), [[0.0, 0.2, 0.1]], atol=1e-6
    )
    # prompt + padding, rewards [B,1], γ and initial value
    v = jnp.array([[0.3, 0.5, 0.7, 0.9]])
    m = jnp.array([[0, 1, 1, 0]])
    np.testing.assert_allclose(td_errors(v, jnp.array([[1.0]]), m), [[0, 0.2, 0.3, 0]], atol=1e-6)
    out = td_errors(jnp.array([[0.5, 0.7, 0.9]]), jnp.array([0.0]), jnp.ones((1, 3)), 0.9, 0.4)
    np.testing.assert_allclose(out, [[0.45 - 0.4, 0.63 - 0.5, -0.9]], atol=1e-6)


def test_gae_lambda0_is_td0_and_targets_match_reference():
    v = jnp.array([[0.5, 0.7, 0.9]])
    np.testing.assert_allclose(
        gae(v, 1.0, jnp.ones((1, 3)), 1.0, 0.0), [[0.0, 0.2, 0.2]], atol=1e-6
    )
    np.testing.assert_allclose(targets_fn(v, 1.0, jnp.ones((1, 3))), [[0.5, 0.9, 1.1]], atol=1e-6)


def test_gae_monte_carlo_gives_reward():
    v, m, _ = random_batch(0)
    r = jnp.array([1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(targets_fn(v, r, m, 1.0, 1.0), np.asarray(r)[:, None] * m, atol=1e-6)
    np.testing.assert_allclose(gae(v, r, m, 1.0, 1.0), (np.asarray(r)[:, None] - v) * m, atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
def test_gae_matches_closed_form_double_loop(gamma, lam):
    v, m, _ = random_batch(1)
    got = gae(jnp.asarray(v)[..., None], jnp.ones(4), m, gamma, lam)
    np.testing.assert_allclose(got, np_gae(v, m, gamma, lam), atol=1e-5)
    assert np.all(np.asarray(got)[3] == 0)  # row without valid tokens


def test_bf16_values_float32_finite_and_no_gradient():
    v, m, _ = random_batch(2)
    vb = jnp.asarray(v, jnp.bfloat16)
    out = gae(vb, jnp.ones(4), m)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(
        out, np_gae(np.asarray(vb.astype(jnp.float32)), m, 1.0, 0.95), atol=1e-5
    )
    g = jax.jit(jax.grad(lambda x: jnp.sum(compute_gae_advantage(x, jnp.ones(4), m) ** 2)))(
        jnp.asarray(v)
    )
    assert np.all(np.asarray(g) == 0)


def test_critic_gets_no_gradient_from_verifiable_loss():
    v, m, rng = random_batch(3)
    logits = jnp.asarray(rng.normal(size=(4, 9, 2, 5)), jnp.float32)
    labels = jnp.asarray(np.where(m > 0, rng.integers(0, 5, size=m.shape), -100))

    def loss(values, z):
        a = compute_gae_advantage(values, jnp.ones(4), m)
        w = build_weights(a, m)
        return compute_mtp_ce_loss(z, labels, jnp.ones_like(labels), w)["weighted_ce_loss"]

    gv, gz = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(v)[..., None], logits)
    assert np.all(np.asarray(gv) == 0)
    assert float(jnp.max(jnp.abs(gz))) > 0


def test_jit_equals_eager():
    v, m, _ = random_batch(4)
    eager = compute_gae_advantage(jnp.asarray(v), jnp.ones(4), jnp.asarray(m), 0.9, 0.7)
    np.testing.assert_allclose(
        eager, gae(jnp.asarray(v), jnp.ones(4), jnp.asarray(m), 0.9, 0.7), atol=1e-7
    )


def test_lambda_return_reference_values():
    m = jnp.ones((1, 4))
    v = jnp.full((1, 4), 0.5)
    g = lam_ret(v, jnp.array([1.0]), m, 1.0, 0.95)
    np.testing.assert_allclose(g[0, 3], 1.0)
    np.testing.assert_allclose(g[0, 2], 0.975, atol=1e-6)
    np.testing.assert_allclose(g[0, 1], 0.95125, atol=1e-6)
    np.testing.assert_allclose(lam_ret(v, jnp.array([1.0]), m, 1.0, 1.0), [[1, 1, 1, 1]])
    vv = jnp.array([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(
        lam_ret(vv, jnp.array([0.0]), m, 1.0, 0.0), [[0.2, 0.3, 0.4, 0.0]], atol=1e-6
    )
    assert np.all(np.asarray(lam_ret(v, jnp.array([1.0]), jnp.zeros((1, 4)))) == 0)


@pytest.mark.parametrize("with_end", [False, True])
def test_lambda_return_matches_reference_loop(with_end):
    v, m, rng = random_batch(5, s=12)
    m[0, 8] = 0  # a hole inside the loss window
    r = rng.integers(0, 2, size=4).astype(np.float32)
    end = None
    if with_end:
        end = np.zeros_like(m)
        end[0, 10] = end[1, 11] = end[2, 6] = 1  # terminal after the loss window (row 0, 2)
    got = lam_ret(
        v, jnp.asarray(r)[:, None], m, 0.9, 0.8, None if end is None else jnp.asarray(end)
    )
    np.testing.assert_allclose(got, np_lambda_return(v, r, m, 0.9, 0.8, end), atol=1e-5)


def test_lambda_return_end_mask_fills_prompt_until_terminal():
    m = np.zeros((1, 10), np.float32)
    m[0, 3:6] = 1
    end = np.zeros_like(m)
    end[0, 7] = 1
    g = lam_ret(jnp.full((1, 10), 0.3), jnp.array([1.0]), m, 1.0, 1.0, jnp.asarray(end))
    np.testing.assert_allclose(g, [[1] * 8 + [0, 0]])
