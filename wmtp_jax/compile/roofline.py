"""Per-device figures of a compiled program: memory against the chip, compiled vs analytic
FLOPs, collectives, and a roofline step time with the MFU it implies.

Roofline: step_s = max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth, collective bytes /
inter-chip bandwidth), i.e. perfect overlap of compute, memory traffic and communication; a
lower bound on the real step time, so the MFU it implies (analytic model FLOPs / step_s / peak)
is an upper bound. Compiled FLOPs include remat recomputation (HFU numerator); analytic ones
do not (MFU numerator, wmtp_jax.bench.flops).
"""

from __future__ import annotations

from wmtp_jax.compile import hlo
from wmtp_jax.compile.aot import Program, human
from wmtp_jax.compile.topology import Topology


def memory(prog: Program, topo: Topology) -> dict:
    m = prog.compiled.memory_analysis()
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")
    }
    out["generated_code"] = int(m.generated_code_size_in_bytes)
    total = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out.update(
        per_device_bytes=total,
        device_capacity_bytes=topo.chip.hbm_bytes,
        fraction=total / topo.chip.hbm_bytes,
    )
    return out


def section(prog: Program, topo: Topology, analytic_flops_per_device: float, extra=None) -> dict:
    """The JSON object of one program (see the module docstring)."""
    a = hlo.analyze(prog.compiled.as_text())
    chip = topo.chip
    mem = memory(prog, topo)
    cost = prog.compiled.cost_analysis() or {}
    terms = {
        "compute_s": a.flops / chip.peak_flops,
        "hbm_s": a.hbm_bytes / chip.hbm_bandwidth,
        "collective_s": a.collective_bytes / chip.ici_bandwidth,
    }
    step_s = max(terms.values())
    bound = max(terms, key=terms.get)[: -len("_s")]
    return {
        **(extra or {}),
        "memory": mem,
        "flops": {
            "compiled": a.flops,
            "analytic": analytic_flops_per_device,
            "ratio": a.flops / analytic_flops_per_device if analytic_flops_per_device else None,
            "cost_analysis": float(cost.get("flops", 0.0)),
            "unknown_trip_counts": a.unknown_trip_counts,
            "kernel_calls": a.kernel_calls,  # Pallas kernel executions
            "kernel_flops": a.kernel_flops,  # splash attention's FLOPs, from shapes (in `compiled`)
        },
        "collectives": a.collectives,
        "collective_bytes": a.collective_bytes,
        "hbm_bytes": a.hbm_bytes,
        "estimate": {
            **terms,
            "step_s": step_s,
            "bound": bound,
            "mfu": analytic_flops_per_device / step_s / chip.peak_flops if step_s else None,
        },
        "fits": mem["per_device_bytes"] <= chip.hbm_bytes,
        "lower_s": prog.lower_s,
        "compile_s": prog.compile_s,
    }


def render(name: str, sec: dict, topo: Topology) -> str:
    """A few aligned lines for the console."""
    m, f, e = sec["memory"], sec["flops"], sec["estimate"]
    ratio = "" if f["ratio"] is None else f" ({f['ratio']:.2f}× analytic)"
    lines = [
        f"[{name}] per device on {topo.name}",
        f"  memory    args {human(m['argument'])}, outputs {human(m['output'])}, aliased "
        f"{human(m['alias'])}, temp {human(m['temp'])} -> total {human(m['per_device_bytes'])} "
        f"of {human(m['device_capacity_bytes'])} ({100 * m['fraction']:.1f}%) "
        f"{'fits' if sec['fits'] else 'DOES NOT FIT'}",
        f"  flops     compiled {human(f['compiled'], 'FLOP')}{ratio}, analytic "
        f"{human(f['analytic'], 'FLOP')}"
        + (
            f" (splash kernels {human(f['kernel_flops'], 'FLOP')}, from their shapes)"
            if f.get("kernel_flops")
            else ""
        ),
    ]
    if sec["collectives"]:
        parts = [f"{c['kind']} ×{c['count']} {human(c['bytes'])}" for c in sec["collectives"]]
        lines.append("  comms     " + ", ".join(parts))
    else:
        lines.append("  comms     none")
    mfu = "n/a" if e["mfu"] is None else f"{100 * e['mfu']:.1f}%"
    lines.append(
        f"  roofline  {e['step_s'] * 1e3:.1f} ms ({e['bound']}-bound; compute "
        f"{e['compute_s'] * 1e3:.1f} ms, HBM {e['hbm_s'] * 1e3:.1f} ms, comms "
        f"{e['collective_s'] * 1e3:.1f} ms) -> MFU ≤ {mfu}"
    )
    return "\n".join(lines)
