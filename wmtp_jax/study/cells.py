"""Running the study's cells, each once: a re-run reuses what is on disk.

Layout under `output_dir`:
  study.json                       the study config and its grid (arms × seeds)
  seed_<s>/critic/                 the ranking critic (prerequisite; `final_model` its model dir)
  seed_<s>/critic_<objective>/     the critic of another objective (configs.experiment.CRITICS)
  seed_<s>/reference/              the rho1 reference (ref_tuning run), when rho1 is an arm
  seed_<s>/credit[_<objective>]/credit.{json,npz}  critic credit on the held-out incorrect solutions
  seed_<s>/<arm>/                  the arm's training run (checkpoints, metrics.jsonl, final_model)
  seed_<s>/<arm>/eval/{greedy,sampled}/  samples.jsonl, results.jsonl, summary.json
  seed_<s>/<arm>/cell.json         the finished cell (numbers, per-problem scores, timings)
  initial/eval/greedy/             greedy pass@1 of the shared initial policy
A step is done when its marker file exists (`train_done.json`, `cell.json`, `credit.json`); an
interrupted training run resumes from its checkpoint. Steps hold a file lock (fcntl) while they
run, so jobs with overlapping selections wait for each other instead of colliding. With
`publish_dir`, each finished cell's and credit's light files (LIGHT_FILES: no checkpoints) are
copied there under the same relative paths: a study dir the report can be rebuilt from.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from absl import logging

from wmtp_jax import registry
from wmtp_jax.configs.common import validate_config
from wmtp_jax.configs.experiment import ARM_SPECS, CRITICS, credit_critics, parse_list
from wmtp_jax.data.records import iter_jsonl
from wmtp_jax.eval.metrics import pass_at_k
from wmtp_jax.pipelines.bootstrap import ensure_micro_storage
from wmtp_jax.pipelines.evaluation import cached_run, eval_config
from wmtp_jax.study import credit
from wmtp_jax.train.tracking import config_dict, log_to_run

STUDY_FILE = "study.json"
CELL_FILE = "cell.json"
TRAIN_DONE = "train_done.json"
BENCHMARK = "synthetic"


def say(msg: str) -> None:
    """A progress line on stdout (one per finished step)."""
    print(f"[study] {msg}", flush=True)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive fcntl lock on `path` (created) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (a reader never sees half a file)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def seed_dir(out, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def cell_dir(out, arm: str, seed: int) -> Path:
    return seed_dir(out, seed) / arm


def critic_role(objective: str) -> str:
    """The run directory name of a critic objective's critic (`critic` for ranking)."""
    return "critic" if objective == "ranking" else f"critic_{objective}"


def credit_dir(out, seed: int, objective: str) -> Path:
    return seed_dir(out, seed) / ("credit" if objective == "ranking" else f"credit_{objective}")


def arm_critic(study, arm: str) -> str | None:
    """The critic objective arm `arm` is weighted by (None: no critic)."""
    crit = ARM_SPECS[arm][1]
    return study.control_critic if crit == "control" else crit


def critics_needed(study, arms) -> list[str]:
    """`critics` (credit measured) plus the critics of `arms`, in CRITICS order."""
    want = set(credit_critics(study))
    want |= {c for a in arms if (c := arm_critic(study, a))}
    return [c for c in CRITICS if c in want]


def grid(study) -> tuple[list[str], list[int]]:
    """(arms, seeds) of the report: study_arms ∪ arms, study_seeds ∪ seeds (in that order)."""
    arms = parse_list(study.study_arms, "study_arms")
    arms += [a for a in parse_list(study.arms, "arms") if a not in arms]
    seeds = parse_list(study.study_seeds, "study_seeds", int)
    seeds += [s for s in parse_list(study.seeds, "seeds", int) if s not in seeds]
    return arms, seeds


def val_curve(metrics_file) -> list[list[float]]:
    """[[step, val/loss], ...] of a training run's metrics.jsonl (empty when absent)."""
    p = Path(metrics_file)
    if not p.exists():
        return []
    return [[r["step"], r["val/loss"]] for _, r in iter_jsonl(p) if "val/loss" in r]


