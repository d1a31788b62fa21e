"""ONE generic train loop: `fit(config, task)`.

It knows nothing about WMTP. A pipeline hands it a `TrainTask` (models, loss, data, metrics)
and gets back a `TrainResult`. The loop does: mesh + sharding per `runtime.sharding`, the jitted
donated train step with gradient accumulation (see `step.py`), metrics fetched only every
`training.log_interval` steps, validation every `training.eval_every_steps`, orbax checkpoints
(periodic / best / final), exact resume (params, optimizer, step, loader position, extra state,
RNG; a bad newest checkpoint falls back to the previous good one), a NaN/inf guard that never
saves a bad state, SIGTERM → checkpoint at the next step boundary, a tqdm bar with tokens/s,
MLflow + metrics.jsonl (MLflow outages never stop training, see tracking.py), and an exclusive
lock on output_dir (a second run on it refuses at once).

Metric names: a loss_fn metric without "/" is logged as "train/<name>", eval metrics as
"val/<name>"; names with "/" are kept (e.g. "td/mean"). Always logged: train/loss,
train/grad_norm (post clip), train/grad_norm_pre_clip, train/grad_clip_ratio,
train/learning_rate (first group's LR used by this step; train/<group>_lr per group when there
are several), perf/tokens_per_sec, perf/samples_per_sec, perf/step_time_sec.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.checkpoint import Checkpointer, decode_bytes
from wmtp_jax.train.lock import hold_output_dir
from wmtp_jax.train.progress import Progress
from wmtp_jax.train.step import build
from wmtp_jax.train.tracking import Tracker, config_dict


class NonFiniteLossError(RuntimeError):
    pass


@dataclasses.dataclass
class TrainTask:
    """What a pipeline gives the loop.

    model: the NNX module holding the trainable parameters (float32 params; compute dtype is the
      model's own `dtype`). Its parameters outside `trainable` are frozen (no grads/opt state).
    loss_fn(model, frozen, batch, rng, extra) -> (loss, (metrics, new_extra)): one micro-batch;
      batch = dict of global arrays [micro_batch, ...]; metrics = dict of scalars; new_extra has
      the structure/dtypes of `extra_state`. Must be jit-able.
    train_iter: yields per-process numpy micro-batches (dicts); `get_state()` / `set_state(s)`
      (JSON-able or bytes) make resume exact. The loop draws GA micro-batches per step.
    frozen: optional NNX module (or nnx.Dict of modules) used for inference only (critic,
      reference), sharded with the strategy's parameter rules and put in eval mode.
    param_labels(path) -> group name, with param_groups = {name: {"learning_rate", "weight_decay"}}.
    eval_fn(model, frozen, batch, extra) -> dict of scalar metrics (averaged over batches);
      val_iter_fn() -> a fresh iterable of per-process numpy batches [micro_batch, ...].
    count_tokens(batch) -> int: tokens in a per-process micro-batch (throughput); default =
      the size of batch["input_ids"] (or of the first array).
    batches_per_epoch: micro-batches per process per epoch (used when training.max_steps = -1).
    export_fn(model, directory): writes the final model directory (e.g. checkpoint.export_model).
    on_end(model, frozen, tracker): extra artifacts at the end (e.g. plots).
    """

    model: nnx.Module
    loss_fn: Callable
    train_iter: Iterator[Mapping[str, np.ndarray]]
    trainable: Any = nnx.Param
    frozen: nnx.Module | None = None
    extra_state: Any = None
    param_labels: Callable[[str], str] | None = None
    param_groups: Mapping[str, Mapping[str, float]] | None = None
    eval_fn: Callable | None = None
    val_iter_fn: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None
    best_metric: str = "val/loss"
    best_mode: str = "min"
    count_tokens: Callable[[Mapping[str, np.ndarray]], int] | None = None
    batches_per_epoch: int | None = None
    export_fn: Callable[[nnx.Module, Path], Any] | None = None
    on_end: Callable[[nnx.Module, Any, Tracker], Any] | None = None


@dataclasses.dataclass
class TrainResult:
    status: str  # "completed" | "preempted" | "stopped" | "data_exhausted"
    step: int
    model: nnx.Module
    metrics: dict  # last logged train metrics + last validation metrics
    checkpoint_dir: Path | None  # latest checkpoint step directory
    best_dir: Path | None
    output_dir: Path
    metrics_file: Path
    mlflow_run_id: str | None
    mlflow_tracking_uri: str
    extra: Any = None
    evaluation: dict | None = None  # set by a pipeline that evaluates its result (closing_eval)


def total_steps(config, task: TrainTask) -> int:
    t = config.training
    if t.max_steps > 0:
        return int(t.max_steps)
    if not task.batches_per_epoch:
        raise ValueError("training.max_steps=-1 needs the pipeline's batches_per_epoch")
    steps = int(task.batches_per_epoch * t.n_epochs) // t.gradient_accumulation_steps
    if steps < 1:
        raise ValueError(
            f"training.n_epochs={t.n_epochs} × {task.batches_per_epoch} batches / "
            f"gradient_accumulation_steps={t.gradient_accumulation_steps} < 1 step"
        )
    return steps


def _default_tokens(batch) -> int:
    x = batch["input_ids"] if "input_ids" in batch else next(iter(batch.values()))
    return int(np.size(x))


def _name(k: str, prefix: str) -> str:
    return k if "/" in k else f"{prefix}/{k}"


class _Stop:
    """SIGTERM → stop at the next step boundary (all processes agree)."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing at the next step boundary")
        self.flag = True

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self.flag
        return bool(multihost_utils.process_allgather(np.int32(self.flag)).max())

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


