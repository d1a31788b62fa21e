"""Plot train-step throughput (tokens/s) against batch size and sequence length from a
results JSONL: left panel one line per (pipeline, seq) over batch, right panel one line per
(pipeline, batch) over seq. Rows measured by `python -m wmtp_jax.bench --what train`.
Drawn on a bare `matplotlib.figure.Figure` (no pyplot, no global backend to select)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from wmtp_jax.data.records import iter_jsonl


def load_rows(path, kind: str = "train") -> list[dict]:
    rows = []
    for _, r in iter_jsonl(path):
        if r.get("kind") == kind and r.get("tokens_per_s"):
            rows.append(r)
    return rows


VARIANT_KEYS = ("dim", "n_layers", "dtype", "remat", "loss", "lora_rank", "donate", "sharding")


def series(rows: list[dict], x: str, group: str) -> dict:
    """{label: sorted [(x, tokens/s)]}, one series per pipeline, `group` value and every other
    setting that varies between the rows (the last row wins per point)."""
    varying = [k for k in VARIANT_KEYS if len({str(r["config"].get(k)) for r in rows}) > 1]
    pts: dict = defaultdict(dict)
    for r in rows:
        c = r["config"]
        label = " ".join([c["pipeline"], f"{group}={c[group]}"] + [f"{k}={c[k]}" for k in varying])
        pts[label][c[x]] = r["tokens_per_s"]
    return {k: sorted(v.items()) for k, v in sorted(pts.items())}


def plot_throughput(rows: list[dict], out) -> Path:
    """Write the two-panel PNG `out`; returns its path."""
    # heavy (~0.5 s) and only --plot draws: the bench CLI and its --isolate workers skip it
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no train rows with tokens_per_s to plot")
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, (x, group) in zip(axes, (("batch", "seq"), ("seq", "batch"))):
        for name, pts in series(rows, x, group).items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x)
        ax.set_ylabel("train tokens/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    m = rows[-1].get("machine", {})
    fig.suptitle(
        f"train-step throughput — {m.get('device_kind', '?')} ×{m.get('device_count', '?')}"
        f" ({m.get('backend', '?')}), dtype {rows[-1]['config']['dtype']}",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
