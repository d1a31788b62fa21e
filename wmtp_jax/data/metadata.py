"""Writing a processed split: JSONL records + `{split}_metadata.json` (original format), streaming.

`SplitWriter.add(records)` counts tokens (one batched call per group, e.g. per problem), applies
the original's length filter tok(instruction) + tok(input) + tok(output) <= max_tokens, writes
kept lines, streams the per-line metadata entries to a temp file and keeps only the
problem_index_map's int lists in memory (never any text).
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections import Counter
from pathlib import Path

from wmtp_jax.data.records import index_path
from wmtp_jax.data.tokenizer import TokenCounter

_PID = re.compile(r"^(.+?)_(correct|incorrect)_\d+$")


def problem_id(task_id: str) -> str:
    m = _PID.match(task_id)
    return m.group(1) if m else task_id


class SplitWriter:
    def __init__(
        self, path: str | os.PathLike, counter: TokenCounter, max_tokens: int | None = 2048
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.counter, self.max_tokens = counter, max_tokens
        self._f = open(self.path.with_suffix(".jsonl.tmp"), "w", encoding="utf-8")
        self.n_lines, self.n_filtered = 0, 0
        self._meta_tmp = open(self.path.with_suffix(".meta.tmp"), "w+", encoding="utf-8")
        self.pim: dict[str, dict] = {}
        self.difficulty = Counter()
        self.flags = {"has_is_correct": False, "has_difficulty": False, "has_problem_id": False}

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        texts = sorted(
            {
                t
                for r in records
                for t in (r["instruction"], r.get("input") or "", r.get("output", ""))
            }
        )
        counts = dict(zip(texts, self.counter(texts)))
        for r in records:
            n_out = counts[r.get("output", "")]
            total = counts[r["instruction"]] + counts[r.get("input") or ""] + n_out
            if self.max_tokens is not None and total > self.max_tokens:
                self.n_filtered += 1
                continue
            self._f.write(json.dumps(r) + "\n")
            self._note(self.n_lines, r, n_out)
            self.n_lines += 1

    def _note(self, line: int, r: dict, n_out: int) -> None:
        md = r.get("metadata") or {}
        entry, pid = {}, problem_id(str(r["task_id"]))
        if "is_correct" in r:
            entry["is_correct"] = r["is_correct"]
            self.flags["has_is_correct"] = True
        if "difficulty" in md:
            entry["difficulty"] = md["difficulty"]
            self.difficulty[str(md["difficulty"])] += 1
            self.flags["has_difficulty"] = True
        entry["problem_id"] = pid
        self.flags["has_problem_id"] = True
        self._meta_tmp.write(json.dumps(entry) + "\n")  # per-line entries streamed to disk
        info = self.pim.get(pid)
        if info is None:  # compact int arrays: ~12 bytes per line in memory
            info = self.pim[pid] = {
                "difficulty": md.get("difficulty"),
                "correct_indices": array("q"),
                "incorrect_indices": array("q"),
                "correct_token_lengths": array("l"),
                "incorrect_token_lengths": array("l"),
            }
        if r.get("is_correct") is True:
            info["correct_indices"].append(line)
            info["correct_token_lengths"].append(n_out)
        elif r.get("is_correct") is False:
            info["incorrect_indices"].append(line)
            info["incorrect_token_lengths"].append(n_out)

    def abort(self) -> None:
        """Close and remove the temporary files (a failed prepare leaves no `.tmp`)."""
        for f in (self._f, self._meta_tmp):
            f.close()
        for tmp in (
            self.path.with_suffix(".jsonl.tmp"),
            self.path.with_suffix(".meta.tmp"),
            self.path.with_name(self.path.stem + "_metadata.json.tmp"),
        ):
            tmp.unlink(missing_ok=True)

    def close(self) -> dict:
        """Moves the records into place and writes the metadata; returns its `stats`."""
        self._f.close()
        os.replace(self.path.with_suffix(".jsonl.tmp"), self.path)
        index_path(self.path).unlink(missing_ok=True)
        n_c = sum(len(v["correct_indices"]) for v in self.pim.values())
        n_i = sum(len(v["incorrect_indices"]) for v in self.pim.values())
        stats = {
            "total": self.n_lines,
            "correct": n_c,
            "incorrect": n_i,
            "difficulty_dist": dict(sorted(self.difficulty.items())),
            **self.flags,
            "n_problems": len(self.pim),
            "n_valid_problems": sum(
                1 for v in self.pim.values() if v["correct_indices"] and v["incorrect_indices"]
            ),
            "total_possible_pairs": sum(
                len(v["correct_indices"]) * len(v["incorrect_indices"]) for v in self.pim.values()
            ),
            "filtered_by_length": self.n_filtered,
            "max_tokens": self.max_tokens,
        }
        meta_path = self.path.with_name(self.path.stem + "_metadata.json")
        tmp = meta_path.with_suffix(".json.tmp")
        try:
            self._write_metadata(tmp, stats)
        except BaseException:
            self.abort()
            raise
        self._meta_tmp.close()
        os.unlink(self._meta_tmp.name)
        os.replace(tmp, meta_path)
        return stats

    def _write_metadata(self, tmp: Path, stats: dict) -> None:
        self._meta_tmp.seek(0)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write('{\n"metadata": [')
            for k, line in enumerate(self._meta_tmp):
                f.write(("," if k else "") + "\n  " + line.rstrip("\n"))
            f.write('],\n"problem_index_map": {')
            for k, (pid, info) in enumerate(self.pim.items()):
                entry = {
                    key: (v.tolist() if isinstance(v, array) else v) for key, v in info.items()
                }
                f.write(("," if k else "") + f"\n  {json.dumps(pid)}: {json.dumps(entry)}")
            for key, value in (
                ("stats", stats),
                ("token_count", self.counter.method),
                ("source_file", self.path.name),
            ):
                f.write("},\n" if key == "stats" else ",\n")
                f.write(f"{json.dumps(key)}: {json.dumps(value, indent=2)}")
            f.write("\n}\n")


class JsonDictWriter:
    """Streams one JSON object `{key: value, ...}` to disk, one entry at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path.with_suffix(".json.tmp"), "w", encoding="utf-8")
        self._f.write("{")
        self._n = 0

    def add(self, key: str, value) -> None:
        self._f.write(
            ("," if self._n else "")
            + "\n"
            + json.dumps(key)
            + ": "
            + json.dumps(value, ensure_ascii=False)
        )
        self._n += 1

    def abort(self) -> None:
        self._f.close()
        self.path.with_suffix(".json.tmp").unlink(missing_ok=True)

    def close(self) -> int:
        self._f.write("\n}\n")
        self._f.close()
        os.replace(self.path.with_suffix(".json.tmp"), self.path)
        return self._n


def write_schema(
    out_dir: str | os.PathLike,
    dataset: str,
    source: str,
    has_is_correct: bool,
    description: str,
    notes: str = "",
) -> None:
    required = ["instruction", "input", "output", "task_id"] + (
        ["is_correct"] if has_is_correct else []
    )
    doc = {
        "dataset": dataset,
        "format": "alpaca",
        "required_fields": required,
        "optional_fields": ["metadata"],
        "description": description,
        "source": source,
        "notes": notes,
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "schema.json").write_text(json.dumps(doc, indent=2))
