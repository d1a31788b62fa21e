"""Record access: JSONL files read by line index through a byte-offset index.

A split file `train.jsonl` gets a sidecar `train.jsonl.idx.npy` (int64 `[n_lines + 1]` byte
offsets; line i is `bytes[off[i]:off[i+1]]`). The index is rebuilt when it is older than the file
or disagrees with its size, so a large split is never held in memory: only 8 bytes per line.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """Bad input data; the message names the file, the line (1-based) and the field."""


def where(path: str | os.PathLike, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def decode_line(raw: bytes, path, line: int) -> str:
    """UTF-8 text of one line, or DataError naming file:line and the bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where(path, line)}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
            f"column {e.start + 1})"
        ) from None


MAX_JSON_DEPTH = 100  # nesting levels of one JSON document (records nest 4 deep at most)
MAX_JSON_BYTES = 1 << 30  # one JSON document (a JSONL line, a metadata file)


def _depth(obj) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, d + 1)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return deepest


def loads(text: str | bytes, at: str):
    """`json.loads` with limits: at most MAX_JSON_BYTES, MAX_JSON_DEPTH levels of nesting and
    Python's 4300 digits per integer; every failure is one DataError starting with `at` (file or
    file:line). The one JSON parser of the data readers."""
    if len(text) > MAX_JSON_BYTES:
        raise DataError(f"{at}: JSON of {len(text)} bytes exceeds the {MAX_JSON_BYTES}-byte limit")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        msg = e.msg.removesuffix(" at")  # "Invalid control character at"
        raise DataError(f"{at}: malformed JSON ({msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{at}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        msg = str(e).split(";")[0]
        raise DataError(f"{at}: JSON number too large ({msg})") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise DataError(f"{at}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def parse_json_line(raw: str | bytes, path, line: int) -> dict:
    """One JSON object from a JSONL line (`loads`' limits), or DataError naming file:line."""
    if isinstance(raw, bytes):
        raw = decode_line(raw, path, line)
    obj = loads(raw, where(path, line))
    if not isinstance(obj, dict):
        raise DataError(f"{where(path, line)}: expected a JSON object, got {type(obj).__name__}")
    return obj


_TYPE_NAMES = {
    str: "string",
    int: "integer",
    bool: "boolean",
    list: "list",
    dict: "object",
    float: "number",
}


def require(
    rec: Mapping,
    field: str,
    types: type | tuple[type, ...],
    path,
    line: int | None,
    default: Any = ...,
) -> Any:
    """`rec[field]`, checked against `types`; DataError naming file:line and the field otherwise."""
    if field not in rec or rec[field] is None:
        if default is not ...:
            return default
        raise DataError(f"{where(path, line)}: missing field '{field}' (keys: {sorted(rec)})")
    value = rec[field]
    types_t = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in types_t) or not isinstance(value, types_t):
        names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types_t)
        raise DataError(
            f"{where(path, line)}: field '{field}' must be {names}, "
            f"got {type(value).__name__} {str(value)[:40]!r}"
        )
    return value


def check_training_record(rec: Mapping, at: str) -> Mapping:
    """`rec` when its fields have the prepared layout's types (instruction and output strings,
    input a string or null, is_correct a boolean or absent), else DataError naming `at`."""
    require(rec, "instruction", str, at, None)
    require(rec, "output", str, at, None)
    require(rec, "input", str, at, None, default="")
    require(rec, "is_correct", bool, at, None, default=True)
    return rec


def iter_jsonl(path: str | os.PathLike, *, skip_bad: bool = False) -> Iterator[tuple[int, dict]]:
    """Streams (1-based line number, object) from a .jsonl or .jsonl.gz file; blank lines skipped.

    Every error names file:line (malformed JSON, not UTF-8, not an object); a corrupt gzip
    stream names the file. skip_bad=True skips such bad lines instead of raising (a log that a
    kill may have torn mid-line); a file that cannot be read still raises."""
    opener = gzip.open if str(path).endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = parse_json_line(raw, path, n)
                except DataError:
                    if skip_bad:
                        continue
                    raise
                yield n, obj
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(
            f"{where(path, n + 1 if n else None)}: cannot read ({type(e).__name__}: {e})"
        ) from None


def index_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".idx.npy")


def build_index(path: str | os.PathLike) -> np.ndarray:
    """Byte offsets of every non-empty line, `[n + 1]` int64 (last = end of the last line).

    Streams the file; the offsets live in a compact `array('q')` (8 bytes per line)."""
    starts, end, pos = array("q"), 0, 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                starts.append(pos)
                end = pos + len(raw)
            pos += len(raw)
    starts.append(end)  # line i spans off[i]:off[i+1], blank lines between are stripped on read
    return (
        np.frombuffer(starts, dtype=np.int64).copy() if len(starts) > 1 else np.zeros(1, np.int64)
    )


def load_index(path: str | os.PathLike) -> np.ndarray:
    """The saved index when fresh, else a rebuilt (and saved) one."""
    p, ip = Path(path), index_path(path)
    size = p.stat().st_size
    if ip.exists() and ip.stat().st_mtime >= p.stat().st_mtime:
        off = np.load(ip)
        if off.ndim == 1 and (off.size == 1 and off[0] == 0 or off.size > 1 and off[-1] <= size):
            return off
    off = build_index(p) if size else np.zeros(1, np.int64)
    tmp = ip.with_name(ip.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, off)
        os.replace(tmp, ip)
    finally:
        tmp.unlink(missing_ok=True)
    return off


class JsonlRecords(Sequence):
    """Random access to the records of a JSONL file: `recs[i]` is the dict on non-empty line i."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such records file")
        self._off = load_index(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)  # pread: safe from reader threads

    def __len__(self) -> int:
        return int(self._off.size - 1)

    def _read(self, i: int) -> bytes:
        start, stop = int(self._off[i]), int(self._off[i + 1])
        return os.pread(self._fd, stop - start, start)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: record {i} out of range [0, {n})")
        i %= n
        raw = self._read(i).strip().split(b"\n", 1)[0]
        try:
            return parse_json_line(raw, self.path, i + 1)
        except DataError:  # re-raised naming the file line (blank lines are not records)
            parse_json_line(raw, self.path, self._line_of(int(self._off[i])))
            raise

    def location(self, i: int) -> str:
        """ "file:line" of record `i` (reads the file up to it: for error messages)."""
        return where(self.path, self._line_of(int(self._off[i % len(self)])))

    def _line_of(self, offset: int) -> int:
        """1-based line number of the byte at `offset` (error path only: reads the prefix)."""
        newlines, pos = 0, 0
        while pos < offset:
            chunk = os.pread(self._fd, min(1 << 20, offset - pos), pos)
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            pos += len(chunk)
        return newlines + 1

    def get_many(self, indices: Sequence[int]) -> list[dict]:
        return [self[int(i)] for i in indices]

    def __getstate__(self):  # picklable for grain worker processes
        return {"path": self.path, "_off": self._off}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def write_jsonl(path: str | os.PathLike, records) -> int:
    """Writes records (one compact JSON object per line, ensure_ascii as the original); count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n
