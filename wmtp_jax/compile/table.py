"""`python -m wmtp_jax.compile.table FILE.json ...`: one markdown row per report of
`python -m wmtp_jax.compile --out` (the tables of docs/scaling.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wmtp_jax.compile.aot import human

HEAD = (
    "| run | pipeline | slice | sharding | remat | memory / device | of HBM | compiled / "
    "analytic FLOPs per device | collectives per step | roofline step | MFU ≤ | fits |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _time(s: float) -> str:
    return f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.1f} ms"


def row(name: str, r: dict, key: str = "train") -> str:
    s, sec = r["settings"], r.get(key, {})
    topo = f"{r['topology']['name']} ({r['topology']['devices']} chips)"
    if "memory" not in sec:
        why = sec.get("reason", sec.get("skipped", "not compiled"))
        return f"| {name} | {r['pipeline']} | {topo} | {s['sharding']} | {s['remat']} | {why} |"
    m, f, e = sec["memory"], sec["flops"], sec["estimate"]
    coll = ", ".join(f"{c['kind']} {c['count']}× {human(c['bytes'])}" for c in sec["collectives"])
    return (
        f"| {name} | {r['pipeline']} | {topo} | {s['sharding']} | {s['remat']} | "
        f"{human(m['per_device_bytes'])} | {100 * m['fraction']:.1f}% | "
        f"{human(f['compiled'], 'FLOP')} / {human(f['analytic'], 'FLOP')} ({f['ratio']:.2f}×) | "
        f"{coll or 'none'} | {_time(e['step_s'])} ({e['bound']}) | {100 * e['mfu']:.1f}% | "
        f"{'yes' if sec['fits'] else 'no'} |"
    )


def main(paths) -> str:
    lines = [HEAD]
    for p in paths:
        lines.append(row(Path(p).stem, json.loads(Path(p).read_text())))
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
