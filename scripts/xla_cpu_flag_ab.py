"""A/B of XLA compile options on the torch-bar baseline train step, in one process.

    python scripts/xla_cpu_flag_ab.py STEPS NAME=OPTION:VALUE[;OPTION:VALUE...] ...

The step is lowered once and compiled once per variant with `compile(compiler_options=...)`
(an empty spec, `base=`, compiles with none); each executable gets its own copy of the state and
the variants run round-robin, the order reversed every round, after 2 warm-up steps each. One
JSON line per variant: median process CPU ms and wall ms, × the first variant, the first loss
(its relative difference to the first variant's), the loss after the last step, and a hash of
the optimised HLO without metadata (equal hashes: the option did not change the program).
Enum values are proto names here (`LIBRARY_FUSION_TYPE_DOT`), not XLA_FLAGS' short names.
`ATTN=xla` selects the attention. See docs/performance_step.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from wmtp_jax.bench.train_step import TrainCase, make_config, make_task, synthetic_batch
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.step import build

TORCH_BAR = dict(dim=256, n_layers=6, n_heads=8, n_future=4, vocab=4096, multiple_of=256)


def parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition("=")
    opts = {}
    for kv in filter(None, rest.split(";")):
        k, _, v = kv.partition(":")
        opts[k] = {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)
    return name, opts


def program_hash(compiled) -> str:
    text = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
    return hashlib.md5(text.encode()).hexdigest()[:8]


def main(steps: int, specs: list[str]) -> None:
    case = TrainCase(batch=8, seq=256, attention=os.environ.get("ATTN", "blockwise"), **TORCH_BAR)
    config = make_config(case)
    mesh = mesh_lib.mesh_from_config(config)
    c = build(make_task(case, config, mesh), config, mesh, total_steps=1000, donate=True)
    batch = mesh_lib.shard_batch(synthetic_batch(case, case.seed), mesh, stacked=True)
    lowered = c.train_step.lower(c.state, c.fixed, c.frozen_state, batch)
    runs = []
    for name, opts in map(parse, specs):
        compiled = lowered.compile(compiler_options=opts or None)
        state = jax.tree.map(lambda x: jnp.array(x, copy=True), c.state)
        runs.append(dict(name=name, opts=opts, fn=compiled, state=state, cpu=[], wall=[]))
        runs[-1]["hash"] = program_hash(compiled)

    def step(r):
        w0, c0 = time.perf_counter(), time.process_time()
        r["state"], m = r["fn"](r["state"], c.fixed, c.frozen_state, batch)
        jax.block_until_ready((r["state"], m))
        return time.perf_counter() - w0, time.process_time() - c0, float(m["loss"])

    for r in runs:
        r["first_loss"] = step(r)[2]
        step(r)
    load = [os.getloadavg()[0]]
    for i in range(steps):
        for r in runs if i % 2 == 0 else runs[::-1]:
            w, cpu, r["last_loss"] = step(r)
            r["wall"].append(1e3 * w)
            r["cpu"].append(1e3 * cpu)
    load.append(os.getloadavg()[0])
    base_cpu, base_loss = statistics.median(runs[0]["cpu"]), runs[0]["first_loss"]
    for r in runs:
        cpu = statistics.median(r["cpu"])
        row = {
            "name": r["name"],
            "opts": r["opts"],
            "program": r["hash"],
            "cpu_ms": round(cpu),
            "cpu_vs_first": round(cpu / base_cpu, 3),
            "wall_ms": round(statistics.median(r["wall"])),
            "first_loss": r["first_loss"],
            "first_loss_rel": abs(r["first_loss"] - base_loss) / abs(base_loss),
            "last_loss": r["last_loss"],
            "cpu_all": [round(x) for x in r["cpu"]],
            "loadavg": load,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
