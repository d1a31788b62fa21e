"""HF LLaMA-family checkpoints as users meet them (tiny random configs, float32, vs transformers):
rope scaling (llama3 / linear / dynamic, both config spellings), head_dim, tied embeddings through
import / export, hf-to-mtp head-0 parity, and refusals by name."""

import json

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from conversion.__main__ import main as cli  # noqa: E402
from conversion.hf import flax_to_hf, hf_to_flax, hf_to_mtp  # noqa: E402
from conversion.meta import flax_to_meta, meta_to_flax  # noqa: E402
from conversion.trees import flatten  # noqa: E402
from wmtp_jax.models import ModelArgs  # noqa: E402
from wmtp_jax.models.serialization import load_llama, load_params, load_policy  # noqa: E402

BASE = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)
S = 48  # beyond original_max_position_embeddings = 16 below


def hf_model(seed=0, **kw):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(**{**BASE, **kw})).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(
                1.0 + 0.2 * torch.randn_like(p)
                if n.endswith("norm.weight")
                else 0.3 * torch.randn_like(p)
            )
    return m


def tokens(b=2, s=S, v=64):
    return np.random.default_rng(1).integers(0, v, (b, s)).astype(np.int32)


def hf_logits(m, tok):
    with torch.no_grad():
        return m(input_ids=torch.from_numpy(tok).long()).logits.float().numpy()


def jax_logits(model_dir, tok):
    return np.asarray(load_llama(model_dir)(jax.numpy.asarray(tok)))


ROPES = {
    "llama3": dict(
        rope_type="llama3",
        factor=4.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=16,
    ),
    "linear": dict(rope_type="linear", factor=2.5),
    "dynamic": dict(rope_type="dynamic", factor=3.0),
}


@pytest.mark.parametrize("kind", sorted(ROPES))
def test_rope_scaling_matches_transformers(tmp_path, kind):
    # rope_theta 100 makes the low frequencies matter within 48 positions
    m = hf_model(
        rope_parameters={"rope_theta": 100.0, **ROPES[kind]},
        **({"max_position_embeddings": 16} if kind == "dynamic" else {}),
    )
    m.save_pretrained(tmp_path / "hf")
    hf_to_flax(tmp_path / "hf", tmp_path / "flax")
    tok = tokens()
    got, want = jax_logits(tmp_path / "flax", tok), hf_logits(m, tok)
    # vs transformers float32: max |Δ| 4.8e-5 over the RoPE kinds, XLA:CPU dot fusion off
    # and on (AVX-512 Xeon): 2.1× headroom
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # ... and it is not the plain RoPE: the scaled positions change the logits beyond 16
    plain = hf_model(
        rope_parameters={"rope_theta": 100.0, "rope_type": "default"},
        **({"max_position_embeddings": 16} if kind == "dynamic" else {}),
    )
    assert np.abs(hf_logits(plain, tok)[:, 16:] - want[:, 16:]).max() > 1e-2


def test_legacy_rope_spelling_and_head_dim(tmp_path):
    m = hf_model(
        head_dim=16, rope_parameters={"rope_theta": 300.0, "rope_type": "linear", "factor": 2.0}
    )
    m.save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=300.0, rope_scaling={"type": "linear", "factor": 2.0})  # 4.x spelling
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    args = ModelArgs.from_hf_config(cfg)
    assert args.head_dim == 16 and args.rope == {"rope_type": "linear", "factor": 2.0}
    hf_to_flax(tmp_path / "hf", tmp_path / "flax")
    tok = tokens()
    np.testing.assert_allclose(  # vs transformers: max |Δ| 1.5e-5 (dot fusion off and on)
        jax_logits(tmp_path / "flax", tok), hf_logits(m, tok), atol=1e-4, rtol=0
    )
    # export keeps head_dim and the scaling; transformers reads it back to the same logits
    flax_to_hf(tmp_path / "flax", tmp_path / "back")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    np.testing.assert_array_equal(hf_logits(back, tok), hf_logits(m, tok))


def test_tied_model_stays_tied_and_exports_tied(tmp_path):
    m = hf_model(tie_word_embeddings=True)
    m.save_pretrained(tmp_path / "hf")
    assert "lm_head.weight" not in load_file(tmp_path / "hf" / "model.safetensors")
    s = hf_to_flax(tmp_path / "hf", tmp_path / "flax")
    assert s["tied"]
    cfg, params = load_params(tmp_path / "flax")
    assert "output" not in params and cfg["args"]["tie_embeddings"]
    tok = tokens()
    want = hf_logits(m, tok)
    # vs transformers: max |Δ| 1.6e-5 (XLA:CPU dot fusion off and on, AVX-512 Xeon)
    np.testing.assert_allclose(jax_logits(tmp_path / "flax", tok), want, atol=1e-4, rtol=0)
    flax_to_hf(tmp_path / "flax", tmp_path / "back")
    sd = load_file(tmp_path / "back" / "model.safetensors")
    assert "lm_head.weight" not in sd
    back = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert back.config.tie_word_embeddings
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    np.testing.assert_array_equal(hf_logits(back, tok), want)


