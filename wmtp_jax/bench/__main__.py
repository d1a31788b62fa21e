"""`python -m wmtp_jax.bench`: train-step and decode benchmarks → JSON lines (+ a plot).

    python -m wmtp_jax.bench --what train --pipelines baseline,verifiable --batch 1,2,4 \
        --seq 128,256 --steps 10 --warmup 2 --out bench_results/results.jsonl --plot tput.png
    python -m wmtp_jax.bench --preset 1b --dtype bfloat16 --seq 2048       # GPU MFU row
    python -m wmtp_jax.bench --what decode --max-new-tokens 64             # greedy vs speculative
    python -m wmtp_jax.bench --attention --attention-seq 256,512,1024,2048,4096  # vs torch SDPA
    python -m wmtp_jax.bench --compare-torch --preset torch-bar --steps 10  # vs the torch step

List flags (--pipelines, --n-layers, --batch, --seq, --dtype, --remat, --loss, --donate, --heads,
--attention-impl) take
comma-separated values; the train sweep is their product. A preset fills every flag not given.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys

import jax

from wmtp_jax.bench import append_jsonl, machine_info
from wmtp_jax.bench.attention import AttentionCase, run_attention_sweep
from wmtp_jax.bench.decode import DecodeCase, run_decode
from wmtp_jax.bench.packing import run_packing_bench
from wmtp_jax.bench.packing import summary as packing_summary
from wmtp_jax.bench.plot import load_rows, plot_throughput
from wmtp_jax.bench.torch_step import compare_torch
from wmtp_jax.bench.train_step import (
    PIPELINES,
    TrainCase,
    prepare_case,
    run_case,
    time_interleaved,
)
from wmtp_jax.kernels import flash_cpu
from wmtp_jax.ops.attention import IMPLEMENTATIONS
from wmtp_jax.train.xla_flags import apply_cpu_defaults

PRESETS = {
    # the micro pipelines' shapes (pipelines/bootstrap.py): 2 trunk + 4 head blocks, critic 3 blocks
    "micro": dict(
        dim=256,
        n_layers="6",
        n_heads=4,
        n_future=4,
        vocab=1024,
        multiple_of=64,
        batch="4",
        seq="128",
        dtype="float32",
    ),
    # ~1B MTP policy (954M matmul params + embeddings): 12 trunk + 4 head blocks, D=2048
    "1b": dict(
        dim=2048,
        n_layers="16",
        n_heads=16,
        n_future=4,
        vocab=32000,
        multiple_of=256,
        batch="4,8",
        seq="2048",
        dtype="bfloat16",
        loss="chunked",
        pipelines="baseline",
    ),
    # Meta MTP 7B shape with LoRA r64 on every projection + the Sheared-LLaMA-2.7B critic shape
    "7b-lora": dict(
        dim=4096,
        n_layers="32",
        n_heads=32,
        n_future=4,
        vocab=32000,
        multiple_of=256,
        batch="1,2",
        seq="2048",
        dtype="bfloat16",
        remat="full",
        loss="chunked",
        lora_rank=64,
        critic_dim=2560,
        critic_layers=32,
        critic_heads=20,
        critic_ffn_hidden=6912,
        pipelines="verifiable",
    ),
    # the issue-16 bar against the PyTorch original: D=256, 8 heads of 32, 2 trunk + 4 heads,
    # V=4096, B=8, S=256, float32
    "torch-bar": dict(
        dim=256,
        n_layers="6",
        n_heads=8,
        n_future=4,
        vocab=4096,
        multiple_of=256,
        batch="8",
        seq="256",
        dtype="float32",
        pipelines="baseline",
    ),
}
DEFAULTS = dict(
    PRESETS["micro"],
    pipelines="baseline,critic,verifiable",
    n_kv_heads=0,
    ffn_hidden=0,
    critic_dim=0,
    critic_layers=0,
    critic_heads=0,
    critic_ffn_hidden=0,
    ga=1,
    remat="none",
    sharding="FULL_SHARD",
    mesh="1,-1,1",
    lora_rank=0,
    loss="dense",
    chunk_size=1024,
    donate="on",
    heads="vmap",
    attention_impl="auto",
)


def _csv(v, cast=str) -> list:
    return [cast(x) for x in str(v).split(",") if x.strip() != ""]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m wmtp_jax.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--what",
        choices=("train", "decode", "all"),
        default=None,
        help="default train (nothing else with --attention / --compare-torch)",
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    add = lambda name, **kw: ap.add_argument(name, default=None, **kw)
    add("--pipelines", help="comma list of baseline, critic, verifiable")
    for name in (
        "--dim",
        "--n-heads",
        "--n-kv-heads",
        "--n-future",
        "--vocab",
        "--ffn-hidden",
        "--multiple-of",
        "--critic-dim",
        "--critic-layers",
        "--critic-heads",
        "--critic-ffn-hidden",
        "--ga",
        "--lora-rank",
        "--chunk-size",
    ):
        add(name, type=int)
    add("--n-layers", help="comma list (Meta layout: includes the n_future head blocks)")
    add("--batch", help="comma list of global micro-batch sizes (pairs for critic)")
    add("--seq", help="comma list of sequence lengths")
    add("--dtype", help="comma list: float32, bfloat16")
    add("--remat", help="comma list: none, full, dots, dots_no_batch")
    add("--sharding", choices=("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"))
    add("--mesh", help="data,fsdp,tensor sizes (-1 = the rest of the devices)")
    add("--loss", help="comma list: dense, chunked (MTP CE of the policy pipelines)")
    add("--donate", help="comma list: on, off (donate the train state to the step)")
    add(
        "--heads",
        help="comma list: vmap (the model's K head blocks as one vmap), loop (an "
        "unrolled loop over the heads: the before of that optimisation)",
    )
    add(
        "--attention-impl",
        help="comma list: auto, xla, blockwise, cudnn (runtime.attention "
        "of the train step; --attention default: every one usable here)",
    )
    ap.add_argument(
        "--attention",
        action="store_true",
        help="sweep one causal attention call, forward + backward, per "
        "implementation and --attention-seq, next to torch SDPA",
    )
    ap.add_argument(
        "--attention-seq",
        default=None,
        help="comma list of S for --attention (default: --seq when given, else "
        "256,512,1024,2048,4096)",
    )
    ap.add_argument("--attention-shape", default="8,8,8,32", help="B,H,KV,head_dim")
    ap.add_argument(
        "--compare-torch",
        action="store_true",
        help="the baseline train step next to the same step in torch (SDPA, AdamW), "
        "alternating, medians and their ratio",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: all cores, as XLA:CPU)",
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--compile-only",
        action="store_true",
        help="lower + compile + memory_analysis only (large shapes on a small host)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s per device (default: table by device kind; CPU: none)",
    )
    ap.add_argument(
        "--compilation-cache",
        default=None,
        help="persistent compilation cache directory (jax_compilation_cache_dir)",
    )
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="compile every train configuration first, then time their steps "
        "round-robin (fair ratios on a loaded, shared host)",
    )
    ap.add_argument(
        "--isolate",
        action="store_true",
        help="each train configuration in a fresh process (exact device peak memory)",
    )
    ap.add_argument("--policy-dir", default="", help="decode: an `mtp` model dir (default random)")
    ap.add_argument("--decode-batch", default="1", help="decode: comma list of batch sizes")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--decode-repeats", type=int, default=3)
    ap.add_argument(
        "--prompts",
        default="",
        help="decode: a benchmark's test prompts (e.g. "
        "synthetic) with the policy's tokenizer and real EOS; default random ids",
    )
    ap.add_argument(
        "--data-dir", default="storage/datasets", help="decode --prompts: datasets root"
    )
    ap.add_argument("--n-prompts", type=int, default=32, help="decode --prompts: how many")
    ap.add_argument(
        "--packing",
        default=None,
        help="comma list of off, on: padded vs packed rows of the same samples "
        "(bench/packing.py; uses --pipelines, --batch = samples, --seq)",
    )
    ap.add_argument("--lengths", default="codecontests", help="synthetic | codecontests | FILE")
    ap.add_argument("--out", default="bench_results/results.jsonl")
    ap.add_argument("--plot", default=None, help="PNG of tokens/s vs batch and seq (train rows)")
    ap.add_argument("--case-json", default=None, help=argparse.SUPPRESS)  # --isolate worker
    a = ap.parse_args(argv)
    preset = PRESETS.get(a.preset, {})
    a.attention_impl_given = a.attention_impl is not None
    if a.attention_seq is None:
        a.attention_seq = a.seq if a.seq is not None else "256,512,1024,2048,4096"
    for k, v in DEFAULTS.items():
        if getattr(a, k, None) is None:
            setattr(a, k, preset.get(k, v))
    if a.what is None:
        a.what = "none" if (a.attention or a.compare_torch) else "train"
    if a.steps < 1 or a.warmup < 0:
        ap.error(f"--steps {a.steps} must be ≥ 1 and --warmup {a.warmup} ≥ 0")
    return a


def train_cases(a) -> list:
    pipes = _csv(a.pipelines)
    bad = [p for p in pipes if p not in PIPELINES]
    if bad:
        raise SystemExit(f"error: --pipelines {bad} unknown; valid: {', '.join(PIPELINES)}")
    donate = _csv(a.donate)
    if any(d not in ("on", "off") for d in donate):
        raise SystemExit(f"error: --donate {a.donate!r}: values on, off")
    heads = _csv(a.heads)
    if any(h not in ("vmap", "loop") for h in heads):
        raise SystemExit(f"error: --heads {a.heads!r}: values vmap, loop")
    mesh = tuple(_csv(a.mesh, int))
    if len(mesh) != 3:
        raise SystemExit(f"error: --mesh {a.mesh!r}: need three sizes data,fsdp,tensor")
    fixed = dict(
        dim=a.dim,
        n_heads=a.n_heads,
        n_kv_heads=a.n_kv_heads,
        n_future=a.n_future,
        vocab=a.vocab,
        ffn_hidden=a.ffn_hidden,
        multiple_of=a.multiple_of,
        critic_dim=a.critic_dim,
        critic_layers=a.critic_layers,
        critic_heads=a.critic_heads,
        critic_ffn_hidden=a.critic_ffn_hidden,
        ga=a.ga,
        sharding=a.sharding,
        mesh=mesh,
        lora_rank=a.lora_rank,
        chunk_size=a.chunk_size,
    )
    impls = _attention_impls(a.attention_impl)
    cases, seen = [], set()
    for p, nl, dt, rm, loss, dn, hd, at, s, b in itertools.product(
        pipes,
        _csv(a.n_layers, int),
        _csv(a.dtype),
        _csv(a.remat),
        _csv(a.loss),
        donate,
        heads,
        impls,
        _csv(a.seq, int),
        _csv(a.batch, int),
    ):
        c = TrainCase(
            pipeline=p,
            n_layers=nl,
            dtype=dt,
            remat=rm,
            loss="dense" if p == "critic" else loss,
            donate=dn == "on",
            seq=s,
            batch=b,
            heads="vmap" if p == "critic" else hd,
            attention=at,
            **fixed,
        )
        if c not in seen:
            seen.add(c)
            cases.append(c)
    return cases


def _attention_impls(value) -> list:
    impls = _csv(value)
    bad = [i for i in impls if i not in IMPLEMENTATIONS]
    if bad or not impls:
        raise SystemExit(f"error: --attention-impl {value!r}: values {', '.join(IMPLEMENTATIONS)}")
    return impls


def attention_cases(a) -> tuple[list, list]:
    """(AttentionCase per --attention-seq, implementations) of the --attention sweep."""
    shape = _csv(a.attention_shape, int)
    if len(shape) != 4 or min(shape) < 1 or shape[1] % shape[2]:
        raise SystemExit(
            f"error: --attention-shape {a.attention_shape!r}: need B,H,KV,head_dim "
            f"(H a multiple of KV)"
        )
    b, h, kv, hd = shape
    if a.attention_impl_given:
        impls = _attention_impls(a.attention_impl)
    else:
        backend = jax.default_backend()
        impls = ["xla", "blockwise"] + {"gpu": ["cudnn"], "tpu": ["splash"]}.get(backend, [])
        impls += ["cpu_flash"] if flash_cpu.unavailable() is None else []
    cases = [
        AttentionCase(batch=b, seq=s, n_heads=h, n_kv_heads=kv, head_dim=hd, dtype=_csv(a.dtype)[0])
        for s in _csv(a.attention_seq, int)
    ]
    return cases, impls


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


def _summary(row: dict) -> str:
    c = row.get("config", {})
    if "error" in row:
        return f"[error] {c.get('pipeline', row.get('mode'))}: {row['error'][:300]}"
    if row["kind"] == "attention":
        c, mem = row["config"], (row.get("memory_analysis") or {}).get("estimate")
        rss = row.get("torch_peak_bytes")
        rss = row.get("torch_peak_rss_bytes") if rss is None else rss
        done = "compiled" if "skipped" not in row else f"skipped ({row['skipped']})"
        return (
            f"attention {row['implementation']:10s} B={c['batch']} S={c['seq']} "
            f"H={c['n_heads']}/{c['n_kv_heads']} hd={c['head_dim']} {c['dtype']}: fwd+bwd "
            + (f"{row['fwd_bwd_ms']:.2f} ms" if "fwd_bwd_ms" in row else done)
            + (
                f" (x{row['ratio_vs_torch_sdpa']:.2f} torch SDPA)"
                if "ratio_vs_torch_sdpa" in row
                else ""
            )
            + (f", mem {mem / 2**20:.1f} MiB" if mem else "")
            + (f", peak {rss / 2**20:.1f} MiB" if rss is not None else "")
            + (f" ({100 * row['memory_vs_xla']:.1f}% of xla)" if "memory_vs_xla" in row else "")
            + f", load {row['loadavg_during']}"
        )
    if row["kind"] == "compare_torch":
        c = row["config"]
        return (
            f"compare-torch D={c['dim']} L={c['n_layers']} K={c['n_future']} V={c['vocab']} "
            f"B={c['batch']} S={c['seq']} attention={c['attention']}"
            f"->{row['attention_resolved']}: wmtp_jax {row['jax_step_ms']:.1f} ms, torch "
            f"{row['torch_step_ms']:.1f} ms, ratio {row['ratio_jax_over_torch']:.3f} "
            f"(first losses {row['first_loss_jax']:.5f} / {row['first_loss_torch']:.5f}), "
            f"load {row['loadavg_during']}"
        )
    if row["kind"] == "decode":
        acc = row.get("acceptance_rate")
        return (
            f"decode {row['mode']:11s} B={c['batch']} new={c['max_new_tokens']}: "
            f"{row['tokens_per_s']:.1f} tok/s, first call {row['first_call_s']:.1f} s"
            + (
                f", acceptance {acc:.3f}, x{row['speedup_vs_greedy']:.2f} vs greedy"
                if acc is not None
                else ""
            )
            + (
                f"; after prefill {row['decode_phase_tokens_per_s']:.1f} tok/s"
                + (f" (x{row['decode_phase_speedup_vs_greedy']:.2f})" if acc is not None else "")
                if "decode_phase_tokens_per_s" in row
                else ""
            )
        )
    mem = row.get("memory_analysis", {}).get("estimate")
    layers = (
        (c["critic_layers"] or max(1, c["n_layers"] // 2))
        if c["pipeline"] == "critic"
        else c["n_layers"]
    )
    s = (
        f"train {c['pipeline']:10s} L={layers} B={c['batch']} S={c['seq']} {c['dtype']} "
        f"remat={c['remat']} loss={c['loss']} donate={c['donate']} heads={c['heads']} "
        f"attention={c.get('attention', 'auto')}->{row.get('attention_resolved')}: compile "
        f"{row['compile_total_s']:.1f} s "
        f"(CPU {row['lower_cpu_s'] + row['compile_cpu_s']:.1f} s), "
        f"mem {mem / 2**20 if mem else float('nan'):.0f} MiB"
    )
    if row.get("step_time_s"):
        mfu = row.get("mfu")
        s += (
            f", step {row['step_time_s'] * 1e3:.1f} ms (CPU {row['step_cpu_s'] * 1e3:.0f} ms), "
            f"{row['tokens_per_s']:.0f} tok/s"
            + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
        )
    return s


def _run_packing(a) -> int:
    modes = _csv(a.packing)
    if not modes or set(modes) - {"off", "on"}:
        raise SystemExit(f"error: --packing {a.packing!r}: comma list of off, on")
    base = train_cases(a)[0]
    pipelines = [p for p in _csv(a.pipelines) if p != "critic"] or ["baseline"]
    rows = run_packing_bench(
        base, pipelines=pipelines, modes=modes, lengths=a.lengths, steps=a.steps, warmup=a.warmup
    )
    for row in rows:
        print(packing_summary(append_jsonl(a.out, {**row, "machine": machine_info()})), flush=True)
    print(f"results appended to {os.path.abspath(a.out)}")
    return 0


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
    n_err = 0
    if a.what in ("train", "all"):
        rows = _run_interleaved(cases, a) if a.interleave and not a.compile_only else None
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
            print(_summary(row), flush=True)
    if a.what in ("decode", "all"):
        for b in _csv(a.decode_batch, int):
            case = DecodeCase(
                policy_dir=a.policy_dir,
                dim=a.dim,
                n_layers=_csv(a.n_layers, int)[0],
                n_heads=a.n_heads,
                n_future=a.n_future,
                vocab=a.vocab,
                multiple_of=a.multiple_of,
                batch=b,
                prompt_len=a.prompt_len,
                max_new_tokens=a.max_new_tokens,
                dtype=_csv(a.dtype)[0],
                prompts=a.prompts,
                data_dir=a.data_dir,
                n_prompts=a.n_prompts,
            )
            for row in run_decode(case, repeats=a.decode_repeats):
                print(_summary(append_jsonl(a.out, {**row, **extra})), flush=True)
    if attn is not None:
        for row in run_attention_sweep(
            *attn, repeats=a.steps, warmup=a.warmup, threads=a.threads, compile_only=a.compile_only
        ):
            row = append_jsonl(a.out, {**row, **extra})
            n_err += "error" in row
            print(_summary(row), flush=True)
    for case in compare:
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
        print(_summary(row), flush=True)
    if a.plot:
        rows = load_rows(a.out)
        if rows:
            print(f"plot: {plot_throughput(rows, a.plot)}")
    print(f"results appended to {os.path.abspath(a.out)}")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
