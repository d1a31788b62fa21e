"""wmtp_jax.ops.attention: blockwise = the dense definition (outputs and q/k/v gradients,
1e-5 in float32) under causal masking, right padding, packed segment ids, GQA, S not a multiple
of the block and a batch sharded over 8 devices; block skipping; memory; dispatch.

tests/conftest.py sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax loads.
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from tests.unit.attention_data import packed_ids, qkv  # noqa: E402
from wmtp_jax.kernels import flash_cpu  # noqa: E402
from wmtp_jax.ops import attention as A  # noqa: E402
from wmtp_jax.ops import blockwise as BW  # noqa: E402

TOL = 1e-5


def loss_and_grads(fn, q, k, v, visible):
    """Σ out·w over visible query rows (a random cotangent), and its q, k, v gradients."""
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
    w = w * visible[:, :, None, None]
    f = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)


def assert_parity(q, k, v, *, block, causal=True, segment_ids=None, lengths=None, tol=TOL):
    b, s = q.shape[:2]
    seg = A.segments_of(segment_ids, lengths, b, s)
    visible = jnp.ones((b, s)) if seg is None else (seg != 0).astype(jnp.float32)
    kw = dict(causal=causal, segment_ids=segment_ids, lengths=lengths)
    out = jax.jit(partial_block(block), static_argnames="causal")(q, k, v, **kw)
    ref = A.reference_attention(q, k, v, **kw)
    np.testing.assert_allclose(
        out * visible[:, :, None, None], ref * visible[:, :, None, None], atol=tol, rtol=0
    )
    (l1, g1), (l2, g2) = (
        loss_and_grads(lambda q, k, v, f=f: f(q, k, v, **kw), q, k, v, visible)
        for f in (partial_block(block), A.reference_attention)
    )
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for name, a, r in zip("qkv", g1, g2):
        np.testing.assert_allclose(a, r, atol=tol, rtol=0, err_msg=f"d{name}")
    assert np.isfinite(np.asarray(out)).all()


def partial_block(block):
    return lambda q, k, v, **kw: A.blockwise_attention(q, k, v, block_size=block, **kw)


@pytest.mark.parametrize(
    "s,block,h,kv", [(32, 8, 4, 4), (37, 8, 4, 2), (8, 16, 4, 1), (37, 8, 4, 1)]
)
def test_causal_blockwise_equals_reference_incl_gqa_and_ragged_s(s, block, h, kv):
    assert_parity(*qkv(2, s, h, kv, 16), block=block)


@pytest.mark.parametrize("s", [32, 29])
def test_right_padding_as_lengths_or_segment_ids(s):
    q, k, v = qkv(3, s, 4, 2, 8, seed=2)
    lengths = jnp.asarray([s, 11, 1], jnp.int32)
    assert_parity(q, k, v, block=8, lengths=lengths)
    ids = (jnp.arange(s)[None] < lengths[:, None]).astype(jnp.int32)
    assert_parity(q, k, v, block=8, segment_ids=ids)
    a = A.blockwise_attention(q, k, v, lengths=lengths, block_size=8)
    b = A.blockwise_attention(q, k, v, segment_ids=ids, block_size=8)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("causal", [True, False])
def test_packed_segments_never_cross(causal):
    q, k, v = qkv(3, 45, 4, 2, 8, seed=3)
    ids = packed_ids(3, 45, seed=3)
    assert_parity(q, k, v, block=8, causal=causal, segment_ids=ids)
    # segment 2 of row 0 alone gives the same rows: nothing leaks across segments
    lo, hi = (int(x) for x in np.flatnonzero(np.asarray(ids[0]) == 2)[[0, -1]])
    out = A.blockwise_attention(q, k, v, causal=causal, segment_ids=ids, block_size=8)
    alone = A.reference_attention(
        q[:1, lo : hi + 1], k[:1, lo : hi + 1], v[:1, lo : hi + 1], causal=causal
    )
    np.testing.assert_allclose(out[:1, lo : hi + 1], alone, atol=TOL, rtol=0)


def test_rows_without_visible_keys_are_finite_zero_and_get_no_gradient():
    q, k, v = qkv(2, 16, 2, 2, 8)
    lengths = jnp.asarray([0, 5], jnp.int32)
    out = A.blockwise_attention(q, k, v, lengths=lengths, block_size=4)
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1, 5:], 0.0)
    g = jax.grad(
        lambda q, k, v: jnp.sum(A.blockwise_attention(q, k, v, lengths=lengths, block_size=4)),
        argnums=(0, 1, 2),
    )(q, k, v)
    for x in g:
        assert np.isfinite(np.asarray(x)).all()
        np.testing.assert_array_equal(x[0], 0.0)
    np.testing.assert_array_equal(g[1][1, 5:], 0.0)  # padded keys get no gradient


def test_invisible_block_pairs_are_skipped_with_a_cond():
    # segments of length 8 with blocks of 8: only the diagonal block pairs hold visible pairs
    ids = jnp.asarray(np.repeat(np.arange(1, 5), 8)[None].repeat(2, 0), jnp.int32)
    np.testing.assert_array_equal(BW._live(ids, 4, 8), np.eye(4, dtype=bool))
    # shifted by half a block: each segment spans two blocks; all padding (id 0) in block 3
    shifted = np.concatenate([np.repeat(np.arange(1, 5), 8)[4:28], np.zeros(8, int)])
    live = BW._live(jnp.asarray(shifted[None].repeat(2, 0), jnp.int32), 4, 8)
    want = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(live, want)
    q, k, v = qkv(2, 32, 2, 2, 8)
    jaxpr = str(
        jax.make_jaxpr(
            lambda q, k, v: jax.grad(
                lambda q: jnp.sum(A.blockwise_attention(q, k, v, segment_ids=ids, block_size=8))
            )(q)
        )(q, k, v)
    )
    assert jaxpr.count("cond[") == 2  # one in the forward loop body, one in the backward's
    plain = str(
        jax.make_jaxpr(lambda q, k, v: A.blockwise_attention(q, k, v, block_size=8))(q, k, v)
    )
    assert "cond[" not in plain  # causal without segments: every visited block pair is live
    assert_parity(q, k, v, block=8, segment_ids=ids)
    assert_parity(q, k, v, block=8, segment_ids=jnp.asarray(shifted[None].repeat(2, 0)))


def test_sharded_batch_on_8_devices_matches_unsharded():
    assert jax.device_count() >= 8, "tests/conftest.py must force 8 host devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    q, k, v = qkv(8, 24, 4, 2, 8, seed=4)
    ids = packed_ids(8, 24, seed=4)
    visible = (ids != 0).astype(jnp.float32)
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))

    def f(q, k, v, ids):
        fn = lambda q, k, v: A.blockwise_attention(q, k, v, segment_ids=ids, block_size=8)
        return fn(q, k, v), loss_and_grads(fn, q, k, v, (ids != 0).astype(jnp.float32))

    out, (loss, grads) = jax.jit(f)(put(q), put(k), put(v), put(ids))
    assert out.sharding.spec[0] == "data"
    ref_fn = lambda q, k, v: A.reference_attention(q, k, v, segment_ids=ids)
    ref = ref_fn(q, k, v)
    ref_loss, ref_grads = loss_and_grads(ref_fn, q, k, v, visible)
    m = visible[:, :, None, None]
    np.testing.assert_allclose(np.asarray(out) * m, ref * m, atol=TOL, rtol=0)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, r in zip(grads, ref_grads):
        np.testing.assert_allclose(a, r, atol=TOL, rtol=0)


def test_blockwise_forward_backward_memory_is_a_fraction_of_xla():
    q, k, v = (jax.ShapeDtypeStruct(x.shape, x.dtype) for x in qkv(1, 1024, 4, 4, 16))

    def temp(impl):
        f = lambda q, k, v: jnp.sum(A.attention(q, k, v, implementation=impl))
        c = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, k, v).compile()
        return c.memory_analysis().temp_size_in_bytes

    xla, blockwise = temp("xla"), temp("blockwise")
    assert xla >= 4 * 1024 * 1024 * 4  # at least one f32 [H, S, S]
    assert blockwise <= 0.25 * xla, (blockwise, xla)


def test_each_implementation_forced_on_cpu():
    q, k, v = qkv(2, 20, 4, 2, 8)
    ids = packed_ids(2, 20)
    m = (ids != 0)[:, :, None, None]
    ref = A.reference_attention(q, k, v, segment_ids=ids)
    impls = ("auto", "xla", "blockwise") + (
        ("cpu_flash",) if flash_cpu.unavailable() is None else ()
    )
    for impl in impls:
        out = A.attention(q, k, v, segment_ids=ids, implementation=impl)
        np.testing.assert_allclose(out * m, ref * m, atol=TOL, rtol=0, err_msg=impl)
    with pytest.raises(
        ValueError,
        match=r"'cudnn' needs an NVIDIA GPU with cuDNN, the backend "
        r"is 'cpu'; use auto, xla or blockwise",
    ):
        A.attention(q, k, v, implementation="cudnn")
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        A.check_backend("cudnn")
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        A.attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match=r"segment_ids shape \(2, 19\), expected \(2, 20\)"):
        A.attention(q, k, v, segment_ids=ids[:, :19])


def test_auto_never_picks_a_path_that_fails_here():
    assert jax.default_backend() == "cpu"
    native = flash_cpu.unavailable() is None  # the C++ kernel builds here (a compiler)
    for s in (1, 8, 128, 256, 4096):
        for dt in (jnp.float32, jnp.bfloat16):
            plain = "blockwise" if s >= 256 else "xla"
            assert A.resolve("auto", s, dt, 64) == ("cpu_flash" if native else plain)
            assert A.resolve("auto", s, dt, 512) == plain  # head_dim beyond the kernel
    # the choice on other backends (cuDNN cannot be checked on this host → never picked)
    assert A.resolve("auto", 4096, jnp.bfloat16, 64, backend="tpu") == "splash"
    assert A.resolve("auto", 256, jnp.float32, 64, backend="tpu") == "splash"
    assert A.cudnn_unavailable(jnp.float32, 64, backend="gpu").startswith("supports bfloat16")
    assert A.cudnn_unavailable(jnp.bfloat16, 12, backend="gpu").startswith("needs head_dim")
    assert A.resolve("auto", 2048, jnp.float32, 64, backend="gpu") == "blockwise"
    assert A.resolve("auto", 512, jnp.float32, 64, backend="gpu") == "xla"


def test_block_size_rule():
    assert A.block_size_for(100) == 100 and A.block_size_for(256) == 128
    assert A.block_size_for(4096) == 128
    assert A.block_size_for(4096, 64) == 64
    with pytest.raises(ValueError, match="block_size"):
        A.block_size_for(64, 0)


def test_bfloat16_blockwise_close_to_float32_reference():
    q, k, v = qkv(2, 40, 4, 2, 16, seed=5)
    ids = packed_ids(2, 40, seed=5)
    m = (ids != 0)[:, :, None, None]
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = A.blockwise_attention(*bf, segment_ids=ids, block_size=8)
    assert out.dtype == jnp.bfloat16
    ref = A.reference_attention(*[x.astype(jnp.float32) for x in bf], segment_ids=ids)
    np.testing.assert_allclose(out.astype(jnp.float32) * m, ref * m, atol=2e-2, rtol=0)


def test_models_give_the_same_logits_and_grads_with_xla_and_blockwise():
    from wmtp_jax.models import Llama, ModelArgs

    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=8)
    tok = jnp.asarray(np.random.default_rng(6).integers(0, 64, (3, 40)), jnp.int32)
    mask = (jnp.arange(40)[None] < jnp.asarray([40, 23, 7])[:, None]).astype(jnp.int32)
    outs = {}
    for impl in ("xla", "blockwise"):
        model = Llama(args.replace(attention=impl), rngs=nnx.Rngs(0))
        loss = lambda m: jnp.sum(jnp.where(mask[:, :, None] > 0, m(tok, mask), 0.0) ** 2)
        outs[impl] = (model(tok, mask), nnx.grad(loss)(model))
    m = mask[:, :, None] > 0
    np.testing.assert_allclose(
        jnp.where(m, outs["xla"][0], 0), jnp.where(m, outs["blockwise"][0], 0), atol=1e-5, rtol=0
    )
    for a, b in zip(jax.tree.leaves(outs["xla"][1]), jax.tree.leaves(outs["blockwise"][1])):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown attention implementation 'fast'"):
        args.replace(attention="fast")
    # not saved with a model: a dir written with cudnn on a GPU loads as auto anywhere
    saved = args.replace(attention="cudnn").to_dict()
    assert "attention" not in saved and ModelArgs.from_dict(saved).attention == "auto"
