"""Experiment tracking: MLflow (SQLite backend store by default) + a metrics.jsonl file.

Only process 0 writes; every other process gets no-op methods. One MLflow run per pipeline
run: name = experiment.name, tags = experiment.tags, params = the flattened config (values
truncated to MLflow's limit). The run id is stored in `<output_dir>/mlflow_run.json`, so a
resumed run keeps logging into the same MLflow run. Metrics are batched (`log_batch`).
Every logged metric row is also appended to `<output_dir>/metrics.jsonl` as
{"step": s, "<name>": value, ...}; on resume from step s, rows after s are cut first.

MLflow never stops or stalls training: every MLflow call runs in one background thread, in
order; a run waits at most START_WAIT_S for its MLflow run to be created. A failing call
(database locked, server down) is logged once as a warning and retried with a back-off
(1 s doubling to 30 s) while training goes on; metrics.jsonl always has every row. `end()`
waits up to `mlflow.sync_timeout` seconds for the queue to drain; metric rows still unsent
then go to `<output_dir>/mlflow_pending.jsonl` and are sent by the next run resuming in that
output_dir.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from absl import logging

from wmtp_jax.data.records import build_index, iter_jsonl

RUN_FILE = "mlflow_run.json"
METRICS_FILE = "metrics.jsonl"
PENDING_FILE = "mlflow_pending.jsonl"
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
START_WAIT_S = 30.0  # a run waits at most this long for MLflow to start its run
_MAX_PARAM_VAL = 6000
_MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"training.learning_rate": "0.0001", ...}; values stringified and truncated for MLflow."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_config(v, key + "."))
        else:
            s = str(v)
            out[key[:_MAX_KEY]] = s if len(s) <= _MAX_PARAM_VAL else s[: _MAX_PARAM_VAL - 3] + "..."
    return out


def config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts next to a SQLite store (storage/mlflow/artifacts/<experiment>), not ./mlruns."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.absolute().parent / "artifacts" / experiment).as_uri()
    return None


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}"


def cut_rows(path: Path, last_step: int) -> int:
    """Keep the JSONL rows of `path` with step <= last_step (and drop torn lines); rows cut."""
    if not path.exists():
        return 0
    keep = []
    for _, row in iter_jsonl(path, skip_bad=True):
        try:
            if int(row["step"]) <= last_step:
                keep.append(json.dumps(row) + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    cut = len(build_index(path)) - 1 - len(keep)  # non-blank lines dropped
    if cut:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, path)
    return cut


class Tracker:
    """MLflow run + metrics.jsonl; a no-op on processes other than 0.

    start_step: the step training (re)starts from; metrics.jsonl (and the pending MLflow rows)
    are cut back to it, so a resumed run never repeats rows."""

    def __init__(self, config, output_dir, *, resume: bool = True, start_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.output_dir = Path(output_dir).absolute()
        self.client = None
        self.run_id = None
        self.experiment_id = None
        self.tracking_uri = str(config.mlflow.tracking_uri)
        self.sync_timeout = float(config.mlflow.get("sync_timeout", 120.0))
        self._thread = None
        self._ended = False
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if start_step is not None:
            n = cut_rows(self.output_dir / METRICS_FILE, start_step)
            if n:
                logging.info("metrics.jsonl: cut %d row(s) logged after step %d", n, start_step)
            cut_rows(self.output_dir / PENDING_FILE, start_step)
        self._metrics_file = open(self.output_dir / METRICS_FILE, "a")
        if not config.mlflow.experiment:
            logging.info(
                "mlflow.experiment is empty: MLflow disabled (metrics in %s)",
                self.output_dir / METRICS_FILE,
            )
            return
        self._jobs: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closing = self._abandoned = False
        self._down_since: float | None = None
        tags = {str(t): "true" for t in (config.experiment.tags or ())}
        tags["mlflow.note.content"] = str(config.experiment.description or "")
        self._start_args = dict(
            name=str(config.mlflow.experiment),
            run_name=str(config.experiment.name),
            tags=tags,
            params=flatten_config(config_dict(config)),
            resume=resume,
        )
        self._jobs.append(("start",))
        self._requeue_pending()
        self._thread = threading.Thread(target=self._worker, name="mlflow-sync", daemon=True)
        self._thread.start()
        self.flush(timeout=START_WAIT_S)  # run_id known at once when MLflow is up

    # ---- MLflow calls (the worker thread only) ----------------------------------------------

    def _start(self):
        from mlflow.entities import Param  # mlflow imports in seconds: only when MLflow is on
        from mlflow.tracking import MlflowClient

        a, uri = self._start_args, self.tracking_uri
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///") :]).absolute().parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(a["name"])
        exp_id = (
            exp.experiment_id
            if exp
            else client.create_experiment(
                a["name"], artifact_location=_artifact_location(uri, a["name"])
            )
        )
        run_file = self.output_dir / RUN_FILE
        prior = None
        if a["resume"] and run_file.exists():
            try:
                prior = json.loads(run_file.read_text())
            except ValueError:
                logging.warning("%s is not valid JSON: starting a new MLflow run", run_file)
        if prior and prior.get("tracking_uri") == uri:
            run_id = prior["run_id"]
            client.update_run(run_id, status="RUNNING")
            logging.info("MLflow: resuming run %s", run_id)
        else:
            run_id = client.create_run(exp_id, run_name=a["run_name"], tags=a["tags"]).info.run_id
            params = [Param(k, v) for k, v in a["params"].items()]
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                client.log_batch(run_id, params=params[i : i + _PARAMS_PER_BATCH])
            run_file.write_text(
                json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment_id": exp_id})
            )
        self.client, self.run_id, self.experiment_id = client, run_id, exp_id
        logging.info("MLflow run %s in %s (experiment %r)", run_id, uri, a["name"])

    def _call(self, job: tuple):
        kind = job[0]
        if kind == "start":
            return self._start()
        if self.client is None:
            raise RuntimeError("MLflow run not started")
        if kind == "metrics":
            from mlflow.entities import Metric  # mlflow imports in seconds: only when MLflow is on

            _, step, ts, metrics = job
            ms = [Metric(k, v, ts, step) for k, v in metrics.items()]
            for i in range(0, len(ms), _METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=ms[i : i + _METRICS_PER_BATCH])
        elif kind == "params":
            from mlflow.entities import Param  # mlflow imports in seconds: only when MLflow is on

            ps = [Param(k[:_MAX_KEY], str(v)[:_MAX_PARAM_VAL]) for k, v in job[1].items()]
            for i in range(0, len(ps), _PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=ps[i : i + _PARAMS_PER_BATCH])
        elif kind == "artifact":
            self.client.log_artifact(self.run_id, job[1], job[2])
        elif kind == "end":
            self.client.set_terminated(self.run_id, job[1])

    def _outage(self, e: BaseException, since: float):
        """Warn once per outage; `since`: when the first failing call started (a locked SQLite
        store fails only after MLflow's 20 s busy wait)."""
        if self._down_since is None:
            self._down_since = since
            logging.warning(
                "MLflow unavailable (%s): training continues; metrics stay in %s and "
                "are sent to %s when it is back (retrying up to every %.0f s)",
                _one_line(e),
                self.output_dir / METRICS_FILE,
                self.tracking_uri,
                RETRY_MAX_S,
            )

    def _worker(self):
        delay = RETRY_MIN_S
        while True:
            with self._cv:
                while not self._jobs and not self._closing:
                    self._cv.wait()
                if not self._jobs or self._abandoned:
                    return
                job = self._jobs[0]
            t0 = time.time()
            try:
                self._call(job)
            except Exception as e:  # noqa: BLE001 -- keep the job, retry after a back-off
                self._outage(e, t0)
                with self._cv:
                    self._cv.wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            with self._cv:
                if self._jobs and self._jobs[0] is job:
                    self._jobs.popleft()
                left = len(self._jobs)
            if self._down_since is not None:
                logging.warning(
                    "MLflow is back after %.0f s; sending the queued calls (%d left)",
                    time.time() - self._down_since,
                    left,
                )
                self._down_since = None
            delay = RETRY_MIN_S

    def _put(self, job: tuple):
        with self._cv:
            self._jobs.append(job)
            self._cv.notify()

    def _requeue_pending(self):
        """Metric rows a previous run could not send (mlflow_pending.jsonl), queued first."""
        path = self.output_dir / PENDING_FILE
        if not path.exists():
            return
        n = 0
        for _, row in iter_jsonl(path, skip_bad=True):
            try:
                self._jobs.append(("metrics", int(row.pop("step")), int(row.pop("ts")), row))
                n += 1
            except (ValueError, KeyError, TypeError):
                continue
        path.unlink()
        if n:
            logging.info("MLflow: %d metric row(s) left by an earlier run queued for sending", n)

    # ---- public API (the training thread) --------------------------------------------------

    @property
    def run_uri(self) -> str | None:
        return f"runs:/{self.run_id}" if self.run_id else None

    def log_metrics(self, metrics: Mapping[str, float], step: int):
        if not self.enabled or not metrics:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        if self._thread is not None:
            self._put(
                (
                    "metrics",
                    int(step),
                    int(time.time() * 1000),
                    {k: float(v) for k, v in metrics.items()},
                )
            )

    def log_params(self, params: Mapping[str, Any]):
        if self._thread is not None:
            self._put(("params", dict(params)))

    def log_artifact(self, path, artifact_path: str | None = None):
        if self._thread is not None:
            self._put(("artifact", str(path), artifact_path))

    def log_dict(self, obj: Any, name: str):
        """Write `obj` as JSON to output_dir/name and log it as an artifact."""
        if not self.enabled:
            return
        path = self.output_dir / name
        path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
        self.log_artifact(path)

    def log_figure(self, fig, name: str):
        if not self.enabled:
            return
        path = self.output_dir / name
        fig.savefig(path)
        self.log_artifact(path)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued MLflow call went through (True) or `timeout` passed."""
        if self._thread is None:
            return True
        deadline = None if timeout is None else time.time() + timeout
        with self._cv:
            while self._jobs:
                left = None if deadline is None else deadline - time.time()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(min(left, 0.1) if left is not None else 0.1)
        return True

    def end(self, status: str = "FINISHED"):
        """Close metrics.jsonl and end the MLflow run with `status` (later calls do nothing)."""
        if not self.enabled or self._ended:
            return
        self._ended = True
        self._metrics_file.close()
        if self._thread is None:
            return
        self._put(("end", status))
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(self.sync_timeout)
        if not self._thread.is_alive():
            return
        with self._cv:
            self._abandoned = True
            left = list(self._jobs)
            self._jobs.clear()
            self._cv.notify_all()
        rows = [dict(step=j[1], ts=j[2], **j[3]) for j in left if j[0] == "metrics"]
        with open(self.output_dir / PENDING_FILE, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        logging.warning(
            "MLflow still unavailable after waiting %.0f s (mlflow.sync_timeout): "
            "%d metric row(s) kept in %s for the next resumed run, %d other call(s) "
            "dropped; every row is in %s",
            self.sync_timeout,
            len(rows),
            self.output_dir / PENDING_FILE,
            len(left) - len(rows),
            self.output_dir / METRICS_FILE,
        )


def log_to_run(
    tracking_uri: str,
    run_id: str | None,
    metrics: Mapping[str, float],
    step: int = 0,
    tags: Mapping[str, str] | None = None,
):
    """Log metrics (and tags) into an existing MLflow run, e.g. one that has ended (process 0;
    nothing without a run id)."""
    if not run_id or jax.process_index() != 0:
        return
    from mlflow.entities import Metric, RunTag  # mlflow imports in seconds: only when MLflow is on
    from mlflow.tracking import MlflowClient

    ts = int(time.time() * 1000)
    try:  # a tracker outage must not fail the run whose results are already on disk
        MlflowClient(tracking_uri).log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, int(step)) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )
    except Exception as e:  # noqa: BLE001 - any MLflow/SQLite failure
        logging.warning(
            "MLflow: could not log %s to run %s (%s: %s); the values are in the run's output_dir",
            sorted(metrics),
            run_id,
            type(e).__name__,
            e,
        )
