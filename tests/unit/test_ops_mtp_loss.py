"""compute_mtp_ce_loss / compute_ntp_loss against hand-computed values and a numpy per-head loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.ops import compute_mtp_ce_loss, compute_ntp_loss, head_metrics, weigh_heads

# jit everywhere (eager dispatch is slow on the shared CPU); eager is checked once below
mtp = jax.jit(compute_mtp_ce_loss, static_argnames=("n_future",))


def np_ce(z, y):
    z = z.astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return lse - np.take_along_axis(z, np.maximum(y, 0)[..., None], -1)[..., 0]


def np_mtp_loss(logits, labels, am, weights=None):
    """Direct transcription of the original's per-head loop (float64)."""
    b, s, k_all, _ = logits.shape
    w_tot, u_tot, heads = 0.0, 0.0, 0
    for k in range(1, k_all + 1):
        n = s - k
        if n <= 0:
            continue
        y = labels[:, k : k + n]
        m = am[:, k : k + n] * (y != -100)
        ce = np_ce(logits[:, :n, k - 1], y)
        if weights is None:
            w = np.ones_like(ce)
        elif weights.ndim == 3:
            w = weights[:, :n, k - 1]
        else:
            w = weights[:, k : k + n]
        if m.sum() > 0:
            w_tot += (ce * w * m).sum() / m.sum()
            u_tot += (ce * m).sum() / m.sum()
            heads += 1
    return (w_tot / heads, u_tot / heads) if heads else (0.0, 0.0)


def make(seed, b=2, s=7, k=3, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, s, k, v)).astype(np.float32)
    labels = rng.integers(0, v, size=(b, s))
    labels[:, :2] = -100  # prompt
    am = np.ones((b, s), np.int32)
    am[-1, -2:] = 0  # right padding
    labels[-1, -2:] = -100
    return logits, labels, am, rng


def test_hand_computed_uniform_logits():
    # uniform logits over V=4 → every token costs ln 4 whatever the label; two heads
    logits = jnp.zeros((1, 3, 2, 4))
    labels = jnp.array([[1, 2, 3]])
    out = mtp(logits, labels, jnp.ones((1, 3)))
    assert float(out["unweighted_ce_loss"]) == pytest.approx(np.log(4), rel=1e-6)
    w = jnp.array([[9.0, 0.5, 2.0]])  # 2-D: head 1 uses w[1:], head 2 uses w[2:]
    out = mtp(logits, labels, jnp.ones((1, 3)), weights=w)
    expected = ((0.5 + 2.0) / 2 + 2.0) / 2 * np.log(4)
    assert float(out["weighted_ce_loss"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("wkind", [None, "2d", "3d"])
def test_matches_reference_loop(wkind):
    logits, labels, am, rng = make(0)
    weights = {
        None: None,
        "2d": rng.uniform(0.1, 3, size=labels.shape),
        "3d": rng.uniform(0.1, 3, size=labels.shape + (3,)),
    }[wkind]
    out = mtp(
        jnp.asarray(logits),
        jnp.asarray(labels),
        jnp.asarray(am),
        None if weights is None else jnp.asarray(weights, jnp.float32),
    )
    ref_w, ref_u = np_mtp_loss(logits, labels, am, weights)
    np.testing.assert_allclose(float(out["weighted_ce_loss"]), ref_w, rtol=1e-5)
    np.testing.assert_allclose(float(out["unweighted_ce_loss"]), ref_u, rtol=1e-5)
    assert out["head_weighted_ce_loss"].shape == (3,)


def test_weight_indexing_2d_target_vs_3d_source():
    logits, labels, am, _ = make(1, k=2)
    w2 = np.zeros(labels.shape, np.float32)
    w2[:, 4] = 1.0  # weight on the *predicted* token at position 4
    w3 = np.zeros(labels.shape + (2,), np.float32)
    w3[:, 3, 0] = 1.0  # head 1 from source 3 predicts token 4
    w3[:, 2, 1] = 1.0  # head 2 from source 2 predicts token 4
    a = mtp(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(am), jnp.asarray(w2))
    b = mtp(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(am), jnp.asarray(w3))
    np.testing.assert_allclose(
        float(a["weighted_ce_loss"]), float(b["weighted_ce_loss"]), rtol=1e-6
    )


def test_head_without_valid_target_is_not_averaged():
    # S=4, K=3: head 3 only targets position 3, which is padding → average over heads 1 and 2
    logits, labels, am, _ = make(2, b=1, s=4, k=3)
    labels[:, :] = [[-100, 5, 6, 7]]
    am[:, :] = [[1, 1, 1, 0]]
    out = mtp(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(am))
    assert float(out["n_valid_heads"]) == 2
    assert float(out["head_valid_tokens"][2]) == 0
    np.testing.assert_allclose(
        float(out["unweighted_ce_loss"]), np_mtp_loss(logits, labels, am)[1], rtol=1e-5
    )


@pytest.mark.parametrize("s", [1, 2, 3])
def test_short_sequences_s_le_k(s):
    logits, labels, am, _ = make(3, b=2, s=s, k=3)
    labels[:] = 1
    out = mtp(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(am))
    ref = np_mtp_loss(logits, labels, am)
    np.testing.assert_allclose(float(out["unweighted_ce_loss"]), ref[1], rtol=1e-5, atol=1e-7)
    assert np.isfinite(float(out["weighted_ce_loss"]))


def test_all_masked_gives_zero():
    logits, labels, am, _ = make(4)
    out = mtp(jnp.asarray(logits), jnp.full(labels.shape, -100), jnp.asarray(am))
    assert float(out["weighted_ce_loss"]) == 0.0 and float(out["unweighted_ce_loss"]) == 0.0
    g = jax.jit(
        jax.grad(
            lambda z: compute_mtp_ce_loss(z, jnp.full(labels.shape, -100), jnp.asarray(am))[
                "weighted_ce_loss"
            ]
        )
    )(jnp.asarray(logits))
    assert np.all(np.asarray(g) == 0)


def test_bf16_logits_give_float32():
    logits, labels, am, _ = make(5)
    out = mtp(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels), jnp.asarray(am))
    assert out["weighted_ce_loss"].dtype == jnp.float32
    ref = np_mtp_loss(
        np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32)), labels, am
    )[1]
    np.testing.assert_allclose(float(out["unweighted_ce_loss"]), ref, rtol=1e-5)


