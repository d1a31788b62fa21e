"""wmtp_jax.kernels.flash_cpu (the fused C++ CPU attention, `cpu_flash`) = the dense definition,
outputs and q/k/v gradients within 1e-5 in float32: causal and not, right padding, packed
segment ids (incl. rows with no visible key), GQA, S not a multiple of the 64-block, every
built head_dim and padded ones, under vmap (the MTP heads), a batch sharded over 8 devices, the
models; deterministic; refuses clearly where it cannot run.

tests/conftest.py sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax loads.
"""

import os
import subprocess
import sys

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from tests.unit.attention_data import packed_ids, qkv  # noqa: E402
from wmtp_jax.kernels import build, flash_cpu  # noqa: E402
from wmtp_jax.ops import attention as A  # noqa: E402

TOL = 1e-5

pytestmark = pytest.mark.skipif(
    build.unavailable() is not None, reason=f"cpu_flash unavailable: {build.unavailable()}"
)


def value_and_grads(fn, q, k, v, visible):
    """Σ out·w over visible query rows (w a random cotangent), and its q, k, v gradients."""
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
    w = w * visible[..., None, None]
    f = lambda q, k, v: jnp.sum(fn(q, k, v) * w)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)


def assert_parity(q, k, v, *, causal=True, segment_ids=None, lengths=None):
    b, s = q.shape[:2]
    seg = A.segments_of(segment_ids, lengths, b, s)
    visible = jnp.ones((b, s)) if seg is None else (seg != 0).astype(jnp.float32)
    kw = dict(causal=causal, segment_ids=segment_ids, lengths=lengths)
    fast = lambda q, k, v: A.attention(q, k, v, implementation="cpu_flash", **kw)
    ref = lambda q, k, v: A.reference_attention(q, k, v, **kw)
    m = visible[:, :, None, None]
    out = jax.jit(fast)(q, k, v)
    np.testing.assert_allclose(out * m, ref(q, k, v) * m, atol=TOL, rtol=0)
    assert np.isfinite(np.asarray(out)).all()
    (l1, g1), (l2, g2) = (value_and_grads(f, q, k, v, visible) for f in (fast, ref))
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for name, a, r in zip("qkv", g1, g2):
        np.testing.assert_allclose(a, r, atol=TOL, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize(
    "s,h,kv,hd",
    [(64, 2, 2, 16), (200, 4, 2, 32), (130, 4, 1, 64), (70, 2, 2, 128), (65, 2, 1, 256)],
)
def test_causal_equals_reference_every_built_head_dim_gqa_ragged_s(s, h, kv, hd):
    assert_parity(*qkv(2, s, h, kv, hd))


@pytest.mark.parametrize("hd", [8, 40, 100])
def test_other_head_dims_are_zero_padded(hd):
    assert_parity(*qkv(2, 37, 4, 2, hd, seed=hd))


@pytest.mark.parametrize("causal", [True, False])
def test_packed_segments_and_padding(causal):
    q, k, v = qkv(3, 150, 4, 2, 32, seed=2)
    assert_parity(q, k, v, causal=causal, segment_ids=packed_ids(3, 150, seed=2))


def test_right_padding_as_lengths():
    assert_parity(*qkv(3, 100, 2, 1, 32, seed=3), lengths=jnp.asarray([100, 65, 1]))


def test_rows_without_visible_keys_are_zero_and_get_no_gradient():
    q, k, v = qkv(2, 70, 2, 2, 16, seed=4)
    ids = jnp.asarray([[1] * 60 + [0] * 10, [0] * 5 + [2] * 65], jnp.int32)
    f = lambda q, k, v: A.attention(q, k, v, segment_ids=ids, implementation="cpu_flash")
    out = f(q, k, v)
    dead = np.asarray(ids == 0)
    assert (np.asarray(out)[dead] == 0).all()
    gq = jax.grad(lambda q: jnp.sum(f(q, k, v)))(q)
    assert (np.asarray(gq)[dead] == 0).all()


def test_under_vmap_as_the_mtp_heads_call_it():
    q, k, v = (jnp.stack([x, x[::-1]]) for x in qkv(2, 80, 4, 2, 32, seed=5))
    ids = packed_ids(2, 80, seed=5)
    fast = jax.vmap(
        lambda q, k, v: A.attention(q, k, v, segment_ids=ids, implementation="cpu_flash")
    )
    ref = jax.vmap(lambda q, k, v: A.reference_attention(q, k, v, segment_ids=ids))
    m = (ids != 0)[None, :, :, None, None]
    np.testing.assert_allclose(fast(q, k, v) * m, ref(q, k, v) * m, atol=TOL, rtol=0)
    w = jnp.asarray(np.random.default_rng(6).standard_normal(q.shape), jnp.float32) * m
    g1, g2 = (
        jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)
        for f in (fast, ref)
    )
    for a, r in zip(g1, g2):
        np.testing.assert_allclose(a, r, atol=TOL, rtol=0)


