"""Experiment tracking: MLflow (SQLite backend store by default) + a metrics.jsonl file.

Only process 0 writes; every other process gets no-op methods. One MLflow run per pipeline
run: name = experiment.name, tags = experiment.tags, params = the flattened config (values
truncated to MLflow's limit). The run id is stored in `<output_dir>/mlflow_run.json`, so a
resumed run keeps logging into the same MLflow run. Metrics are batched (`log_batch`).
Every logged metric row is also appended to `<output_dir>/metrics.jsonl` as
{"step": s, "<name>": value, ...}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import jax
from absl import logging

RUN_FILE = "mlflow_run.json"
METRICS_FILE = "metrics.jsonl"
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
            out[key[:_MAX_KEY]] = s if len(s) <= _MAX_PARAM_VAL else s[:_MAX_PARAM_VAL - 3] + "..."
    return out


def config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts next to a SQLite store (storage/mlflow/artifacts/<experiment>), not ./mlruns."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.absolute().parent / "artifacts" / experiment).as_uri()
    return None


class Tracker:
    """MLflow run + metrics.jsonl; a no-op on processes other than 0."""

    def __init__(self, config, output_dir, *, resume: bool = True):
        self.enabled = jax.process_index() == 0
        self.output_dir = Path(output_dir).absolute()
        self.client = None
        self.run_id = None
        self.tracking_uri = str(config.mlflow.tracking_uri)
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(self.output_dir / METRICS_FILE, "a")
        if not config.mlflow.experiment:
            logging.info("mlflow.experiment is empty: MLflow disabled (metrics in %s)",
                         self.output_dir / METRICS_FILE)
            return
        self._start(config, resume)

    def _start(self, config, resume: bool):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).absolute().parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        name = str(config.mlflow.experiment)
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            name, artifact_location=_artifact_location(uri, name))
        run_file = self.output_dir / RUN_FILE
        prior = json.loads(run_file.read_text()) if resume and run_file.exists() else None
        if prior and prior.get("tracking_uri") == uri:
            self.run_id = prior["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            logging.info("MLflow: resuming run %s", self.run_id)
        else:
            tags = {str(t): "true" for t in (config.experiment.tags or ())}
            tags["mlflow.note.content"] = str(config.experiment.description or "")
            run = client.create_run(exp_id, run_name=str(config.experiment.name), tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, v) for k, v in flatten_config(config_dict(config)).items()]
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                client.log_batch(self.run_id, params=params[i:i + _PARAMS_PER_BATCH])
            run_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": uri,
                                            "experiment_id": exp_id}))
        self.client = client
        self.experiment_id = exp_id
        logging.info("MLflow run %s in %s (experiment %r)", self.run_id, uri, name)

    @property
    def run_uri(self) -> str | None:
        return f"runs:/{self.run_id}" if self.run_id else None

    def log_metrics(self, metrics: Mapping[str, float], step: int):
        if not self.enabled or not metrics:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        if self.client is None:
            return
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(ms), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=ms[i:i + _METRICS_PER_BATCH])

    def log_params(self, params: Mapping[str, Any]):
        if self.client is None:
            return
        from mlflow.entities import Param
        ps = [Param(k[:_MAX_KEY], str(v)[:_MAX_PARAM_VAL]) for k, v in params.items()]
        for i in range(0, len(ps), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=ps[i:i + _PARAMS_PER_BATCH])

    def log_artifact(self, path, artifact_path: str | None = None):
        if self.client is not None:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

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

    def end(self, status: str = "FINISHED"):
        if not self.enabled:
            return
        self._metrics_file.close()
        if self.client is not None:
            self.client.set_terminated(self.run_id, status)


def log_to_run(tracking_uri: str, run_id: str | None, metrics: Mapping[str, float], step: int = 0,
               tags: Mapping[str, str] | None = None):
    """Log metrics (and tags) into an existing MLflow run, e.g. one that has ended (process 0;
    nothing without a run id)."""
    if not run_id or jax.process_index() != 0:
        return
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    ts = int(time.time() * 1000)
    MlflowClient(tracking_uri).log_batch(
        run_id, metrics=[Metric(k, float(v), ts, int(step)) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
