"""Training that survives faults: a locked MLflow store, a busy output_dir, a truncated newest
checkpoint, a model that does not fit the checkpoint, config errors."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import train_toy, train_toy_config
from wmtp_jax.train import fit
from wmtp_jax.train.checkpoint import IncompatibleCheckpoint
from wmtp_jax.train.lock import LOCK_FILE, OutputDirBusy, claim_output_dir, release_output_dir

ROOT = Path(__file__).resolve().parents[2]
MAIN = [sys.executable, "-m", "tests.train_toy", "--config=tests/train_toy_config.py"]
train_toy.enable_compilation_cache()


cfg = train_toy_config.config_in


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def losses(path) -> list[tuple[int, float]]:
    """(step, train/loss) rows of metrics.jsonl in file order (a repeated step would show)."""
    return [(r["step"], r["train/loss"]) for r in rows(path) if "train/loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    c = cfg(tmp_path_factory.mktemp("ref"))
    return losses(fit(c, train_toy.make_task(c)).metrics_file)


def _env():
    return {**os.environ, **train_toy.cache_env(), "JAX_PLATFORMS": "cpu"}


class _LockingData(train_toy.ToyData):
    """ToyData that, when batch `at` is drawn, holds `BEGIN EXCLUSIVE` on `db` from another
    process for `seconds` (returns once the lock is held, so training runs under it)."""

    at, db, seconds, locker = 3, None, 3.0, None

    def __next__(self):
        if self.calls + 1 == self.at and _LockingData.locker is None:
            code = textwrap.dedent(f"""
                import sqlite3, time
                c = sqlite3.connect({str(self.db)!r}, isolation_level=None)
                c.execute("BEGIN EXCLUSIVE")
                print("locked", flush=True)
                time.sleep({self.seconds})
                c.execute("COMMIT")""")
            p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "locked"
            _LockingData.locker = p
        return super().__next__()


def test_locked_mlflow_store_mid_run_does_not_stop_training(reference, tmp_path):
    db = tmp_path / "mlflow.db"
    c = cfg(
        tmp_path / "run", **{"mlflow.experiment": "toy", "mlflow.tracking_uri": f"sqlite:///{db}"}
    )
    task = train_toy.make_task(c)
    task.train_iter.__class__ = _LockingData
    _LockingData.db, _LockingData.locker = db, None
    r = fit(c, task)
    _LockingData.locker.wait(timeout=60)
    assert _LockingData.locker.returncode == 0  # the lock was really taken, during step 3
    assert r.status == "completed" and r.step == 6
    got = losses(r.metrics_file)
    assert [s for s, _ in got] == [s for s, _ in reference] == [1, 2, 3, 4, 5, 6]
    for (s, a), (_, b) in zip(got, reference):
        assert abs(a - b) <= 1e-6, (s, a, b)
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(f"sqlite:///{db}").get_metric_history(r.mlflow_run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == got  # every row reached MLflow, once
    assert MlflowClient(f"sqlite:///{db}").get_run(r.mlflow_run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_second_run_on_a_busy_output_dir_refuses_at_once(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from wmtp_jax.train.lock import claim_output_dir; "
            f"claim_output_dir({str(tmp_path)!r}); print('held', flush=True); time.sleep(300)",
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        p = subprocess.run(
            MAIN + [f"--config.output_dir={tmp_path}"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 2, p.stderr[-2000:]
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and f"is in use by pid {holder.pid} on host" in err[0], p.stderr
        assert "Traceback" not in p.stderr
        assert sorted(x.name for x in tmp_path.iterdir()) == [LOCK_FILE]  # it did nothing
        with pytest.raises(OutputDirBusy, match=f"pid {holder.pid}"):
            claim_output_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file stays, but the lock is gone
    assert f"pid {holder.pid}" in (tmp_path / LOCK_FILE).read_text()
    claim_output_dir(tmp_path)
    assert f"pid {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    release_output_dir(tmp_path)


def test_truncated_newest_checkpoint_falls_back_to_the_previous(reference, tmp_path, caplog):
    c = cfg(tmp_path)
    first = fit(c, train_toy.make_task(c), stop_at_step=4)
    assert first.status == "stopped" and first.checkpoint_dir.name == "4"
    data = [
        p
        for p in (tmp_path / "checkpoints" / "4" / "state").rglob("*")
        if p.is_file() and p.parent.name == "d"
    ]  # the array data files (OCDBT)
    assert data
    for f in data:  # as a write cut short by a full disk or a kill
        os.truncate(f, f.stat().st_size // 2)
    caplog.set_level(logging.WARNING)
    second = fit(c, train_toy.make_task(c))
    warn = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(warn) == 1
    assert f"checkpoint {tmp_path / 'checkpoints' / '4'} is unreadable" in warn[0]
    assert second.status == "completed" and second.step == 6
    moved = list((tmp_path / "corrupt_checkpoints").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("checkpoints-4-")
    got = losses(second.metrics_file)  # steps 3, 4 cut and re-run from checkpoint 2
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]
    for (s, a), (_, b) in zip(got, reference):
        assert abs(a - b) <= 1e-6, (s, a, b)
    assert sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir()) == [4, 6]


def test_resume_with_another_n_future_is_refused_naming_it(tmp_path):
    c = cfg(tmp_path)
    task = train_toy.make_task(c)
    task.model.args = SimpleArgs(n_future_tokens=4)
    fit(c, task, stop_at_step=2)
    before = (tmp_path / "metrics.jsonl").read_text()
    task = train_toy.make_task(c)
    task.model.args = SimpleArgs(n_future_tokens=2)
    with pytest.raises(
        IncompatibleCheckpoint,
        match=r"checkpoints/2 was trained with another "
        r"model: n_future_tokens=4 in the checkpoint, 2 now",
    ):
        fit(c, task)
    assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing trained or logged


class SimpleArgs:
    def __init__(self, **kw):
        self.kw = dict(kw, dtype="float32")

    def to_dict(self):
        return dict(self.kw)


@pytest.mark.parametrize(
    "args, want",
    [
        (["--config=tests/nope.py"], "error: --config: no config file 'tests/nope.py'"),
        (["--config=tests/train_toy_config.py:9b"], "unknown config variant '9b'"),
        (["--config.training.max_steps=abc"], "--config.training.max_steps=abc: invalid literal"),
        (["--config.training.nope=1"], "unknown config key 'config.training.nope'"),
    ],
)
def test_config_errors_exit_2_with_one_line(args, want):
    cmd = MAIN[:3] + args if args[0].startswith("--config=") else MAIN + args
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().count("\n") == 0 and want in p.stderr, p.stderr


def test_max_length_above_a_models_max_seq_len_is_refused_naming_both(tmp_path):
    import ml_collections

    from wmtp_jax.configs.common import ConfigError
    from wmtp_jax.models import serialization
    from wmtp_jax.models.args import ModelArgs
    from wmtp_jax.pipelines.bootstrap import check_model_lengths

    model = tmp_path / "policy"
    model.mkdir()
    args = ModelArgs(
        dim=16, n_layers=2, n_heads=2, vocab_size=32, n_future_tokens=2, max_seq_len=64
    )
    (model / serialization.CONFIG_FILE).write_text(
        json.dumps(serialization.make_config("mtp", args))
    )
    c = ml_collections.ConfigDict(
        {
            "dataset": {"max_length": 64},
            "models": {
                "policy": {"path": str(model)},
                "reference": {"path": str(tmp_path / "not-created")},
            },
        }
    )
    check_model_lengths(c)  # equal is fine; a model dir not created yet is skipped
    c.dataset.max_length = 65
    with pytest.raises(
        ConfigError,
        match=r"dataset.max_length=65 exceeds models.policy "
        r"max_seq_len=64 \(.*policy/model_config.json\)",
    ):
        check_model_lengths(c)


def test_newest_checkpoint_with_wrong_meta_falls_back_to_the_previous(reference, tmp_path):
    """Readable JSON, wrong content (a mistyped data position): moved aside like a torn file."""
    c = cfg(tmp_path)
    fit(c, train_toy.make_task(c), stop_at_step=4)
    meta = tmp_path / "checkpoints" / "4" / "meta" / "metadata"
    m = json.loads(meta.read_text())
    meta.write_text(json.dumps(dict(m, data_iter=dict(m["data_iter"], index="32"))))
    second = fit(c, train_toy.make_task(c))
    assert second.status == "completed" and second.step == 6
    moved = list((tmp_path / "corrupt_checkpoints").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("checkpoints-4-")
    got = losses(second.metrics_file)  # steps 3, 4 re-run from checkpoint 2
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]
    for (s, a), (_, b) in zip(got, reference):
        assert abs(a - b) <= 1e-6, (s, a, b)