@pytest.mark.parametrize("head_init", ["copy", "random"])
def test_hf_to_mtp_head0_is_the_source_model(tmp_path, head_init):
    m = hf_model(tie_word_embeddings=True)
    m.save_pretrained(tmp_path / "hf")
    s = hf_to_mtp(tmp_path / "hf", tmp_path / "mtp", n_future=3, head_init=head_init)
    assert (s["n_layers"], s["n_trunk_layers"], s["tied"]) == (5, 2, True)
    policy = load_policy(tmp_path / "mtp")
    tok = tokens(s=20)
    logits = np.asarray(policy(jax.numpy.asarray(tok), return_all_heads=True))  # [B, S, 3, V]
    want = hf_logits(m, tok)
    np.testing.assert_allclose(logits[:, :, 0], want, atol=1e-4, rtol=0)  # 9.7e-6 measured
    _, p = load_params(tmp_path / "mtp")
    heads = flatten(p["heads"])
    if head_init == "copy":
        np.testing.assert_array_equal(logits[:, :, 1], logits[:, :, 0])
        assert all(np.array_equal(v[1], v[0]) for v in heads.values())
    else:
        assert np.abs(logits[:, :, 1] - logits[:, :, 0]).max() > 1e-2
        assert all(np.all(v[1:] == 1) for k, v in heads.items() if k[-1] == "scale")
    # Meta export: output.weight is the embedding; re-imported it computes the same heads
    flax_to_meta(tmp_path / "mtp", tmp_path / "meta")
    sd = torch.load(tmp_path / "meta" / "consolidated.pth")
    np.testing.assert_array_equal(sd["output.weight"].numpy(), sd["tok_embeddings.weight"].numpy())
    assert any(k.startswith("extra_heads.1.") for k in sd)
    assert "layers.2.attention.wq.weight" in sd
    meta_to_flax(tmp_path / "meta", tmp_path / "again")
    again = np.asarray(load_policy(tmp_path / "again")(jax.numpy.asarray(tok)))
    np.testing.assert_allclose(again, logits, atol=1e-5, rtol=0)


def test_hf_to_mtp_cli(tmp_path, capsys):
    hf_model().save_pretrained(tmp_path / "hf")
    assert (
        cli(
            [
                "hf-to-mtp",
                "--src",
                str(tmp_path / "hf"),
                "--dst",
                str(tmp_path / "mtp"),
                "--n-future",
                "2",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n_future_tokens"] == 2 and out["n_trunk_layers"] == 2 and not out["tied"]
    with pytest.raises(SystemExit):  # --n-future is required
        cli(["hf-to-mtp", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "x")])


def _edit_config(d, **kw):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "case,edit,msg",
    [
        (
            "yarn",
            dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
            "rope type 'yarn' is not supported",
        ),
        (
            "longrope",
            dict(rope_scaling={"type": "longrope", "factor": 2.0}),
            "rope type 'longrope' is not supported",
        ),
        (
            "llama3 missing",
            dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
            "rope type 'llama3' needs ['low_freq_factor'",
        ),
        ("attention_bias", dict(attention_bias=True), "attention_bias=true is not supported"),
        ("gelu", dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
        ("model_type", dict(model_type="gpt2"), "model_type 'gpt2' is not supported"),
        (
            "sliding",
            dict(model_type="mistral", sliding_window=4096),
            "sliding_window=4096 is not supported",
        ),
    ],
)
def test_unsupported_configs_refused_by_name(tmp_path, capsys, case, edit, msg):
    hf_model().save_pretrained(tmp_path / "hf")
    _edit_config(tmp_path / "hf", **edit)
    for cmd in ("hf-to-flax", "hf-to-mtp"):
        argv = [cmd, "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / cmd)]
        assert cli(argv + (["--n-future", "2"] if cmd == "hf-to-mtp" else [])) == 1
        assert msg in capsys.readouterr().err
        assert not (tmp_path / cmd).exists()


def test_bias_tensors_refused_by_name(tmp_path, capsys):
    m = hf_model()
    m.save_pretrained(tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(32)
    save_file(sd, tmp_path / "hf" / "model.safetensors")
    assert cli(["hf-to-flax", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "o")]) == 1
    assert (
        "bias tensor(s) ['model.layers.0.self_attn.q_proj.bias'] are not supported"
        in capsys.readouterr().err
    )
