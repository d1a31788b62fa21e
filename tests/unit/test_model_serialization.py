"""wmtp_jax.models.serialization on converted checkpoints: logits vs torch references, critic,
LoRA, meshes."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import json  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from conversion.hf import flax_to_hf, hf_to_flax  # noqa: E402
from conversion.meta import flax_to_meta, meta_to_flax  # noqa: E402
from tests.torch_ref.meta_mtp import ModelArgs as TorchArgs  # noqa: E402
from tests.torch_ref.meta_mtp import Transformer
from wmtp_jax.models import (
    LoRAConfig,
    ModelArgs,
    ValueModel,
    load_critic,
    load_llama,  # noqa: E402
    load_policy,
    save_model,
)
from wmtp_jax.models.serialization import atomic_dir, load_params, read_config  # noqa: E402

META = dict(
    dim=32,
    n_layers=5,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=48,
    multiple_of=16,
    norm_eps=1e-5,
    rope_theta=10000.0,
    n_future_tokens=3,
    max_seq_len=64,
)
HF_CFG = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)


@nnx.jit(static_argnames=("all_heads",))
def policy_fwd(model, tok, all_heads=True):
    return model(tok, return_all_heads=all_heads)


@nnx.jit
def masked_fwd(model, tok, mask):
    return model(tok, mask)


def toks(b, s, v, seed=0):
    return np.random.default_rng(seed).integers(0, v, (b, s)).astype(np.int32)


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory):
    """(torch Meta reference, converted mtp directory)."""
    d = tmp_path_factory.mktemp("meta")
    torch.manual_seed(0)
    ref = Transformer(TorchArgs(**META)).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    (d / "src").mkdir()
    torch.save(ref.state_dict(), d / "src" / "consolidated.pth")
    (d / "src" / "params.json").write_text(json.dumps(META))
    meta_to_flax(d / "src", d / "flax")
    return ref, d / "flax"


def test_load_policy_matches_torch_meta(meta_dir):
    ref, flax_dir = meta_dir
    tok = toks(2, 9, META["vocab_size"])
    model = load_policy(flax_dir)
    got = np.asarray(policy_fwd(model, jnp.asarray(tok)))
    with torch.no_grad():
        want = ref(torch.from_numpy(tok).long(), return_all_heads=True).numpy()
    assert got.shape == want.shape == (2, 9, 3, META["vocab_size"])
    # vs the torch reference: max |Δ| 6.0e-7 (XLA:CPU dot fusion off and on, AVX-512 Xeon)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    head0 = np.asarray(policy_fwd(model, jnp.asarray(tok), all_heads=False))
    np.testing.assert_allclose(head0[:, :, 0], want[:, :, 0], atol=1e-4, rtol=1e-4)


def test_load_policy_on_mesh_is_sharded_and_equal(meta_dir):
    _, flax_dir = meta_dir
    tok = jnp.asarray(toks(2, 7, META["vocab_size"], seed=1))
    want = np.asarray(policy_fwd(load_policy(flax_dir), tok))
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 4, 2), ("data", "fsdp", "tensor"))
    model = load_policy(flax_dir, mesh=mesh)
    wq = model.layers.attention.wq.kernel[...]
    assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert wq.addressable_shards[0].data.shape == (2, 8, 16)
    got = np.asarray(policy_fwd(model, tok))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_load_policy_dtype_cast(meta_dir):
    _, flax_dir = meta_dir
    model = load_policy(flax_dir, dtype="bfloat16")
    assert model.output.kernel[...].dtype == jnp.bfloat16
    assert model.args.param_dtype == "bfloat16"
    cfg, params = load_params(flax_dir)
    np.testing.assert_array_equal(
        np.asarray(model.output.kernel[...]), params["output"]["kernel"].astype(jnp.bfloat16)
    )


def hf_ref(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(**HF_CFG)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    return m


def test_load_llama_and_flax_to_hf_match_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    ref = hf_ref()
    ref.save_pretrained(tmp_path / "hf")
    hf_to_flax(tmp_path / "hf", tmp_path / "flax")
    tok = toks(2, 8, HF_CFG["vocab_size"])
    mask = np.ones_like(tok)
    mask[1, 6:] = 0
    model = load_llama(tmp_path / "flax")
    got = np.asarray(masked_fwd(model, jnp.asarray(tok), jnp.asarray(mask)))
    with torch.no_grad():
        want = ref(
            torch.from_numpy(tok).long(), attention_mask=torch.from_numpy(mask)
        ).logits.numpy()
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4, rtol=1e-4)
    # a Flax-side model exported to HF: from_pretrained gives the same logits
    flax_to_hf(tmp_path / "flax", tmp_path / "back")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        again = back(torch.from_numpy(tok).long()).logits.numpy()
    ones = jnp.ones(tok.shape, jnp.int32)
    np.testing.assert_allclose(
        np.asarray(masked_fwd(model, jnp.asarray(tok), ones)), again, atol=1e-4, rtol=1e-4
    )


def test_critic_save_load_identical_and_lora(tmp_path):
    args = ModelArgs.from_hf_config(HF_CFG)
    lora = LoRAConfig(rank=2, alpha=4.0, targets=("wq", "w2"))
    critic = nnx.jit(
        lambda: ValueModel(
            args, rngs=nnx.Rngs(3), head_type="mlp", dropout=0.1, bias_init=0.5, lora=lora
        )
    )()
    rng = np.random.default_rng(1)
    state = jax.tree.map(
        lambda x: np.asarray(x) + 0.01 * rng.standard_normal(x.shape, np.float32),
        nnx.state(critic, nnx.Param),
    )
    nnx.update(critic, state)  # non-zero LoRA B and value-head last layer
    save_model(
        tmp_path / "critic",
        critic,
        kind="critic",
        args=args,
        value_head={"type": "mlp", "dropout": 0.1, "bias_init": 0.5},
    )
    cfg = read_config(tmp_path / "critic")
    assert cfg["lora"] == {"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["wq", "w2"]}
    assert cfg["value_head"] == {"type": "mlp", "dropout": 0.1, "bias_init": 0.5}
    back = load_critic(tmp_path / "critic")
    for (p, a), (q, b) in zip(
        jax.tree_util.tree_leaves_with_path(nnx.state(critic, nnx.Param)),
        jax.tree_util.tree_leaves_with_path(nnx.state(back, nnx.Param)),
    ):
        assert p == q
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tok, mask = jnp.asarray(toks(2, 6, HF_CFG["vocab_size"])), jnp.ones((2, 6), jnp.int32)
    critic.eval(), back.eval()
    v = np.asarray(masked_fwd(back, tok, mask))
    assert v.shape == (2, 6, 1)
    np.testing.assert_array_equal(v, np.asarray(masked_fwd(critic, tok, mask)))
    with pytest.raises(ValueError, match="kind 'critic', expected 'mtp'"):
        load_policy(tmp_path / "critic")


def test_lora_policy_exports_merged(meta_dir, tmp_path):
    """flax-to-meta of a LoRA policy writes W + (alpha/r) A B."""
    ref, flax_dir = meta_dir
    args = ModelArgs.from_dict(read_config(flax_dir)["args"])
    from wmtp_jax.models import MTPTransformer

    base = load_policy(flax_dir)
    model = nnx.jit(
        lambda: MTPTransformer(args, rngs=nnx.Rngs(0), lora=LoRAConfig(rank=2, targets=("wv",)))
    )()
    nnx.update(model, nnx.state(base, nnx.Param))
    b = model.heads.attention.wv.lora_b
    b[...] = 0.05 * jnp.ones_like(b[...])
    save_model(tmp_path / "lora", model, kind="mtp", args=args)
    flax_to_meta(tmp_path / "lora", tmp_path / "meta")
    sd = torch.load(tmp_path / "meta" / "consolidated.pth")
    a = np.asarray(model.heads.attention.wv.lora_a[...][1])
    delta = (model.heads.attention.wv.lora_scale * a @ (0.05 * np.ones((2, 16), np.float32))).T
    want = ref.state_dict()["extra_heads.0.attention.wv.weight"].numpy() + delta
    np.testing.assert_allclose(sd["extra_heads.0.attention.wv.weight"].numpy(), want, atol=1e-6)
    np.testing.assert_array_equal(
        sd["layers.0.attention.wq.weight"].numpy(),
        ref.state_dict()["layers.0.attention.wq.weight"].numpy(),
    )


def test_tree_mismatch_and_atomic_dir(meta_dir, tmp_path):
    _, flax_dir = meta_dir
    cfg = json.loads((flax_dir / "model_config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "params").symlink_to(flax_dir / "params")
    (bad / "model_config.json").write_text(json.dumps({**cfg, "args": {**cfg["args"], "dim": 64}}))
    with pytest.raises(
        ValueError,
        match=r"heads/attention/wk/kernel has shape \(3, 32, 16\), expected \(3, 64, 32\)",
    ):
        load_policy(bad)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))
