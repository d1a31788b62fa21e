"""Where the torch-bar baseline train step's time goes, per part, in wmtp_jax or in torch.

    python scripts/step_profile.py [--out DIR] [--steps 3]   # wmtp_jax: jax.profiler trace
    python scripts/step_profile.py --torch [--threads 1]      # torch: torch.profiler

wmtp_jax: `jax.profiler.trace` of `--steps` compiled steps after 2 warm-up steps (XLA_FLAGS
defaults applied as the entry points do); the per-thunk events of XLA's worker threads are
reduced to self time (a `while` loop minus the ops inside it), matched to the optimised HLO
(written to DIR/step_hlo.txt) and classified by `op_name` and shape: `vmap` = the MTP heads,
one `while` = the GA scan only (output projection + loss), two = the scanned trunk, `bh..,bh..`
einsums or a 128-wide block = attention, no `while` = the optimizer. Traced ms sum the threads
and include preemption, so compare shares between runs. torch: self CPU time per aten op
(1 thread by default: with 2, an op's time includes waiting for a preempted thread), classified
by name and input shapes. See docs/performance_step.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

from wmtp_jax.train.xla_flags import apply_cpu_defaults

apply_cpu_defaults()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from wmtp_jax.bench.train_step import TrainCase, prepare_case, synthetic_batch  # noqa: E402

CASE = TrainCase(
    dim=256, n_layers=6, n_heads=8, n_future=4, vocab=4096, multiple_of=256, batch=8, seq=256,
    attention="blockwise",
)  # fmt: skip


def jax_category(name: str, shape: str, op: str) -> str:
    if name.startswith(("ThunkExecutor", "SlinkyThreadPool")) or not (shape or op):
        return "runtime"
    if not op and re.search(r"\[8,256,4,", shape):
        return "output projection + MTP CE"
    if "jit(_take)" in op:
        return "embedding"
    if op and "while/body" not in op:
        return "optimizer (clip + AdamW)"
    if op.count("while/body") == 1 and "vmap" not in op:
        return "output projection + MTP CE"
    if re.search(r"bh\w*,bh", op) or re.search(r"\b128\b", shape) or name.startswith("while"):
        return "attention"
    return "blocks without attention"


def self_times(trace_dir: str) -> collections.Counter:
    path = sorted(glob.glob(f"{trace_dir}/plugins/profile/*/*.trace.json.gz"))[-1]
    events = json.load(gzip.open(path))["traceEvents"]
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    per_thread = collections.defaultdict(list)
    for e in events:
        thread = names.get((e.get("pid"), e.get("tid")), "")
        if e.get("ph") == "X" and ("XLAEigen" in thread or "PjRtCpuClient" in thread):
            per_thread[(e["pid"], e["tid"])].append(e)
    out = collections.Counter()
    for evs in per_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in evs:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            e["self"] = e["dur"]
            if stack:
                stack[-1]["self"] -= e["dur"]
            stack.append(e)
        for e in evs:
            if not e["name"].startswith("ThunkExecutor::Execute (wait"):
                out[e["name"]] += e["self"]
    return out


def profile_jax(out_dir: str, steps: int) -> dict:
    p = prepare_case(CASE)
    hlo = p.compiled.as_text()
    os.makedirs(out_dir, exist_ok=True)
    with open(f"{out_dir}/step_hlo.txt", "w") as f:
        f.write(hlo)
    for _ in range(2):
        p.step()
    with jax.profiler.trace(f"{out_dir}/trace"):
        for _ in range(steps):
            p.step()
    info = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ", line)
        if m:
            op = re.search(r'op_name="([^"]*)"', line)
            info[m.group(1)] = (m.group(2), op.group(1) if op else "")
    parts = collections.Counter()
    for name, us in self_times(f"{out_dir}/trace").items():
        parts[jax_category(name, *info.get(name, ("", "")))] += us / 1e3 / steps
    return parts


def profile_torch(steps: int, threads: int) -> dict:
    import torch  # optional dependency, only for this comparison
    from torch.profiler import ProfilerActivity, profile

    from wmtp_jax.bench import torch_model

    torch.set_num_threads(threads)
    p = prepare_case(CASE)
    model = torch_model.MTP(CASE.policy_args(), jax.device_get(p.state["params"].to_pure_dict()))
    opt = torch.optim.AdamW(model.parameters(), 1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    b = {k: torch.from_numpy(np.asarray(v)[0]).long() for k, v in synthetic_batch(CASE).items()}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch_model.mtp_ce(model(b["input_ids"]), b["labels"], b["attention_mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    parts = collections.Counter()
    for e in prof.key_averages(group_by_input_shape=True):
        n, shapes = e.key, str(e.input_shapes)
        if "attention" in n:
            c = "attention"
        elif any(s in n for s in ("foreach", "Optimizer", "adam", "clip")):
            c = "optimizer (clip + AdamW)"
        elif "embedding" in n:
            c = "embedding"
        elif "4096" in shapes or "8192" in shapes or "nll" in n or "log_softmax" in n:
            c = "output projection + MTP CE"
        else:
            c = "blocks without attention"
        parts[c] += e.self_cpu_time_total / 1e3 / steps
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", action="store_true", help="profile the torch step instead")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="/tmp/step_profile", help="trace + HLO directory (jax)")
    a = ap.parse_args()
    parts = profile_torch(a.steps, a.threads) if a.torch else profile_jax(a.out, a.steps)
    total = sum(parts.values())
    for k, v in parts.most_common():
        print(f"| {k} | {v:.0f} ms | {100 * v / total:.1f} % |")
    print(f"| total (traced, per step) | {total:.0f} ms | |")


if __name__ == "__main__":
    main()