def publish(study, *paths: Path) -> None:
    """Copy `paths` (under output_dir) to `publish_dir` at the same relative paths (no-op when
    publish_dir is empty); study.json goes along, so publish_dir is a study dir."""
    if not study.get("publish_dir"):
        return
    out, dest = Path(study.output_dir), Path(study.publish_dir)
    for p in (out / STUDY_FILE, *paths):
        target = dest / Path(p).relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.copyfile(p, tmp)
        os.replace(tmp, target)


# ---- sub-configs -----------------------------------------------------------------------------


def sub_config(study, pipeline: str, role: str, seed: int, output_dir: Path, name: str, **models):
    """`pipeline`'s `pipeline_variant` config for one run of the study: the study's dataset,
    `train.<role>` sizes, seed (loader order and sample choice, model init: a random-init micro
    model's, the critic's value head and LoRA; the pretrained :small policy has no random part),
    MLflow store; `models` sets models.<role>.path (the critic / reference of this seed)."""
    c = registry.get_config(pipeline, study.pipeline_variant)
    t = study.train[role]
    c.output_dir = str(output_dir)
    c.seed = seed
    c.data_sampling.seed = seed
    c.dataset.path = study.dataset.path
    c.dataset.max_length = study.dataset.max_length
    c.training.max_steps = t.max_steps
    if "learning_rate" in t:
        c.training.learning_rate = t.learning_rate
    c.training.batch_size = t.batch_size
    c.training.eval_every_steps = t.eval_every_steps
    c.data_sampling.n_samples = t.n_samples
    c.data_sampling.val_n_samples = t.val_n_samples
    c.mlflow.tracking_uri = study.mlflow.tracking_uri
    c.mlflow.experiment = study.mlflow.experiment
    c.experiment.name = f"{study.experiment.name}/{name}-seed{seed}"
    c.runtime.compilation_cache = study.runtime.compilation_cache
    for key, path in models.items():
        c.models[key].path = str(path)
    if "final_eval" in c:
        c.final_eval.enabled = False  # the study evaluates every arm itself
    validate_config(c)
    return c


def set_key(c, dotted: str, value) -> None:
    """c.a.b = value for dotted = "a.b"."""
    *parents, last = dotted.split(".")
    for p in parents:
        c = c[p]
    c[last] = value


def arm_config(study, arm: str, seed: int, critic=None, reference=None):
    """The arm's pipeline config (ARM_SPECS): `critic` the model dir of its critic objective."""
    pipeline, _, overrides = ARM_SPECS[arm]
    models = {}
    if pipeline == "verifiable":
        models["value_model"] = critic
    if arm == "rho1":
        models["reference"] = reference
    c = sub_config(
        study, pipeline, "policy", seed, cell_dir(study.output_dir, arm, seed), arm, **models
    )
    with c.unlocked():
        for k, v in overrides.items():
            set_key(c, k, v)
        if arm == "oracle":
            c.weighting.oracle_ratio = float(study.oracle_ratio)
    validate_config(c)
    return c


# ---- steps -----------------------------------------------------------------------------------


def train(config, parent_run: str | None) -> dict:
    """Run `config.pipeline` unless `<output_dir>/train_done.json` exists; its MLflow run is
    nested under `parent_run`. Returns the marker's content."""
    out = Path(config.output_dir)
    done = out / TRAIN_DONE
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    result = registry.run(config)
    if result.status not in ("completed", "data_exhausted"):
        raise RuntimeError(
            f"{config.pipeline} run in {out} ended with status {result.status!r}; "
            f"re-run the study to resume it"
        )
    if parent_run:
        log_to_run(
            result.mlflow_tracking_uri,
            result.mlflow_run_id,
            {},
            tags={"mlflow.parentRunId": parent_run},
        )
    info = {
        "pipeline": config.pipeline,
        "status": result.status,
        "step": result.step,
        "seconds": time.time() - t0,
        "model_dir": str(out / "final_model"),
        "metrics_file": str(out / "metrics.jsonl"),
        "mlflow_run_id": result.mlflow_run_id,
        "final_metrics": {k: v for k, v in result.metrics.items() if k.startswith("val/")},
    }
    write_json(done, info)
    return info


