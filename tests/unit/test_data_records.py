"""Indexed JSONL access and bad-input errors (file:line and field names)."""

import json
import os

import pytest

from wmtp_jax.data import schemas
from wmtp_jax.data.readers import find_split_files
from wmtp_jax.data.records import DataError, JsonlRecords, index_path, iter_jsonl


def test_random_access_by_offset_index(tmp_path):
    p = tmp_path / "s.jsonl"
    rows = [{"i": i, "text": "é" * i + "\n"} for i in range(50)]
    p.write_text(
        "".join(json.dumps(r, ensure_ascii=i % 2 == 0) + "\n" for i, r in enumerate(rows)),
        encoding="utf-8",
    )
    recs = JsonlRecords(p)
    assert len(recs) == 50 and index_path(p).exists()
    assert [recs[i] for i in (49, 0, 17, -1)] == [rows[49], rows[0], rows[17], rows[49]]
    assert recs.get_many([3, 1]) == [rows[3], rows[1]]
    with pytest.raises(IndexError, match="out of range"):
        recs[50]
    # the file changes: a stale index is rebuilt
    with open(p, "a") as f:
        f.write(json.dumps({"i": 50}) + "\n")
    os.utime(p, (index_path(p).stat().st_mtime + 5,) * 2)
    recs2 = JsonlRecords(p)
    assert len(recs2) == 51 and recs2[50] == {"i": 50}


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n{"a": 2,,}\n')
    with pytest.raises(DataError, match=rf"{p}:2: malformed JSON"):
        list(iter_jsonl(p))
    with pytest.raises(DataError, match=rf"{p}:2: malformed JSON"):
        JsonlRecords(p)[1]
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r":1: expected a JSON object"):
        list(iter_jsonl(p))


def test_missing_and_wrong_type_fields():
    row = {"text": "t", "task_id": 5, "test_list": ["assert f(1) == 1"]}
    with pytest.raises(DataError, match=r"mbpp.jsonl:7: missing field 'code'"):
        schemas.mbpp(row, "mbpp.jsonl:7")
    with pytest.raises(DataError, match=r"x.jsonl:3: field 'task_id' must be integer, got str"):
        schemas.mbpp(dict(row, code="c", task_id="5"), "x.jsonl:3")
    cc = {"name": "p", "description": "d", "solutions": {"language": [3], "solution": [7]}}
    with pytest.raises(
        DataError, match=r"cc.parquet:2: field 'solutions.solution\[0\]' must be string"
    ):
        schemas.codecontests(cc, "cc.parquet:2")
    cc["solutions"] = {"language": [3, 1], "solution": ["x"]}
    with pytest.raises(DataError, match=r"'solutions' has 2 languages but 1 solutions"):
        schemas.codecontests(cc, "cc.parquet:2")
    with pytest.raises(DataError, match=r"g.jsonl:4: field 'answer' has no '#### <number>'"):
        schemas.gsm8k({"question": "q", "answer": "42"}, "g.jsonl:4", 0)
    with pytest.raises(DataError, match=r"field 'difficulty' has unknown value 'EASYISH'"):
        schemas.codecontests(dict(cc, solutions=None, difficulty="EASYISH"), "c:1")


def test_codecontests_enum_names_and_python_filter():
    row = {
        "name": "1_A. X",
        "description": "d",
        "difficulty": "B",
        "solutions": {"language": ["PYTHON3", "CPP", 1], "solution": ["a", "b", "c"]},
        "incorrect_solutions": {"language": [3], "solution": ["z"]},
        "public_tests": {"input": ["1"], "output": ["2"]},
    }
    recs, ev, tests = schemas.codecontests(row, "f:1")
    assert [(r["task_id"], r["is_correct"]) for r in recs] == [
        ("1_A. X_correct_0", True),
        ("1_A. X_correct_2", True),
        ("1_A. X_incorrect_0", False),
    ]
    assert recs[0]["metadata"] == {"source": "code_contests", "difficulty": 8, "has_tests": True}
    assert ev["metadata"]["private_tests"] == {"input": [], "output": []} and "output" not in ev
    assert tests["task_name"] == "1_A. X"


def test_split_discovery_errors(tmp_path):
    (tmp_path / "train-00000-of-00002.parquet").write_bytes(b"")
    (tmp_path / "validation.jsonl").write_text("")
    assert set(find_split_files("codecontests", tmp_path)) == {"train", "valid"}
    with pytest.raises(
        ValueError, match=r"unknown split 'dev' for mbpp; valid: \['test', 'train', 'validation'\]"
    ):
        find_split_files("mbpp", tmp_path, "dev")
    with pytest.raises(ValueError, match="pass --split"):
        find_split_files("gsm8k", tmp_path / "validation.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no gsm8k split files"):
        find_split_files("gsm8k", tmp_path / "empty")