# ModelArgs fields that do not change what a checkpoint holds (runtime settings)
_RUNTIME_ARGS = ("dtype", "param_dtype", "remat", "max_seq_len")


def model_signature(model) -> dict:
    """The model's shape-defining args (`model.args.to_dict()` less runtime keys), or {}.

    Stored in each checkpoint's meta["model"]; a resume with other values (e.g. n_future_tokens)
    is refused naming them."""
    args = getattr(model, "args", None)
    if not hasattr(args, "to_dict"):
        return {}
    return {k: v for k, v in args.to_dict().items() if k not in _RUNTIME_ARGS}


def fit(config, task: TrainTask, *, mesh=None, stop_at_step: int | None = None) -> TrainResult:
    """Train `task` under `config`; `stop_at_step`: checkpoint and stop after it (as SIGTERM).

    Holds the exclusive lock on `config.output_dir` (wmtp_jax.train.lock) for the whole run."""
    with hold_output_dir(config.output_dir):
        return _fit(config, task, mesh=mesh, stop_at_step=stop_at_step)


def _fit(config, task: TrainTask, *, mesh=None, stop_at_step: int | None = None) -> TrainResult:
    t = config.training
    mesh = mesh if mesh is not None else mesh_lib.mesh_from_config(config)
    ga = int(t.gradient_accumulation_steps)
    n_steps = total_steps(config, task)
    mesh_lib.check_batch_size(int(t.batch_size), mesh)
    out = Path(config.output_dir).absolute()
    logging.info(
        "fit: %d steps, GA=%d, mesh %s, %s, attention %s",
        n_steps,
        ga,
        dict(mesh.shape),
        config.runtime.sharding,
        config.runtime.get("attention", "auto"),
    )

    c = build(task, config, mesh, n_steps)
    state = c.state
    ck = Checkpointer(out, keep=int(config.checkpoint.keep))
    meta = {"best": None}
    latest = ck.latest_step()
    if latest is not None and not config.resume:
        raise ValueError(
            f"output_dir={str(out)!r} already holds checkpoints (latest step {latest}) "
            "and resume=False: choose a new output_dir or set --config.resume=True"
        )
    signature = model_signature(task.model)
    if latest is not None:
        state, meta = ck.restore(state, expect=signature)
        if meta.get("data_iter") is not None:
            task.train_iter.set_state(decode_bytes(meta["data_iter"]))
        logging.info("resumed from %s (step %d)", ck.path(meta["step"]), meta["step"])
    start = int(jax.device_get(state["step"]))
    cfg = config_dict(config)
    tracker = Tracker(config, out, resume=latest is not None, start_step=start)
    count_tokens = task.count_tokens or _default_tokens
    sign = 1.0 if task.best_mode == "max" else -1.0
    if task.best_mode not in ("min", "max"):
        raise ValueError(f"TrainTask.best_mode={task.best_mode!r}; one of min, max")

    def iter_state():
        get = getattr(task.train_iter, "get_state", None)
        return get() if get else None

    def save(step: int, status: str, best: bool = False):
        tree = (
            dict(state, frozen_params=c.fixed)
            if not config.checkpoint.save_lora_only and jax.tree.leaves(c.fixed)
            else state
        )
        m = {
            "data_iter": iter_state(),
            "best": meta.get("best"),
            "status": status,
            "model": signature,
        }
        return ck.save(step, tree, m, cfg, best=best)

    pending: list[tuple[int, dict]] = []  # device metrics not yet fetched
    logged: dict = {}
    window = {"rows": [], "tokens": 0, "samples": 0, "t0": time.perf_counter(), "steps": 0}

    def fetch():
        """Fetch pending step metrics (one host sync); stop on a non-finite loss."""
        if not pending:
            return
        rows = jax.device_get([m for _, m in pending])
        for (s, _), r in zip(pending, rows):
            if not math.isfinite(float(r["loss"])):
                last = ck.latest_step()
                ck.wait()
                tracker.end("FAILED")
                progress.close()
                raise NonFiniteLossError(
                    f"non-finite loss {float(r['loss'])} at step {s}: training stopped; nothing "
                    f"after it was saved; last good checkpoint: "
                    f"{ck.path(last) if last is not None else 'none'}"
                )
        pending.clear()
        window["rows"].extend(rows)

    def log_window(step: int):
        """Log the means over the steps since the last log."""
        nonlocal logged
        fetch()
        rows = window["rows"]
        if not rows:
            return
        dt = max(time.perf_counter() - window["t0"], 1e-9)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        lrs = {k[3:]: v for k, v in mean.items() if k.startswith("lr/")}
        log = {_name(k, "train"): v for k, v in mean.items() if not k.startswith("lr/")}
        log["train/learning_rate"] = next(iter(lrs.values()))
        if len(lrs) > 1:
            log.update({f"train/{g}_lr": v for g, v in lrs.items()})
        log.update(
            {
                "perf/tokens_per_sec": window["tokens"] / dt,
                "perf/samples_per_sec": window["samples"] / dt,
                "perf/step_time_sec": dt / max(window["steps"], 1),
            }
        )
        tracker.log_metrics(log, step)
        logged.update(log)
        progress.postfix(loss=log["train/loss"], tok_s=log["perf/tokens_per_sec"])
        window.update(rows=[], tokens=0, samples=0, t0=time.perf_counter(), steps=0)

    def evaluate(step: int) -> dict:
        if c.eval_step is None or task.val_iter_fn is None:
            return {}
        outs = [
            c.eval_step(state, c.fixed, c.frozen_state, mesh_lib.shard_batch(b, mesh))
            for b in task.val_iter_fn()
        ]
        if not outs:
            return {}
        rows = jax.device_get(outs)
        val = {_name(k, "val"): float(np.mean([r[k] for r in rows])) for k in rows[0]}
        tracker.log_metrics(val, step)
        logged.update(val)
        logging.info("step %d validation: %s", step, val)
        if config.checkpoint.save_best and task.best_metric in val:
            v = val[task.best_metric]
            best = meta.get("best")
            if best is None or sign * v > sign * best["value"]:
                meta["best"] = {"metric": task.best_metric, "value": v, "step": step}
                save(step, "best", best=True)
        return val

    status, step = "completed", start
    progress = Progress(n_steps, start, enabled=jax.process_index() == 0)
    last_eval = -1
    with _Stop() as stopper:
        while step < n_steps:
            if stopper.requested():
                status = "preempted"
                break
            try:
                micro = [next(task.train_iter) for _ in range(ga)]
            except StopIteration:
                logging.warning("train data exhausted at step %d (of %d)", step, n_steps)
                status = "data_exhausted"
                break
            batch = {k: np.stack([m[k] for m in micro]) for k in micro[0]}
            state, metrics = c.train_step(
                state, c.fixed, c.frozen_state, mesh_lib.shard_batch(batch, mesh, stacked=True)
            )
            step += 1
            pending.append((step, metrics))
            ntok = sum(count_tokens(m) for m in micro) * jax.process_count()
            window["tokens"] += ntok
            window["samples"] += (
                sum(len(next(iter(m.values()))) for m in micro) * jax.process_count()
            )
            window["steps"] += 1
            progress.update(step)
            if step % t.log_interval == 0:
                log_window(step)
            if t.eval_every_steps > 0 and step % t.eval_every_steps == 0 and step < n_steps:
                fetch()
                evaluate(step)
                last_eval = step
            if config.checkpoint.every_steps > 0 and step % config.checkpoint.every_steps == 0:
                fetch()  # never checkpoint a state after a non-finite loss
                save(step, "periodic")
            if stop_at_step is not None and step >= stop_at_step and step < n_steps:
                status = "stopped"
                break
        log_window(step)
        if status == "completed" or status == "data_exhausted":
            if last_eval != step:
                evaluate(step)
            if config.checkpoint.save_final:
                save(step, "final")
        elif step > start or ck.latest_step() != step:
            save(step, status)
    progress.close()
    ck.wait()
    model = c.model(state)
    if status in ("completed", "data_exhausted"):
        if task.export_fn is not None:
            task.export_fn(model, out / "final_model")
        if task.on_end is not None:
            frozen = (
                nnx.merge(c.frozen_graph, c.frozen_state) if c.frozen_graph is not None else None
            )
            task.on_end(model, frozen, tracker)
    tracker.log_dict(cfg, "config.json")
    tracker.log_dict({"status": status, "step": step, **logged}, "final_metrics.json")
    tracker.end("FINISHED" if status in ("completed", "data_exhausted") else "KILLED")
    latest = ck.latest_step()
    best_step = ck.latest_step(best=True)
    result = TrainResult(
        status=status,
        step=step,
        model=model,
        metrics=logged,
        checkpoint_dir=ck.path(latest) if latest is not None else None,
        best_dir=ck.path(best_step, best=True) if best_step is not None else None,
        output_dir=out,
        metrics_file=out / "metrics.jsonl",
        mlflow_run_id=tracker.run_id,
        mlflow_tracking_uri=tracker.tracking_uri,
        extra=jax.device_get(state["extra"]),
    )
    ck.close()
    logging.info("fit %s at step %d; checkpoint %s", status, step, result.checkpoint_dir)
    return result
