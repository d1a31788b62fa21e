"""TPU attention without a TPU: `auto` traced for a TPU target (`target_platform("tpu")`) is
jax's Pallas splash kernel, compiled ahead of time for a v5e:2x2 slice (libtpu, compile-only
devices); its wrapper (padding, segment ids, GQA, scale) matches the dense definition in Pallas
interpret mode on CPU."""

import os
import re

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from tests.unit.attention_data import packed_ids, qkv  # noqa: E402
from wmtp_jax.models import ModelArgs, MTPTransformer  # noqa: E402
from wmtp_jax.ops import attention as A  # noqa: E402
from wmtp_jax.ops.splash import padded_length, splash_attention  # noqa: E402

# this module's float32 parity runs at "highest"; bfloat16 TPU programs at the default (Mosaic
# rejects a float32 contract precision on bfloat16 operands; see wmtp_jax.ops.splash)
DEFAULT_PRECISION = jax.default_matmul_precision("default")
TOL = 2e-5  # float32, highest precision: observed ≤ 5e-6 on outputs and gradients


def v5e_mesh(shape=(1, 4, 1)) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh of the 4 compile-only chips of a TPU v5e:2x2 slice."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel test processes
    topo = topologies.get_topology_desc(
        platform="tpu",
        topology_name="v5e:2x2",
        chip_config_name="default",
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
    )
    return Mesh(np.asarray(topo.devices).reshape(shape), ("data", "fsdp", "tensor"))


def tpu_hlo(fn, *args, mesh_shape=(1, 4, 1)) -> str:
    """Optimized HLO of `fn` compiled for v5e:2x2, traced for TPU: the batch (dim 0) over data
    and fsdp, dim 2 (heads) over tensor."""
    mesh = v5e_mesh(mesh_shape)
    spec = lambda a: P(("data", "fsdp"), None, "tensor") if a.ndim == 4 else P(("data", "fsdp"))
    abstract = [
        jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec(a))) for a in args
    ]
    with A.target_platform("tpu"), jax.set_mesh(mesh), DEFAULT_PRECISION:
        lowered = jax.jit(fn).lower(*abstract)
        compiled = lowered.compile()
    assert "wmtp_flash" not in lowered.as_text()  # no CPU custom call traced in
    return compiled.as_text()


def square_arrays(hlo: str, s: int) -> list[str]:
    """Array shapes in `hlo` ending in [S, S] (a dense score or probability matrix)."""
    shapes = re.findall(r"\b(?:f32|bf16|f16|pred|s32)\[([0-9,]+)\]", hlo)
    return [x for x in shapes if x.split(",")[-2:] == [str(s), str(s)]]


def kernel_kinds(hlo: str) -> set[str]:
    """The splash kernels called in `hlo` (fwd, dq, dkv), by their custom-call names."""
    return set(re.findall(r"%splash_mha_(fwd|dq|dkv)_[\w.]* = ", hlo))


def test_auto_on_tpu_is_splash_and_splash_is_refused_elsewhere():
    with A.target_platform("tpu"):
        for s in (8, 200, 4096):
            assert A.resolve("auto", s, jnp.bfloat16, 64, segments=True) == "splash"
        A.check_backend("splash")
    assert A.resolve("auto", 4096, jnp.bfloat16, 64) != "splash"
    with pytest.raises(ValueError, match="'splash' runs on TPU only, the backend is 'cpu'"):
        A.check_backend("splash")
    with pytest.raises(ValueError, match="'splash' runs on TPU only, the backend is 'cpu'"):
        A.attention(*qkv(1, 8, 2, 1, 8), implementation="splash")
    assert padded_length(200) == (256, 256) and padded_length(1536) == (1536, 512)


@pytest.mark.parametrize("causal", [True, False])
def test_splash_wrapper_matches_the_dense_definition_in_interpret_mode(causal):
    # S = 200 is padded to 256; GQA 4 query heads over 2 kv heads; packed rows with padding
    q, k, v = qkv(2, 200, 4, 2, 16)
    ids = packed_ids(2, 200)
    vis = (ids != 0)[:, :, None, None]
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32) * vis

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v) * w)

    ours = lambda q, k, v: splash_attention(q, k, v, ids, causal=causal, interpret=True)
    ref = lambda q, k, v: A.reference_attention(q, k, v, causal=causal, segment_ids=ids)
    np.testing.assert_allclose(ours(q, k, v) * vis, ref(q, k, v) * vis, atol=TOL, rtol=0)
    g1, g2 = (jax.grad(loss(f), argnums=(0, 1, 2))(q, k, v) for f in (ours, ref))
    for name, a, b in zip("qkv", g1, g2):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=f"d{name}")
    # no segment ids: causal alone (padding to 256 must stay invisible)
    if causal:
        out = splash_attention(q, k, v, None, interpret=True)
        np.testing.assert_allclose(out, A.reference_attention(q, k, v), atol=TOL, rtol=0)


