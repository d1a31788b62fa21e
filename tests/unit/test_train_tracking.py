"""Tracker: MLflow failures never reach training; rows are retried, kept and sent later;
metrics.jsonl is cut back on resume."""

import json
import logging
from types import SimpleNamespace

import pytest

from tests import train_toy_config
from wmtp_jax.train import tracking
from wmtp_jax.train.tracking import PENDING_FILE, Tracker, cut_rows


class FakeClient:
    """An MlflowClient whose every call fails while `FakeClient.down` (as a locked database)."""

    down = True
    logged: list = []
    ended: list = []

    def __init__(self, uri):
        pass

    def _gate(self):
        if FakeClient.down:
            raise RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: ...]")

    def get_experiment_by_name(self, name):
        self._gate()
        return None

    def create_experiment(self, name, artifact_location=None):
        return "1"

    def create_run(self, exp_id, run_name, tags):
        self._gate()
        return SimpleNamespace(info=SimpleNamespace(run_id="run1"))

    def update_run(self, run_id, status):
        self._gate()

    def log_batch(self, run_id, metrics=(), params=()):
        self._gate()
        FakeClient.logged += [(m.key, m.step, m.value) for m in metrics]

    def log_artifact(self, run_id, path, artifact_path=None):
        self._gate()

    def set_terminated(self, run_id, status):
        self._gate()
        FakeClient.ended.append(status)


@pytest.fixture
def fake_mlflow(monkeypatch):
    import mlflow.tracking

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", FakeClient)
    monkeypatch.setattr(tracking, "RETRY_MIN_S", 0.02)
    monkeypatch.setattr(tracking, "RETRY_MAX_S", 0.05)
    monkeypatch.setattr(tracking, "START_WAIT_S", 0.2)
    FakeClient.down, FakeClient.logged, FakeClient.ended = True, [], []
    return FakeClient


def _cfg(tmp_path, sync_timeout=0.3):
    c = train_toy_config.get_config()
    with c.unlocked():
        c.output_dir = str(tmp_path)
        c.mlflow.experiment, c.mlflow.tracking_uri = "exp", "fake://store"
        c.mlflow.sync_timeout = sync_timeout
    return c


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_outage_is_retried_rows_kept_and_sent_by_the_resumed_run(tmp_path, fake_mlflow, caplog):
    caplog.set_level(logging.WARNING)
    t = Tracker(_cfg(tmp_path), tmp_path, resume=False, start_step=0)  # MLflow down at start
    assert t.run_id is None
    t.log_metrics({"train/loss": 2.0}, 1)  # never raises, never blocks
    t.log_metrics({"train/loss": 1.5}, 2)
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2]
    assert any(
        "MLflow unavailable (RuntimeError: (sqlite3.OperationalError) database is locked)"
        in r.getMessage()
        for r in caplog.records
    )
    fake_mlflow.down = False  # the store comes back: start, then the queued rows, in order
    assert t.flush(timeout=10)
    assert t.run_id == "run1" and fake_mlflow.logged == [
        ("train/loss", 1, 2.0),
        ("train/loss", 2, 1.5),
    ]
    assert any("MLflow is back" in r.getMessage() for r in caplog.records)

    fake_mlflow.down = True  # down again through the end: row 3 is kept for later
    t.log_metrics({"train/loss": 1.25}, 3)
    t.end("FINISHED")
    pending = [json.loads(line) for line in (tmp_path / PENDING_FILE).read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in pending] == [(3, 1.25)]
    assert any("1 metric row(s) kept in" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"] == "run1"

    fake_mlflow.down = False  # the resumed run sends them into the same MLflow run
    t2 = Tracker(_cfg(tmp_path), tmp_path, resume=True, start_step=3)
    assert t2.flush(timeout=10)
    assert fake_mlflow.logged[-1] == ("train/loss", 3, 1.25)
    assert not (tmp_path / PENDING_FILE).exists()
    t2.end("FINISHED")
    assert fake_mlflow.ended == ["FINISHED"]


def test_resume_cuts_metrics_after_the_restored_step(tmp_path):
    c = _cfg(tmp_path)
    with c.unlocked():
        c.mlflow.experiment = ""
    rows = [{"step": s, "train/loss": 1.0 / s} for s in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "train/lo'
    )  # torn by a kill
    t = Tracker(c, tmp_path, resume=True, start_step=3)
    t.log_metrics({"train/loss": 0.9}, 4)
    t.end()
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4]
    last = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["train/loss"] == 0.9
    assert cut_rows(tmp_path / "absent.jsonl", 0) == 0
