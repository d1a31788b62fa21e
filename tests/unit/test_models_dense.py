"""`ops.dense` through `models.layers`: the projection every non-LoRA Linear uses. Its custom VJP
(2-D weight-gradient GEMM) must give autodiff's value and gradients: by hand, under vmap,
scan and remat, and in bf16 with float32 outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmtp_jax.models.args import ModelArgs
from wmtp_jax.models.layers import REMAT_POLICIES, Block, dense
from wmtp_jax.models.lora import LoRAConfig


def _plain(x, w, out_dtype=None):
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

    want = jax.jit(jax.value_and_grad(lambda *a: model(_plain, *a), argnums=(0, 1)))(ws, x)
    got = jax.jit(jax.value_and_grad(lambda *a: model(dense, *a), argnums=(0, 1)))(ws, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_inputs_float32_outputs():
    x, w, g = _data(3, dtype=jnp.bfloat16)
    y, vjp = jax.vjp(lambda a, b: dense(a, b, jnp.float32), x, w)
    y0, vjp0 = jax.vjp(lambda a, b: _plain(a, b, jnp.float32), x, w)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, y0)
    for a, b, like in zip(vjp(g), vjp0(g), (x, w)):
        assert a.dtype == like.dtype == jnp.bfloat16
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=1e-2 * np.abs(b).max())  # bf16 rounding


@pytest.mark.parametrize(
    "remat,lora,want", [("none", 0, True), ("dots", 0, False), ("none", 2, False)]
)
def test_blocks_use_dense_without_remat_and_lora(remat, lora, want):
    """Inside remat a policy like `dots` must see the dot (a custom VJP hides it); LoRA's frozen
    kernel needs no gradient (a custom VJP would compute it anyway)."""
    args = ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32, multiple_of=8, remat=remat)
    targets = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    cfg = LoRAConfig(rank=lora, alpha=1.0, dropout=0.0, targets=targets) if lora else None
    block = Block(args, rngs=nnx.Rngs(0), lora=cfg)
    linears = [block.attention.wq, block.attention.wo, block.feed_forward.w1]
    assert [m.dense_vjp for m in linears] == [want] * 3
