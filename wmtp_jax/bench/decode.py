"""Decode throughput: greedy vs self-speculative MTP decoding through `wmtp_jax.generate.Sampler`.

Both modes run the same compiled-once programs the evaluation uses (bucketed prefill +
on-device `while_loop`). EOS is disabled (eos_id = −1, never a token id), so every row decodes
exactly `max_new_tokens` tokens and the two modes do the same work. The first call (compile +
run) is reported separately; tokens/s is the median over `repeats` further calls.
Self-speculative output must equal the greedy output; `match_greedy` is the fraction of equal
tokens (float ties between differently shaped matmuls may flip a few).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import numpy as np
from flax import nnx

from wmtp_jax.data import load_tokenizer
from wmtp_jax.eval import load_problems
from wmtp_jax.generate import SamplingConfig
from wmtp_jax.generate.sampler import Sampler, bucket_length
from wmtp_jax.models import serialization
from wmtp_jax.models.args import ModelArgs
from wmtp_jax.models.mtp import MTPTransformer

MODES = ("greedy", "speculative")


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    policy_dir: str = ""  # a `mtp` model dir; "" = random init of the shape below
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 4
    n_future: int = 4
    vocab: int = 1024
    multiple_of: int = 64
    batch: int = 1
    prompt_len: int = 16
    max_new_tokens: int = 64
    dtype: str = "float32"
    seed: int = 0
    prompts: str = ""  # "" = random ids; else a benchmark (e.g. synthetic): its prompts, real EOS
    data_dir: str = "storage/datasets"
    n_prompts: int = 32


def load_policy(case: DecodeCase):
    """(model, args): the policy of `case.policy_dir`, or a random-init MTPTransformer."""
    if case.policy_dir:
        model = serialization.load_model(case.policy_dir, kind="mtp", dtype=case.dtype)
        return model, model.args
    args = ModelArgs(
        dim=case.dim,
        n_layers=case.n_layers,
        n_heads=case.n_heads,
        vocab_size=case.vocab,
        multiple_of=case.multiple_of,
        n_future_tokens=case.n_future,
        max_seq_len=case.prompt_len + case.max_new_tokens + case.n_future,
        dtype=case.dtype,
        param_dtype=case.dtype,
    )
    return MTPTransformer(args, rngs=nnx.Rngs(case.seed)), args


def run_decode(case: DecodeCase, *, repeats: int = 3) -> list[dict]:
    """One result dict per mode (greedy, speculative)."""
    if case.prompts:
        return run_decode_prompts(case, repeats=repeats)
    model, args = load_policy(case)
    rng = np.random.default_rng(case.seed)
    b, l = case.batch, case.prompt_len
    prompts = rng.integers(0, args.vocab_size, size=(b, l), dtype=np.int32)
    lens = np.full((b,), l, np.int32)
    keys = jax.random.split(jax.random.PRNGKey(case.seed), b)
    live = np.ones((b,), bool)
    sc = SamplingConfig(temperature=0.0, max_new_tokens=case.max_new_tokens)
    outs, rows = {}, []
    for mode in MODES:
        if mode == "speculative" and args.n_future_tokens < 2:
            continue
        s = Sampler(model, eos_id=-1, batch_size=b, min_bucket=l, speculative=mode == "speculative")
        t0 = time.perf_counter()
        s.generate_batch(prompts, lens, keys, live, sc)
        first_s = time.perf_counter() - t0
        s.reset_stats()
        times, load = [], [os.getloadavg()[0]]
        for _ in range(repeats):
            t0 = time.perf_counter()
            outs[mode] = s.generate_batch(prompts, lens, keys, live, sc)
            times.append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
        st = s.stats
        sec = statistics.median(times)
        n_tok = b * case.max_new_tokens
        rows.append(
            {
                "kind": "decode",
                "mode": mode,
                "config": dataclasses.asdict(case),
                "policy": "dir" if case.policy_dir else "random_init",
                "first_call_s": first_s,
                "seconds": sec,
                "times_s": times,
                "tokens_per_s": n_tok / sec,
                "new_tokens": n_tok,
                "forwards_per_call": st["forwards"] / repeats,
                "tokens_per_forward": case.max_new_tokens
                * repeats
                / max(st["forwards"], 1),  # per row
                "acceptance_rate": (st["accepted"] / st["drafted"]) if st.get("drafted") else None,
                "loadavg_during": load,
            }
        )
    if "speculative" in outs:
        _vs_greedy(
            rows,
            float(np.mean(outs["speculative"] == outs["greedy"])),
            speedup_vs_greedy="tokens_per_s",
        )
    return rows


def _vs_greedy(rows: list[dict], match: float, **ratios: str) -> None:
    """Add `match_greedy` and, per `out=metric`, row[out] = row[metric] / the greedy row's."""
    for r in rows:
        r["match_greedy"] = match if r["mode"] == "speculative" else 1.0
        for out, metric in ratios.items():
            r[out] = r[metric] / rows[0][metric]


