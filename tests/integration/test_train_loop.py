"""The generic train loop on a toy NNX LM: overfitting + MLflow, exact resume (clean stop and
SIGKILL), sharding strategies vs one device, gradient accumulation, NaN guard, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import train_toy, train_toy_config
from wmtp_jax.train import NonFiniteLossError, fit
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.step import build

ROOT = Path(__file__).resolve().parents[2]
train_toy.enable_compilation_cache()


cfg = train_toy_config.config_in


def losses(path) -> dict[int, float]:
    """step → train/loss from metrics.jsonl (the last row wins: a resumed run re-logs steps)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            out[row["step"]] = row["train/loss"]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run of the toy config (dropout + RNG weights + EMA extra state)."""
    c = cfg(tmp_path_factory.mktemp("ref"))
    r = fit(c, train_toy.make_task(c))
    return c, r, losses(r.metrics_file)


def test_overfit_checkpoint_and_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = cfg(
        tmp_path / "run",
        **{
            "training.max_steps": 15,
            "training.log_interval": 5,
            "training.learning_rate": 0.1,
            "training.lr_scheduler.type": "constant",
            "mlflow.experiment": "toy",
            "mlflow.tracking_uri": uri,
            "training.eval_every_steps": 0,
        },
    )
    r = fit(c, train_toy.make_task(c, dropout=0.0, n_rows=8))  # one fixed batch of 8 rows
    assert r.status == "completed" and r.checkpoint_dir.name == "15"
    assert (r.checkpoint_dir / "state").is_dir() and json.loads(
        (r.checkpoint_dir / "config" / "metadata").read_text()
    )
    hist = MlflowClient(uri).get_metric_history(r.mlflow_run_id, "train/loss")
    assert [m.step for m in hist] == [5, 10, 15]
    vals = [m.value for m in hist]
    assert vals[0] > vals[1] > vals[2] and vals[2] < 0.75 * vals[0], vals
    run = MlflowClient(uri).get_run(r.mlflow_run_id)
    assert run.data.params["training.learning_rate"] == "0.1" and run.info.status == "FINISHED"
    assert {"train/grad_norm", "train/learning_rate", "perf/tokens_per_sec", "val/loss"} <= set(
        run.data.metrics
    )
    arts = {a.path for a in MlflowClient(uri).list_artifacts(r.mlflow_run_id)}
    assert {"config.json", "final_metrics.json"} <= arts


def test_resume_after_clean_stop_is_exact(reference, tmp_path):
    _, ref, ref_losses = reference
    c = cfg(tmp_path)
    first = fit(c, train_toy.make_task(c), stop_at_step=3)
    assert first.status == "stopped" and first.checkpoint_dir.name == "3"
    second = fit(
        c, train_toy.make_task(c)
    )  # fresh model/iterator: everything comes from the checkpoint
    assert second.status == "completed" and second.step == 6
    got = losses(second.metrics_file)
    for s in range(1, 7):
        assert abs(got[s] - ref_losses[s]) <= 1e-6, (s, got[s], ref_losses[s])
    assert abs(second.metrics["val/loss"] - ref.metrics["val/loss"]) <= 1e-6
    np.testing.assert_allclose(second.extra["ema"], ref.extra["ema"], atol=1e-6)
    assert int(second.extra["n"]) == 6


def test_resume_after_sigkill_is_exact(reference, tmp_path):
    _, _, ref_losses = reference
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tests.train_toy",
        "--config=tests/train_toy_config.py",
        f"--config.output_dir={out}",
    ]
    env = {**os.environ, **train_toy.cache_env()}
    p = subprocess.Popen(
        cmd + ["--config.toy.sleep=0.5"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "2").is_dir():
            assert p.poll() is None and time.time() < deadline, "child ended before checkpoint 2"
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    killed_at = max(int(d.name) for d in (out / "checkpoints").iterdir() if d.name.isdigit())
    assert killed_at < 6
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint:" in done.stdout and "metrics:" in done.stdout
    got = losses(out / "metrics.jsonl")
    for s in range(killed_at + 1, 7):
        assert abs(got[s] - ref_losses[s]) <= 1e-6, (s, got[s], ref_losses[s])


def _steps(config, mesh, n, **task_kw):
    """Run n train steps with `build` directly.

    Returns (compiled, initial shardings, state, losses).
    """
    task = train_toy.make_task(config, **task_kw)
    c = build(task, config, mesh, total_steps=10)
    shardings = jax.tree.map(lambda x: x.sharding, c.state)
    state, out = c.state, []
    ga = config.training.gradient_accumulation_steps
    for _ in range(n):
        micro = [next(task.train_iter) for _ in range(ga)]
        batch = {k: np.stack([m[k] for m in micro]) for k in micro[0]}
        state, m = c.train_step(
            state, c.fixed, c.frozen_state, mesh_lib.shard_batch(batch, mesh, stacked=True)
        )
        out.append(m["loss"])
    return c, shardings, state, np.asarray(jax.device_get(out))


def test_sharding_strategies_match_one_device(tmp_path):
    one = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    four = mesh_lib.make_mesh(1, 4, 1, devices=jax.devices()[:4])
    _, _, _, base = _steps(cfg(tmp_path), one, 3, groups=True, frozen=True)
    fsdp_spec, repl = ("fsdp",), ()

    def spec(sharding):  # trailing Nones dropped: P(None, None) ≡ P()
        t = tuple(sharding.spec)
        while t and t[-1] is None:
            t = t[:-1]
        return t

    want = {
        "FULL_SHARD": (fsdp_spec, fsdp_spec),
        "SHARD_GRAD_OP": (repl, fsdp_spec),
        "NO_SHARD": (repl, repl),
    }
    for strategy, (p_spec, o_spec) in want.items():
        c, sh, state, got = _steps(
            cfg(tmp_path, **{"runtime.sharding": strategy}), four, 3, groups=True, frozen=True
        )
        np.testing.assert_allclose(got, base, atol=1e-5, err_msg=strategy)
        assert spec(sh["params"]["w1"].get_value()) == p_spec, strategy
        mu = sh["opt_state"].inner_states["lm"].inner_state[0].mu["w1"].get_value()
        assert spec(mu) == o_spec, strategy
        # the layout survives the donated steps; frozen models use the parameter rules
        assert spec(state["params"]["w1"].get_value().sharding) == p_spec, strategy
        assert spec(c.frozen_state["w1"].get_value().sharding) == p_spec, strategy


def test_gradient_accumulation_equals_full_batch(tmp_path):
    m = mesh_lib.make_mesh(1, 4, 1, devices=jax.devices()[:4])
    kw = dict(dropout=0.0, rng_weights=False)
    _, _, s1, l1 = _steps(cfg(tmp_path, **{"training.batch_size": 8}), m, 2, **kw)
    _, _, s2, l2 = _steps(
        cfg(tmp_path, **{"training.batch_size": 4, "training.gradient_accumulation_steps": 2}),
        m,
        2,
        **kw,
    )
    np.testing.assert_allclose(l2, l1, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    c = cfg(tmp_path, **{"training.max_steps": 8, "training.log_interval": 3})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 5.*checkpoints/4"):
        fit(c, train_toy.make_task(c, nan_after=4))  # micro-batch 5 (= step 5) is NaN
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps == [2, 4]
    saved = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "4" / "state")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved["params"]))


def test_sigterm_checkpoints_at_next_step_boundary(tmp_path):
    c = cfg(tmp_path, **{"checkpoint.every_steps": 0})
    r = fit(c, train_toy.make_task(c, sigterm_at=3))  # SIGTERM while step 3 loads its batch
    assert r.status == "preempted" and r.step == 3 and r.checkpoint_dir.name == "3"
    meta = json.loads((r.checkpoint_dir / "meta" / "metadata").read_text())
    assert meta["status"] == "preempted" and meta["data_iter"] == {"epoch": 0, "index": 24}
    assert signal.getsignal(signal.SIGTERM) is not None
