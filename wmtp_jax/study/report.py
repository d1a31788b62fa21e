"""results.json / results.md / results.png from the cells on disk.

results.json:
  arms.<arm>.<metric>.{mean, ci95}    metric: pass@1 (greedy), sampled_pass@k; bootstrap over
                                      problems × seeds (wmtp_jax.study.intervals)
  arms.<arm>.seeds.<seed>.{pass@1, samples, sampled_pass@k, temperature, sampled_samples}
                                      (no sampled_pass@k, temperature None: greedy only)
  paired.<arm>-baseline.<metric>.{delta, ci95}, and paired.<arm>-baseline.{delta, ci95} for
                                      greedy pass@1 (same resampled seeds and problems)
  contrasts.<arm>-<other>             the same for the CONTRASTS pairs whose arms both have cells
  critic_credit.{auroc, ci95, n_pairs, n_solutions, mean_weight_inside, mean_weight_outside,
                 pairwise_accuracy, seeds.<seed>}
  initial_policy.{pass@1, ...}, grid, complete, missing, config
  timings.{cells.<arm>.<seed>, prerequisites.<seed>}   (the only keys that vary between re-runs)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from wmtp_jax.configs.experiment import CRITICS
from wmtp_jax.study import cells, credit, intervals

RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "results.json", "results.md", "results.png"
# secondary paired comparisons besides "arm − baseline": does the method beat next-token training,
# what would weighting the truly critical tokens add to it, and does another critic objective
CONTRASTS = (("verifiable", "ntp"), ("oracle", "verifiable")) + tuple(
    (f"verifiable_{k}", "verifiable") for k in CRITICS if k != "ranking"
)


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def load_cells(out: Path) -> dict:
    """{(arm, seed): cell dict} of every finished cell under `out`."""
    got = {}
    for f in sorted(out.glob(f"seed_*/*/{cells.CELL_FILE}")):
        c = json.loads(f.read_text())
        got[(c["arm"], int(c["seed"]))] = c
    return got


def load_credit(out: Path) -> dict:
    """{objective: {seed: (summary, arrays)}} of every finished critic-credit measurement
    (`seed_<s>/credit/` is the ranking critic's, `seed_<s>/credit_<objective>/` the others')."""
    got: dict = {}
    for f in sorted(out.glob("seed_*/credit*/credit.json")):
        s = json.loads(f.read_text())
        with np.load(f.with_suffix(".npz")) as z:
            arrays = {k: z[k] for k in z.files}
        got.setdefault(s.get("objective", "ranking"), {})[int(s["seed"])] = (s, arrays)
    return got


def _matrix(cs: list[dict], metric: str) -> np.ndarray:
    """`[S, P]` per-problem scores of `metric` for the cells `cs` (one per seed), columns in the
    first cell's problem order."""
    key = "sampled_task_ids" if metric.startswith("sampled_") else None
    ids = cs[0][key] if key else cs[0]["per_problem"]["task_ids"]
    rows = []
    for c in cs:
        their = c[key] if key else c["per_problem"]["task_ids"]
        if sorted(their) != sorted(ids):
            raise ValueError(
                f"cell {c['arm']} seed {c['seed']}: evaluated on other problems "
                f"than {cs[0]['arm']} seed {cs[0]['seed']}"
            )
        pos = {t: i for i, t in enumerate(their)}
        vals = c["per_problem"][metric]
        rows.append([vals[pos[t]] for t in ids])
    return np.asarray(rows, np.float64)


def _metrics_of(cs: list[dict]) -> list[str]:
    return [k for k in cs[0]["metrics"]]


def arm_results(cellmap: dict, arm: str, seeds: list[int], n: int, seed: int) -> dict:
    cs = [cellmap[(arm, s)] for s in seeds if (arm, s) in cellmap]
    out = {m: intervals.bootstrap_ci(_matrix(cs, m), n, seed) for m in _metrics_of(cs)}
    out["n_seeds"] = len(cs)
    out["n_problems"] = cs[0]["n_problems"]
    out["seeds"] = {
        str(c["seed"]): {
            **c["metrics"],
            "samples": c["samples"],
            "sampled_samples": c["sampled_samples"],
            "temperature": c["temperature"],
            "temperature_sweep": c["temperature_sweep"],
            "metrics_file": c["metrics_file"],
        }
        for c in cs
    }
    return out


