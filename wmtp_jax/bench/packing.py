"""Packing benchmark: the real train step on padded rows vs packed rows of the same samples.

    python -m wmtp_jax.bench --packing off,on --lengths codecontests \
        --pipelines baseline,verifiable --preset micro --seq 2048 --batch 8 --steps 3 --warmup 1

Per pipeline, one step's `--batch` samples get token lengths from `--lengths`; `off` feeds them
as `[N, S]` rows padded to S (the collator's layout), `on` packs them (`data.packing.pack_batch`)
into R rows, R = the fewest rows that hold them without a cut. Both steps are compiled first and
then timed round-robin in one process (`train_step.time_interleaved`), so a load change on a
shared host hits both alike. Reported: useful (non-pad) tokens/s, pad fraction, and their ratio.
The critic's pairwise batches are measured as data: the pad fraction of `[N, S]` pos/neg rows vs
the same pairs packed pairwise.

Length sources (`--lengths`):
* `synthetic`: uniform on [S/16, S/2] (a plain, light-tailed reference);
* `codecontests`: an assumed log-normal of prompt + solution tokens, median 512, σ = 0.75,
  clipped to [64, S] (see docs/packing.md: an assumption matching the shape of CodeContests
  lengths, not a fit to the dataset);
* FILE: a prepared dataset's `<split>_metadata.json` (`correct_token_lengths` /
  `incorrect_token_lengths` of every problem: solution tokens) or a text file, one length a line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from wmtp_jax.bench import train_step as ts
from wmtp_jax.data.packing import pack_batch, pad_fraction, plan
from wmtp_jax.ops import IGNORE_INDEX
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.step import build

CODECONTESTS_MEDIAN, CODECONTESTS_SIGMA = 512.0, 0.75
PROMPT_SHARE = 0.5  # labels −100 on the first half of every sample (problem statement)


def draw_lengths(spec: str, n: int, seq: int, seed: int = 0) -> np.ndarray:
    """n token lengths in [1, seq] from `spec` (see the module docstring), int64."""
    rng = np.random.default_rng(seed)
    if spec == "synthetic":
        out = rng.integers(max(1, seq // 16), max(2, seq // 2) + 1, size=n)
    elif spec == "codecontests":
        out = np.exp(rng.normal(np.log(CODECONTESTS_MEDIAN), CODECONTESTS_SIGMA, size=n))
        out = np.clip(np.rint(out), 64, seq)
    else:
        pool = file_lengths(spec)
        out = rng.choice(pool, size=n, replace=True)
    return np.clip(np.asarray(out, np.int64), 1, seq)


def file_lengths(path: str) -> np.ndarray:
    """Token lengths from a `*_metadata.json` of a prepared dataset or a one-per-line text file."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: --lengths {path!r}: not synthetic, codecontests or a file")
    if p.suffix == ".json":
        meta = json.loads(p.read_text())
        pim = meta.get("problem_index_map", {})
        out = [
            n
            for info in pim.values()
            for k in ("correct_token_lengths", "incorrect_token_lengths")
            for n in info.get(k) or []
        ]
    else:
        out = [int(x) for x in p.read_text().split()]
    out = np.asarray([n for n in out if n > 0], np.int64)
    if out.size == 0:
        raise SystemExit(f"error: --lengths {path}: no positive token lengths found")
    return out