def prerequisite(
    study, role: str, seed: int, parent_run: str | None, objective: str = "ranking"
) -> dict:
    """The seed's critic of `objective` (`role` critic) or rho1 reference (`role` reference),
    trained once."""
    pipeline = {"critic": "critic", "reference": "ref_tuning"}[role]
    name = critic_role(objective) if role == "critic" else role
    d = seed_dir(study.output_dir, seed) / name
    with locked(seed_dir(study.output_dir, seed) / f".{name}.lock"):
        fresh = not (d / TRAIN_DONE).exists()
        c = sub_config(study, pipeline, role, seed, d, name)
        if role == "critic":
            with c.unlocked():
                for k, v in CRITICS[objective].items():
                    set_key(c.training.value_loss, k, v)
            validate_config(c)
        info = train(c, parent_run)
    if fresh:
        say(f"seed {seed}: {name} trained ({info['step']} steps) in {info['seconds']:.0f} s")
    return info


def problem_scores(results_file: Path, ks) -> dict:
    """{"task_ids": [...], "pass@k": [...] per k} from an evaluation's results.jsonl (per-problem
    unbiased pass@k; their mean is the evaluation's pass@k)."""
    counts: dict[str, list[int]] = {}
    for _, r in iter_jsonl(results_file):
        nc = counts.setdefault(str(r["task_id"]), [0, 0])
        nc[0] += 1
        nc[1] += int(bool(r["passed"]))
    ids = list(counts)
    return {"task_ids": ids, **{f"pass@{k}": [pass_at_k(*counts[t], k) for t in ids] for k in ks}}


def evaluate(study, model_dir, out: Path) -> dict:
    """Greedy (temperature 0, one sample) and, unless eval.temperatures is empty, sampled
    (n_samples at the validation-best of eval.temperatures) evaluations of `model_dir` on the
    `eval.split` (test; valid in a pilot), through the evaluation pipeline; finished ones are
    reused."""
    e = study.eval
    data_dir = str(Path(study.dataset.path).parent)
    if Path(study.dataset.path).name != BENCHMARK:
        raise ValueError(
            f"dataset.path={study.dataset.path!r}: the synthetic benchmark reads "
            f"<data_dir>/{BENCHMARK}/processed, so the directory must be named "
            f"{BENCHMARK!r}"
        )
    common = dict(
        benchmark=BENCHMARK,
        split=str(e.split),
        validation_split="valid",
        limit=int(e.limit),
        max_new_tokens=int(e.max_new_tokens),
        batch_size=int(e.batch_size),
        workers=int(e.workers),
        timeout=float(e.timeout),
        sample_seed=int(e.sample_seed),
        top_p=float(e.top_p),
    )
    modes = {"greedy": dict(temperature=0.0, n_samples=1, k=(1,))}
    if len(e.temperatures):
        modes["sampled"] = dict(
            temperature=tuple(float(t) for t in e.temperatures),
            validation_limit=int(e.validation_limit),
            n_samples=int(e.n_samples),
            k=tuple(e.k),
        )
    got = {}
    for mode, keys in modes.items():
        t0 = time.time()
        s = cached_run(eval_config(model_dir, out / mode, data_dir=data_dir, **common, **keys))
        ks = (1,) if mode == "greedy" else tuple(e.k)
        got[mode] = {
            **{f"pass@{k}": s[f"pass@{k}"] for k in ks},
            "n_problems": s["n_problems"],
            "temperature": s["temperature"],
            "temperature_sweep": s.get("temperature_sweep"),
            "samples": str(out / mode / "samples.jsonl"),
            "seconds": time.time() - t0,
            "per_problem": problem_scores(out / mode / "results.jsonl", ks),
        }
    return got


