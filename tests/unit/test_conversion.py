"""torch <-> wmtp_jax conversion: bit-exact round trips, shard/safetensors inputs, RoPE permute,
errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conversion.__main__ import main as cli
from conversion.hf import flax_to_hf, hf_to_flax
from conversion.mapping import permute_meta_to_rotate_half
from conversion.meta import flax_to_meta, meta_to_flax, shard_dim
from conversion.torch_io import ConversionError
from conversion.trees import flatten
from tests.torch_ref.meta_mtp import ModelArgs as TorchArgs
from tests.torch_ref.meta_mtp import Transformer
from wmtp_jax.models.serialization import load_params

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


def meta_state_dict(params=META, dtype=torch.float32, seed=0):
    """State dict of the torch Meta MTP reference with random weights (norms too)."""
    torch.manual_seed(seed)
    model = Transformer(TorchArgs(**params))
    sd = {
        k: (v + 0.1 * torch.randn_like(v) if k.endswith("norm.weight") else v).detach().to(dtype)
        for k, v in model.state_dict().items()
    }
    return sd


def write_meta(d: Path, sd, params=META, tokenizer=True) -> Path:
    d.mkdir(parents=True)
    torch.save(sd, d / "consolidated.pth")
    (d / "params.json").write_text(json.dumps(params))
    if tokenizer:
        (d.parent / "tokenizer.model").write_bytes(b"spm-bytes")
    return d


def bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(bits(a[k]), bits(b[k]), err_msg=k)


@pytest.mark.parametrize("dtype,n_future", [(torch.float32, 3), (torch.bfloat16, 4)])
def test_meta_round_trip_bit_identical(tmp_path, dtype, n_future):
    params = {**META, "n_future_tokens": n_future}
    sd = meta_state_dict(params, dtype)
    src = write_meta(tmp_path / "ckpt" / "7B", sd, params)
    s = meta_to_flax(src, tmp_path / "flax")
    assert s["tensors"] == len(sd) and s["tokenizer"] == ["tokenizer.model"]
    flax_to_meta(tmp_path / "flax", tmp_path / "back")
    back = torch.load(tmp_path / "back" / "consolidated.pth")
    assert_same_state(sd, back)
    assert json.loads((tmp_path / "back" / "params.json").read_text()) == params
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == b"spm-bytes"


def test_meta_import_layout_and_permute(tmp_path):
    sd = meta_state_dict()
    meta_to_flax(write_meta(tmp_path / "m", sd), tmp_path / "flax")
    cfg, p = load_params(tmp_path / "flax")
    assert cfg["kind"] == "mtp" and cfg["rope"] == "rotate_half" and cfg["args"]["n_kv_heads"] == 2
    n_trunk = META["n_layers"] - META["n_future_tokens"]
    assert p["layers"]["attention"]["wq"]["kernel"].shape == (n_trunk, 32, 32)
    assert p["heads"]["attention"]["wk"]["kernel"].shape == (3, 32, 16)
    perm = lambda k, n: permute_meta_to_rotate_half(sd[k].numpy(), n).T
    np.testing.assert_array_equal(
        p["layers"]["attention"]["wq"]["kernel"][1], perm("layers.1.attention.wq.weight", 4)
    )
    np.testing.assert_array_equal(
        p["heads"]["attention"]["wq"]["kernel"][0], perm(f"layers.{n_trunk}.attention.wq.weight", 4)
    )
    np.testing.assert_array_equal(
        p["heads"]["attention"]["wk"]["kernel"][2], perm("extra_heads.1.attention.wk.weight", 2)
    )
    np.testing.assert_array_equal(
        p["heads"]["attention"]["wv"]["kernel"][1],
        sd["extra_heads.0.attention.wv.weight"].numpy().T,
    )
    np.testing.assert_array_equal(p["output"]["kernel"], sd["output.weight"].numpy().T)
    np.testing.assert_array_equal(
        p["heads"]["ffn_norm"]["scale"][2], sd["extra_heads.1.ffn_norm.weight"].numpy()
    )
    # the permute is a rotate-half reordering: head 0's rows [0, 2, 4, ..., 1, 3, 5, ...]
    hd = 8
    order = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    np.testing.assert_array_equal(
        p["layers"]["attention"]["wq"]["kernel"][0][:, :hd],
        sd["layers.0.attention.wq.weight"].numpy()[order].T,
    )


def test_sharded_and_safetensors_inputs_match_single(tmp_path):
    sd = meta_state_dict(dtype=torch.bfloat16)
    meta_to_flax(write_meta(tmp_path / "single", sd, tokenizer=False), tmp_path / "f1")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for i in range(
        2
    ):  # fairscale model-parallel split: column dims 0, row dims 1, embeddings dim 1
        part = {
            k: (v.chunk(2, dim=shard_dim(k))[i].clone() if shard_dim(k) is not None else v)
            for k, v in sd.items()
        }
        torch.save(part, sharded / f"consolidated.0{i}.pth")
    (sharded / "params.json").write_text(json.dumps(META))
    meta_to_flax(sharded, tmp_path / "f2")
    st = tmp_path / "st"
    (st / "configs").mkdir(parents=True)
    (st / "safetensors").mkdir()
    save_file(sd, st / "safetensors" / "model.safetensors")
    (st / "configs" / "params.json").write_text(json.dumps(META))
    meta_to_flax(st, tmp_path / "f3")
    ref = flatten(load_params(tmp_path / "f1")[1])
    for other in ("f2", "f3"):
        got = flatten(load_params(tmp_path / other)[1])
        assert set(got) == set(ref)
        for k in ref:
            assert got[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(
                got[k].view(np.int16), ref[k].view(np.int16), err_msg=str(k)
            )


def test_dtype_cast_on_import(tmp_path):
    sd = meta_state_dict()
    meta_to_flax(write_meta(tmp_path / "m", sd), tmp_path / "flax", dtype="bfloat16")
    cfg, p = load_params(tmp_path / "flax")
    assert cfg["args"]["param_dtype"] == "bfloat16" and str(p["norm"]["scale"].dtype) == "bfloat16"
    flax_to_meta(tmp_path / "flax", tmp_path / "back", dtype="float32")
    back = torch.load(tmp_path / "back" / "consolidated.pth")
    w = back["output.weight"]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, sd["output.weight"].to(torch.bfloat16).float(), rtol=0, atol=0)


# ---- HF -------------------------------------------------------------------------------------

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


def hf_model(dtype=torch.float32, seed=0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(**{**HF_CFG, **kw})).to(dtype)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_round_trip_bit_identical(tmp_path, dtype):
    m = hf_model(dtype)
    m.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    s = hf_to_flax(tmp_path / "hf", tmp_path / "flax")
    assert s["lm_head"] and "tokenizer.json" in s["tokenizer"]
    flax_to_hf(tmp_path / "flax", tmp_path / "back")
    assert_same_state(
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["num_key_value_heads"] == 2 and cfg["intermediate_size"] == 48
    assert (tmp_path / "back" / "tokenizer.json").is_file()


def test_hf_sharded_bin_and_tied_inputs(tmp_path):
    m = hf_model()
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    m.save_pretrained(tmp_path / "ref")
    hf_to_flax(tmp_path / "ref", tmp_path / "f_ref")
    ref = flatten(load_params(tmp_path / "f_ref")[1])
    # sharded output of flax-to-hf is itself a sharded safetensors input
    s = flax_to_hf(tmp_path / "f_ref", tmp_path / "sharded", max_shard_bytes=20_000)
    assert len(s["files"]) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    # legacy pytorch_model.bin
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    for d in ("sharded", "bin"):
        hf_to_flax(tmp_path / d, tmp_path / f"f_{d}")
        got = flatten(load_params(tmp_path / f"f_{d}")[1])
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{d} {k}")
    # tied embeddings: no lm_head.weight in the file; one parameter, exported tied again
    (tmp_path / "tied").mkdir()
    save_file(
        {k: v for k, v in sd.items() if k != "lm_head.weight"},
        tmp_path / "tied" / "model.safetensors",
    )
    (tmp_path / "tied" / "config.json").write_text(
        json.dumps({**HF_CFG, "tie_word_embeddings": True})
    )
    s = hf_to_flax(tmp_path / "tied", tmp_path / "f_tied")
    assert s["tied"] and s["lm_head"]
    cfg, p = load_params(tmp_path / "f_tied")
    assert "output" not in p and cfg["args"]["tie_embeddings"] and cfg["lm_head"]
    np.testing.assert_array_equal(
        p["tok_embeddings"]["embedding"], sd["model.embed_tokens.weight"].numpy()
    )
    flax_to_hf(tmp_path / "f_tied", tmp_path / "tied_back")
    back = load_file(tmp_path / "tied_back" / "model.safetensors")
    assert "lm_head.weight" not in back
    assert json.loads((tmp_path / "tied_back" / "config.json").read_text())["tie_word_embeddings"]


# ---- bad input: one clear message, exit 1, nothing written ---------------------------------


def _meta_case(tmp_path, name, edit):
    sd = meta_state_dict(seed=1)
    params = dict(META)
    edit(sd, params)
    return write_meta(tmp_path / name, sd, params, tokenizer=False)


def _missing_params(tmp_path):
    d = _meta_case(tmp_path, "np", lambda sd, p: None)
    (d / "params.json").unlink()
    return d


BAD_META = {
    "missing params.json": (_missing_params, "params.json: not found"),
    "unknown key": (
        lambda t: _meta_case(t, "uk", lambda sd, p: sd.update(bogus=torch.zeros(2))),
        "unexpected tensor(s) ['bogus']",
    ),
    "missing key": (
        lambda t: _meta_case(t, "mk", lambda sd, p: sd.pop("extra_heads.1.attention.wk.weight")),
        "missing tensor(s) ['extra_heads.1.attention.wk.weight']",
    ),
    "shape mismatch": (
        lambda t: _meta_case(
            t,
            "sm",
            lambda sd, p: sd.update({"layers.0.feed_forward.w2.weight": torch.zeros(32, 40)}),
        ),
        "tensor 'layers.0.feed_forward.w2.weight' has shape (32, 40), expected (32, 96)",
    ),
    "unknown params field": (
        lambda t: _meta_case(t, "uf", lambda sd, p: p.update(intermediate_size=96)),
        "unknown key(s) ['intermediate_size']",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_cli_bad_meta_input(tmp_path, capsys, case):
    make, msg = BAD_META[case]
    src = make(tmp_path)
    dst = tmp_path / "out"
    assert cli(["meta-to-flax", "--src", str(src), "--dst", str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("conversion error: ") and msg in err, err
    assert not dst.exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_cli_bad_hf_and_dst_exists(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    assert cli(["hf-to-flax", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "o")]) == 1
    assert (
        "config.json: file not found" in capsys.readouterr().err and not (tmp_path / "o").exists()
    )
    src = write_meta(tmp_path / "m", meta_state_dict(), tokenizer=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    assert cli(["meta-to-flax", "--src", str(src), "--dst", str(tmp_path / "taken")]) == 1
    assert "destination already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    assert (
        cli(["meta-to-flax", "--src", str(src), "--dst", str(tmp_path / "taken"), "--force"]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["model_config.json", "params"]
    # wrong kind for the export direction
    assert cli(["flax-to-hf", "--src", str(tmp_path / "taken"), "--dst", str(tmp_path / "h")]) == 1
    assert "kind 'mtp'; flax-to-hf needs kind 'llama'" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_export_shape_mismatch_leaves_nothing(tmp_path):
    meta_to_flax(write_meta(tmp_path / "m", meta_state_dict(), tokenizer=False), tmp_path / "flax")
    cfg = json.loads((tmp_path / "flax" / "model_config.json").read_text())
    cfg["args"]["vocab_size"] = 50
    (tmp_path / "flax" / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ConversionError, match=r"tok_embeddings/embedding has shape \(48, 32\), expected \(50, 32\)"
    ):
        flax_to_meta(tmp_path / "flax", tmp_path / "back")
    assert not (tmp_path / "back").exists()
