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
