"""Per-head training CE of `:small` runs, side by side: `train/ce_head_<k>` from each run's
metrics.jsonl (and `val/pass1_head0` where logged) -> one PNG and a Markdown table.

    python scripts/plot_head_losses.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run_dir: Path) -> dict[int, dict]:
    """step -> merged metrics of that step."""
    rows: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        rows.setdefault(int(d["step"]), {}).update(d)
    return rows


def heads(rows: dict[int, dict]) -> list[int]:
    keys = {k for r in rows.values() for k in r if k.startswith("train/ce_head_")}
    return sorted(int(k.rsplit("_", 1)[1]) for k in keys)


def table(runs: dict[str, dict[int, dict]]) -> str:
    lines = [
        "| run | step | " + " | ".join(f"CE head {k}" for k in range(4)) + " | val pass@1 head 0 |"
    ]
    lines.append("| --- " * 7 + "|")
    for label, rows in runs.items():
        for step in sorted(rows):
            r = rows[step]
            if "train/ce_head_0" not in r:
                continue
            ce = " | ".join(f"{r.get(f'train/ce_head_{k}', float('nan')):.2f}" for k in heads(rows))
            p = r.get("val/pass1_head0")
            lines.append(f"| {label} | {step} | {ce} | {'' if p is None else f'{p:.3f}'} |")
    return "\n".join(lines)


def main(argv):
    out = Path(argv[0])
    runs = {a.split("=", 1)[0]: read(Path(a.split("=", 1)[1])) for a in argv[1:]}
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), sharey=True, squeeze=False)
    for ax, (label, rows) in zip(axes[0], runs.items()):
        steps = sorted(s for s in rows if "train/ce_head_0" in rows[s])
        for k in heads(rows):
            ax.plot(
                steps, [rows[s][f"train/ce_head_{k}"] for s in steps], marker=".", label=f"head {k}"
            )
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("train CE per head (nats)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(table(runs))


if __name__ == "__main__":
    main(sys.argv[1:])