def paired_results(
    cellmap: dict, arm: str, seeds: list[int], n: int, seed: int, ref: str = "baseline"
) -> dict | None:
    """`arm` − `ref` per metric over the seeds both have: {delta, ci95} (paired bootstrap over
    problems × seeds); None when they share no seed."""
    both = [s for s in seeds if (arm, s) in cellmap and (ref, s) in cellmap]
    if not both:
        return None
    a = [cellmap[(arm, s)] for s in both]
    b = [cellmap[(ref, s)] for s in both]
    out = {"seeds": both}
    for m in _metrics_of(a):
        out[m] = intervals.paired_bootstrap_ci(_matrix(a, m), _aligned(b, a, m), n, seed)
    out.update(delta=out["pass@1"]["delta"], ci95=out["pass@1"]["ci95"])
    return out


def _aligned(b: list[dict], a: list[dict], metric: str) -> np.ndarray:
    """`b`'s per-problem scores in `a`'s problem order (paired columns)."""
    return _matrix([a[0]] + b, metric)[1:]


def credit_results(creds: dict, n: int, seed: int) -> dict | None:
    if not creds:
        return None
    seeds = sorted(creds)
    arrays = [creds[s][1] for s in seeds]
    ref = arrays[0]
    for a in arrays[1:]:
        if not (
            np.array_equal(a["inside"], ref["inside"])
            and np.array_equal(a["solution"], ref["solution"])
        ):
            raise ValueError("critic credit: seeds were measured on different tokens")
    per = {str(s): creds[s][0] for s in seeds}
    top = [credit.top1_inside(a["score"], a["inside"], a["solution"]) for a in arrays]
    mean = lambda k: float(np.mean([creds[s][0][k] for s in seeds]))
    return {
        "auroc": mean("auroc"),
        "ci95": credit.auroc_interval(
            [a["score"] for a in arrays], ref["inside"], ref["solution"], n, seed
        ),
        "n_solutions": creds[seeds[0]][0]["n_solutions"],
        "n_pairs": creds[seeds[0]][0]["n_pairs"],
        "n_tokens_inside": creds[seeds[0]][0]["n_tokens_inside"],
        "n_tokens_outside": creds[seeds[0]][0]["n_tokens_outside"],
        "mean_weight_inside": mean("mean_weight_inside"),
        "mean_weight_outside": mean("mean_weight_outside"),
        "pairwise_accuracy": mean("pairwise_accuracy"),
        "top1_inside": float(np.mean([t[0] for t in top])),
        "top1_chance": top[0][1],
        # where the weights sit in a solution: mean weight per position quintile (seed mean),
        # and the share of tokens there that are inside a mutated span
        "weight_by_position": np.mean(
            [credit.by_position(a["weight"], a["solution"]) for a in arrays], 0
        ).tolist(),
        "inside_by_position": credit.by_position(ref["inside"], ref["solution"]),
        "seeds": {
            k: {
                x: v[x]
                for x in ("auroc", "mean_weight_inside", "mean_weight_outside", "pairwise_accuracy")
            }
            for k, v in per.items()
        },
    }