def test_sharded_batch_on_8_devices_matches_unsharded():
    assert jax.device_count() >= 8, "tests/conftest.py must force 8 host devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    q, k, v = qkv(8, 72, 4, 2, 16, seed=7)
    ids = packed_ids(8, 72, seed=7)
    visible = (ids != 0).astype(jnp.float32)
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    fn = lambda ids: (
        lambda q, k, v: A.attention(q, k, v, segment_ids=ids, implementation="cpu_flash")
    )
    out, (loss, grads) = jax.jit(
        lambda q, k, v, ids: (fn(ids)(q, k, v), value_and_grads(fn(ids), q, k, v, ids != 0))
    )(put(q), put(k), put(v), put(ids))
    ref = lambda q, k, v: A.reference_attention(q, k, v, segment_ids=ids)
    ref_loss, ref_grads = value_and_grads(ref, q, k, v, visible)
    m = visible[:, :, None, None]
    np.testing.assert_allclose(np.asarray(out) * m, ref(q, k, v) * m, atol=TOL, rtol=0)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, r in zip(grads, ref_grads):
        np.testing.assert_allclose(a, r, atol=TOL, rtol=0)


def test_deterministic_and_bfloat16_in_out():
    q, k, v = qkv(2, 130, 4, 2, 32, seed=8)
    g = jax.jit(jax.grad(lambda q: jnp.sum(A.attention(q, k, v, implementation="cpu_flash") ** 2)))
    a, b = np.asarray(g(q)), np.asarray(g(q))
    assert (a == b).all()
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = A.attention(*bf, implementation="cpu_flash")
    assert out.dtype == jnp.bfloat16
    ref = A.reference_attention(*[x.astype(jnp.float32) for x in bf])
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=2e-2, rtol=0)


def test_models_give_the_same_logits_and_grads_as_xla():
    from wmtp_jax.models import Llama, ModelArgs

    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=8)
    tok = jnp.asarray(np.random.default_rng(9).integers(0, 64, (3, 90)), jnp.int32)
    mask = (jnp.arange(90)[None] < jnp.asarray([90, 70, 7])[:, None]).astype(jnp.int32)
    outs = {}
    for impl in ("xla", "cpu_flash"):
        model = Llama(args.replace(attention=impl), rngs=nnx.Rngs(0))
        loss = lambda m: jnp.sum(jnp.where(mask[:, :, None] > 0, m(tok, mask), 0.0) ** 2)
        outs[impl] = (model(tok, mask), nnx.grad(loss)(model))
    m = mask[:, :, None] > 0
    np.testing.assert_allclose(
        jnp.where(m, outs["xla"][0], 0), jnp.where(m, outs["cpu_flash"][0], 0), atol=1e-5, rtol=0
    )
    for a, b in zip(jax.tree.leaves(outs["xla"][1]), jax.tree.leaves(outs["cpu_flash"][1])):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_refuses_clearly_where_it_cannot_run():
    q, k, v = qkv(1, 8, 2, 2, 300)
    with pytest.raises(ValueError, match=r"'cpu_flash' needs head_dim ≤ 256, got 300"):
        A.attention(q, k, v, implementation="cpu_flash")
    assert A.resolve("auto", 512, jnp.float32, 300) == "blockwise"  # auto falls back
    assert flash_cpu.unavailable(64, backend="gpu").startswith("runs on the CPU backend only")
    with pytest.raises(ValueError, match="'cpu_flash' runs on the CPU backend only"):
        A.check_backend("cpu_flash", backend="gpu")
    code = (
        "import jax.numpy as jnp; from wmtp_jax.ops import attention as A; "
        "print(A.resolve('auto', 512, jnp.float32, 64)); "
        "A.resolve('cpu_flash', 512, jnp.float32, 64)"
    )
    env = dict(os.environ, WMTP_JAX_CPU_KERNELS="0", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "blockwise"
    assert "'cpu_flash' switched off by WMTP_JAX_CPU_KERNELS=0; use auto" in done.stderr


def test_a_failing_build_is_a_one_line_reason(tmp_path, monkeypatch):
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(build, "SOURCE", bad)
    monkeypatch.setenv("WMTP_JAX_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_state", {})
    why = build.unavailable()
    assert why.startswith("c++ failed to build bad.cc:") or "failed to build bad.cc" in why
    assert "\n" not in why
    assert not list((tmp_path / "cache").glob("*.so"))
