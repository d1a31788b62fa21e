"""LoRA: identity at init, merge equivalence, trainable filters, dropout, config round trip."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from tests.torch_ref import fill_random, flat_paths  # noqa: E402
from wmtp_jax.models import (
    Llama,
    LoRAConfig,
    ModelArgs,
    MTPTransformer,
    ValueModel,  # noqa: E402
    lora_state,
    merge_lora,
    trainable_filter,
)
from wmtp_jax.models.layers import Linear  # noqa: E402

ARGS = ModelArgs(
    dim=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=8, n_future_tokens=2
)
ALL = LoRAConfig(
    rank=4,
    alpha=8.0,
    targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)
TOK = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)), jnp.int32)
fwd = nnx.jit(lambda m, t: m(t))


def paths(state):
    return {"/".join(map(str, p)) for p in flat_paths(nnx.to_pure_dict(state))}


def randomize_lora_b(model, seed=1):
    for i, (path, var) in enumerate(nnx.iter_graph(model)):
        if isinstance(var, nnx.LoRAParam) and path[-1] == "lora_b":
            var[...] = 0.3 * np.random.default_rng(seed + i).normal(size=var.shape).astype(
                np.float32
            )


def test_config_canonical_targets_and_dict_round_trip():
    assert ALL.targets == ("wq", "wk", "wv", "wo", "w1", "w3", "w2") and ALL.scale == 2.0
    assert LoRAConfig.from_dict(ALL.to_dict()) == ALL
    peft = LoRAConfig.from_dict(
        {
            "r": 64,
            "lora_alpha": 128,
            "lora_dropout": 0.05,
            "target_modules": ["q_proj", "wq", "gate_proj"],
        }
    )
    assert peft == LoRAConfig(rank=64, alpha=128.0, dropout=0.05, targets=("wq", "w1"))
    with pytest.raises(ValueError, match="unknown LoRA key 'learning_rate'"):
        LoRAConfig.from_dict({"rank": 8, "learning_rate": 1e-4})
    with pytest.raises(ValueError, match="unknown LoRA target 'fc'"):
        LoRAConfig(targets=("fc",))


def test_linear_lora_init_and_formula():
    lin = Linear(16, 8, names=("embed", "heads"), rngs=nnx.Rngs(0), lora_rank=4, lora_alpha=8.0)
    a, b, w = lin.lora_a[...], lin.lora_b[...], lin.kernel[...]
    assert a.shape == (16, 4) and b.shape == (4, 8) and not np.any(b)
    assert 0.2 < float(jnp.abs(a).max()) <= 16**-0.5  # U(±1/sqrt(in))
    assert lin.lora_a.out_sharding == ("embed", "lora_rank")
    assert lin.lora_b.out_sharding == ("lora_rank", "heads")
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_allclose(lin(x), x @ w, atol=1e-6)
    lin.lora_b[...] = np.ones((4, 8), np.float32)
    np.testing.assert_allclose(lin(x), x @ w + 2.0 * (x @ a) @ np.ones((4, 8)), atol=1e-5)


def test_mtp_lora_identity_at_init_then_merge_equals_lora():
    model = nnx.eval_shape(lambda: MTPTransformer(ARGS, rngs=nnx.Rngs(1), lora=ALL))
    fill_random(model)  # lora_b = 0 as at init
    base = merge_lora(model)  # B = 0: the base model
    assert not paths(nnx.state(base, nnx.LoRAParam)) and base.lora is None
    assert paths(nnx.state(base, nnx.Param)) == paths(
        nnx.state(nnx.eval_shape(lambda: MTPTransformer(ARGS, rngs=nnx.Rngs(0))), nnx.Param)
    )
    want = fwd(base, TOK)
    np.testing.assert_allclose(fwd(model, TOK), want, atol=1e-5)  # identity while B = 0
    randomize_lora_b(model)
    lora_out = fwd(model, TOK)
    assert float(jnp.max(jnp.abs(lora_out - want))) > 1e-2
    np.testing.assert_allclose(fwd(merge_lora(model), TOK), lora_out, atol=1e-4)
    np.testing.assert_array_equal(fwd(model, TOK), lora_out)  # merge_lora left its input alone
    # base weights go into a LoRA model with nnx.update; the LoRA factors are kept
    base.heads.attention.wq.kernel[...] += 1.0
    a_before = model.heads.attention.wq.lora_a[...]
    nnx.update(model, nnx.state(base, nnx.Param))
    np.testing.assert_array_equal(
        model.heads.attention.wq.kernel[...], base.heads.attention.wq.kernel[...]
    )
    np.testing.assert_array_equal(model.heads.attention.wq.lora_a[...], a_before)


def test_trainable_filters_select_exact_paths():
    model = nnx.eval_shape(lambda: MTPTransformer(ARGS, rngs=nnx.Rngs(0), lora=LoRAConfig()))
    blocks = [
        f"{g}/attention/{w}/lora_{ab}"
        for g in ("layers", "heads")
        for w in ("wq", "wk", "wv", "wo")
        for ab in "ab"
    ]
    assert paths(nnx.state(model, trainable_filter("policy"))) == set(blocks)
    assert paths(lora_state(model)) == set(blocks)
    st = nnx.state(model, trainable_filter("policy"))
    assert st["heads"]["attention"]["wq"]["lora_a"].shape == (2, 32, 8)  # stacked per head
    assert st["layers"]["attention"]["wo"]["lora_b"].shape == (1, 8, 32)

    critic = nnx.eval_shape(
        lambda: ValueModel(ARGS, rngs=nnx.Rngs(0), lora=LoRAConfig(targets=("w1", "w2")))
    )
    lora = {f"backbone/layers/feed_forward/{w}/lora_{ab}" for w in ("w1", "w2") for ab in "ab"}
    head = {f"value_head/{f}/{k}" for f in ("fc1", "fc2", "fc3") for k in ("kernel", "bias")}
    assert paths(nnx.state(critic, trainable_filter("critic"))) == lora | head
    assert paths(nnx.state(critic, trainable_filter("critic", include_heads=False))) == lora
    assert paths(nnx.state(critic, trainable_filter(include_heads=True))) == lora | head
    with pytest.raises(ValueError, match="unknown model_kind"):
        trainable_filter("actor")


def test_llama_lora_dropout_train_vs_eval():
    cfg = LoRAConfig(rank=2, alpha=4.0, dropout=0.5, targets=("wq", "w2"))
    model = nnx.eval_shape(lambda: Llama(ARGS, rngs=nnx.Rngs(0), lora=cfg))
    fill_random(model)
    for i, d in enumerate(
        (model.layers.attention.wq.lora_dropout, model.layers.feed_forward.w2.lora_dropout)
    ):  # abstract RNG state
        d.rngs.key.set_value(jax.random.split(jax.random.key(i), 3))
        d.rngs.count.set_value(jnp.zeros((3,), jnp.uint32))
    randomize_lora_b(model)
    merged = merge_lora(model)
    model.eval()  # dropout off: LoRA model == merged
    np.testing.assert_allclose(fwd(model, TOK), fwd(merged, TOK), atol=1e-4)
    model.train()
    a, b = fwd(model, TOK), fwd(model, TOK)  # dropout RNG counters advance through the scan
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    counts = [v[...] for p, v in nnx.iter_graph(model) if isinstance(v, nnx.RngCount)]
    assert counts and all(int(c.min()) == 2 for c in counts)
