"""The command line of `python -m wmtp_jax.bench`: its flags (a preset fills every flag not
given) and the cases they select (the train sweep is the product of the list flags)."""

from __future__ import annotations

import argparse
import itertools

import jax

from wmtp_jax.bench.attention import AttentionCase
from wmtp_jax.bench.presets import DEFAULTS, PRESETS
from wmtp_jax.bench.train_step import PIPELINES, TrainCase
from wmtp_jax.kernels import flash_cpu
from wmtp_jax.ops.attention import IMPLEMENTATIONS

USAGE = """`python -m wmtp_jax.bench`: train-step and decode benchmarks → JSON lines (+ a plot).

    python -m wmtp_jax.bench --what train --pipelines baseline,verifiable --batch 1,2,4 \
        --seq 128,256 --steps 10 --warmup 2 --out bench_results/results.jsonl --plot tput.png
    python -m wmtp_jax.bench --preset 1b --dtype bfloat16 --seq 2048       # GPU MFU row
    python -m wmtp_jax.bench --what decode --max-new-tokens 64             # greedy vs speculative
    python -m wmtp_jax.bench --attention --attention-seq 256,512,1024,2048,4096  # vs torch SDPA
    python -m wmtp_jax.bench --compare-torch --preset torch-bar --steps 10  # vs the torch step

List flags (--pipelines, --n-layers, --batch, --seq, --dtype, --remat, --loss, --donate, --heads,
--attention-impl) take comma-separated values; the train sweep is their product. A preset fills
every flag not given.
"""


def csv(v, cast=str) -> list:
    return [cast(x) for x in str(v).split(",") if x.strip() != ""]


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, with a preset's (or the default) value wherever one is not given."""
    ap = argparse.ArgumentParser(
        prog="python -m wmtp_jax.bench",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--what",
        choices=("train", "decode", "all"),
        default=None,
        help="default train (nothing else with --attention / --compare-torch)",
    )
    _shape_flags(ap)
    _mode_flags(ap)
    _decode_flags(ap)
    _output_flags(ap)
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


def _shape_flags(ap) -> None:
    """Model shapes and train-step settings (None = the preset's or the default value)."""
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


def _mode_flags(ap) -> None:
    """Which measurement, and how it is timed."""
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


def _decode_flags(ap) -> None:
    """--what decode."""
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


def _output_flags(ap) -> None:
    """Packing, lengths, where rows and the plot go."""
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


def _checked_lists(a) -> tuple[list, list, list, tuple]:
    """(pipelines, donate, heads, mesh) of the flags; a bad value exits with one line."""
    pipes = csv(a.pipelines)
    bad = [p for p in pipes if p not in PIPELINES]
    if bad:
        raise SystemExit(f"error: --pipelines {bad} unknown; valid: {', '.join(PIPELINES)}")
    donate = csv(a.donate)
    if any(d not in ("on", "off") for d in donate):
        raise SystemExit(f"error: --donate {a.donate!r}: values on, off")
    heads = csv(a.heads)
    if any(h not in ("vmap", "loop") for h in heads):
        raise SystemExit(f"error: --heads {a.heads!r}: values vmap, loop")
    mesh = tuple(csv(a.mesh, int))
    if len(mesh) != 3:
        raise SystemExit(f"error: --mesh {a.mesh!r}: need three sizes data,fsdp,tensor")
    return pipes, donate, heads, mesh


def train_cases(a) -> list:
    """The train sweep: one TrainCase per combination of the list flags (duplicates dropped)."""
    pipes, donate, heads, mesh = _checked_lists(a)
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
        csv(a.n_layers, int),
        csv(a.dtype),
        csv(a.remat),
        csv(a.loss),
        donate,
        heads,
        impls,
        csv(a.seq, int),
        csv(a.batch, int),
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
    impls = csv(value)
    bad = [i for i in impls if i not in IMPLEMENTATIONS]
    if bad or not impls:
        raise SystemExit(f"error: --attention-impl {value!r}: values {', '.join(IMPLEMENTATIONS)}")
    return impls


def attention_cases(a) -> tuple[list, list]:
    """(AttentionCase per --attention-seq, implementations) of the --attention sweep."""
    shape = csv(a.attention_shape, int)
    if len(shape) != 4 or min(shape) < 1 or shape[1] % shape[2]:
        raise SystemExit(
            f"error: --attention-shape {a.attention_shape!r}: need B,H,KV,head_dim "
            f"(H a multiple of KV)"
        )
    b, h, kv, hd = shape
    if a.attention_impl_given:
        impls = _attention_impls(a.attention_impl)
    else:
        impls = ["xla", "blockwise"] + (["cudnn"] if jax.default_backend() == "gpu" else [])
        impls += ["cpu_flash"] if flash_cpu.unavailable() is None else []
    cases = [
        AttentionCase(batch=b, seq=s, n_heads=h, n_kv_heads=kv, head_dim=hd, dtype=csv(a.dtype)[0])
        for s in csv(a.attention_seq, int)
    ]
    return cases, impls
