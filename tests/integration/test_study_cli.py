"""The study end to end (`configs/experiment.py:smoke` on a tiny storage/): results.json's
structure, re-scoring every cell's samples.jsonl gives its reported pass@1, MLflow nesting, a
re-run reuses every finished cell, the aggregate command, bad values; and the main job's closing
evaluation (verifiable prints initial vs trained greedy pass@1); the published light files
rebuild the same table, and a re-run cell is byte-identical."""

import json
import subprocess
import sys

import pytest

from tests.integration.study_storage import make_tiny_storage
from tests.integration.test_pipelines import env, ok, run_cli

OUT = "storage/experiments/experiment-smoke"
PUB = "published/experiment-smoke"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    w = make_tiny_storage(tmp_path_factory.mktemp("study"))
    p = ok(run_cli(w, "experiment.py:smoke", f"--config.publish_dir={PUB}", timeout=900))
    return w, p


def test_results_structure_and_progress(study):
    w, p = study
    lines = [x for x in p.stdout.splitlines() if x.startswith("[study]")]
    assert any(
        x.startswith("[study] baseline seed 0: pass@1") and x.endswith(" s") for x in lines
    ), lines
    assert any(x.startswith("[study] verifiable seed 0: pass@1") for x in lines), lines
    out = w / OUT
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and res["grid"] == {"arms": ["baseline", "verifiable"], "seeds": [0]}
    for arm in ("baseline", "verifiable"):
        r = res["arms"][arm]
        for m in ("pass@1", "sampled_pass@1", "sampled_pass@5"):
            lo, hi = r[m]["ci95"]
            assert 0 <= lo <= r[m]["mean"] <= hi <= 1, (arm, m, r[m])
        cell = r["seeds"]["0"]
        assert set(cell) >= {"pass@1", "samples", "sampled_pass@1", "sampled_pass@5", "temperature"}
        assert cell["temperature"] in (0.5, 1.0)  # from the validation sweep
        assert r["n_problems"] == 3  # eval.limit
        t = res["timings"]["cells"][arm]["0"]
        assert t["total_s"] >= t["train_s"] > 0 and t["eval_s"] > 0
    paired = res["paired"]["verifiable-baseline"]
    assert (
        set(paired) >= {"delta", "ci95"}
        and paired["ci95"][0] <= paired["delta"] <= paired["ci95"][1]
    )
    cc = res["critic_credit"]
    assert cc["n_solutions"] == 8  # credit.max_solutions
    assert 0 <= cc["ci95"][0] <= cc["auroc"] <= cc["ci95"][1] <= 1
    assert cc["n_pairs"] > 0 and 0 <= cc["pairwise_accuracy"] <= 1
    assert 0.1 <= cc["mean_weight_inside"] <= 3.0 and 0.1 <= cc["mean_weight_outside"] <= 3.0
    assert cc["n_tokens_inside"] > 0 and cc["n_tokens_outside"] > 0
    assert res["config"]["pipeline"] == "experiment" and "initial_policy" in res
    assert "| baseline | 1 | 3 |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 5000


@pytest.mark.parametrize("arm", ["baseline", "verifiable"])
def test_rescoring_samples_gives_the_reported_pass_at_1(study, arm):
    w, _ = study
    cell = json.loads((w / OUT / "results.json").read_text())["arms"][arm]["seeds"]["0"]
    for key, metric in (("samples", "pass@1"), ("sampled_samples", "sampled_pass@1")):
        rows = [json.loads(x) for x in (w / cell[key]).read_text().splitlines()]
        assert rows and all(set(r) == {"task_id", "completion"} for r in rows)
        p = ok(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "wmtp_jax.eval.score",
                    "--benchmark",
                    "synthetic",
                    "--samples",
                    cell[key],
                    "--k",
                    "1",
                    "--data-dir",
                    "storage/datasets",
                    "--no-progress",
                    "--out",
                    str(w / f"rescored_{arm}_{key}.jsonl"),
                ],
                cwd=w,
                env=env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
        )
        assert json.loads(p.stdout)["pass@1"] == pytest.approx(cell[metric], abs=1e-12)