def aggregate(out, *, write: bool | None = True) -> dict:
    """The results dict of everything finished under `out`, written as results.{json,md,png}
    when `write` (None: when complete); `complete` says whether every cell of the grid in
    study.json exists."""
    out = Path(out)
    study = json.loads((out / cells.STUDY_FILE).read_text())
    cfg = study["config"]
    n, bseed = int(cfg["bootstrap"]["n_resamples"]), int(cfg["bootstrap"]["seed"])
    cellmap = load_cells(out)
    arms = list(study["arms"]) + sorted({a for a, _ in cellmap} - set(study["arms"]))
    seeds = sorted(set(study["seeds"]) | {s for _, s in cellmap})
    # the cells asked for (studies recorded before `cells`: every arm × every seed)
    asked = [(a, int(s)) for a, s in study.get("cells", [[a, s] for a in arms for s in seeds])]
    missing = [f"{a}/seed_{s}" for a, s in asked if (a, s) not in cellmap]
    res = {
        "complete": not missing,
        "missing": missing,
        "grid": {"arms": arms, "seeds": seeds},
        "arms": {
            a: arm_results(cellmap, a, seeds, n, bseed)
            for a in arms
            if any((a, s) in cellmap for s in seeds)
        },
    }
    res["paired"] = {
        f"{a}-baseline": p
        for a in res["arms"]
        if a != "baseline"
        if (p := paired_results(cellmap, a, seeds, n, bseed)) is not None
    }
    contrasts = {
        f"{a}-{b}": p
        for a, b in CONTRASTS
        if (p := paired_results(cellmap, a, seeds, n, bseed, ref=b)) is not None
    }
    if contrasts:  # absent otherwise: earlier studies' results.json stay as committed
        res["contrasts"] = contrasts
    creds = load_credit(out)
    res["critic_credits"] = {k: credit_results(creds[k], n, bseed) for k in CRITICS if k in creds}
    res["critic_credit"] = res["critic_credits"].get("ranking")  # the `verifiable` arm's critic
    init = out / "initial" / "eval" / "greedy" / "summary.json"
    if init.exists():
        s = json.loads(init.read_text())
        res["initial_policy"] = {
            "pass@1": s["pass@1"],
            "n_problems": s["n_problems"],
            "checkpoint": s["checkpoint"]["checkpoint"],
        }
    res["bootstrap"] = {
        "n_resamples": n,
        "seed": bseed,
        "confidence": 0.95,
        "over": "problems x seeds (percentile)",
    }
    res["config"] = cfg
    res["timings"] = timings(out, cellmap)
    res = _nan_to_none(res)
    if write or (write is None and res["complete"]):
        cells.write_json(out / RESULTS_JSON, res)
        (out / RESULTS_MD).write_text(markdown(res))
        plot(res, cellmap, out / RESULTS_PNG)
    return res


def timings(out: Path, cellmap: dict) -> dict:
    t = {"cells": {}, "prerequisites": {}}
    for (a, s), c in sorted(cellmap.items()):
        t["cells"].setdefault(a, {})[str(s)] = c["timings"]
    for d in sorted(out.glob("seed_*")):
        s = d.name.split("_", 1)[1]
        row = {}
        for role in ("critic", "reference"):
            f = d / role / cells.TRAIN_DONE
            if f.exists():
                row[f"{role}_s"] = json.loads(f.read_text())["seconds"]
        for f in sorted(d.glob("critic_*/" + cells.TRAIN_DONE)):
            row[f"{f.parent.name}_s"] = json.loads(f.read_text())["seconds"]
        for f in sorted(d.glob("credit*/credit.json")):
            row[f"{f.parent.name}_s"] = json.loads(f.read_text())["seconds"]
        if row:
            t["prerequisites"][s] = row
    return t


def split(res: dict) -> str:
    """The split the study's cells were evaluated on (studies before `eval.split`: test)."""
    return res["config"]["eval"].get("split", "test")


