"""`python -m conversion` end to end in subprocesses.

Bit-identical round trips, a bad-input exit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
META = dict(
    dim=32,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=40,
    multiple_of=16,
    norm_eps=1e-5,
    rope_theta=10000.0,
    n_future_tokens=4,
)


def run(*argv):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "conversion", *map(str, argv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def bits(t):
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def test_meta_cli_round_trip_bf16(tmp_path):
    from tests.torch_ref.meta_mtp import ModelArgs, Transformer

    torch.manual_seed(0)
    sd = {
        k: (v + 0.1 * torch.randn_like(v)).to(torch.bfloat16)
        for k, v in Transformer(ModelArgs(**META)).state_dict().items()
    }
    src = tmp_path / "meta"
    src.mkdir()
    torch.save(sd, src / "consolidated.pth")
    (src / "params.json").write_text(json.dumps(META))
    (src / "tokenizer.model").write_bytes(b"spm")
    r = run("meta-to-flax", "--src", src, "--dst", tmp_path / "flax")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["dtype"] == "bfloat16"
    r = run("flax-to-meta", "--src", tmp_path / "flax", "--dst", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    back = torch.load(tmp_path / "back" / "consolidated.pth")
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == torch.bfloat16
        np.testing.assert_array_equal(bits(back[k]), bits(sd[k]), err_msg=k)
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == b"spm"


def test_hf_cli_round_trip_f32_and_bad_input(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    assert run("hf-to-flax", "--src", tmp_path / "hf", "--dst", tmp_path / "flax").returncode == 0
    r = run("flax-to-hf", "--src", tmp_path / "flax", "--dst", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    a, b = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    # bad input: a tensor with the wrong shape -> exit 1, message names file, tensor, both shapes
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(40, 32)
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "hf" / "model.safetensors")
    r = run("hf-to-flax", "--src", tmp_path / "hf", "--dst", tmp_path / "bad")
    assert r.returncode == 1
    assert (
        "model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has shape (40, 32), "
        "expected (48, 32)" in r.stderr
    ), r.stderr
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob("bad.tmp-*"))


def test_hostile_tokenizer_symlink_is_refused(tmp_path):
    """A model dir whose tokenizer.model points at a host file (as /etc/shadow) converts nothing."""
    from tests.torch_ref.meta_mtp import ModelArgs, Transformer

    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    src = tmp_path / "meta"
    src.mkdir()
    torch.save(Transformer(ModelArgs(**META)).state_dict(), src / "consolidated.pth")
    (src / "params.json").write_text(json.dumps(META))
    os.symlink(secret, src / "tokenizer.model")
    r = run("meta-to-flax", "--src", src, "--dst", tmp_path / "flax")
    assert r.returncode == 1
    assert (
        f"{src / 'tokenizer.model'}: a symlink to {secret}, outside the source directory"
        in r.stderr
    )
    assert not (tmp_path / "flax").exists()
    assert not any(p.name.startswith("flax") for p in tmp_path.iterdir())
