"""`python -m wmtp_jax.data.prepare` end to end.

On fixtures in each dataset's real on-disk schema.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.data.helpers import FIXTURES, micro_tokenizer_dir
from wmtp_jax.data.records import iter_jsonl

ROOT = Path(__file__).resolve().parents[2]


def prepare(*args, ok=True):
    p = subprocess.run(
        [sys.executable, "-m", "wmtp_jax.data.prepare", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    if ok:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


def lines(path):
    return [r for _, r in iter_jsonl(path)]


def test_codecontests_parquet_and_jsonl(tmp_path):
    tok = micro_tokenizer_dir()
    prepare(
        "--dataset",
        "codecontests",
        "--src",
        FIXTURES / "codecontests",
        "--out",
        tmp_path / "pq",
        "--tokenizer",
        tok,
    )
    prepare(
        "--dataset",
        "codecontests",
        "--src",
        FIXTURES / "codecontests_jsonl",
        "--out",
        tmp_path / "js",
    )
    for sub in (
        "processed/train.jsonl",
        "processed/valid.jsonl",
        "processed/test.jsonl",
        "processed/valid_eval.jsonl",
        "processed/test_eval.jsonl",
        "tests/train_tests.json",
        "tests/test_tests.json",
        "processed/schema.json",
    ):
        assert (tmp_path / "pq" / sub).read_bytes() == (tmp_path / "js" / sub).read_bytes(), sub
    proc = tmp_path / "pq" / "processed"
    train = lines(proc / "train.jsonl")
    # problem 0: py3 correct 0,1 (cpp 2 dropped); incorrect py3 0,1 + py2 2
    assert [r["task_id"] for r in train[:5]] == [
        "1500_A. Problem 0_correct_0",
        "1500_A. Problem 0_correct_1",
        "1500_A. Problem 0_incorrect_0",
        "1500_A. Problem 0_incorrect_1",
        "1500_A. Problem 0_incorrect_2",
    ]
    assert train[0]["input"] == "" and train[0]["metadata"] == {
        "source": "code_contests",
        "difficulty": 7,
        "has_tests": True,
    }
    meta = json.loads((proc / "train_metadata.json").read_text())
    info = meta["problem_index_map"]["1500_A. Problem 0"]
    assert info["correct_indices"] == [0, 1] and info["incorrect_indices"] == [2, 3, 4]
    from wmtp_jax.data.tokenizer import load_tokenizer

    t = load_tokenizer(tok)
    assert info["correct_token_lengths"][0] == len(
        t(train[0]["output"], add_special_tokens=False).input_ids
    )
    assert meta["stats"]["total_possible_pairs"] == 2 * 3 + 1 * 4 + 2 * 2
    assert meta["token_count"]["method"] == "tokenizer"
    ev = lines(proc / "test_eval.jsonl")
    assert [r["task_id"] for r in ev] == ["1504_A. Problem 4", "1505_A. Problem 5"]
    assert ev[0]["metadata"]["time_limit"] == {"seconds": 1, "nanos": 0}
    assert ev[0]["metadata"]["generated_tests"] == {"input": ["3\n"], "output": ["7\n"]}
    tests = json.loads((tmp_path / "pq" / "tests" / "test_tests.json").read_text())
    assert tests["1505_A. Problem 5"]["public_tests"] == {"input": ["1\n"], "output": ["6\n"]}


def test_mbpp_release_file_split_by_task_id(tmp_path):
    prepare("--dataset", "mbpp", "--src", FIXTURES / "mbpp" / "mbpp.jsonl", "--out", tmp_path)
    proc = tmp_path / "processed"
    ids = {
        s: [r["task_id"] for r in lines(proc / f"{s}.jsonl")]
        for s in ("train", "validation", "test")
    }
    assert ids == {
        "train": ["601", "602", "603"],
        "validation": ["511", "512"],
        "test": ["11", "12", "13"],
    }
    r = lines(proc / "test.jsonl")[1]
    assert (
        r["instruction"]
        == "Write a function to add 12 to a number.\n\nThe function should be named 'add_12'."
    )
    assert r["metadata"] == {
        "source": "mbpp",
        "test_list": ["assert add_12(1) == 13", "assert add_12(0) == 12"],
        "test_setup_code": "import math",
        "has_tests": True,
    }
    assert "is_correct" not in r
    meta = json.loads((proc / "test_metadata.json").read_text())
    assert (
        meta["token_count"]["method"] == "regex_pieces"
        and "fallback"
        in prepare(
            "--dataset", "mbpp", "--src", FIXTURES / "mbpp" / "mbpp.jsonl", "--out", tmp_path
        ).stderr
    )


def test_humaneval_bundled_and_gsm8k(tmp_path):
    prepare("--dataset", "humaneval", "--out", tmp_path / "he")
    he = lines(tmp_path / "he" / "processed" / "test.jsonl")
    assert len(he) == 164 and he[0]["task_id"] == "HumanEval/0"
    assert he[0]["metadata"]["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in he[0]["metadata"]["test"]
    assert he[0]["instruction"].startswith("from typing import List")
    prepare("--dataset", "gsm8k", "--src", FIXTURES / "gsm8k", "--out", tmp_path / "g")
    g = lines(tmp_path / "g" / "processed" / "train.jsonl")
    assert [(r["task_id"], r["metadata"]["final_answer"]) for r in g] == [
        ("gsm8k_0", "7"),
        ("gsm8k_1", "2400"),
    ]
    assert g[1]["output"].endswith("#### 2,400")


def test_synthetic_cli(tmp_path):
    p = prepare("--dataset", "synthetic", "--seed", 2, "--n-problems", 20, "--out", tmp_path)
    assert "synthetic/train:" in p.stdout
    names = sorted(x.name for x in (tmp_path / "processed").iterdir())
    assert names == [
        "schema.json",
        "test.jsonl",
        "test_eval.jsonl",
        "test_metadata.json",
        "train.jsonl",
        "train_metadata.json",
        "valid.jsonl",
        "valid_eval.jsonl",
        "valid_metadata.json",
    ]


def test_bad_inputs(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(
        '{"question": "q", "answer": "x\\n#### 1"}\n{"question": 3, "answer": "#### 2"}\n'
    )
    p = prepare("--dataset", "gsm8k", "--src", tmp_path, "--out", tmp_path / "o", ok=False)
    assert p.returncode == 2 and f"{bad}:2: field 'question' must be string, got int" in p.stderr
    p = prepare("--dataset", "nope", "--out", tmp_path, ok=False)
    assert (
        p.returncode == 2
        and "'codecontests', 'mbpp', 'humaneval', 'gsm8k', 'synthetic'" in p.stderr
    )
    p = prepare("--dataset", "mbpp", "--src", bad, "--split", "dev", "--out", tmp_path, ok=False)
    assert p.returncode == 2 and "valid: ['test', 'train', 'validation']" in p.stderr


@pytest.mark.parametrize("name", ["codecontests"])
def test_parquet_is_streamed_by_row_groups(name):
    import pyarrow.parquet as pq

    from wmtp_jax.data.readers import iter_rows

    f = FIXTURES / name / "train-00000-of-00001.parquet"
    assert pq.ParquetFile(f).num_row_groups == 2
    locs = [loc for loc, _ in iter_rows(f)]
    assert locs == [f"{f}:1", f"{f}:2", f"{f}:3"]


def _tmp_files(root):
    return sorted(str(p) for p in Path(root).rglob("*") if ".tmp" in p.name)


def test_empty_input_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    empty = tmp_path / "src" / "train.jsonl"
    empty.write_text("\n\n")  # blank lines only
    p = prepare("--dataset", "gsm8k", "--src", tmp_path / "src", "--out", tmp_path / "o", ok=False)
    assert p.returncode == 2 and f"error: {empty}: empty (no records)" in p.stderr
    empty.write_text("")
    p = prepare("--dataset", "mbpp", "--src", empty, "--out", tmp_path / "o", ok=False)
    assert p.returncode == 2 and f"{empty}: empty (no records)" in p.stderr
    assert _tmp_files(tmp_path / "o") == []


def test_decode_and_parse_errors_name_file_and_line_and_leave_no_tmp(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = '{"question": "q", "answer": "x\\n#### 1"}\n'
    bad = src / "train.jsonl"
    bad.write_bytes(good.encode() * 3 + b'{"question": "caf\xe9", "answer": "#### 2"}\n')
    p = prepare("--dataset", "gsm8k", "--src", src, "--out", tmp_path / "o", ok=False)
    assert p.returncode == 2
    assert f"error: {bad}:4: not valid UTF-8 (byte 0xe9 at column 18)" in p.stderr
    assert "Traceback" not in p.stderr
    assert _tmp_files(tmp_path / "o") == []  # the half-written split was removed
    bad.write_text(good * 2 + '{"question": "q", "answer": \n')
    p = prepare("--dataset", "gsm8k", "--src", src, "--out", tmp_path / "o", ok=False)
    assert p.returncode == 2 and f"{bad}:3: malformed JSON" in p.stderr
    assert _tmp_files(tmp_path / "o") == []
    bad.unlink()
    fake = src / "train-00000-of-00001.parquet"
    fake.write_text("not parquet at all")
    p = prepare("--dataset", "codecontests", "--src", src, "--out", tmp_path / "cc", ok=False)
    assert p.returncode == 2 and f"error: {fake}: not a readable parquet file (" in p.stderr
    assert _tmp_files(tmp_path / "cc") == []


@pytest.mark.parametrize(
    "value, message",
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested deeper than 100 levels"),
        ("9" * 5000, "JSON number too large (Exceeds the limit (4300 digits)"),
    ],
    ids=["nested-100k-deep", "5000-digit-integer"],
)
def test_json_limits_are_one_line_naming_file_and_line(tmp_path, value, message):
    src = tmp_path / "src"
    src.mkdir()
    bad = src / "train.jsonl"
    good = '{"question": "q", "answer": "x\\n#### 1"}\n'
    bad.write_text(good + '{"question": "q", "answer": "#### 2", "x": ' + value + "}\n")
    p = prepare("--dataset", "gsm8k", "--src", src, "--out", tmp_path / "o", ok=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:2: {message}"), p.stderr
    assert "Traceback" not in p.stderr and _tmp_files(tmp_path / "o") == []


GSM8K_ROWS = {
    "train": [
        {
            "question": "Tom has 3 apples and eats one. How many are left? é",
            "answer": "3-1=2\n#### 2",
        },
        {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"},
        {"question": "Half of 1,000?", "answer": "1000/2=500\n#### 500"},
    ],
    "test": [{"question": "2 + 2?", "answer": "2+2=4\n#### 4"}],
}


def write_tfds_gsm8k(data_dir: Path) -> Path:
    """A tiny TFDS `gsm8k` directory written by tfds itself (array_record, no TensorFlow)."""
    import tensorflow_datasets as tfds

    class Gsm8k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            text = tfds.features.Text()
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({"question": text, "answer": text}),
            )

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s in GSM8K_ROWS}

        def _generate_examples(self, split):
            yield from enumerate(GSM8K_ROWS[split])

    builder = Gsm8k(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return Path(builder.data_dir)


def test_gsm8k_from_a_tfds_directory(tmp_path):
    """`--src <tfds dir>`: the same records as from the JSONL files, in the TFDS order."""
    src = write_tfds_gsm8k(tmp_path / "tfds")
    assert (src / "dataset_info.json").is_file() and src.name == "1.0.0"
    p = prepare("--dataset", "gsm8k", "--src", src, "--out", tmp_path / "o")
    assert "gsm8k/train: 3 records" in p.stdout and "gsm8k/test: 1 records" in p.stdout
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    for split, rows in GSM8K_ROWS.items():
        (jsonl / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare("--dataset", "gsm8k", "--src", jsonl, "--out", tmp_path / "j")
    for split, rows in GSM8K_ROWS.items():
        got = lines(tmp_path / "o" / "processed" / f"{split}.jsonl")
        want = lines(tmp_path / "j" / "processed" / f"{split}.jsonl")
        assert [r["task_id"] for r in got] == [f"gsm8k_{i}" for i in range(len(rows))]
        strip = lambda rs: sorted((r["instruction"], r["output"], r["metadata"]["final_answer"])
                                  for r in rs)  # fmt: skip
        assert (
            strip(got)
            == strip(want)
            == sorted((r["question"], r["answer"], r["answer"].rsplit("#### ", 1)[1]) for r in rows)
        )
        assert all(r["input"] == "" and r["metadata"]["source"] == "gsm8k" for r in got)