def _cell_metrics(ev: dict) -> dict:
    """The cell's headline numbers: pass@1 (greedy), sampled_pass@k (when sampled)."""
    out = {"pass@1": ev["greedy"]["pass@1"]}
    sampled = ev.get("sampled", {})
    out.update({f"sampled_{k}": v for k, v in sampled.items() if k.startswith("pass@")})
    return out


def run_cell(study, arm: str, seed: int, prereq: dict, parent_run: str | None) -> dict:
    """Train `arm` for `seed` and evaluate it, unless `cell.json` exists (then it is read).
    prereq: {"critics": {objective: info}, "reference": info}."""
    d = cell_dir(study.output_dir, arm, seed)
    with locked(seed_dir(study.output_dir, seed) / f".{arm}.lock"):
        if (d / CELL_FILE).exists():
            cell = json.loads((d / CELL_FILE).read_text())
            say(f"{arm} seed {seed}: done before, reused (pass@1 {cell['metrics']['pass@1']:.3f})")
            return cell
        t0 = time.time()
        crit = arm_critic(study, arm)
        cfg = arm_config(
            study,
            arm,
            seed,
            critic=prereq["critics"][crit]["model_dir"] if crit else None,
            reference=prereq.get("reference", {}).get("model_dir"),
        )
        tr = train(cfg, parent_run)
        t1 = time.time()
        ev = evaluate(study, tr["model_dir"], d / "eval")
        metrics = _cell_metrics(ev)
        sampled = ev.get("sampled", {})  # empty: greedy only (eval.temperatures empty)
        cell = {
            "arm": arm,
            "seed": seed,
            "pipeline": cfg.pipeline,
            "metrics": metrics,
            "temperature": sampled.get("temperature"),
            "temperature_sweep": sampled.get("temperature_sweep"),
            "samples": ev["greedy"]["samples"],
            "sampled_samples": sampled.get("samples"),
            "n_problems": ev["greedy"]["n_problems"],
            "per_problem": {
                "task_ids": ev["greedy"]["per_problem"]["task_ids"],
                "pass@1": ev["greedy"]["per_problem"]["pass@1"],
                **{
                    f"sampled_{k}": v
                    for k, v in sampled.get("per_problem", {}).items()
                    if k != "task_ids"
                },
            },
            "sampled_task_ids": sampled.get("per_problem", {}).get("task_ids", []),
            "train": tr,
            "metrics_file": tr["metrics_file"],
            "val_curve": val_curve(tr["metrics_file"]),
            "timings": {
                "train_s": t1 - t0,
                "eval_s": time.time() - t1,
                "total_s": time.time() - t0,
            },
        }
        tags = {"study.arm": arm, "study.seed": seed}
        if sampled:
            tags["study.temperature"] = cell["temperature"]
        log_to_run(
            study.mlflow.tracking_uri,
            tr["mlflow_run_id"],
            {f"{study.eval.split}/{k.replace('@', '_at_')}": v for k, v in metrics.items()},
            tags=tags,
        )
        write_json(d / CELL_FILE, cell)
        publish(study, d / CELL_FILE, *(d / "eval" / "greedy").glob("*.json*"))
        if sampled:
            publish(study, d / "eval" / "sampled" / "summary.json")
    m = metrics
    line = f"{arm} seed {seed}: pass@1 {m['pass@1']:.3f}"
    if cell["temperature"] is not None:
        line += f" | sampled (T={cell['temperature']:g}) " + " ".join(
            f"{k[8:]} {v:.3f}" for k, v in m.items() if k.startswith("sampled_")
        )
    say(
        line
        + f" | train {cell['timings']['train_s']:.0f} s, eval {cell['timings']['eval_s']:.0f} s"
    )
    return cell


