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
from wmtp_jax.train.checkpoint import Checkpointer, IncompatibleCheckpoint, decode_bytes
from wmtp_jax.train.lock import hold_output_dir
from wmtp_jax.train.progress import Progress
from wmtp_jax.train.step import Compiled, build
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
      (JSON-able or bytes) make resume exact. The loop draws GA micro-batches per step. Optional
      `window_metrics()` -> {name: float}: host-side data metrics of the batches drawn since the
      last call, logged with each train metrics window (e.g. a packed loader's cut tokens).
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
    warm_start_steps / warm_start_mask(path, shape) -> multiplier: for the first
      warm_start_steps optimizer steps only the parameters (or slices, e.g. heads 1.. of a
      stacked head parameter) with multiplier 1 are trained; the others are bit-for-bit frozen.
    probe(model) -> {name: float}: a host-side check of the current model at each validation
      (e.g. greedy pass@1 by generation), logged with the validation metrics ("val/<name>").
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
    warm_start_steps: int = 0
    warm_start_mask: Callable[[str, tuple], Any] | None = None
    probe: Callable[[nnx.Module], Mapping[str, float]] | None = None


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


class MetricsWindow:
    """The train metrics of the steps since the last log.

    Step metrics stay on device until `fetch` (one host sync per window); `flush` averages the
    fetched rows into the logged names (train/*, perf/*) and opens a new window."""

    def __init__(self, count_tokens: Callable[[Mapping[str, np.ndarray]], int]):
        self.count_tokens = count_tokens
        self.pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet fetched
        self._open()

    def _open(self):
        self.rows: list[dict] = []
        self.tokens = self.samples = self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, step: int, metrics: dict, micro: list[Mapping[str, np.ndarray]]):
        """One optimizer step: its device metrics and its GA micro-batches (throughput)."""
        self.pending.append((step, metrics))
        n_proc = jax.process_count()
        self.tokens += sum(self.count_tokens(m) for m in micro) * n_proc
        self.samples += sum(len(next(iter(m.values()))) for m in micro) * n_proc
        self.steps += 1

    def fetch(self) -> tuple[int, float] | None:
        """Fetch the pending metrics (one host sync); (step, loss) of the first non-finite loss,
        whose rows are then left unfetched, or None."""
        if not self.pending:
            return None
        rows = jax.device_get([m for _, m in self.pending])
        for (s, _), r in zip(self.pending, rows):
            if not math.isfinite(float(r["loss"])):
                return s, float(r["loss"])
        self.pending.clear()
        self.rows.extend(rows)
        return None

    def flush(self) -> dict | None:
        """The means of the fetched rows as logged metrics (a new window opens); None if none."""
        rows = self.rows
        if not rows:
            return None
        dt = max(time.perf_counter() - self.t0, 1e-9)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        lrs = {k[3:]: v for k, v in mean.items() if k.startswith("lr/")}
        log = {_name(k, "train"): v for k, v in mean.items() if not k.startswith("lr/")}
        log["train/learning_rate"] = next(iter(lrs.values()))
        if len(lrs) > 1:
            log.update({f"train/{g}_lr": v for g, v in lrs.items()})
        log.update(
            {
                "perf/tokens_per_sec": self.tokens / dt,
                "perf/samples_per_sec": self.samples / dt,
                "perf/step_time_sec": dt / max(self.steps, 1),
            }
        )
        self._open()
        return log


