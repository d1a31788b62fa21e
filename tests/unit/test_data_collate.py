"""Collators vs a faithful transcription of the original's collators (collators.py)."""

import numpy as np
import pytest

from tests.fixtures.data.helpers import micro_tokenizer
from wmtp_jax.data.collate import AlpacaCollator, PairwiseCollator, apply_alpaca_template


# ---- the original's collators, transcribed -------------------------------------------------------
def ref_template(instruction, input_text, output="", include_response_header=True):
    if input_text.strip():
        prompt = (
            f"Below is an instruction that describes a task, paired with an input that provides "
            f"further context. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n"
        )
    else:
        prompt = (
            f"Below is an instruction that describes a task. Write a response that appropriately "
            f"completes the request.\n\n### Instruction:\n{instruction}\n\n"
        )
    if include_response_header:
        return prompt + "### Response:\n" + output
    return prompt.rstrip()


def ref_encode(tok, instruction, input_text, output, max_length):
    prompt_text = ref_template(instruction, input_text, output="")
    len_prompt = len(tok(prompt_text, add_special_tokens=True, truncation=False).input_ids)
    full_text = ref_template(instruction, input_text, output)
    enc = tok(full_text, max_length=max_length, padding="max_length", truncation=True)
    ids = np.asarray(enc.input_ids)
    mask = np.asarray(enc.attention_mask)
    labels = ids.copy()
    labels[:len_prompt] = -100
    labels[mask == 0] = -100
    return ids, mask, labels


def ref_alpaca(tok, samples, max_length):
    rows = [
        ref_encode(tok, s["instruction"], s.get("input", "") or "", s["output"], max_length)
        for s in samples
    ]
    return {
        "input_ids": np.stack([r[0] for r in rows]),
        "attention_mask": np.stack([r[1] for r in rows]),
        "labels": np.stack([r[2] for r in rows]),
        "is_correct": np.asarray(
            [1.0 if s.get("is_correct", True) else 0.0 for s in samples], np.float32
        ),
    }


SAMPLES = [
    {
        "instruction": "Write a Python function `add_const(x)` that returns x plus 7.",
        "input": "",
        "output": "def add_const(x):\n    return x + 7",
        "is_correct": True,
    },
    {
        "instruction": "Sum the list.",
        "input": "xs = [1, 2, 3]",
        "output": "def f(xs):\n    return sum(xs)",
        "is_correct": False,
    },
    {"instruction": "No is_correct field here.", "output": "print(1)"},
    {
        "instruction": "Long output gets truncated.",
        "input": " ",
        "output": "def g(x):\n" + "    x = x + 1\n" * 40 + "    return x",
    },
    {"instruction": "A prompt longer than max_length " * 20, "input": "", "output": "pass"},
]
L = 128


@pytest.fixture(scope="module")
def tok():
    return micro_tokenizer()


def test_template_text_exact():
    assert apply_alpaca_template("do X", "", "out") == ref_template("do X", "", "out")
    assert apply_alpaca_template("do X", "in", "out") == ref_template("do X", "in", "out")
    assert apply_alpaca_template("do X", "  ", "", False) == ref_template("do X", "  ", "", False)
    assert apply_alpaca_template("I", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nI\n\n### Response:\n"
    )


def test_alpaca_no_eos_matches_reference(tok):
    got = AlpacaCollator(tok, L, append_eos=False)(SAMPLES)
    want = ref_alpaca(tok, SAMPLES, L)
    assert set(got) == {"input_ids", "attention_mask", "labels", "is_correct"}
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert (got["input_ids"][:, 0] == tok.bos_token_id).all()
    np.testing.assert_array_equal(got["is_correct"], [1, 0, 1, 1, 1])
    assert (got["labels"][4] == -100).all()  # prompt alone exceeds max_length
    assert got["attention_mask"][3].sum() == L  # truncated on the right
    # first labelled token of sample 0 is the first response token, right after the prompt
    n_prompt = len(tok(apply_alpaca_template(SAMPLES[0]["instruction"], "")).input_ids)
    assert (got["labels"][0, :n_prompt] == -100).all() and got["labels"][0, n_prompt] != -100


def test_alpaca_eos_only_adds_eos(tok):
    plain = AlpacaCollator(tok, L, append_eos=False)(SAMPLES)
    eos = AlpacaCollator(tok, L, append_eos=True)(SAMPLES)
    n = plain["attention_mask"].sum(1)
    for r in range(len(SAMPLES)):
        if n[r] < L:  # fits: one extra labelled EOS right after the output
            exp_ids, exp_mask, exp_lab = (
                plain["input_ids"][r].copy(),
                plain["attention_mask"][r].copy(),
                plain["labels"][r].copy(),
            )
            exp_ids[n[r]], exp_mask[n[r]], exp_lab[n[r]] = tok.eos_token_id, 1, tok.eos_token_id
            np.testing.assert_array_equal(eos["input_ids"][r], exp_ids)
            np.testing.assert_array_equal(eos["attention_mask"][r], exp_mask)
            np.testing.assert_array_equal(eos["labels"][r], exp_lab)
        else:  # truncated: no room for EOS, identical
            for k in ("input_ids", "attention_mask", "labels"):
                np.testing.assert_array_equal(eos[k][r], plain[k][r])
    assert sum(n < L) == 3


