"""`--attention`: one causal attention call, forward + backward, per implementation and S.

For each S, every implementation (`wmtp_jax.ops.attention`, and torch's fused
`scaled_dot_product_attention` when torch is installed) is compiled first; then their steps run
round-robin `repeats` times (a load change hits all alike) and the median counts. Peak memory of
a JAX implementation = the compiled forward + backward program's `memory_analysis()` (temp +
arguments + outputs); torch's = `torch.cuda.max_memory_allocated` on GPU; on CPU (no allocator
statistics) the growth of a fresh subprocess's peak resident set over its resident set after
building the inputs (`torch_peak_rss_bytes`).

Nothing runs that would not fit: a JAX program whose compiled estimate exceeds
`MEMORY_FRACTION` of the host's available memory (`MemAvailable`, or the device's free memory)
is not run and its row says `skipped: needs X GiB, Y GiB available`; torch runs its memory
probe in a subprocess first, so an out-of-memory kill there is an error row, not the sweep's end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.ops import attention as attn

MEMORY_FRACTION = 0.7  # of the available memory a measured program may need


def available_bytes() -> int | None:
    """Free memory for a new program: the device's (`bytes_limit − bytes_in_use`) where the
    backend reports it, else the host's `MemAvailable` (Linux), else None (no guard)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclasses.dataclass(frozen=True)
class AttentionCase:
    batch: int = 8
    seq: int = 256
    n_heads: int = 8
    n_kv_heads: int = 8
    head_dim: int = 32
    dtype: str = "float32"


def flops(c: AttentionCase) -> float:
    """Causal forward + backward matmul FLOPs: forward QKᵀ and PV 2·(2·B·H·S²·hd)/2, backward
    2.5× the forward (recomputed QKᵀ, dV, dP, dQ, dK) = 3.5 · 2·B·H·S²·hd."""
    return 3.5 * 2.0 * c.batch * c.n_heads * c.seq**2 * c.head_dim


def _jax_runner(c: AttentionCase, impl: str, seed: int = 0, guard: bool = True):
    """(run() → seconds, memory dict) of a compiled forward + backward of `impl`; run is None
    when the compiled estimate exceeds MEMORY_FRACTION of `available_bytes()` (then
    `mem["skipped"]` says why)."""
    dt = jnp.dtype(c.dtype)
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.standard_normal((c.batch, c.seq, c.n_heads, c.head_dim)), dt)
    k, v = (
        jnp.asarray(r.standard_normal((c.batch, c.seq, c.n_kv_heads, c.head_dim)), dt)
        for _ in range(2)
    )
    do = jnp.asarray(r.standard_normal(q.shape), dt)

    def fwd_bwd(q, k, v, do):
        out, vjp = jax.vjp(lambda q, k, v: attn.attention(q, k, v, implementation=impl), q, k, v)
        return out, vjp(do)

    compiled = jax.jit(fwd_bwd).lower(q, k, v, do).compile()
    m = compiled.memory_analysis()
    mem = None
    if m is not None:
        mem = {
            key: int(getattr(m, f"{key}_size_in_bytes"))
            for key in ("argument", "output", "alias", "temp")
        }
        mem["estimate"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
        free = available_bytes()
        if guard and free is not None and mem["estimate"] > MEMORY_FRACTION * free:
            mem["skipped"] = (
                f"needs {mem['estimate'] / 2**30:.2f} GiB, {free / 2**30:.2f} GiB available"
            )
            return None, mem

    def run() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v, do))
        return time.perf_counter() - t0

    return run, mem


def _torch_runner(c: AttentionCase, threads: int | None, seed: int = 0):
    """(run() → seconds, peak bytes or None) of torch SDPA forward + backward (causal, GQA)."""
    import torch  # optional dependency, only for this comparison
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[c.dtype]
    g = torch.Generator().manual_seed(seed)
    mk = lambda h: torch.randn(c.batch, h, c.seq, c.head_dim, generator=g).to(dev, dt)
    q, k, v = mk(c.n_heads), mk(c.n_kv_heads), mk(c.n_kv_heads)
    for t in (q, k, v):
        t.requires_grad_(True)
    do = mk(c.n_heads)
    gqa = c.n_kv_heads != c.n_heads

    def run() -> float:
        t0 = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        torch.autograd.grad(out, (q, k, v), do)
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run()
    peak = None
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run()
        peak = int(torch.cuda.max_memory_allocated())
    return run, peak


def _on_gpu() -> bool:
    import torch  # optional dependency, only for this comparison

    return torch.cuda.is_available()