class Evaluation:
    """Validation (`eval_fn` averaged over the batches of `val_iter_fn()`) and the best value of
    `best_metric` so far ({"metric", "value", "step"}, kept in every checkpoint's meta)."""

    def __init__(self, compiled: Compiled, task: TrainTask, mesh, best: dict | None):
        if task.best_mode not in ("min", "max"):
            raise ValueError(f"TrainTask.best_mode={task.best_mode!r}; one of min, max")
        self.c, self.mesh = compiled, mesh
        self.val_iter_fn = task.val_iter_fn
        self.probe = task.probe
        self.metric = task.best_metric
        self.sign = 1.0 if task.best_mode == "max" else -1.0
        self.best = best

    def metrics(self, state) -> dict:
        """{"val/<name>": mean over the validation batches} and the probe's metrics; {} without
        eval_fn or batches and without a probe."""
        c = self.c
        out = {}
        if c.eval_step is not None and self.val_iter_fn is not None:
            outs = [
                c.eval_step(state, c.fixed, c.frozen_state, mesh_lib.shard_batch(b, self.mesh))
                for b in self.val_iter_fn()
            ]
            rows = jax.device_get(outs)
            out = (
                {_name(k, "val"): float(np.mean([r[k] for r in rows])) for k in rows[0]}
                if rows
                else {}
            )
        if self.probe is not None:
            out.update({_name(k, "val"): float(v) for k, v in self.probe(c.model(state)).items()})
        return out

    def improves(self, val: dict, step: int) -> bool:
        """Whether `val` beats the best value so far (which it then becomes)."""
        if self.metric not in val:
            return False
        v = val[self.metric]
        if self.best is not None and not self.sign * v > self.sign * self.best["value"]:
            return False
        self.best = {"metric": self.metric, "value": v, "step": step}
        return True


class CheckpointPolicy:
    """What the loop checkpoints and when: every `checkpoint.every_steps`, a new best validation
    value (`save_best`), the last step of a finished run (`save_final`) and a stopped or
    preempted run. A checkpoint holds the train state (+ the frozen model parameters unless
    `save_lora_only`); its meta the data-iterator state, the best value so far, the status and
    the model signature."""

    def __init__(self, ck: Checkpointer, config, compiled: Compiled, task, signature: dict):
        cp = config.checkpoint
        self.ck = ck
        self.every, self.save_best, self.save_final = cp.every_steps, cp.save_best, cp.save_final
        with_frozen = not cp.save_lora_only and jax.tree.leaves(compiled.fixed)
        self.frozen_params = compiled.fixed if with_frozen else None
        self.train_iter = task.train_iter
        self.signature = signature
        self.cfg = config_dict(config)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state, step: int, status: str, best_so_far: dict | None, *, best=False):
        tree = (
            state if self.frozen_params is None else dict(state, frozen_params=self.frozen_params)
        )
        get = getattr(self.train_iter, "get_state", None)
        meta = {
            "data_iter": get() if get else None,
            "best": best_so_far,
            "status": status,
            "model": self.signature,
        }
        return self.ck.save(step, tree, meta, self.cfg, best=best)


@dataclasses.dataclass
class _Run:
    """One `fit`: what the steps below share (the train state is replaced every step)."""

    config: Any
    task: TrainTask
    mesh: Any
    c: Compiled
    n_steps: int
    start: int
    state: dict
    out: Path
    policy: CheckpointPolicy
    evaluation: Evaluation
    window: MetricsWindow
    tracker: Tracker
    progress: Progress
    logged: dict = dataclasses.field(default_factory=dict)  # last logged train + val metrics

    @property
    def ck(self) -> Checkpointer:
        return self.policy.ck


def fit(config, task: TrainTask, *, mesh=None, stop_at_step: int | None = None) -> TrainResult:
    """Train `task` under `config`; `stop_at_step`: checkpoint and stop after it (as SIGTERM).

    Holds the exclusive lock on `config.output_dir` (wmtp_jax.train.lock) for the whole run.
    An error during the steps (e.g. CheckpointSaveError, bad data) closes the progress bar and
    marks the tracker's run FAILED before it propagates."""
    with hold_output_dir(config.output_dir):
        run = _start(config, task, mesh)
        try:
            status, step = _train(run, stop_at_step)
            run.ck.wait()
        except Exception:
            run.progress.close()
            run.tracker.end("FAILED")
            raise
        return _finish(run, status, step)


