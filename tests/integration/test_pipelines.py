"""The five pipelines end to end through the CLI on micro storage (few steps, tiny models):
finite loss, checkpoints, exported model dirs, MLflow runs readable with MlflowClient, the
verifiable weights / weight picture / EMA resume, rho1 on the ref-tuned reference, bad config
values, and the embedded default bootstrapping an empty storage/."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.study_storage import make_tiny_storage

ROOT = Path(__file__).resolve().parents[2]
MAIN = [sys.executable, "-m", "wmtp_jax.main"]
FAST = [
    "--config.training.max_steps=3",
    "--config.training.batch_size=2",
    "--config.training.eval_every_steps=0",
    "--config.training.log_interval=1",
    "--config.checkpoint.every_steps=2",
    "--config.dataset.max_length=128",
    "--config.data_sampling.n_samples=12",
    "--config.data_sampling.val_n_samples=2",
]


def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    e.pop("XLA_FLAGS", None)  # one device: the pipelines, not the sharding, are tested here
    return e


def run_cli(cwd, config, *overrides, timeout=600):
    uri = f"sqlite:///{cwd}/storage/mlflow/mlflow.db"
    cmd = MAIN + [
        f"--config={ROOT}/configs/{config}",
        f"--config.mlflow.tracking_uri={uri}",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def ok(p):
    assert p.returncode == 0, p.stderr[-4000:]
    return p


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A storage/ with a small synthetic dataset, a BPE tokenizer and tiny random models at the
    micro default paths (so the bootstrap finds them and only trains prerequisites)."""
    return make_tiny_storage(tmp_path_factory.mktemp("pipelines"))


def metrics_rows(out_dir):
    return [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]


def check_run(work, out_dir, metric="train/loss"):
    """Finite loss, a checkpoint, an MLflow run with params and the metric history."""
    from mlflow.tracking import MlflowClient

    out = work / out_dir
    losses = [r[metric] for r in metrics_rows(out) if metric in r]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses), losses
    assert any((out / "checkpoints").iterdir())
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{work}/storage/mlflow/mlflow.db")
    run = client.get_run(run_id)
    assert run.data.params["training.max_steps"].isdigit()  # flattened config as params
    assert len(client.get_metric_history(run_id, "train/loss")) >= 2
    return client, run_id


def test_critic_then_verifiable_with_ema_resume(work):
    ok(run_cli(work, "critic.py", *FAST, "--config.training.value_loss.type=lambda_return"))
    from wmtp_jax.models import serialization

    critic_dir = work / "storage/checkpoints/critic/critic-micro/final_model"
    assert serialization.read_config(critic_dir)["kind"] == "critic"
    check_run(work, "storage/checkpoints/critic/critic-micro")

    out = "storage/checkpoints/verifiable/verifiable-micro"
    fast = [a for a in FAST if "max_steps" not in a]
    ok(
        run_cli(
            work,
            "verifiable.py",
            *fast,
            "--config.training.max_steps=2",
            "--config.training.gradient_accumulation_steps=2",
        )
    )
    ok(
        run_cli(
            work,
            "verifiable.py",
            *fast,
            "--config.training.max_steps=4",
            "--config.training.gradient_accumulation_steps=2",
        )
    )  # resumes at step 2
    assert "resumed from" in (work / out / "run.log").read_text()  # INFO goes to run.log
    client, run_id = check_run(work, out)
    rows = [r for r in metrics_rows(work / out) if "td/ema_step_count" in r]
    # the EMA folds once per optimizer step (after the 2nd micro-batch: the logged mean over the
    # two micro-batches is k − 0.5) and is restored on resume (step 3 does not restart at 0)
    assert [r["td/ema_step_count"] for r in rows] == [0.5, 1.5, 2.5, 3.5], rows
    assert all(r["weight/std"] > 0 for r in rows)  # weights are not all equal
    assert all(0.1 - 1e-6 <= r["weight/min"] <= r["weight/max"] <= 3.0 + 1e-6 for r in rows)
    assert (work / out / "token_weights.png").stat().st_size > 1000
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert "token_weights.png" in arts, arts


def test_ref_tuning_then_rho1(work):
    ok(run_cli(work, "ref_tuning.py", *FAST))
    from wmtp_jax.models import serialization

    ref = work / "storage/checkpoints/ref_tuning/ref_tuning-micro/final_model"
    assert serialization.read_config(ref)["kind"] == "llama"
    check_run(work, "storage/checkpoints/ref_tuning/ref_tuning-micro")
    ok(run_cli(work, "rho1.py", *FAST, "--config.training.use_lora=True"))
    rows = metrics_rows(work / "storage/checkpoints/rho1/rho1-micro")
    sel = [r["train/selection_ratio"] for r in rows if "train/selection_ratio" in r]
    assert sel and all(0.5 <= s <= 0.8 for s in sel), sel  # k_percent 0.6 (ties kept)
    check_run(work, "storage/checkpoints/rho1/rho1-micro")


def test_baseline_lora(work):
    ok(run_cli(work, "baseline.py", *FAST, "--config.training.use_lora=True"))
    check_run(work, "storage/checkpoints/baseline/baseline-micro")
    from wmtp_jax.models import serialization

    cfg = serialization.read_config(
        work / "storage/checkpoints/baseline/baseline-micro/final_model"
    )
    assert cfg["lora"]["rank"] == 16 and "w1" in cfg["lora"]["targets"]


@pytest.mark.parametrize(
    "override,key",
    [
        ("--config.weighting.advantage=foo", "weighting.advantage"),
        ("--config.training.weight_clip_min=9.0", "training.weight_clip_min"),
        ("--config.training.no_such_key=1", "no_such_key"),
    ],
)
def test_bad_config_exits_nonzero_naming_the_key(tmp_path, override, key):
    p = run_cli(tmp_path, "verifiable.py", override, timeout=120)
    assert p.returncode != 0
    assert key in p.stderr
    assert not (tmp_path / "storage/datasets").exists()  # failed before creating anything


def test_embedded_default_bootstraps_empty_storage(tmp_path):
    """baseline :micro from an empty directory: creates dataset, tokenizer and the micro
    policy at their default sizes (logged), then trains."""
    p = ok(
        run_cli(
            tmp_path,
            "baseline.py",
            "--config.training.max_steps=2",
            "--config.training.batch_size=2",
            "--config.training.eval_every_steps=0",
            "--config.data_sampling.val_n_samples=2",
            timeout=900,
        )
    )
    out = tmp_path / "storage/checkpoints/baseline/baseline-micro"
    log = (out / "run.log").read_text()
    for what in ("synthetic dataset", "micro tokenizer", "random-init micro mtp model"):
        assert f"[bootstrap] created {what}" in log, what
    assert "final model:" in p.stdout and "mlflow: run" in p.stdout
    assert "[bootstrap]" not in p.stderr and "CheckpointManagerOptions" not in p.stderr
    losses = [r["train/loss"] for r in metrics_rows(out) if "train/loss" in r]
    assert losses and np.isfinite(losses).all() and min(losses) > 0