def padded_batch(lengths, seq: int, vocab: int, seed: int = 0, pipeline: str = "baseline"):
    """The collator's `[N, S]` layout for samples of the given lengths (random ids)."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    ids = rng.integers(1, vocab, size=(n, seq), dtype=np.int32)
    pos = np.arange(seq)[None]
    lens = np.asarray(lengths)[:, None]
    am = (pos < lens).astype(np.int32)
    ids = np.where(am == 1, ids, 0).astype(np.int32)
    labels = np.where((am == 1) & (pos >= (lens * PROMPT_SHARE).astype(int)), ids, IGNORE_INDEX)
    b = {"input_ids": ids, "attention_mask": am, "labels": labels.astype(np.int32)}
    if pipeline == "verifiable":
        b["is_correct"] = np.ones(n, np.float32)
    b["valid"] = np.ones(n, np.float32)
    return b


def fewest_rows(lengths, seq: int) -> int:
    """The fewest rows first-fit packs `lengths` (each ≤ seq) into without a cut."""
    lengths = np.minimum(np.asarray(lengths, np.int64), seq)
    r = max(1, -(-int(lengths.sum()) // seq))
    while True:
        placed = plan(lengths, r, seq)
        if len(placed) == len(lengths) and all(t == lengths[i] for i, _, _, t in placed):
            return r
        r += 1


def critic_pad_fractions(spec: str, pairs: int, seq: int, seed: int = 0) -> dict:
    """Pad fraction of `pairs` pos/neg pairs as padded `[N, S]` rows vs packed pairwise."""
    lp = draw_lengths(spec, pairs, seq, seed + 1)
    ln = draw_lengths(spec, pairs, seq, seed + 2)
    p, q = padded_batch(lp, seq, 100, seed), padded_batch(ln, seq, 100, seed + 1)
    batch = {f"pos_{k}": v for k, v in p.items() if k != "valid"}
    batch.update({f"neg_{k}": v for k, v in q.items() if k != "valid"})
    padded = pad_fraction(batch)
    rows = max(1, -(-int(max(lp.sum(), ln.sum())) // seq))  # the fewest rows without a cut
    while (st := pack_batch(batch, rows, seq)[1])["cut_tokens"] or st["dropped"]:
        rows += 1
    packed, _ = pack_batch(batch, rows, seq)
    pf = pad_fraction(packed)
    return {
        "pairs": pairs,
        "rows_padded": pairs,
        "rows_packed": rows,
        "pad_fraction_padded": padded,
        "pad_fraction_packed": pf,
        "pad_fraction_reduction": 1.0 - pf / padded if padded > 0 else 0.0,
    }


def _prepare(case, batch):
    """`train_step.prepare_case` with a given (real) batch instead of the synthetic one."""
    config = ts.make_config(case)
    mesh = mesh_lib.mesh_from_config(config)
    c = build(ts.make_task(case, config, mesh), config, mesh, total_steps=1000)
    stacked = mesh_lib.shard_batch({k: v[None] for k, v in batch.items()}, mesh, stacked=True)
    compiled = c.train_step.lower(c.state, c.fixed, c.frozen_state, stacked).compile()
    res = {"step_flops": 0.0, "n_devices": 1, "config": dataclasses.asdict(case)}
    return ts.Prepared(case, compiled, c.state, c.fixed, c.frozen_state, stacked, res)


def run_packing_bench(base_case, *, pipelines, modes, lengths: str, steps: int, warmup: int):
    """Yields one row per (pipeline, mode), one `packing_ratio` row per pipeline, then a critic
    pad-fraction row (see the module docstring); each pipeline's rows as soon as it is timed."""
    seq, n = base_case.seq, base_case.batch
    yield {
        "kind": "packing_critic",
        "lengths": lengths,
        "seq": seq,
        **critic_pad_fractions(lengths, n, seq, base_case.seed),
    }
    for pipeline in pipelines:
        lens = draw_lengths(lengths, n, seq, seed=base_case.seed)
        padded = padded_batch(lens, seq, base_case.vocab, base_case.seed, pipeline)
        rows = fewest_rows(lens, seq)
        packed, st = pack_batch(padded, rows, seq)
        batches = {"off": padded, "on": packed}
        prepared = []
        for mode in modes:
            b = batches[mode]
            case = dataclasses.replace(base_case, pipeline=pipeline, batch=len(b["input_ids"]))
            prepared.append((mode, b, _prepare(case, b)))
        results = ts.time_interleaved([p for _, _, p in prepared], steps=steps, warmup=warmup)
        by_mode = {}
        for (mode, b, _), r in zip(prepared, results):
            useful = int(np.asarray(b["attention_mask"]).sum())
            row = {
                "kind": "packing",
                "pipeline": pipeline,
                "packing": mode,
                "lengths": lengths,
                "seq": seq,
                "samples": n,
                "rows": int(len(b["input_ids"])),
                "useful_tokens": useful,
                "pad_fraction": pad_fraction(b),
                "step_time_s": r["step_time_s"],
                "step_times_s": r["step_times_s"],
                "useful_tokens_per_s": useful / r["step_time_s"],
                "loadavg_during": r["loadavg_during"],
                "final_loss": r["final_loss"],
                "config": r["config"],
            }
            by_mode[mode] = row
            yield row
        if {"off", "on"} <= set(by_mode):
            yield (
                {
                    "kind": "packing_ratio",
                    "pipeline": pipeline,
                    "lengths": lengths,
                    "seq": seq,
                    "samples": n,
                    "cut_tokens": st["cut_tokens"],
                    "useful_tokens_per_s_ratio": by_mode["on"]["useful_tokens_per_s"]
                    / by_mode["off"]["useful_tokens_per_s"],
                }
            )


def summary(row: dict) -> str:
    if row["kind"] == "packing":
        return (
            f"packing {row['pipeline']:<10} {row['packing']:<3} rows={row['rows']:<3} "
            f"S={row['seq']} pad={row['pad_fraction']:.3f} step={row['step_time_s']:.2f}s "
            f"useful tok/s={row['useful_tokens_per_s']:.0f}"
        )
    if row["kind"] == "packing_ratio":
        return (
            f"packing {row['pipeline']:<10} useful tok/s packed/padded = "
            f"{row['useful_tokens_per_s_ratio']:.2f}x ({row['lengths']}, S={row['seq']})"
        )
    return (
        f"packing critic pairs={row['pairs']} pad fraction {row['pad_fraction_padded']:.3f} "
        f"(padded) -> {row['pad_fraction_packed']:.3f} (packed into {row['rows_packed']} rows): "
        f"-{100 * row['pad_fraction_reduction']:.0f}%"
    )