def _start(config, task: TrainTask, mesh) -> _Run:
    """Mesh, compiled steps, the resumed state (if any), tracker and progress bar."""
    t = config.training
    mesh = mesh if mesh is not None else mesh_lib.mesh_from_config(config)
    n_steps = total_steps(config, task)
    mesh_lib.check_batch_size(int(t.batch_size), mesh)
    out = Path(config.output_dir).absolute()
    logging.info(
        "fit: %d steps, GA=%d, mesh %s, %s, attention %s",
        n_steps,
        int(t.gradient_accumulation_steps),
        dict(mesh.shape),
        config.runtime.sharding,
        config.runtime.get("attention", "auto"),
    )
    c = build(task, config, mesh, n_steps)
    ck = Checkpointer(out, keep=int(config.checkpoint.keep))
    signature = model_signature(task.model)
    state, best, resumed = _resume(ck, config, task, c.state, signature)
    start = int(jax.device_get(state["step"]))
    evaluation = Evaluation(c, task, mesh, best)
    tracker = Tracker(config, out, resume=resumed, start_step=start)
    return _Run(
        config=config,
        task=task,
        mesh=mesh,
        c=c,
        n_steps=n_steps,
        start=start,
        state=state,
        out=out,
        policy=CheckpointPolicy(ck, config, c, task, signature),
        evaluation=evaluation,
        window=MetricsWindow(task.count_tokens or _default_tokens),
        tracker=tracker,
        progress=Progress(n_steps, start, enabled=jax.process_index() == 0),
    )


def _resume(ck: Checkpointer, config, task: TrainTask, state, signature: dict):
    """(state, best so far, resumed?): the newest good checkpoint's state and data position
    when output_dir holds one (refused unless config.resume), else `state` as built."""
    latest = ck.latest_step()
    if latest is None:
        return state, None, False
    if not config.resume:
        raise ValueError(
            f"output_dir={str(ck.root)!r} already holds checkpoints (latest step {latest}) "
            "and resume=False: choose a new output_dir or set --config.resume=True"
        )
    check = getattr(task.train_iter, "check_state", None)

    def check_meta(meta: dict):
        if check is not None and meta.get("data_iter") is not None:
            check(decode_bytes(meta["data_iter"]))  # malformed: a bad checkpoint, fall back

    state, meta = ck.restore(state, expect=signature, check_meta=check_meta)
    if meta.get("data_iter") is not None:
        try:
            task.train_iter.set_state(decode_bytes(meta["data_iter"]))
        except ValueError as e:  # well-formed but for other data: a config change
            raise IncompatibleCheckpoint(
                f"checkpoint {ck.path(meta['step'])} was trained on other data: {e}; resume "
                f"with the same data and batch settings, or train into a new output_dir"
            ) from e
    logging.info("resumed from %s (step %d)", ck.path(meta["step"]), meta["step"])
    return state, meta.get("best"), True


def _train(run: _Run, stop_at_step: int | None) -> tuple[str, int]:
    """The step loop, then the closing validation and checkpoint; (status, last step)."""
    t, policy = run.config.training, run.policy
    status, step, last_eval = "completed", run.start, -1
    with _Stop() as stopper:
        while step < run.n_steps:
            if stopper.requested():
                status = "preempted"
                break
            micro = _draw(run.task.train_iter, int(t.gradient_accumulation_steps))
            if micro is None:
                logging.warning("train data exhausted at step %d (of %d)", step, run.n_steps)
                status = "data_exhausted"
                break
            step += 1
            _step(run, micro, step)
            if step % t.log_interval == 0:
                _log_window(run, step)
            if t.eval_every_steps > 0 and step % t.eval_every_steps == 0 and step < run.n_steps:
                _fetch(run)
                _evaluate(run, step)
                last_eval = step
            if policy.due(step):
                _fetch(run)  # never checkpoint a state after a non-finite loss
                _save(run, step, "periodic")
            if stop_at_step is not None and step >= stop_at_step and step < run.n_steps:
                status = "stopped"
                break
        _log_window(run, step)
        if status in ("completed", "data_exhausted"):
            if last_eval != step:
                _evaluate(run, step)
            if policy.save_final:
                _save(run, step, "final")
        elif step > run.start or run.ck.latest_step() != step:
            _save(run, step, status)
    return status, step