def test_mlflow_parent_with_nested_cells(study):
    from mlflow.tracking import MlflowClient

    w, _ = study
    parent = json.loads((w / OUT / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{w}/storage/mlflow/mlflow.db")
    exp = client.get_run(parent).info.experiment_id
    kids = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    names = {r.info.run_name for r in kids}
    assert {
        "experiment-smoke/baseline-seed0",
        "experiment-smoke/verifiable-seed0",
        "experiment-smoke/critic-seed0",
    } <= names, names
    cell = next(r for r in kids if r.info.run_name.endswith("baseline-seed0"))
    assert "test/pass_at_1" in cell.data.metrics and "test/sampled_pass_at_5" in cell.data.metrics
    assert "baseline/pass_at_1" in client.get_run(parent).data.metrics


def test_rerun_reuses_finished_cells_and_aggregate(study):
    w, _ = study
    out = w / OUT
    before = json.loads((out / "results.json").read_text())
    log_size = (out / "run.log").stat().st_size
    p = ok(run_cli(w, "experiment.py:smoke", f"--config.publish_dir={PUB}", timeout=600))
    new_log = (out / "run.log").read_text()[log_size:]
    assert "baseline seed 0: done before, reused" in p.stdout
    assert "verifiable seed 0: done before, reused" in p.stdout
    assert "critic trained" not in p.stdout and "fit:" not in new_log  # nothing trained again
    after = json.loads((out / "results.json").read_text())
    before.pop("timings"), after.pop("timings")
    assert before == after
    p = ok(
        subprocess.run(
            [sys.executable, "-m", "wmtp_jax.study.aggregate", OUT],
            cwd=w,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert "| verifiable | 1 | 3 |" in p.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "wmtp_jax.study.aggregate", "storage"],
        cwd=w,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "study.json" in bad.stderr


def test_bad_arm_exits_2_naming_the_key(tmp_path):
    p = run_cli(tmp_path, "experiment.py:smoke", "--config.arms=baseline,nope", timeout=120)
    assert p.returncode == 2 and "arms" in p.stderr and "nope" in p.stderr


def test_main_job_ends_with_greedy_pass_at_1(study):
    """The verifiable pipeline (README command 1) closes the loop: greedy pass@1 of the initial
    and the trained policy on the test split, in the final summary and in MLflow."""
    from mlflow.tracking import MlflowClient

    w, _ = study
    critic = w / OUT / "seed_0/critic/final_model"
    p = ok(
        run_cli(
            w,
            "verifiable.py",
            "--config.training.max_steps=2",
            "--config.training.batch_size=2",
            "--config.training.eval_every_steps=0",
            "--config.data_sampling.n_samples=12",
            "--config.data_sampling.val_n_samples=2",
            f"--config.models.value_model.path={critic}",
            "--config.final_eval.limit=3",
            "--config.final_eval.max_new_tokens=16",
        )
    )
    line = next(x for x in p.stdout.splitlines() if x.startswith("pass@1 (greedy"))
    assert line.startswith("pass@1 (greedy, synthetic test, 3 problems): initial policy "), line
    out = w / "storage/checkpoints/verifiable/verifiable-micro"
    # the initial policy's evaluation is kept in its model dir (shared by every run from it)
    for d in (w / "storage/models/micro-mtp/eval/greedy", out / "eval/trained"):
        s = json.loads((d.parent / f"{d.name}-synthetic-test/summary.json").read_text())
        assert s["temperature"] == 0.0 and s["n_problems"] == 3
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    m = MlflowClient(f"sqlite:///{w}/storage/mlflow/mlflow.db").get_run(run_id).data.metrics
    assert {"eval/greedy_pass_at_1", "eval/greedy_pass_at_1_initial"} <= set(m)


def test_published_files_rebuild_the_same_table(study):
    """publish_dir holds no checkpoint, and aggregate on it writes the study's results.md."""
    w, _ = study
    pub = w / PUB
    files = sorted(str(p.relative_to(pub)) for p in pub.rglob("*") if p.is_file())
    assert "seed_0/baseline/cell.json" in files and "seed_0/credit/credit.npz" in files
    assert "seed_0/verifiable/eval/greedy/samples.jsonl" in files and "study.json" in files
    assert not any("checkpoint" in f or "final_model" in f for f in files), files
    ok(
        subprocess.run(
            [sys.executable, "-m", "wmtp_jax.study.aggregate", PUB],
            cwd=w,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert (pub / "results.md").read_text() == (w / OUT / "results.md").read_text()
    want = json.loads((w / OUT / "results.json").read_text())
    got = json.loads((pub / "results.json").read_text())
    assert got["arms"]["baseline"]["pass@1"] == want["arms"]["baseline"]["pass@1"]
    assert got["critic_credits"] == want["critic_credits"]


def test_rerun_cell_is_byte_identical(study):
    """The same cell (baseline, seed 0) run again into another output_dir on the same machine:
    the same greedy samples byte for byte and the same cell numbers."""
    w, _ = study
    other = "storage/experiments/rerun"
    ok(run_cli(w, "experiment.py:smoke", "--config.arms=baseline", f"--config.output_dir={other}"))
    for f in (
        "eval/greedy/samples.jsonl",
        "eval/greedy/results.jsonl",
        "eval/sampled/samples.jsonl",
    ):
        a = (w / OUT / "seed_0/baseline" / f).read_bytes()
        assert a == (w / other / "seed_0/baseline" / f).read_bytes(), f
    a, b = (json.loads((w / d / "seed_0/baseline/cell.json").read_text()) for d in (OUT, other))
    for k in ("metrics", "per_problem", "temperature", "temperature_sweep", "val_curve"):
        assert a[k] == b[k], k


def test_validation_pilot_touches_no_test_problem_and_trains_no_critic(tmp_path):
    """A pilot (`eval.split=valid`, `critics=none`, a policy learning rate): the cell is evaluated
    on validation problems only, no critic is trained, the learning rate reaches the run, and the
    report says which split it covers. A split other than test/valid exits 2 naming the key."""
    w = make_tiny_storage(tmp_path)
    out = "storage/experiments/pilot"
    args = (
        "--config.arms=baseline",
        "--config.study_arms=baseline",
        "--config.critics=none",
        "--config.eval.split=valid",
        "--config.eval.temperatures=()",
        "--config.train.policy.learning_rate=0.001",
        f"--config.output_dir={out}",
    )
    ok(run_cli(w, "experiment.py:smoke", *args, timeout=600))
    data = w / "storage/datasets/synthetic/processed"
    ids, test_ids = (
        {json.loads(x)["task_id"] for x in (data / f).read_text().splitlines()}
        for f in ("valid_eval.jsonl", "test_eval.jsonl")
    )
    cell = json.loads((w / out / "seed_0/baseline/cell.json").read_text())
    assert set(cell["per_problem"]["task_ids"]) <= ids
    assert not set(cell["per_problem"]["task_ids"]) & test_ids
    assert not list((w / out / "seed_0").glob("critic*"))
    run_config = (w / out / "seed_0/baseline/config.json").read_text()
    assert json.loads(run_config)["training"]["learning_rate"] == 0.001
    assert "**valid** split" in (w / out / "results.md").read_text()
    bad = run_cli(w, "experiment.py:smoke", "--config.eval.split=train", timeout=120)
    assert bad.returncode == 2 and "eval.split" in bad.stderr
