"""wmtp_jax.ops.dense = autodiff of the plain einsum: values and both gradients by hand and
against autodiff in float32 (any number of leading dims; under scan, vmap and every remat
policy; a batch sharded over 8 devices), bf16 operands with float32 output; cotangent dtypes."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from wmtp_jax.models.layers import REMAT_POLICIES  # noqa: E402
from wmtp_jax.ops.dense import dense  # noqa: E402


def plain(x, w, out_dtype=None):
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=out_dtype)


def _data(seed=0, shape=(2, 3, 8), out=16, dtype=jnp.float32):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, shape, jnp.float32).astype(dtype)
    w = jax.random.normal(kw, (shape[-1], out), jnp.float32).astype(dtype)
    g = jax.random.normal(kg, (*shape[:-1], out), jnp.float32)
    return x, w, g


def test_value_and_gradients_by_hand():
    x, w, g = _data()
    y, vjp = jax.vjp(dense, x, w)
    dx, dw = vjp(g)
    xn, wn, gn = (np.asarray(a, np.float64) for a in (x, w, g))
    np.testing.assert_allclose(y, xn @ wn, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, gn @ wn.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, xn.reshape(-1, 8).T @ gn.reshape(-1, 16), rtol=1e-5, atol=1e-5)
    assert dx.shape == x.shape and dw.shape == w.shape


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_equals_autodiff_under_vmap_scan_and_remat(remat):
    x, _, _ = _data(1, (4, 6, 8))
    ws = jax.random.normal(jax.random.key(2), (3, 8, 8)) * 0.3  # 3 stacked layers

    def model(proj, ws, x):
        def layer(h, w):
            return jnp.tanh(proj(h, w)), None

        if remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[remat])
        h, _ = jax.lax.scan(layer, x, ws)  # scanned trunk
        heads = jax.vmap(lambda w: proj(h, w))(ws)  # vmapped heads
        return jnp.sum(heads**2)

    want = jax.jit(jax.value_and_grad(lambda *a: model(plain, *a), argnums=(0, 1)))(ws, x)
    got = jax.jit(jax.value_and_grad(lambda *a: model(dense, *a), argnums=(0, 1)))(ws, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def value_and_grads(f, x, w, seed=1):
    c = jnp.asarray(np.random.default_rng(seed).standard_normal((*x.shape[:-1], w.shape[1])))
    return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(f(x, w) * c), argnums=(0, 1)))(x, w)


def assert_matches_autodiff(x_dense, x, w):
    """dense at x_dense (x, or x placed differently) = the plain einsum at x: value, dx, dw."""
    (a, (ax, aw)), (b, (bx, bw)) = value_and_grads(dense, x_dense, w), value_and_grads(plain, x, w)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(ax, bx, atol=1e-6, rtol=0)
    np.testing.assert_allclose(aw, bw, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("lead", [(6,), (2, 5), (2, 3, 4)])
def test_equals_autodiff_of_the_einsum(lead):
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((*lead, 16)), jnp.float32)
    w = jnp.asarray(r.standard_normal((16, 24)), jnp.float32)
    np.testing.assert_allclose(dense(x, w), plain(x, w), atol=1e-6, rtol=0)
    assert_matches_autodiff(x, x, w)


def test_under_vmap_over_a_stacked_weight():
    r = np.random.default_rng(2)
    x = jnp.asarray(r.standard_normal((4, 3, 7, 16)), jnp.float32)  # [K, B, S, D]
    w = jnp.asarray(r.standard_normal((4, 16, 8)), jnp.float32)
    f1, f2 = jax.vmap(dense), jax.vmap(plain)
    g = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g(f1), g(f2)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-6)


def test_sharded_batch_on_8_devices_matches_unsharded():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    r = np.random.default_rng(3)
    x = jnp.asarray(r.standard_normal((8, 5, 16)), jnp.float32)
    w = jnp.asarray(r.standard_normal((16, 12)), jnp.float32)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert_matches_autodiff(xs, x, w)


def test_bfloat16_operands_float32_output_and_cotangent_dtypes():
    r = np.random.default_rng(4)
    x = jnp.asarray(r.standard_normal((2, 9, 32)), jnp.bfloat16)
    w = jnp.asarray(r.standard_normal((32, 16)), jnp.bfloat16)
    y = dense(x, w, out_dtype=jnp.float32)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, plain(x, w, jnp.float32), atol=1e-5, rtol=0)
    gx, gw = jax.grad(lambda x, w: jnp.sum(dense(x, w, out_dtype=jnp.float32) ** 2), (0, 1))(x, w)
    hx, hw = jax.grad(lambda x, w: jnp.sum(plain(x, w, jnp.float32) ** 2), (0, 1))(x, w)
    assert gx.dtype == gw.dtype == jnp.bfloat16
    scale = float(jnp.abs(hw.astype(jnp.float32)).max())
    np.testing.assert_allclose(gx.astype(jnp.float32), hx.astype(jnp.float32), rtol=2e-2, atol=2)
    np.testing.assert_allclose(gw.astype(jnp.float32), hw.astype(jnp.float32), atol=2e-2 * scale)


def test_bf16_inputs_float32_outputs():
    x, w, g = _data(3, dtype=jnp.bfloat16)
    y, vjp = jax.vjp(lambda a, b: dense(a, b, jnp.float32), x, w)
    y0, vjp0 = jax.vjp(lambda a, b: plain(a, b, jnp.float32), x, w)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, y0)
    for a, b, like in zip(vjp(g), vjp0(g), (x, w)):
        assert a.dtype == like.dtype == jnp.bfloat16
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=1e-2 * np.abs(b).max())  # bf16 rounding