def torch_cpu_peak_rss(c: AttentionCase, threads: int | None, timeout: float = 600) -> int:
    """Peak resident-set growth (bytes) of one torch SDPA forward + backward on CPU, in a fresh
    subprocess (`python -m wmtp_jax.bench.attention CASE_JSON THREADS`): its `ru_maxrss` after
    the call minus its resident set once the inputs exist. Raises RuntimeError when the
    subprocess fails (e.g. killed for memory)."""
    p = subprocess.run(
        [sys.executable, "-m", "wmtp_jax.bench.attention", json.dumps(dataclasses.asdict(c))]
        + ([str(threads)] if threads else []),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        raise RuntimeError(f"torch memory probe exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return int(json.loads(lines[-1])["torch_peak_rss_bytes"])


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _torch_probe(case_json: str, threads: int | None) -> None:
    """The subprocess of `torch_cpu_peak_rss`: one JSON line on stdout. The high-water mark is
    reset (`/proc/self/clear_refs` ← 5, Linux ≥ 4.0) after the warm-up call, so VmHWM − VmRSS
    is the second call's own peak growth."""
    run, _ = _torch_runner(AttentionCase(**json.loads(case_json)), threads)  # one warm-up call
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_bytes("VmRSS")
    run()
    print(json.dumps({"torch_peak_rss_bytes": max(0, _status_bytes("VmHWM") - base)}))


def _runners(c, impls, *, torch_ref: bool, threads, compile_only: bool):
    """(runners {name: (run, info)}, errors {name: message}, skipped {name: info}) of one case:
    every implementation compiled (an error row when it fails), torch SDPA beside them."""
    runners, errors, skipped = {}, {}, {}
    for impl in impls:
        try:
            resolved = attn.resolve(impl, c.seq, jnp.dtype(c.dtype), c.head_dim)
            run, mem = _jax_runner(c, impl, guard=not compile_only)
            info = {"memory_analysis": mem, "resolved": resolved}
            if run is None:
                skipped[impl] = {**info, "skipped": mem["skipped"]}
            else:
                runners[impl] = (run, info)
        except Exception as e:  # noqa: BLE001 - e.g. OOM, cudnn on CPU: an error row
            errors[impl] = f"{type(e).__name__}: {str(e)[:500]}"
    if torch_ref:
        try:
            rss = None if _on_gpu() else torch_cpu_peak_rss(c, threads)
            run, peak = _torch_runner(c, threads)
            runners["torch_sdpa"] = (run, {"torch_peak_bytes": peak, "torch_peak_rss_bytes": rss})
        except Exception as e:  # noqa: BLE001 - torch missing or failing: recorded
            errors["torch_sdpa"] = f"{type(e).__name__}: {str(e)[:500]}"
    return runners, errors, skipped


def _time(runners: dict, warmup: int, repeats: int):
    """({name: seconds of each call}, load average before and after); the runners alternate call
    by call, after `warmup` calls each."""
    for run, _ in runners.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runners}
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for name, (run, _) in runners.items():
            times[name].append(run())
    load.append(os.getloadavg()[0])
    return times, load


def run_attention_sweep(
    cases: list,
    impls: list,
    *,
    repeats: int = 5,
    warmup: int = 1,
    torch_ref: bool = True,
    threads: int | None = None,
    compile_only: bool = False,
) -> list[dict]:
    """One row per (case, implementation): `fwd_bwd_ms` median, `fwd_bwd_ms_all`, memory,
    `ratio_vs_torch_sdpa`, `memory_vs_xla`, and the load average around the timing
    (`compile_only`: memory only, no torch, nothing run)."""
    rows = []
    torch_ref = torch_ref and not compile_only
    repeats, warmup = (0, 0) if compile_only else (repeats, warmup)
    for c in cases:
        runners, errors, skipped = _runners(
            c, impls, torch_ref=torch_ref, threads=threads, compile_only=compile_only
        )
        times, load = _time(runners, warmup, repeats)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items() if t}
        xla_info = skipped.get("xla") or runners.get("xla", (None, {}))[1]
        xla_mem = (xla_info.get("memory_analysis") or {}).get("estimate")
        for name in list(impls) + (["torch_sdpa"] if torch_ref else []):
            row = {
                "kind": "attention",
                "config": dataclasses.asdict(c),
                "implementation": name,
                "loadavg_during": load,
            }
            if name in errors:
                rows.append({**row, "error": errors[name]})
                continue
            row.update(skipped.get(name) or runners[name][1])
            if not compile_only and name not in skipped:
                row.update(
                    fwd_bwd_ms=ms[name],
                    fwd_bwd_ms_all=[1e3 * t for t in times[name]],
                    achieved_tflops=flops(c) / (ms[name] / 1e3) / 1e12,
                )
            if "torch_sdpa" in ms and name in ms:
                row["ratio_vs_torch_sdpa"] = ms[name] / ms["torch_sdpa"]
            est = (row.get("memory_analysis") or {}).get("estimate")
            if est and xla_mem:
                row["memory_vs_xla"] = est / xla_mem
            rows.append(row)
    return rows


if __name__ == "__main__":  # the torch memory probe's subprocess
    _torch_probe(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
