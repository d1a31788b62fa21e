"""Llama / ValueModel vs transformers (LlamaForCausalLM, LlamaModel), float32; KV cache; heads."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from scipy.special import erf  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from conversion import mapping  # noqa: E402
from tests.kv_cache import check_prefill_then_decode  # noqa: E402
from tests.torch_ref import abstract_model, flat_paths, load_pure, torch_state_to_pure  # noqa: E402
from wmtp_jax.models import Llama, ModelArgs, ValueModel, create_value_head  # noqa: E402

HF = dict(
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=61,
    rms_norm_eps=1e-5,
    rope_theta=500.0,
    max_position_embeddings=64,
)
LENS = np.array([9, 5, 1])  # right padding; row 2 has a single valid token
S = 9


def hf_model(seed=0):
    torch.manual_seed(seed)
    ref = LlamaForCausalLM(LlamaConfig(**HF)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(
                1.0 + 0.3 * torch.randn_like(p)
                if name.endswith("norm.weight")
                else 0.2 * torch.randn_like(p)
            )
    return ref


def args(**kw):
    return ModelArgs.from_hf_config(HF, **kw)


def jax_llama(ref, **kw):
    model = abstract_model(lambda: Llama(args(), rngs=nnx.Rngs(0), **kw))
    sd = ref.state_dict()
    load_pure(
        model,
        torch_state_to_pure(
            sd,
            mapping.hf_key_table(2, lm_head=kw.get("lm_head", True)),
            meta_rope=False,
            n_heads=4,
            n_kv_heads=2,
        ),
    )
    return model


def batch():
    tok = np.random.default_rng(0).integers(0, 61, (3, S)).astype(np.int32)
    mask = (np.arange(S)[None] < LENS[:, None]).astype(np.int32)
    return tok, mask


@pytest.fixture(scope="module")
def setup():
    ref = hf_model()
    tok, mask = batch()
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(tok).long(),
            attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
        )
    return ref, tok, mask, out.logits.numpy(), out.hidden_states[-1].numpy()


def valid(x, mask):
    return x[mask.astype(bool)]


def test_llama_logits_match_transformers(setup):
    ref, tok, mask, want, _ = setup
    model = jax_llama(ref)
    logits = nnx.jit(lambda m, t, a: m(t, a))(model, jnp.asarray(tok), jnp.asarray(mask))
    assert logits.shape == (3, S, 61) and logits.dtype == jnp.float32
    # vs transformers float32: max |Δ| 2.2e-6 here and below, XLA:CPU dot fusion off and on
    np.testing.assert_allclose(
        valid(np.asarray(logits), mask), valid(want, mask), atol=1e-4, rtol=0
    )
    assert np.isfinite(np.asarray(logits)).all()
    # without a mask = causal only; equal on the fully valid row
    np.testing.assert_allclose(
        nnx.jit(lambda m, t: m(t))(model, jnp.asarray(tok))[0], want[0], atol=1e-4, rtol=0
    )


def test_value_model_backbone_matches_llama_model(setup):
    ref, tok, mask, _, want_hidden = setup
    vm = abstract_model(
        lambda: ValueModel(args(), rngs=nnx.Rngs(0), head_type="linear", bias_init=0.5)
    )
    pure = torch_state_to_pure(
        ref.model.state_dict(),
        mapping.hf_key_table(2, lm_head=False, prefix=""),
        meta_rope=False,
        n_heads=4,
        n_kv_heads=2,
    )
    head = nnx.to_pure_dict(nnx.state(vm.value_head, nnx.Param))
    load_pure(vm, {"backbone": pure, "value_head": jax.tree.map(lambda s: np.zeros(s.shape), head)})
    vm.value_head.proj.bias[...] = jnp.array([0.5])
    vm.value_head.proj.kernel[...] = jnp.ones((32, 1))
    f = nnx.jit(lambda m, t, a: (m.backbone.hidden_states(t, a), m(t, a)))
    hidden, values = f(vm, jnp.asarray(tok), jnp.asarray(mask))
    np.testing.assert_allclose(valid(np.asarray(hidden), mask), valid(want_hidden, mask), atol=1e-4)
    assert values.shape == (3, S, 1) and values.dtype == jnp.float32
    np.testing.assert_allclose(values[..., 0], hidden.sum(-1) + 0.5, atol=1e-4)


def test_param_paths_equal_hf_key_table():
    for lm_head in (True, False):
        m = abstract_model(lambda: Llama(args(), rngs=nnx.Rngs(0), lm_head=lm_head))
        got = set(flat_paths(nnx.to_pure_dict(nnx.state(m, nnx.Param))))
        assert got == {p for _, p, _ in mapping.hf_key_table(2, lm_head=lm_head)}
    vm = abstract_model(lambda: ValueModel(args(), rngs=nnx.Rngs(0)))
    got = set(flat_paths(nnx.to_pure_dict(nnx.state(vm, nnx.Param))))
    want = {("backbone", *p) for _, p, _ in mapping.hf_key_table(2, lm_head=False)}
    heads = {("value_head", f, w) for f in ("fc1", "fc2", "fc3") for w in ("kernel", "bias")}
    assert got == want | heads


@pytest.mark.parametrize("head_type", ["linear", "sigmoid", "mlp"])
def test_value_heads_init_and_formula(head_type):
    head = nnx.jit(lambda: create_value_head(32, head_type, rngs=nnx.Rngs(0), bias_init=0.25))()
    hidden = np.random.default_rng(1).normal(size=(3, 5, 32)).astype(np.float32)
    apply = nnx.jit(lambda m, h: m(h))
    want0 = 1 / (1 + np.exp(-0.25)) if head_type == "sigmoid" else 0.25
    np.testing.assert_allclose(apply(head, hidden), np.full((3, 5, 1), want0), atol=1e-6)
    if head_type != "mlp":
        return
    assert tuple(getattr(head, k).kernel.shape for k in ("fc1", "fc2", "fc3")) == (
        (32, 8),
        (8, 4),
        (4, 1),
    )
    head.fc3.kernel[...] = jnp.linspace(-1, 1, 4)[:, None]
    gelu = lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))  # exact (erf) GELU
    w = {k: np.asarray(getattr(head, k).kernel[...]) for k in ("fc1", "fc2", "fc3")}
    b = {k: np.asarray(getattr(head, k).bias[...]) for k in ("fc1", "fc2", "fc3")}
    assert np.abs(b["fc1"]).max() <= 32**-0.5 and np.abs(b["fc1"]).max() > 0
    x = gelu(gelu(hidden @ w["fc1"] + b["fc1"]) @ w["fc2"] + b["fc2"])
    np.testing.assert_allclose(apply(head, hidden), x @ w["fc3"] + b["fc3"], atol=1e-5)


def test_llama_kv_cache_matches_full(setup):
    ref, tok, _, _, _ = setup
    model = jax_llama(ref)
    full = np.asarray(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(tok)))
    step = nnx.jit(lambda m, t, p, c: m(t, positions=p, cache=c))
    check_prefill_then_decode(step, model, tok, np.array([4, 2, 6]), full, model.init_cache(3, 12))


def test_bad_shapes_are_clear_errors(setup):
    ref, tok, mask, _, _ = setup
    model = jax_llama(ref)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 8\), expected \(3, 9\)"):
        model(jnp.asarray(tok), jnp.asarray(mask[:, :8]))
    with pytest.raises(ValueError, match="tokens must be"):
        model(jnp.asarray(tok[0]))
