"""Prepared splits -> sampled, random-access sources for the loader (the original's `load_dataset`).

`load_samples(dataset_dir, split, sampling, seed)` returns a `SampledSource`: `len()` and
`src[i]` (a record read by byte offset on demand). Pairwise records are
`{instruction, input, correct_output, incorrect_output, problem_id}`; pointwise records are the
full JSONL record (correct solutions only, as the original).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from wmtp_jax.data import pairs as sampling_lib
from wmtp_jax.data.records import DataError, JsonlRecords, check_training_record, loads

SPLIT_ALIASES = {
    "train": ("train",),
    "valid": ("valid", "validation"),
    "validation": ("validation", "valid"),
    "test": ("test",),
}


def processed_dir(dataset_dir: str | os.PathLike) -> Path:
    d = Path(dataset_dir)
    return d / "processed" if (d / "processed").is_dir() else d


def available_splits(dataset_dir) -> list[str]:
    d = processed_dir(dataset_dir)
    return sorted(p.stem for p in d.glob("*.jsonl") if not p.stem.endswith("_eval"))


def resolve_split(dataset_dir, split: str) -> tuple[Path, Path]:
    """(records file, metadata file) for a split; validation <-> valid aliases as the original."""
    d = processed_dir(dataset_dir)
    if split not in SPLIT_ALIASES:
        raise ValueError(
            f"unknown split {split!r}; valid splits: {sorted(SPLIT_ALIASES)} "
            f"(present in {d}: {available_splits(d)})"
        )
    for name in SPLIT_ALIASES[split]:
        if (d / f"{name}.jsonl").exists():
            return d / f"{name}.jsonl", d / f"{name}_metadata.json"
    raise FileNotFoundError(f"split {split!r} not found in {d}; present: {available_splits(d)}")


def load_problem_index_map(metadata_path: str | os.PathLike) -> dict:
    p = Path(metadata_path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: metadata missing (run `python -m wmtp_jax.data.prepare`)")
    try:
        meta = loads(p.read_bytes().decode("utf-8"), str(p))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 (at byte {e.start})") from None
    pim = meta.get("problem_index_map") if isinstance(meta, dict) else None
    if not pim:
        raise FileNotFoundError(f"{p}: empty problem_index_map")
    if not isinstance(pim, dict):
        raise DataError(f"{p}: problem_index_map is {type(pim).__name__}, not an object")
    for pid, info in pim.items():
        _check_problem(info, f"{p}: problem_index_map[{pid!r}]")
    return pim


_INDEX_LISTS = ("correct_indices", "incorrect_indices")
_LENGTH_LISTS = ("correct_token_lengths", "incorrect_token_lengths")


def _check_problem(info, at: str) -> None:
    """DataError naming `at` and the field unless `info` has the metadata writer's types."""
    if not isinstance(info, dict):
        raise DataError(f"{at} is {type(info).__name__}, not an object")
    for k in _INDEX_LISTS + _LENGTH_LISTS:
        v = info.get(k)
        if v is None:
            continue
        if not isinstance(v, list) or not all(type(x) is int and x >= 0 for x in v):
            raise DataError(f"{at}.{k} must be a list of non-negative integers, got {v!r:.60}")
    d = info.get("difficulty")
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float))):
        raise DataError(f"{at}.difficulty must be a number or null, got {d!r:.60}")


def check_indices(pim: Mapping, n_records: int, metadata_path, records_path) -> None:
    """DataError when a record index of the metadata is past the records file's end (the two
    files do not belong together)."""
    for pid, info in pim.items():
        for k in _INDEX_LISTS:
            bad = [i for i in info.get(k) or [] if i >= n_records]
            if bad:
                raise DataError(
                    f"{metadata_path}: problem_index_map[{pid!r}].{k} has index {bad[0]}, but "
                    f"{records_path} holds {n_records} records (re-run prepare)"
                )


class SampledSource(Sequence):
    """Random-access view `src[i]` over the sampled indices of a JSONL split (grain data source)."""

    def __init__(self, records: JsonlRecords, items: Sequence, pairwise: bool):
        self.records, self.items, self.pairwise = records, list(items), pairwise

    def __len__(self) -> int:
        return len(self.items)

    def _record(self, i: int) -> dict:
        rec = self.records[i]
        try:
            return check_training_record(rec, "")
        except DataError as e:  # the location is only read for an error
            raise DataError(f"{self.records.location(i)}{e}") from None

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        if not self.pairwise:
            return self._record(item)
        c, n = self._record(item["correct_idx"]), self._record(item["incorrect_idx"])
        return {
            "instruction": c["instruction"],
            "input": c.get("input") or "",
            "correct_output": c["output"],
            "incorrect_output": n["output"],
            "problem_id": item["problem_id"],
        }


def load_samples(
    dataset_dir: str | os.PathLike,
    split: str,
    sampling: Mapping,
    seed: int = 42,
    rank: int = 0,
    world_size: int = 1,
) -> SampledSource:
    """Samples pairs (or correct-only pointwise records when `use_pairwise` is false) and, for
    world_size > 1, keeps this rank's `[rank::world_size]` shard (prefer world_size=1 with the
    loader's global-batch sharding, which is independent of the process count)."""
    path, meta = resolve_split(dataset_dir, split)
    records = JsonlRecords(path)
    pim = load_problem_index_map(meta)
    check_indices(pim, len(records), meta, path)
    pairs = sampling_lib.sample_pairs(pim, sampling, seed)
    pairwise = bool(sampling.get("use_pairwise", False))
    items = pairs if pairwise else sampling_lib.pointwise_indices(pairs)
    if world_size > 1:
        items = sampling_lib.shard(items, rank, world_size)
    return SampledSource(records, items, pairwise)