def test_weights_carry_no_gradient_and_jit_equals_eager():
    logits, labels, am, rng = make(6)
    w = jnp.asarray(rng.uniform(0.1, 3, size=labels.shape), jnp.float32)
    f = lambda z, w: compute_mtp_ce_loss(z, jnp.asarray(labels), jnp.asarray(am), w)[
        "weighted_ce_loss"
    ]
    gw = jax.jit(jax.grad(f, argnums=1))(jnp.asarray(logits), w)
    assert np.all(np.asarray(gw) == 0)
    np.testing.assert_allclose(
        float(jax.jit(f)(jnp.asarray(logits), w)), float(f(jnp.asarray(logits), w)), rtol=1e-6
    )


def test_vmap_over_microbatches():
    logits, labels, am, _ = make(7)
    f = lambda z, y, a: compute_mtp_ce_loss(z, y, a)["unweighted_ce_loss"]
    stacked = jax.jit(jax.vmap(f))(
        jnp.asarray(logits)[:, None], jnp.asarray(labels)[:, None], jnp.asarray(am)[:, None]
    )
    for i in range(2):
        np.testing.assert_allclose(
            float(stacked[i]),
            np_mtp_loss(logits[i : i + 1], labels[i : i + 1], am[i : i + 1])[1],
            rtol=1e-5,
        )


def test_ntp_loss_is_shifted_masked_mean():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(2, 5, 9)).astype(np.float32)
    labels = np.array([[-100, 1, 2, 3, 4], [-100, -100, 7, 8, 0]])
    am = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    m = (labels[:, 1:] != -100) * am[:, 1:]
    ce = np_ce(logits[:, :-1], labels[:, 1:])
    expected = (ce * m).sum() / m.sum()
    got = jax.jit(compute_ntp_loss)(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(am))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_shape_errors_name_tensors():
    with pytest.raises(ValueError, match="labels"):
        compute_mtp_ce_loss(jnp.zeros((1, 3, 2, 4)), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="weights"):
        compute_mtp_ce_loss(
            jnp.zeros((1, 3, 2, 4)),
            jnp.zeros((1, 3), jnp.int32),
            jnp.ones((1, 3)),
            weights=jnp.ones((1, 3, 1)),
        )


def test_weigh_heads_is_a_weighted_mean_over_counted_heads():
    out = {
        "head_weighted_ce_loss": jnp.array([1.0, 2.0, 4.0, 8.0]),
        "head_unweighted_ce_loss": jnp.array([2.0, 4.0, 6.0, 100.0]),
        "head_valid_tokens": jnp.array([5.0, 4.0, 3.0, 0.0]),  # head 3 has no valid token
        "head_ce_metric": jnp.array([2.0, 4.0, 6.0, 100.0]),
    }
    w = weigh_heads(out, (1.0, 0.5, 0.25, 9.0))
    np.testing.assert_allclose(w["weighted_ce_loss"], (1 + 1 + 1) / 1.75, rtol=1e-6)
    np.testing.assert_allclose(w["unweighted_ce_loss"], (2 + 2 + 1.5) / 1.75, rtol=1e-6)
    u = weigh_heads(out, (1.0, 1.0, 1.0, 1.0))  # uniform = the mean over counted heads
    np.testing.assert_allclose(u["unweighted_ce_loss"], 4.0, rtol=1e-6)
    assert set(head_metrics(out)) == {f"ce_head_{k}" for k in range(4)}
    assert float(head_metrics(out)["ce_head_2"]) == 6.0
    with pytest.raises(ValueError, match="head_weights"):
        weigh_heads(out, (1.0, 1.0))


def test_logged_head_ce_equals_the_per_head_loss():
    """head_metrics reads head_ce_metric, a separate reduction of the same per-head CE."""
    key = jax.random.PRNGKey(3)
    logits = jax.random.normal(key, (2, 7, 3, 11))
    labels = jax.random.randint(jax.random.PRNGKey(4), (2, 7), 0, 11)
    am = jnp.ones((2, 7)).at[1, 5:].set(0)
    out = compute_mtp_ce_loss(logits, labels, am)
    np.testing.assert_allclose(out["head_ce_metric"], out["head_unweighted_ce_loss"], rtol=1e-6)
    got = head_metrics(out)
    np.testing.assert_allclose([got[f"ce_head_{k}"] for k in range(3)], out["head_ce_metric"])
