"""Sharded init on a fake 8-device CPU mesh (data, fsdp, tensor) = (2, 2, 2); logical axis names.

tests/conftest.py sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax loads.
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from tests.torch_ref import fill_deterministic  # noqa: E402
from wmtp_jax.models import Llama, LoRAConfig, ModelArgs, MTPTransformer, ValueModel  # noqa: E402
from wmtp_jax.models.partitioning import DEFAULT_RULES, init_sharded, state_shardings  # noqa: E402

ARGS = ModelArgs(
    dim=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=8, n_future_tokens=2
)
LORA = LoRAConfig(rank=4, alpha=8.0, targets=("wq", "wv", "w2"))
LOGICAL = {
    "vocab",
    "embed",
    "heads",
    "kv_heads",
    "mlp",
    "norm",
    "layers",
    "mtp_heads",
    "lora_rank",
    "value_hidden",
    None,
}
MAKERS = {
    "mtp": lambda lora: MTPTransformer(ARGS, rngs=nnx.Rngs(0), lora=lora),
    "llama": lambda lora: Llama(ARGS, rngs=nnx.Rngs(0), lora=lora),
    "value": lambda lora: ValueModel(ARGS, rngs=nnx.Rngs(0), lora=lora, dropout=0.1),
}
CASES = [(k, lora) for k in MAKERS for lora in (None, LORA)]
IDS = [f"{k}-{'lora' if lora else 'base'}" for k, lora in CASES]


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= 8, "tests/conftest.py must force 8 host devices"
    # Auto axes: jax.make_mesh defaults to Explicit axes, which with_sharding_constraint
    # (used by partitioning.init_sharded) rejects.
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


@pytest.mark.parametrize("kind,lora", CASES, ids=IDS)
def test_every_param_has_logical_axis_names(mesh, kind, lora):
    model = nnx.eval_shape(lambda: MAKERS[kind](lora))
    shardings = state_shardings(nnx.state(model, nnx.Param), mesh, DEFAULT_RULES)
    llama = shardings["backbone"] if kind == "value" else shardings
    assert llama["tok_embeddings"]["embedding"].spec == P("tensor", "fsdp")
    assert llama["layers"]["attention"]["wk"]["kernel"].spec == P(None, "fsdp", "tensor")
    n = 0
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            names = var.get_metadata().get("out_sharding")
            assert names is not None and len(names) == len(var.shape), (path, var.shape, names)
            assert set(names) <= LOGICAL, (path, names)
            n += 1
    assert n > 0


@pytest.mark.parametrize("kind,lora", CASES, ids=IDS)
def test_init_sharded_splits_params_and_matches_single_device(mesh, kind, lora):
    # fill_deterministic makes the random init dead code: compiling XLA CPU random init costs
    # ~10 s per model, the sharded construction path is the same.
    model = init_sharded(lambda: fill_deterministic(MAKERS[kind](lora)), mesh, DEFAULT_RULES)
    llama = model.backbone if kind == "value" else model
    emb = llama.tok_embeddings.embedding[...]
    assert emb.sharding.spec == P("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (32, 16)
    wq = llama.layers.attention.wq.kernel[...]
    assert wq.sharding.spec == P(None, "fsdp", "tensor")
    assert wq.addressable_shards[0].data.shape == (wq.shape[0], 16, 16)
    if lora:
        a = llama.layers.feed_forward.w2.lora_a[...]  # [L, mlp, r]
        assert tuple(a.sharding.spec) in ((None, "tensor", None), (None, "tensor"))
    if kind == "mtp":
        assert model.heads.feed_forward.w1.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    tok = np.random.default_rng(0).integers(0, 64, (4, 6)).astype(np.int32)
    mask = (np.arange(6)[None] < np.array([6, 3, 5, 1])[:, None]).astype(np.int32)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    args = (jnp.asarray(tok),) if kind == "mtp" else (jnp.asarray(tok), jnp.asarray(mask))
    model.eval()
    fwd = nnx.jit(lambda m, *a: m(*a))
    out = fwd(model, *jax.device_put(args, batch))
    graphdef, state = nnx.split(model)
    single = nnx.merge(graphdef, jax.device_put(jax.device_get(state), jax.devices()[0]))
    want = fwd(single, *args)
    assert out.dtype == jnp.float32 and out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
