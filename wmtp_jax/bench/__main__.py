"""`python -m wmtp_jax.bench`: train-step, decode, attention and torch-comparison benchmarks →
JSON lines (+ a plot). The flags and examples: `--help` (wmtp_jax.bench.cli); presets:
wmtp_jax.bench.presets; the console line per row: wmtp_jax.bench.summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax

from wmtp_jax.bench import append_jsonl, machine_info
from wmtp_jax.bench.attention import run_attention_sweep
from wmtp_jax.bench.cli import attention_cases, csv, parse_args, train_cases
from wmtp_jax.bench.decode import DecodeCase, run_decode
from wmtp_jax.bench.packing import run_packing_bench
from wmtp_jax.bench.packing import summary as packing_summary
from wmtp_jax.bench.plot import load_rows, plot_throughput
from wmtp_jax.bench.summary import summary_line
from wmtp_jax.bench.torch_step import compare_torch
from wmtp_jax.bench.train_step import TrainCase, prepare_case, run_case, time_interleaved
from wmtp_jax.train.xla_flags import apply_cpu_defaults


def _run_isolated(case, a) -> dict:
    """The case in a fresh interpreter (`--case-json`); its row comes back on stdout."""
    cmd = [
        sys.executable,
        "-m",
        "wmtp_jax.bench",
        "--case-json",
        json.dumps(dataclasses.asdict(case)),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
    ]
    if a.compile_only:
        cmd.append("--compile-only")
    if a.peak_tflops:
        cmd += ["--peak-tflops", str(a.peak_tflops)]
    if a.compilation_cache:
        cmd += ["--compilation-cache", a.compilation_cache]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {
            "kind": "train",
            "config": dataclasses.asdict(case),
            "error": f"exit {p.returncode}: {p.stderr.strip()[-2000:]}",
        }
    return json.loads(lines[-1])


def _run_train(case, a) -> dict:
    try:
        return run_case(
            case,
            steps=a.steps,
            warmup=a.warmup,
            compile_only=a.compile_only,
            peak_tflops=a.peak_tflops,
        )
    except Exception as e:  # noqa: BLE001 - an OOM / bad shape becomes an error row, sweep goes on
        return {
            "kind": "train",
            "config": dataclasses.asdict(case),
            "error": f"{type(e).__name__}: {str(e)[:2000]}",
        }


def _run_interleaved(cases, a) -> list[dict]:
    """Compile all cases, then time their steps round-robin (error rows for failed builds)."""
    out, ready = [], []
    for case in cases:
        try:
            ready.append(prepare_case(case))
            out.append(None)
        except Exception as e:  # noqa: BLE001
            out.append(
                {
                    "kind": "train",
                    "config": dataclasses.asdict(case),
                    "error": f"{type(e).__name__}: {str(e)[:2000]}",
                }
            )
    timed = iter(time_interleaved(ready, steps=a.steps, warmup=a.warmup, peak_tflops=a.peak_tflops))
    return [r if r is not None else next(timed) for r in out]


def _run_packing(a) -> int:
    modes = csv(a.packing)
    if not modes or set(modes) - {"off", "on"}:
        raise SystemExit(f"error: --packing {a.packing!r}: comma list of off, on")
    base = train_cases(a)[0]
    pipelines = [p for p in csv(a.pipelines) if p != "critic"] or ["baseline"]
    rows = run_packing_bench(
        base, pipelines=pipelines, modes=modes, lengths=a.lengths, steps=a.steps, warmup=a.warmup
    )
    for row in rows:
        print(packing_summary(append_jsonl(a.out, {**row, "machine": machine_info()})), flush=True)
    print(f"results appended to {os.path.abspath(a.out)}")
    return 0


def _train_sweep(cases, a, extra) -> int:
    """Time (or compile) every train case, appending its row; returns the number of error rows."""
    rows = _run_interleaved(cases, a) if a.interleave and not a.compile_only else None
    n_err = 0
    for i, case in enumerate(cases):
        if rows is not None:
            row = rows[i]
        else:
            row = _run_isolated(case, a) if a.isolate else _run_train(case, a)
        row = append_jsonl(
            a.out,
            {**row, **extra, "isolated": bool(a.isolate), "interleaved": rows is not None},
        )
        n_err += "error" in row
        print(summary_line(row), flush=True)
    return n_err


def _decode_sweep(a, extra) -> None:
    """Greedy vs speculative decoding per --decode-batch."""
    for b in csv(a.decode_batch, int):
        case = DecodeCase(
            policy_dir=a.policy_dir,
            dim=a.dim,
            n_layers=csv(a.n_layers, int)[0],
            n_heads=a.n_heads,
            n_future=a.n_future,
            vocab=a.vocab,
            multiple_of=a.multiple_of,
            batch=b,
            prompt_len=a.prompt_len,
            max_new_tokens=a.max_new_tokens,
            dtype=csv(a.dtype)[0],
            prompts=a.prompts,
            data_dir=a.data_dir,
            n_prompts=a.n_prompts,
        )
        for row in run_decode(case, repeats=a.decode_repeats):
            print(summary_line(append_jsonl(a.out, {**row, **extra})), flush=True)


def _attention_sweep(attn, a, extra) -> int:
    n_err = 0
    for row in run_attention_sweep(
        *attn, repeats=a.steps, warmup=a.warmup, threads=a.threads, compile_only=a.compile_only
    ):
        row = append_jsonl(a.out, {**row, **extra})
        n_err += "error" in row
        print(summary_line(row), flush=True)
    return n_err


def _compare_torch(cases, a, extra) -> int:
    n_err = 0
    for case in cases:
        try:
            row = compare_torch(case, steps=a.steps, warmup=a.warmup, threads=a.threads)
        except Exception as e:  # noqa: BLE001 - an error row, the sweep goes on
            row = {
                "kind": "compare_torch",
                "config": dataclasses.asdict(case),
                "error": f"{type(e).__name__}: {str(e)[:2000]}",
            }
        row = append_jsonl(a.out, {**row, **extra})
        n_err += "error" in row
        print(summary_line(row), flush=True)
    return n_err


def main(argv=None) -> int:
    a = parse_args(argv)
    apply_cpu_defaults()  # as training does; a flag set in XLA_FLAGS wins
    if a.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", a.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if a.case_json:  # --isolate worker: one case, row on stdout, nothing written
        d = json.loads(a.case_json)
        d["mesh"] = tuple(d["mesh"])
        row = _run_train(TrainCase(**d), a)
        print(json.dumps(row))
        return 0
    if a.packing:
        return _run_packing(a)
    cases = train_cases(a) if a.what in ("train", "all") else []  # bad flags fail here, fast
    attn = attention_cases(a) if a.attention else None
    compare = [c for c in train_cases(a) if c.pipeline == "baseline"] if a.compare_torch else []
    if a.compare_torch and not compare:
        raise SystemExit("error: --compare-torch runs the baseline pipeline; add it to --pipelines")
    extra = {"machine": machine_info(), "compilation_cache": a.compilation_cache}
    n_err = _train_sweep(cases, a, extra) if a.what in ("train", "all") else 0
    if a.what in ("decode", "all"):
        _decode_sweep(a, extra)
    if attn is not None:
        n_err += _attention_sweep(attn, a, extra)
    n_err += _compare_torch(compare, a, extra)
    if a.plot:
        rows = load_rows(a.out)
        if rows:
            print(f"plot: {plot_throughput(rows, a.plot)}")
    print(f"results appended to {os.path.abspath(a.out)}")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