def _f2(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _fmt(r: dict | None, key: str = "mean") -> str:
    if not r or r.get(key) is None:
        return "–"
    lo, hi = r["ci95"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _delta_table(caption: str, pairs: dict, metrics: list, title: dict, with_seeds: bool) -> list:
    """Markdown lines of one table of paired deltas ({comparison: paired_results}), one row each,
    with a column of the number of shared seeds when `with_seeds`."""
    seeds_col = "seeds | " if with_seeds else ""
    lines = [
        "",
        caption,
        "",
        f"| comparison | {seeds_col}" + " | ".join(title[m] for m in metrics) + " |",
        "|---|" + "---|" * (len(metrics) + int(with_seeds)),
    ]
    for k, p in pairs.items():
        n = f"{len(p['seeds'])} | " if with_seeds else ""
        lines.append(f"| {k} | {n}" + " | ".join(_fmt(p.get(m), "delta") for m in metrics) + " |")
    return lines


def markdown(res: dict) -> str:
    arms = res["arms"]
    metrics = list(next(iter(arms.values())).keys()) if arms else []
    metrics = [m for m in metrics if m.startswith(("pass@", "sampled_pass@"))]
    title = {
        m: ("greedy pass@1" if m == "pass@1" else m.replace("sampled_", "sampled "))
        for m in metrics
    }
    lines = [
        "# WMTP study results",
        "",
        f"Grid: arms {', '.join(res['grid']['arms'])} × seeds "
        f"{', '.join(map(str, res['grid']['seeds']))}"
        + ("" if res["complete"] else f" — INCOMPLETE, missing {', '.join(res['missing'])}"),
    ]
    if split(res) != "test":
        lines += ["", f"Evaluated on the **{split(res)}** split (a pilot), not on test problems."]
    if arms:
        lines += [
            "",
            "Mean over problems × seeds, 95% percentile-bootstrap interval "
            f"({res['bootstrap']['n_resamples']} resamples of problems and seeds).",
            "",
            "| arm | seeds | problems | "
            + " | ".join(title[m] for m in metrics)
            + " | Δ greedy pass@1 vs baseline |",
            "|---|---|---|" + "---|" * len(metrics) + "---|",
        ]
    for a, r in arms.items():
        p = res["paired"].get(f"{a}-baseline")
        lines.append(
            f"| {a} | {r['n_seeds']} | {r['n_problems']} | "
            + " | ".join(_fmt(r.get(m)) for m in metrics)
            + f" | {_fmt(p, 'delta') if p else '–'} |"
        )
    if res.get("initial_policy"):
        lines += [
            "",
            f"Initial policy (shared by every arm): greedy pass@1 "
            f"{res['initial_policy']['pass@1']:.3f}.",
        ]
    if res["paired"]:
        lines += _delta_table(
            "Paired differences (arm − baseline; same resampled seeds and problems):",
            res["paired"],
            metrics,
            title,
            with_seeds=False,
        )
    if res.get("contrasts"):
        lines += _delta_table(
            "Secondary paired comparisons (first arm − second; the seeds both have):",
            res["contrasts"],
            metrics,
            title,
            with_seeds=True,
        )
    ccs = {k: v for k, v in (res.get("critic_credits") or {}).items() if v}
    if ccs:
        cc = next(iter(ccs.values()))
        lines += [
            "",
            "## Critic credit (held-out incorrect solutions)",
            "",
            f"AUROC of −δ_t for tokens inside vs outside the mutated span ({cc['n_solutions']} "
            f"solutions, {cc['n_tokens_inside']} inside / {cc['n_tokens_outside']} outside "
            f"tokens; interval over solutions × seeds); mean verifiable token weight inside and "
            f"outside the span; pairwise accuracy on {cc['n_pairs']} held-out pairs.",
            "",
            "| critic objective | seeds | credit AUROC | weight inside | weight outside "
            "| pairwise accuracy | top-1 −δ inside (chance) |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, c in ccs.items():
            lines.append(
                f"| {k} | {len(c['seeds'])} | {_fmt(c, 'auroc')} | "
                f"{c['mean_weight_inside']:.3f} | {c['mean_weight_outside']:.3f} | "
                f"{c['pairwise_accuracy']:.3f} | {c['top1_inside']:.3f} "
                f"({c['top1_chance']:.3f}) |"
            )
        span = next(iter(ccs.values()))["inside_by_position"]
        lines += [
            "",
            "Mean verifiable token weight by relative position in the solution (fifths, first to "
            "last), and the share of the tokens there that are inside a mutated span:",
            "",
            "| critic objective | " + " | ".join(f"{i + 1}/5" for i in range(5)) + " |",
            "|---|" + "---|" * 5,
            "| *share inside the span* | " + " | ".join(map(_f2, span)) + " |",
        ]
        for k, c in ccs.items():
            lines.append(f"| {k} | " + " | ".join(map(_f2, c["weight_by_position"])) + " |")
    t = res["timings"]["cells"]
    if t:
        lines += [
            "",
            "## Wall time per cell (s: train + eval)",
            "",
            "| arm | " + " | ".join(f"seed {s}" for s in res["grid"]["seeds"]) + " |",
            "|---|" + "---|" * len(res["grid"]["seeds"]),
        ]
        for a, row in t.items():
            lines.append(
                f"| {a} | "
                + " | ".join(
                    f"{row[str(s)]['train_s']:.0f} + {row[str(s)]['eval_s']:.0f}"
                    if str(s) in row
                    else "–"
                    for s in res["grid"]["seeds"]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def _val_curve(cell: dict) -> tuple[list, list]:
    """(steps, val/loss) of a cell: stored in cell.json, else read from its metrics file."""
    curve = cell.get("val_curve")
    if curve is None:
        curve = cells.val_curve(cell["metrics_file"])
    return [x[0] for x in curve], [x[1] for x in curve]


def plot(res: dict, cellmap: dict, path: Path) -> None:
    """Left: pass@k per arm with 95% intervals; middle: validation loss of every cell; right:
    critic credit AUROC per critic objective with 95% intervals (0.5 = no localisation)."""
    from matplotlib.figure import Figure  # heavy (~1 s), and only `aggregate` draws

    arms = list(res["arms"])
    metrics = [
        m
        for m in (next(iter(res["arms"].values())) if arms else {})
        if m.startswith(("pass@", "sampled_pass@"))
    ]
    fig = Figure(figsize=(17, 4.8))  # no pyplot: no global backend or figure registry
    ax, bx, cx = fig.subplots(1, 3)
    width = 0.8 / max(len(metrics), 1)
    for j, m in enumerate(metrics):
        xs = np.arange(len(arms)) + (j - (len(metrics) - 1) / 2) * width
        mean = np.array([res["arms"][a][m]["mean"] for a in arms])
        ci = np.array([res["arms"][a][m]["ci95"] for a in arms])
        ax.bar(xs, mean, width, label="greedy pass@1" if m == "pass@1" else m.replace("_", " "))
        ax.errorbar(
            xs, mean, yerr=[mean - ci[:, 0], ci[:, 1] - mean], fmt="none", ecolor="k", capsize=3
        )
    top = max([res["arms"][a][m]["ci95"][1] for a in arms for m in metrics], default=0.0)
    ax.set_ylim(0, min(1.0, max(0.05, 1.15 * top)))
    ax.set_xticks(np.arange(len(arms)), arms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{split(res)} pass@k (95% CI)")
    ax.set_title("held-out test problems" if split(res) == "test" else f"{split(res)} problems")
    if metrics:
        ax.legend(fontsize=8)
    colors = {a: f"C{i}" for i, a in enumerate(arms)}
    for (a, s), c in sorted(cellmap.items()):
        steps, vals = _val_curve(c)
        if steps:
            bx.plot(
                steps,
                vals,
                color=colors.get(a, "k"),
                marker="o",
                ms=3,
                label=a if s == min(x for y, x in cellmap if y == a) else None,
            )
    bx.set_xlabel("step")
    bx.set_ylabel("val/loss (unweighted MTP CE)")
    bx.set_title("validation loss per cell")
    if cellmap:
        bx.legend(fontsize=8)
    ccs = {k: v for k, v in (res.get("critic_credits") or {}).items() if v}
    names = list(ccs)
    mean = np.array([ccs[k]["auroc"] for k in names])
    ci = np.array([ccs[k]["ci95"] for k in names]).reshape(-1, 2)
    cx.bar(np.arange(len(names)), mean, 0.6, color="C2")
    if names:
        cx.errorbar(
            np.arange(len(names)),
            mean,
            yerr=[mean - ci[:, 0], ci[:, 1] - mean],
            fmt="none",
            ecolor="k",
            capsize=3,
        )
    cx.axhline(0.5, color="k", lw=0.8, ls="--")
    cx.set_ylim(0, 1)
    cx.set_xticks(np.arange(len(names)), names)
    cx.set_ylabel("credit AUROC of −δ (95% CI)")
    cx.set_title("does the critic find the mutated span?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
