"""Streaming readers for the datasets' real on-disk files, and split discovery.

Rows are yielded one at a time as (location, dict): JSONL (.jsonl / .jsonl.gz) line by line,
parquet one row group at a time (pyarrow), so memory is bounded by one row group, never by the
number of problems or solutions. `location` is "file:N" (1-based line or row number).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_jax.data.records import DataError, iter_jsonl

ROW_SLICE = 64  # rows converted to Python objects at a time within a row group

# dataset -> (output split name, accepted file-name tokens)
SPLITS = {
    "codecontests": (
        ("train", ("train",)),
        ("valid", ("valid", "validation")),
        ("test", ("test",)),
    ),
    "mbpp": (("train", ("train",)), ("validation", ("validation", "valid")), ("test", ("test",))),
    "humaneval": (("test", ("test", "humaneval")),),
    "gsm8k": (("train", ("train",)), ("test", ("test",))),
}
DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json")


def iter_parquet(path: Path, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """Rows of a parquet file; a file pyarrow cannot read is a DataError naming it."""
    row = 0
    try:
        pf = pq.ParquetFile(path)
        cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        for rg in range(pf.num_row_groups):
            table = pf.read_row_group(rg, columns=cols)
            for start in range(0, table.num_rows, ROW_SLICE):
                for rec in table.slice(start, ROW_SLICE).to_pylist():
                    row += 1
                    yield f"{path}:{row}", rec
            del table
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable parquet file ({msg})") from None


def iter_rows(path: str | Path, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(location, row) of a data file; a file without any row is a DataError naming it."""
    path = Path(path)
    name = path.name
    if name.endswith(".parquet"):
        rows = iter_parquet(path, columns)
    elif name.endswith((".jsonl", ".jsonl.gz", ".json")):
        rows = ((f"{path}:{n}", rec) for n, rec in iter_jsonl(path))
    else:
        raise DataError(f"{path}: unsupported file type (expected one of {DATA_SUFFIXES})")
    empty = True
    for item in rows:
        empty = False
        yield item
    if empty:
        raise DataError(f"{path}: empty (no records)")


def _tokens(path: Path) -> set[str]:
    stem = path.name
    for suf in DATA_SUFFIXES:
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
    return set(re.split(r"[-_.]", stem.lower()))


def find_split_files(
    dataset: str, src: str | Path, split: str | None = None
) -> dict[str, list[Path]]:
    """{output split: [files]} under `src` (a file, or a directory searched recursively).

    A file belongs to a split when one of its name's `-`/`_`/`.`-separated tokens names it
    (HF `train-00000-of-00039.parquet`, `valid.jsonl`, `test.jsonl.gz`). A single file needs
    `split`, except the MBPP release file (split by task_id) and HumanEval (test).
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"--src {src} does not exist")
    known = dict((name, toks) for name, toks in SPLITS[dataset])
    if split is not None and split not in known:
        raise ValueError(f"unknown split {split!r} for {dataset}; valid: {sorted(known)}")
    if src.is_file():
        if split:
            return {split: [src]}
        if dataset == "humaneval":
            return {"test": [src]}
        if dataset == "mbpp":
            return {"*": [src]}  # the release file mbpp.jsonl: split by task_id ranges
        raise ValueError(f"--src {src} is a single file: pass --split (one of {sorted(known)})")
    files = sorted(
        p
        for p in src.rglob("*")
        if p.is_file() and p.name.endswith(DATA_SUFFIXES) and not p.name.startswith(".")
    )
    out: dict[str, list[Path]] = {}
    for name, toks in SPLITS[dataset]:
        if split and name != split:
            continue
        hits = [p for p in files if _tokens(p) & set(toks)]
        if hits:
            out[name] = hits
    if not out:
        raise FileNotFoundError(
            f"no {dataset} split files under {src} (looked for names containing "
            f"{[t for _, ts in SPLITS[dataset] for t in ts]} with suffix {DATA_SUFFIXES})"
        )
    return out


# MBPP release file (mbpp.jsonl, task ids 1-974): the benchmark's documented split ranges.
MBPP_RANGES = {"test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def mbpp_split_of(task_id: int) -> str | None:
    for name, (lo, hi) in MBPP_RANGES.items():
        if lo <= task_id <= hi:
            return name
    return None  # 1-10: the few-shot "prompt" split, not processed (as the original)


def iter_tfds_gsm8k(src: Path) -> dict[str, Iterator[tuple[str, dict]]]:
    """A prepared TFDS `gsm8k` directory (has dataset_info.json) -> {split: rows} ("train",
    "test"), read through `tfds.data_source` without TensorFlow, so the directory must be
    stored as array_record (`file_format="array_record"`); tfrecord needs TensorFlow."""
    try:
        import tensorflow_datasets as tfds  # a dev extra: TFDS input only
    except ImportError:
        raise ValueError(
            f"{src} is a TFDS directory but tensorflow-datasets is not installed; "
            "install it (pip install tensorflow-datasets) or pass the GSM8K JSONL/parquet files"
        ) from None
    builder = tfds.builder_from_directory(str(src))
    fmt = builder.info.file_format
    if fmt is not None and str(getattr(fmt, "value", fmt)) != "array_record":
        raise ValueError(
            f"{src}: TFDS files are {getattr(fmt, 'value', fmt)}; reading needs array_record "
            "(no TensorFlow here): rebuild it with file_format='array_record', or pass the "
            "GSM8K JSONL/parquet files"
        )

    def rows(split):
        for n, ex in enumerate(builder.as_data_source(split=split), 1):
            loc = f"{src}[{split}]:{n}"
            try:
                yield loc, {k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()}
            except UnicodeDecodeError as e:
                raise DataError(f"{loc}: not valid UTF-8 (byte at {e.start})") from None

    return {s: rows(s) for s in builder.info.splits if s in ("train", "test")}