def _warm_samplers(model, tok, ids, case: DecodeCase, modes, bucket: int, full, one):
    """One compiled Sampler per mode (a full pass and a one-token pass run once, stats reset) and
    the seconds of each mode's first (compiling) call."""
    samplers, first = {}, {}
    for mode in modes:
        samplers[mode] = Sampler(
            model,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id or 0,
            batch_size=case.batch,
            min_bucket=bucket,
            speculative=mode == "speculative",
        )
        t0 = time.perf_counter()
        samplers[mode].sample(ids, 1, full)
        first[mode] = time.perf_counter() - t0
        samplers[mode].sample(ids, 1, one)
        samplers[mode].reset_stats()
    return samplers, first


def _passes(samplers: dict, ids, sampling, repeats: int):
    """({mode: seconds of each pass}, {mode: the last pass's outputs}); the modes alternate pass
    by pass, so a load burst on a shared host hits both."""
    times, outs = {m: [] for m in samplers}, {}
    for _ in range(repeats):
        for mode, sampler in samplers.items():
            t0 = time.perf_counter()
            outs[mode] = sampler.sample(ids, 1, sampling)
            times[mode].append(time.perf_counter() - t0)
    return times, outs


def _prompts_row(case: DecodeCase, mode, st, times, pre, repeats: int, n_prompts: int) -> dict:
    """One mode's numbers: `st` its sampler stats over `repeats` passes, `times` / `pre` the
    seconds of its full and one-token (prefill) passes."""
    n_tok = st["tokens"] // repeats
    sec, prefill = min(times), min(pre)
    return {
        "kind": "decode",
        "mode": mode,
        "config": dataclasses.asdict(case),
        "policy": "dir",
        "seconds": sec,
        "times_s": times,
        "tokens_per_s": n_tok / sec,
        "new_tokens": n_tok,
        "prefill_s": prefill,
        "prefill_times_s": pre,
        "decode_phase_tokens_per_s": (n_tok - n_prompts) / max(sec - prefill, 1e-9),
        "forwards_per_call": st["forwards"] / repeats,
        "tokens_per_forward": n_tok / max(st["forwards"] / repeats, 1) / case.batch,
        "acceptance_rate": (st["accepted"] / st["drafted"]) if st.get("drafted") else None,
    }


def run_decode_prompts(case: DecodeCase, *, repeats: int = 3) -> list[dict]:
    """Greedy vs speculative on a benchmark's real prompts (`case.prompts`, test split, the first
    `n_prompts`) with the policy's tokenizer and its real EOS, as the evaluation decodes them.

    Both modes emit the same tokens (speculative = greedy), so tokens/s compares equal work:
    tokens = generated tokens before EOS; seconds = the fastest of `repeats` passes over the
    prompts (compiled; the modes alternate pass by pass, so a load burst on a shared host hits
    both). `prefill_s` times the same passes with max_new_tokens = 1 (prefill + first token; the
    speculative prefill runs every head), and `decode_phase_tokens_per_s` = (tokens − prompts) /
    (seconds − prefill_s): the rate after the prefill, which short completions hide.
    """
    if not case.policy_dir:
        raise ValueError("--prompts needs --policy-dir (a trained policy and its tokenizer)")
    model, args = load_policy(case)
    tok = load_tokenizer(os.path.join(case.policy_dir, "tokenizer"))
    problems = load_problems(case.prompts, case.data_dir, "test", limit=case.n_prompts)
    ids = [tok.encode(p.prompt) for p in problems.values()]
    full = SamplingConfig(temperature=0.0, max_new_tokens=case.max_new_tokens)
    one = SamplingConfig(temperature=0.0, max_new_tokens=1)
    bucket = bucket_length(max(len(i) for i in ids))  # one program per mode
    modes = [m for m in MODES if m == "greedy" or args.n_future_tokens >= 2]
    samplers, first = _warm_samplers(model, tok, ids, case, modes, bucket, full, one)
    load = [os.getloadavg()[0]]
    times, outs = _passes(samplers, ids, full, repeats)
    stats = {m: dict(samplers[m].stats) for m in modes}
    pre, _ = _passes(samplers, ids, one, repeats)
    load.append(os.getloadavg()[0])
    rows = [
        _prompts_row(case, mode, stats[mode], times[mode], pre[mode], repeats, len(ids))
        | {"prompt_bucket": bucket, "first_call_s": first[mode], "loadavg_during": load}
        for mode in modes
    ]
    if "speculative" in outs:
        g, sp = outs["greedy"], outs["speculative"]
        _vs_greedy(
            rows,
            float(np.mean([a == b for a, b in zip(g, sp)])),  # identical prompts
            speedup_vs_greedy="tokens_per_s",
            decode_phase_speedup_vs_greedy="decode_phase_tokens_per_s",
        )
    return rows
