"""Synthetic task: reproducible bytes, disjoint splits, record format, labels re-verified by
running the tests in a plain `python` subprocess (independent of the generator's verifier)."""

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

from tests.fixtures.data.helpers import micro_tokenizer_dir, synthetic_dir
from wmtp_jax.data.records import iter_jsonl
from wmtp_jax.data.synthetic import ensure_synthetic, write_synthetic

SPLITS = ("train", "valid", "test")


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((d / "processed").iterdir()):
        if not p.name.endswith(".idx.npy"):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_synthetic(tmp_path / "a", seed=5, n_problems=20)
    write_synthetic(tmp_path / "b", seed=5, n_problems=20)
    write_synthetic(tmp_path / "c", seed=6, n_problems=20)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_layout_records_and_disjoint_splits():
    proc = synthetic_dir() / "processed"
    problems = {}
    for split in SPLITS:
        recs = [r for _, r in iter_jsonl(proc / f"{split}.jsonl")]
        meta = json.loads((proc / f"{split}_metadata.json").read_text())
        pids = {r["task_id"].rsplit("_", 2)[0] for r in recs}
        problems[split] = pids
        assert len(meta["metadata"]) == len(recs) and set(meta["problem_index_map"]) == pids
        for pid, info in meta["problem_index_map"].items():
            assert info["correct_indices"] and info["incorrect_indices"]
            assert info["difficulty"] in (1, 2, 3)
            assert all(
                n > 0 for n in info["correct_token_lengths"] + info["incorrect_token_lengths"]
            )
            for k, line in enumerate(info["correct_indices"]):
                assert (
                    recs[line]["task_id"] == f"{pid}_correct_{k}"
                    and recs[line]["is_correct"] is True
                )
        md = recs[0]["metadata"]
        assert md["source"] == "synthetic" and md["has_tests"] is True
        assert set(md) >= {"difficulty", "family", "entry_point", "test_list", "test_setup_code"}
        assert meta["token_count"]["method"] == "regex_pieces"
        if split != "train":
            ev = [r for _, r in iter_jsonl(proc / f"{split}_eval.jsonl")]
            assert {r["task_id"] for r in ev} == pids and all("output" not in r for r in ev)
            assert ev[0]["metadata"]["test_list"] and ev[0]["metadata"]["entry_point"]
    assert not (
        problems["train"] & problems["valid"]
        or problems["train"] & problems["test"]
        or problems["valid"] & problems["test"]
    )
    assert [len(problems[s]) for s in SPLITS] == [48, 6, 6]
    families = {r["metadata"]["family"] for _, r in iter_jsonl(proc / "train.jsonl")}
    assert families == {"arithmetic", "strings", "lists", "conditionals", "loops"}
    schema = json.loads((proc / "schema.json").read_text())
    assert schema["required_fields"] == ["instruction", "input", "output", "task_id", "is_correct"]


_RUNNER = """
import json, sys
job = json.loads(sys.stdin.read())
ns = {}
exec(job["setup"], ns); exec(job["code"], ns)
for t in job["tests"]:
    exec(t, ns)
print("PASSED")
"""


def test_labels_reverified_by_execution():
    recs = [r for _, r in iter_jsonl(synthetic_dir() / "processed" / "train.jsonl")]
    sample = random.Random(0).sample(recs, 24)
    assert {r["is_correct"] for r in sample} == {True, False}
    for r in sample:
        job = {
            "setup": r["metadata"]["test_setup_code"],
            "code": r["output"],
            "tests": r["metadata"]["test_list"],
        }
        p = subprocess.run(
            [sys.executable, "-c", _RUNNER],
            input=json.dumps(job),
            text=True,
            capture_output=True,
            timeout=20,
        )
        passed = p.returncode == 0 and p.stdout.strip() == "PASSED"
        assert passed == r["is_correct"], (r["task_id"], r["output"], p.stderr[-300:])