def test_random_access_errors_name_the_file_line(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_bytes(b'{"a": 1}\n\n\n{"a": "\xff"}\n')  # record 1 is on line 4
    recs = JsonlRecords(f)
    assert len(recs) == 2 and recs[0] == {"a": 1}
    with pytest.raises(DataError, match=rf"^{f}:4: not valid UTF-8 \(byte 0xff at column 8\)$"):
        recs[1]


def test_skip_bad_drops_torn_and_non_object_lines(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_bytes(b'{"a": 1}\n\n[2]\n{"a": \xff}\n{"a": 3}\n{"a": 4, "b')
    with pytest.raises(DataError, match="log.jsonl:3"):
        list(iter_jsonl(p))
    assert list(iter_jsonl(p, skip_bad=True)) == [(1, {"a": 1}), (5, {"a": 3})]


def test_json_limits_name_the_file_line(tmp_path, monkeypatch):
    """Depth (a 100k-deep array: Python's parser would raise RecursionError), integers over
    Python's 4300 digits, NUL bytes and the size limit: one DataError naming file:line each."""
    from wmtp_jax.data import records

    f = tmp_path / "r.jsonl"
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    depth_101 = b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}"  # 101 levels: parses, then refused
    cases = [
        (deep, r":2: JSON nested deeper than 100 levels$"),
        (depth_101, r":2: JSON nested deeper than 100 levels$"),
        (b'{"a": ' + b"9" * 5000 + b"}", r":2: JSON number too large \(Exceeds the limit \(4300"),
        (b'{"a": "x\x00y"}', r":2: malformed JSON \(Invalid control character at column 9\)$"),
        (b'{"a": 1}\x00', r":2: malformed JSON \(Extra data at column 9\)$"),
    ]
    for bad, match in cases:
        f.write_bytes(b'{"a": 1}\n' + bad + b"\n")
        with pytest.raises(DataError, match=rf"^{f}{match}"):
            list(iter_jsonl(f))
        with pytest.raises(DataError, match=rf"^{f}{match}"):
            JsonlRecords(f)[1]
    f.write_bytes(b'{"a": ' + b"[" * 99 + b"]" * 99 + b"}\n")  # 100 levels: fine
    assert list(iter_jsonl(f))[0][0] == 1
    monkeypatch.setattr(records, "MAX_JSON_BYTES", 16)
    f.write_bytes(b'{"a": "0123456789"}\n')
    with pytest.raises(DataError, match=rf"^{f}:1: JSON of 20 bytes exceeds the 16-byte limit$"):
        list(iter_jsonl(f))


def test_training_records_and_metadata_are_type_checked_naming_where(tmp_path):
    from wmtp_jax.data.sources import SampledSource, check_indices, load_problem_index_map

    f = tmp_path / "train.jsonl"
    ok = {"instruction": "i", "input": None, "output": "o", "is_correct": False}
    f.write_text(
        "\n".join(
            json.dumps(r)
            for r in [ok, dict(ok, output=5), dict(ok, input=["x"]), dict(ok, is_correct="no")]
        )
        + "\n"
    )
    src = SampledSource(JsonlRecords(f), [0, 1, 2, 3], pairwise=False)
    assert src[0] == ok
    for i, match in [
        (1, r":2: field 'output' must be string, got int '5'$"),
        (2, r":3: field 'input' must be string, got list"),
        (3, r":4: field 'is_correct' must be boolean, got str 'no'$"),
    ]:
        with pytest.raises(DataError, match=rf"^{f}{match}"):
            src[i]
    pairs = SampledSource(
        JsonlRecords(f), [{"correct_idx": 0, "incorrect_idx": 1, "problem_id": "p"}], True
    )
    with pytest.raises(DataError, match=rf"^{f}:2: field 'output'"):
        pairs[0]
    meta = tmp_path / "train_metadata.json"
    good = {"correct_indices": [0], "incorrect_indices": [1, 3], "difficulty": 2}
    for pim, match in [
        ({"p": dict(good, correct_indices=["0"])}, r"\['p'\]\.correct_indices must be a list"),
        ({"p": dict(good, incorrect_indices=[True])}, r"\[.p.\]\.incorrect_indices must be a list"),
        ({"p": dict(good, difficulty="hard")}, r"\['p'\]\.difficulty must be a number or null"),
        ({"p": [0, 1]}, r"\['p'\] is list, not an object"),
        ([["p", good]], r" is list, not an object"),
    ]:
        meta.write_text(json.dumps({"problem_index_map": pim}))
        with pytest.raises(DataError, match=rf"^{meta}: problem_index_map{match}"):
            load_problem_index_map(meta)
    meta.write_text(json.dumps({"problem_index_map": {"p": good}}))
    check_indices(load_problem_index_map(meta), 4, meta, f)
    with pytest.raises(DataError, match=rf"incorrect_indices has index 3, but {f} holds 3 records"):
        check_indices(load_problem_index_map(meta), 3, meta, f)