def run_credit(study, seed: int, critic_dir: str, objective: str = "ranking") -> dict:
    """Critic credit of the seed's critic of `objective` on held-out incorrect solutions (once)."""
    d = credit_dir(study.output_dir, seed, objective)
    with locked(seed_dir(study.output_dir, seed) / f".{d.name}.lock"):
        if (d / "credit.json").exists():
            return json.loads((d / "credit.json").read_text())
        t0 = time.time()
        vcfg = arm_config(study, "verifiable", seed, critic=critic_dir)
        got = credit.measure(
            vcfg,
            split=study.credit.split,
            batch_size=int(study.credit.batch_size),
            max_solutions=int(study.credit.max_solutions),
        )
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / "credit.npz", **got["arrays"])
        summary = {
            **got["summary"],
            "seed": seed,
            "objective": objective,
            "critic": critic_dir,
            "seconds": time.time() - t0,
        }
        write_json(d / "credit.json", summary)
        publish(study, d / "credit.npz", d / "credit.json")
    say(
        f"seed {seed}: {objective} critic credit AUROC {summary['auroc']:.3f} on "
        f"{summary['n_solutions']} held-out incorrect solutions, pairwise accuracy "
        f"{summary['pairwise_accuracy']:.3f} "
        f"({summary['n_pairs']} pairs) in {summary['seconds']:.0f} s"
    )
    return summary


def initial_policy(study) -> dict:
    """Greedy pass@1 of the shared initial policy (models.policy.path), once per output_dir."""
    path = registry.get_config("baseline", study.pipeline_variant).models.policy.path
    out = Path(study.output_dir) / "initial" / "eval" / "greedy"
    e = study.eval
    with locked(Path(study.output_dir) / ".initial.lock"):
        s = cached_run(
            eval_config(
                path,
                out,
                data_dir=str(Path(study.dataset.path).parent),
                benchmark=BENCHMARK,
                split=str(e.split),
                limit=int(e.limit),
                temperature=0.0,
                n_samples=1,
                k=(1,),
                max_new_tokens=int(e.max_new_tokens),
                batch_size=int(e.batch_size),
                workers=int(e.workers),
                timeout=float(e.timeout),
            )
        )
    publish(study, *out.glob("*.json*"))
    return {
        "path": path,
        "pass@1": s["pass@1"],
        "n_problems": s["n_problems"],
        "samples": str(out / "samples.jsonl"),
    }


def ensure_storage(study) -> None:
    """What the `pipeline_variant` runs start from (pipelines.bootstrap), made once: the dataset,
    and micro: the tokenizer and random-init models; small: the SmolLM2 GGUF converted (hf-to-mtp
    policy, hf-to-flax critic backbone). The critics are the study's own, trained per seed."""
    with locked(Path(study.output_dir) / ".bootstrap.lock"):
        for pipeline, role in (("baseline", "policy"), ("critic", "critic")):
            ensure_micro_storage(
                sub_config(study, pipeline, role, 0, Path(study.output_dir), "bootstrap")
            )


def record_study(study) -> None:
    """study.json: the config, the grid (the union of what every job asked for) and its `cells`,
    the [arm, seed] pairs asked for (study_arms × study_seeds ∪ arms × seeds of every job): a job
    that adds seeds for some arms does not make the other arms' cells at those seeds missing."""
    path = Path(study.output_dir) / STUDY_FILE
    with locked(Path(study.output_dir) / ".study.lock"):
        arms, seeds = grid(study)
        asked = {
            (a, s)
            for ka, ks in (("study_arms", "study_seeds"), ("arms", "seeds"))
            for a in parse_list(study[ka], ka)
            for s in parse_list(study[ks], ks, int)
        }
        if path.exists():
            prior = json.loads(path.read_text())
            arms += [a for a in prior["arms"] if a not in arms]
            seeds += [s for s in prior["seeds"] if s not in seeds]
            asked |= {(a, int(s)) for a, s in prior.get("cells", [])}
        want = sorted(asked, key=lambda c: (arms.index(c[0]), c[1]))
        write_json(
            path,
            {
                "arms": arms,
                "seeds": seeds,
                "cells": [list(c) for c in want],
                "config": config_dict(study),
            },
        )
    logging.info("study grid: arms %s × seeds %s", arms, seeds)