def test_ensure_is_idempotent_and_micro_tokenizer_loads(tmp_path):
    from transformers import AutoTokenizer

    d = synthetic_dir()
    before = (d / "processed" / "train.jsonl").stat().st_mtime_ns
    assert ensure_synthetic(d, n_problems=60) == d / "processed"
    assert (d / "processed" / "train.jsonl").stat().st_mtime_ns == before
    tdir = micro_tokenizer_dir()
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in tdir.iterdir()
    }
    tok = AutoTokenizer.from_pretrained(str(tdir))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    ids = tok("def f(x):\n    return x").input_ids
    assert ids[0] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "def f(x):\n    return x"
    # with a tokenizer, metadata lengths are exact token counts of the outputs
    import shutil

    copy = tmp_path / "syn"
    shutil.copytree(d, copy)
    ensure_synthetic(copy, tokenizer_dir=tdir)
    meta = json.loads((copy / "processed" / "valid_metadata.json").read_text())
    assert meta["token_count"] == {
        "method": "tokenizer",
        "tokenizer": str(tdir),
        "description": meta["token_count"]["description"],
    }
    recs = [r for _, r in iter_jsonl(copy / "processed" / "valid.jsonl")]
    info = next(iter(meta["problem_index_map"].values()))
    line = info["correct_indices"][0]
    assert info["correct_token_lengths"][0] == len(
        tok(recs[line]["output"], add_special_tokens=False).input_ids
    )


def _split_records(proc: Path) -> dict[str, list[dict]]:
    return {s: [r for _, r in iter_jsonl(proc / f"{s}.jsonl")] for s in SPLITS}


def test_held_out_on_template_and_parameters(tmp_path):
    """No test problem's (template, params) is in train or valid, none of valid's is in train,
    and the recorded params are the ones the instruction was written from."""
    from wmtp_jax.data.synthetic_families import TEMPLATES

    by_name = {t.name: t for t in TEMPLATES}
    write_synthetic(tmp_path, seed=3, n_problems=300)
    recs = _split_records(tmp_path / "processed")
    keys = {}
    for split, rs in recs.items():
        per_problem = {}
        for r in rs:
            md = r["metadata"]
            t = by_name[md["entry_point"]]
            assert r["instruction"] == (
                f"Write a Python function `{t.name}({t.args})` that {t.doc.format(**md['params'])}."
            )
            key = (md["entry_point"], json.dumps(md["params"], sort_keys=True))
            per_problem.setdefault(r["task_id"].rsplit("_", 2)[0], set()).add(key)
        assert all(len(k) == 1 for k in per_problem.values())
        keys[split] = [k for ks in per_problem.values() for k in ks]
        assert len(set(keys[split])) == len(keys[split]), f"{split}: a (template, params) twice"
    train, valid, test = (set(keys[s]) for s in SPLITS)
    assert not test & train and not test & valid and not valid & train
    assert [len(keys[s]) for s in SPLITS] == [240, 30, 30]
    # held out on parameters, not on templates: every test template is also trained on
    assert {k[0] for k in test} <= {k[0] for k in train}


def test_incorrect_records_carry_their_mutated_span():
    from wmtp_jax.data.spans import nearest

    n = 0
    for split, rs in _split_records(synthetic_dir() / "processed").items():
        correct = {}
        for r in rs:
            if r["is_correct"]:
                correct.setdefault(r["task_id"].rsplit("_", 2)[0], []).append(r["output"])
                assert "mutated_span" not in r["metadata"]
        for r in rs:
            if r["is_correct"]:
                continue
            out, (s, e) = r["output"], r["metadata"]["mutated_span"]
            assert 0 <= s < e <= len(out), (r["task_id"], s, e)
            corrects = correct[r["task_id"].rsplit("_", 2)[0]]
            near = corrects[nearest(out, corrects)]
            # outside the span the text is the nearest correct solution's prefix and suffix
            assert near.startswith(out[:s]) and near.endswith(out[e:]), r["task_id"]
            assert s + len(out) - e <= len(near)
            n += 1
    assert n > 100


def test_mutated_span_of_hand_made_problem():
    from wmtp_jax.data.synthetic import records_of
    from wmtp_jax.data.synthetic_families import TEMPLATES

    t = next(t for t in TEMPLATES if t.name == "add_const")
    d = {
        "template": t,
        "params": {"k": 7},
        "instruction": "i",
        "test_list": [],
        "test_setup_code": "",
        "correct": ["def add_const(x):\n    return x + 7", "def add_const(x):\n    return 7 + x"],
        "incorrect": [
            ("wrong_operator", "def add_const(x):\n    return x - 7"),
            ("off_by_one", "def add_const(x):\n    return x + 7 + 1"),
        ],
    }
    recs = records_of(d, "p")
    assert [r["metadata"].get("mutated_span") for r in recs] == [None, None, [31, 32], [34, 38]]
    assert recs[2]["output"][31:32] == "-" and recs[3]["output"][34:38] == " + 1"
    assert recs[0]["metadata"]["params"] == {"k": 7}