def test_pairwise_matches_reference(tok):
    pairs = [
        {
            "instruction": s["instruction"],
            "input": s.get("input", ""),
            "correct_output": s["output"],
            "incorrect_output": s["output"][::-1],
        }
        for s in SAMPLES
    ]
    got = PairwiseCollator(tok, L, append_eos=False)(pairs)
    assert sorted(got) == sorted(
        f"{s}_{k}" for s in ("pos", "neg") for k in ("input_ids", "attention_mask", "labels")
    )
    pos = ref_alpaca(tok, [dict(p, output=p["correct_output"]) for p in pairs], L)
    neg = ref_alpaca(tok, [dict(p, output=p["incorrect_output"]) for p in pairs], L)
    for k in ("input_ids", "attention_mask", "labels"):
        np.testing.assert_array_equal(got[f"pos_{k}"], pos[k])
        np.testing.assert_array_equal(got[f"neg_{k}"], neg[k])


def test_buckets_give_static_shapes(tok):
    short = [SAMPLES[0], SAMPLES[2]]
    c = AlpacaCollator(tok, 256, append_eos=True, buckets=(64, 128, 256))
    out = c(short)
    n = out["attention_mask"].sum(1).max()
    assert out["input_ids"].shape == (2, min(b for b in (64, 128, 256) if b >= n))
    assert c(SAMPLES)["input_ids"].shape == (5, 256)
    full = AlpacaCollator(tok, 256, append_eos=True)(short)
    w = out["input_ids"].shape[1]
    np.testing.assert_array_equal(full["labels"][:, :w], out["labels"])
    assert (full["attention_mask"][:, w:] == 0).all()
    with pytest.raises(ValueError, match="buckets"):
        AlpacaCollator(tok, 256, buckets=(64, 128))


def test_left_padding_tokenizer_rejected(tok):
    tok.padding_side = "left"
    try:
        with pytest.raises(ValueError, match="right"):
            AlpacaCollator(tok, 32)
    finally:
        tok.padding_side = "right"


def test_critical_marks_the_tokens_of_the_spans(tok):
    out = "def add_const(x):\n    return x + 7"
    s = out.index("7")
    recs = [
        {"instruction": "Add 7.", "output": out, "critical_spans": [[s, s + 1]]},
        {"instruction": "Add 7.", "output": out, "critical_spans": []},
    ]
    got = AlpacaCollator(tok, L, append_eos=True)(recs)
    bare = [{k: v for k, v in r.items() if k != "critical_spans"} for r in recs]
    plain = AlpacaCollator(tok, L, append_eos=True)(bare)
    for k in ("input_ids", "attention_mask", "labels"):  # the spans change nothing else
        np.testing.assert_array_equal(got[k], plain[k])
    crit = got["critical"]
    assert crit.dtype == np.float32 and crit[1].sum() == 0
    (idx,) = np.nonzero(crit[0])
    assert len(idx) >= 1 and (got["labels"][0, idx] >= 0).all()
    assert (
        "7" in tok.decode(got["input_ids"][0, idx])
        and len(tok.decode(got["input_ids"][0, idx])) <= 3
    )
    with pytest.raises(ValueError, match="critical_spans"):
        AlpacaCollator(tok, L)([recs[0], {"instruction": "x", "output": "y"}])


def test_pair_value_targets_from_siblings(tok):
    good, bad = "def f(x):\n    return x + 7", "def f(x):\n    return x - 7"
    other = "def f(x):\n    y = x + 7\n    return y"
    rec = {
        "instruction": "Add 7.",
        "correct_output": good,
        "incorrect_output": bad,
        "correct_siblings": [(bad, False), (other, True)],
        "incorrect_siblings": [(good, True), (other, True)],
    }
    got = PairwiseCollator(tok, L, append_eos=True)([rec])
    plain = PairwiseCollator(tok, L, append_eos=True)(
        [{k: v for k, v in rec.items() if "siblings" not in k}]
    )
    assert "pos_value_target" not in plain
    for side, final in (("pos", 1.0), ("neg", 0.0)):
        np.testing.assert_array_equal(got[f"{side}_input_ids"], plain[f"{side}_input_ids"])
        t, lab = got[f"{side}_value_target"][0], got[f"{side}_labels"][0]
        idx = np.nonzero(lab >= 0)[0]
        assert (t[lab < 0] == 0).all()
        assert t[idx[0]] == pytest.approx(2 / 3)  # "def": all three solutions share it
        assert t[idx[-1]] == final  # the EOS: the whole solution, its own outcome
    # the correct row after "return x": shared with the mutant only → ½; then "+" → 1
    t = got["pos_value_target"][0]
    assert sorted(set(np.round(t[got["pos_labels"][0] >= 0], 4))) == [0.5, 0.6667, 1.0]
