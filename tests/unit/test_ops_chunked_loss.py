"""chunked_mtp_ce_loss == compute_mtp_ce_loss(head_logits(...)) in value and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.ops import chunked_mtp_ce_loss, compute_mtp_ce_loss, head_logits

B, S, K, D, V = 2, 6, 3, 8, 13


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(B, S, K, D)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, size=(D,)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, V)) / np.sqrt(D), jnp.float32)
    labels = rng.integers(0, V, size=(B, S))
    labels[:, 0] = -100
    am = np.ones((B, S), np.int32)
    am[1, -1] = 0
    return h, scale, kernel, jnp.asarray(labels), jnp.asarray(am), rng


def dense(h, scale, kernel, labels, am, w, key):
    return compute_mtp_ce_loss(head_logits(h, scale, kernel), labels, am, w)[key]


def chunked(h, scale, kernel, labels, am, w, key, chunk_size):
    return chunked_mtp_ce_loss(h, scale, kernel, labels, am, w, chunk_size=chunk_size)[key]


@pytest.mark.parametrize("wkind,chunk_size", [("2d", 5), ("3d", 36)])
def test_loss_and_grads_match_dense(wkind, chunk_size):
    h, scale, kernel, labels, am, rng = inputs()
    w = {
        None: None,
        "2d": jnp.asarray(rng.uniform(0.1, 3, (B, S)), jnp.float32),
        "3d": jnp.asarray(rng.uniform(0.1, 3, (B, S, K)), jnp.float32),
    }[wkind]
    key = "weighted_ce_loss"
    vg = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(
        h, scale, kernel, labels, am, w
    )
    (ld, gd), (lc, gc) = (
        vg(functools.partial(dense, key=key)),
        vg(functools.partial(chunked, key=key, chunk_size=chunk_size)),
    )
    np.testing.assert_allclose(float(lc), float(ld), rtol=1e-5)
    for a, b in zip(gc, gd):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b)))
        )


def test_full_dict_and_unweighted_match():
    h, scale, kernel, labels, am, _ = inputs(1)
    d = jax.jit(lambda *a: compute_mtp_ce_loss(head_logits(*a[:3]), *a[3:]))(
        h, scale, kernel, labels, am
    )
    c = jax.jit(functools.partial(chunked_mtp_ce_loss, chunk_size=7))(h, scale, kernel, labels, am)
    for key in (
        "weighted_ce_loss",
        "unweighted_ce_loss",
        "head_unweighted_ce_loss",
        "head_valid_tokens",
    ):
        np.testing.assert_allclose(np.asarray(c[key]), np.asarray(d[key]), rtol=1e-5)


def test_bf16_latents_and_compute_dtype_give_finite_float32():
    h, scale, kernel, labels, am, _ = inputs(2)
    f = jax.jit(
        jax.value_and_grad(
            lambda hh: chunked_mtp_ce_loss(
                hh, scale, kernel, labels, am, compute_dtype=jnp.bfloat16, chunk_size=8
            )["weighted_ce_loss"]
        )
    )
    loss, g = f(h.astype(jnp.bfloat16))
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
    ref = jax.jit(dense, static_argnames="key")(
        h.astype(jnp.bfloat16).astype(jnp.float32),
        scale,
        kernel,
        labels,
        am,
        None,
        key="weighted_ce_loss",
    )
    np.testing.assert_allclose(float(loss), float(ref), rtol=3e-2)


def test_errors_name_tensors():
    h, scale, kernel, labels, am, _ = inputs()
    with pytest.raises(ValueError, match="output_kernel"):
        chunked_mtp_ce_loss(h, scale, kernel.T, labels, am)
    with pytest.raises(ValueError, match="norm_scale"):
        chunked_mtp_ce_loss(h, scale[:-1], kernel, labels, am)


def test_batch_sharded_over_mesh_equals_single_device():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    n_dev = min(4, len(jax.devices()))
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.normal(size=(4, S, K, D)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, V, size=(4, S)))
    am = jnp.ones((4, S), jnp.int32)
    _, scale, kernel, _, _, _ = inputs()
    f = jax.jit(
        jax.value_and_grad(
            lambda hh, kk: chunked_mtp_ce_loss(hh, scale, kk, labels, am, chunk_size=4)[
                "weighted_ce_loss"
            ],
            argnums=(0, 1),
        )
    )
    ref_loss, ref_g = f(h, kernel)
    mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
    hs = jax.device_put(h, NamedSharding(mesh, P("data")))
    loss, g = f(hs, jax.device_put(kernel, NamedSharding(mesh, P())))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for a, b in zip(g, ref_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