def _draw(train_iter, ga: int) -> list | None:
    """The GA micro-batches of one step, or None when the data ran out."""
    try:
        return [next(train_iter) for _ in range(ga)]
    except StopIteration:
        return None


def _step(run: _Run, micro: list, step: int):
    """Optimizer step number `step` on the stacked micro-batches [GA, B, ...]."""
    c = run.c
    batch = {k: np.stack([m[k] for m in micro]) for k in micro[0]}
    run.state, metrics = c.train_step(
        run.state, c.fixed, c.frozen_state, mesh_lib.shard_batch(batch, run.mesh, stacked=True)
    )
    run.window.add(step, metrics, micro)
    run.progress.update(step)


def _fetch(run: _Run):
    """Fetch the window's pending metrics; a non-finite loss stops the run (nothing saved)."""
    bad = run.window.fetch()
    if bad is None:
        return
    step, loss = bad
    last = run.ck.latest_step()
    run.ck.wait()
    run.tracker.end("FAILED")
    run.progress.close()
    raise NonFiniteLossError(
        f"non-finite loss {loss} at step {step}: training stopped; nothing "
        f"after it was saved; last good checkpoint: "
        f"{run.ck.path(last) if last is not None else 'none'}"
    )


def _log_window(run: _Run, step: int):
    """Log the means over the steps since the last log."""
    _fetch(run)
    log = run.window.flush()
    if log is None:
        return
    data_metrics = getattr(run.task.train_iter, "window_metrics", None)
    if data_metrics is not None:
        log.update(data_metrics())
    run.tracker.log_metrics(log, step)
    run.logged.update(log)
    run.progress.postfix(loss=log["train/loss"], tok_s=log["perf/tokens_per_sec"])


def _evaluate(run: _Run, step: int):
    """Validate, log, and checkpoint a new best value (`checkpoint.save_best`)."""
    val = run.evaluation.metrics(run.state)
    if not val:
        return
    run.tracker.log_metrics(val, step)
    run.logged.update(val)
    logging.info("step %d validation: %s", step, val)
    if run.policy.save_best and run.evaluation.improves(val, step):
        _save(run, step, "best", best=True)


def _save(run: _Run, step: int, status: str, *, best: bool = False):
    run.policy.save(run.state, step, status, run.evaluation.best, best=best)


def _finish(run: _Run, status: str, step: int) -> TrainResult:
    """Wait for the checkpoints, export / on_end (finished runs), close the tracker."""
    run.progress.close()
    run.ck.wait()
    model = run.c.model(run.state)
    done = status in ("completed", "data_exhausted")
    if done:
        _on_end(run, model)
    run.tracker.log_dict(run.policy.cfg, "config.json")
    run.tracker.log_dict({"status": status, "step": step, **run.logged}, "final_metrics.json")
    run.tracker.end("FINISHED" if done else "KILLED")
    ck = run.ck
    latest, best_step = ck.latest_step(), ck.latest_step(best=True)
    result = TrainResult(
        status=status,
        step=step,
        model=model,
        metrics=run.logged,
        checkpoint_dir=ck.path(latest) if latest is not None else None,
        best_dir=ck.path(best_step, best=True) if best_step is not None else None,
        output_dir=run.out,
        metrics_file=run.out / "metrics.jsonl",
        mlflow_run_id=run.tracker.run_id,
        mlflow_tracking_uri=run.tracker.tracking_uri,
        extra=jax.device_get(run.state["extra"]),
    )
    ck.close()
    logging.info("fit %s at step %d; checkpoint %s", status, step, result.checkpoint_dir)
    return result


def _on_end(run: _Run, model: nnx.Module):
    task, c = run.task, run.c
    if task.export_fn is not None:
        task.export_fn(model, run.out / "final_model")
    if task.on_end is not None:
        frozen = nnx.merge(c.frozen_graph, c.frozen_state) if c.frozen_graph is not None else None
        task.on_end(model, frozen, run.tracker)