def test_splash_shard_mapped_over_a_mesh_matches_in_interpret_mode():
    # 8 CPU devices as (data, fsdp, tensor) = (2, 2, 2): each shard runs 1 row and 2 of the 4
    # query heads with its kv head (GQA survives the head split)
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    q, k, v = qkv(4, 136, 4, 2, 16)
    ids = packed_ids(4, 136)
    heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
    q, k, v = (jax.device_put(t, heads) for t in (q, k, v))
    ids = jax.device_put(ids, NamedSharding(mesh, P(("data", "fsdp"))))
    with jax.set_mesh(mesh):
        f = jax.jit(lambda q, k, v, ids: splash_attention(q, k, v, ids, interpret=True))
        out = f(q, k, v, ids)
        assert "manual_computation" in f.lower(q, k, v, ids).as_text()  # the shard_map
    vis = (ids != 0)[:, :, None, None]
    ref = A.reference_attention(q, k, v, segment_ids=ids)
    np.testing.assert_allclose(out * vis, ref * vis, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "mesh_shape,s,mask",
    [((1, 4, 1), 1024, "segment_ids"), ((2, 1, 2), 1000, "lengths")],
    ids=["fsdp4-packed", "data2-tensor2-padded"],
)
def test_tpu_aot_attention_forward_backward_is_the_pallas_kernel(mesh_shape, s, mask):
    b, h, kv, hd = 8, 8, 2, 128
    args = [jnp.zeros((b, s, n, hd), jnp.bfloat16) for n in (h, kv, kv)]
    ids = jnp.zeros((b, s), jnp.int32)

    def loss(q, k, v, ids):
        kw = {"segment_ids": ids} if mask == "segment_ids" else {"lengths": ids[:, 0]}
        out = A.attention(q, k, v, **kw)  # auto
        return jnp.sum(out.astype(jnp.float32) ** 2)

    hlo = tpu_hlo(jax.grad(loss, argnums=(0, 1, 2)), *args, ids, mesh_shape=mesh_shape)
    assert hlo.count('custom_call_target="tpu_custom_call"') == 3  # forward, dq, dkv
    assert kernel_kinds(hlo) == {"fwd", "dq", "dkv"}
    assert all("segmented" in n for n in re.findall(r"%(splash_mha_[\w.]+) = ", hlo))
    assert square_arrays(hlo, s) == [] and square_arrays(hlo, padded_length(s)[0]) == []
    # shard_mapped: each chip runs its own rows (and heads), nothing is gathered
    assert "all-gather" not in hlo


def test_tpu_aot_micro_mtp_model_forward_backward_uses_splash_in_every_layer():
    args = ModelArgs(
        dim=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=384,
        multiple_of=32,
        n_future_tokens=2,
        max_seq_len=256,
        dtype="bfloat16",
    )
    model = nnx.eval_shape(lambda: MTPTransformer(args, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    s = 256
    mesh = v5e_mesh()
    p_abs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())),
        params,
    )
    row = jax.ShapeDtypeStruct((8, s), jnp.int32, sharding=NamedSharding(mesh, P("fsdp")))

    def loss(p, tokens, ids):
        logits = nnx.merge(graphdef, p)(tokens, segment_ids=ids)
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    with A.target_platform("tpu"), jax.set_mesh(mesh), DEFAULT_PRECISION:
        hlo = jax.jit(jax.grad(loss)).lower(p_abs, row, row).compile().as_text()
    # the trunk's layers run in a scan and the heads' blocks in a vmap: one splash forward,
    # dq and dkv kernel in each loop body, none of them a dense softmax
    assert kernel_kinds(hlo) == {"fwd", "dq", "dkv"}
    assert square_arrays(hlo, s) == []
