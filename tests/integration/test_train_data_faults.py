"""Bad training data ends a training run with one `error:` line naming file:line, exit 2 (a
mistyped field, bytes that are not UTF-8), not a traceback. NUL bytes, deep nesting and huge
integers take the same path (tests/unit/test_data_records.py checks their messages)."""

import json
import shutil

import pytest

from tests.integration.study_storage import make_tiny_storage
from tests.integration.test_pipelines import FAST, run_cli
from wmtp_jax.configs import parts


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_tiny_storage(tmp_path_factory.mktemp("data_faults"))


def _mistyped(line: bytes) -> bytes:
    return json.dumps(dict(json.loads(line), output=12345)).encode() + b"\n"


def _not_utf8(line: bytes) -> bytes:
    return line.replace(b'"instruction": "', b'"instruction": "\xff', 1)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_mistyped, "field 'output' must be string, got int"),
        (_not_utf8, "not valid UTF-8 (byte 0xff"),
    ],
    ids=["mistyped", "not-utf8"],
)
def test_bad_training_records_end_the_run_with_one_line(work, corrupt, message):
    train = work / parts.MICRO_DATASET / "processed" / "train.jsonl"
    keep = train.with_name("train.jsonl.orig")
    if not keep.exists():
        shutil.copy(train, keep)
    lines = keep.read_bytes().splitlines(keepends=True)
    train.write_bytes(b"".join(corrupt(ln) for ln in lines))  # every record: whichever is read
    try:
        out = work / "run"
        shutil.rmtree(out, ignore_errors=True)
        p = run_cli(work, "baseline.py", *FAST, f"--config.output_dir={out}")
    finally:
        shutil.copy(keep, train)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    rel = f"{parts.MICRO_DATASET}/processed/train.jsonl:"  # as the config names it
    assert len(err) == 1 and err[0].startswith(f"error: {rel}"), p.stderr[-3000:]
    assert message in err[0], err
    line = int(err[0][len(f"error: {rel}") :].split(":")[0])
    assert 1 <= line <= len(lines)
