"""`configs/experiment.py:small`: every run of the study is its pipeline's `:small` config (the
SmolLM2 policy, warm start, head weights, tokenizer) with the study's seed, sizes and output dir
applied; micro and smoke still use the micro configs; greedy-only evaluation when
eval.temperatures is empty. Nothing here loads a model."""

import json
from pathlib import Path

import pytest

from wmtp_jax import registry
from wmtp_jax.configs import common, experiment, parts
from wmtp_jax.pipelines import specs
from wmtp_jax.study import cells

# keys the study sets on every sub-config (sub_config); every other key is the pipeline's own
STUDY_KEYS = {
    "output_dir",
    "seed",
    "data_sampling.seed",
    "data_sampling.n_samples",
    "data_sampling.val_n_samples",
    "dataset.path",
    "dataset.max_length",
    "training.max_steps",
    "training.batch_size",
    "training.eval_every_steps",
    "mlflow.tracking_uri",
    "mlflow.experiment",
    "experiment.name",
    "runtime.compilation_cache",
    "final_eval.enabled",
    "models.value_model.path",
    "models.reference.path",
}


def flat(c, prefix=""):
    out = {}
    for k, v in c.items():
        if hasattr(v, "items"):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture
def small():
    return experiment.get_config("small")


def test_small_defaults(small):
    assert small.pipeline_variant == "small"
    assert experiment.parse_list(small.arms, "arms") == ["baseline", "verifiable"]
    assert experiment.parse_list(small.seeds, "seeds", int) == [0, 1]
    assert small.study_arms == small.arms and small.study_seeds == small.seeds
    assert small.critics == "ranking" and small.credit.max_solutions == 64
    assert small.eval.limit == 0 and tuple(small.eval.temperatures) == ()  # greedy, all test
    # the same decoding as the :small pipelines' closing evaluation (their final line)
    closing = registry.get_config("verifiable", "small").final_eval
    assert small.eval.max_new_tokens == closing.max_new_tokens
    assert small.dataset.max_length == registry.get_config("baseline", "small").dataset.max_length
    for role, pipeline in (("policy", "baseline"), ("critic", "critic")):
        t = registry.get_config(pipeline, "small")
        got = small.train[role]
        assert (got.max_steps, got.batch_size, got.eval_every_steps) == (
            t.training.max_steps,
            t.training.batch_size,
            t.training.eval_every_steps,
        ), role
        assert (got.n_samples, got.val_n_samples) == (
            t.data_sampling.n_samples,
            t.data_sampling.val_n_samples,
        ), role
    common.validate_config(small)


@pytest.mark.parametrize("arm", ["baseline", "verifiable"])
def test_small_arm_is_the_small_pipeline_config(small, arm, tmp_path):
    with small.unlocked():
        small.output_dir = str(tmp_path)
    c = cells.arm_config(small, arm, 1, critic="/crit")
    ref = registry.get_config(arm, "small")
    assert c.variant == "small" and c.models.policy.path == parts.SMALL_POLICY
    assert specs.tokenizer(c.models.policy) == specs.tokenizer(ref.models.policy)
    assert c.training.warm_start.to_dict() == ref.training.warm_start.to_dict()
    assert tuple(c.training.head_loss_weights) == tuple(ref.training.head_loss_weights)
    assert tuple(ref.training.head_loss_weights)  # the :small policy's head weights are set
    assert (c.seed, c.data_sampling.seed) == (1, 1)
    assert c.output_dir == str(tmp_path / "seed_1" / arm)
    assert c.final_eval.enabled is False  # the study evaluates every arm itself
    if arm == "verifiable":
        assert c.models.value_model.path == "/crit"
    got, want = flat(c), flat(ref)
    assert set(got) == set(want)
    differ = {k for k in got if got[k] != want[k]}
    assert differ <= STUDY_KEYS, differ - STUDY_KEYS


def test_small_critic_is_the_small_critic_config(small, tmp_path):
    c = cells.sub_config(small, "critic", "critic", 1, tmp_path / "critic", "critic")
    ref = registry.get_config("critic", "small")
    assert c.variant == "small" and c.models.value_model.path == parts.SMALL_LLAMA
    assert c.training.lora.to_dict() == ref.training.lora.to_dict()
    assert (c.seed, c.data_sampling.seed, c.training.max_steps) == (1, 1, ref.training.max_steps)
    differ = {k for k, v in flat(c).items() if v != flat(ref)[k]}
    assert differ <= STUDY_KEYS, differ - STUDY_KEYS


def test_small_ntp_arm_trains_head_0_without_head_weights(small):
    c = cells.arm_config(small, "ntp", 0)
    assert c.training.loss_heads == 1 and tuple(c.training.head_loss_weights) == ()
    assert c.models.policy.path == parts.SMALL_POLICY


@pytest.mark.parametrize("variant", ["micro", "smoke"])
def test_micro_and_smoke_use_the_micro_configs(variant):
    s = experiment.get_config(variant)
    assert s.pipeline_variant == "micro"
    for arm in ("baseline", "verifiable", "ntp"):
        c = cells.arm_config(s, arm, 0, critic="/c")
        assert c.variant == "micro" and c.models.policy.path == parts.MICRO_POLICY, arm
        assert tuple(c.training.head_loss_weights) == (), arm
    assert len(s.eval.temperatures) > 0  # the sampled evaluation stays on


def test_initial_policy_and_bootstrap_follow_pipeline_variant(small, tmp_path, monkeypatch):
    seen = {"eval": [], "storage": []}

    def fake_eval(config):
        seen["eval"].append(config.checkpoint)
        return {"pass@1": 0.5, "n_problems": 4}

    monkeypatch.setattr(cells, "cached_run", fake_eval)
    monkeypatch.setattr(cells, "ensure_micro_storage", lambda c: seen["storage"].append(c))
    with small.unlocked():
        small.output_dir = str(tmp_path)
    assert cells.initial_policy(small)["path"] == parts.SMALL_POLICY
    assert seen["eval"] == [parts.SMALL_POLICY]
    cells.ensure_storage(small)
    got = {(c.pipeline, c.variant) for c in seen["storage"]}
    assert got == {("baseline", "small"), ("critic", "small")}
    models = {m.path for c in seen["storage"] for m in c.models.values()}
    assert models == {parts.SMALL_POLICY, parts.SMALL_LLAMA}


def test_bad_pipeline_variant_names_the_key(small):
    c = experiment.get_config("small")
    c.pipeline_variant = "7b"
    with pytest.raises(ValueError, match="pipeline_variant"):
        experiment.validate(c)


def test_empty_temperatures_evaluate_greedy_only(small, tmp_path, monkeypatch):
    """eval.temperatures = (): one greedy evaluation per model, no sampled metrics."""
    calls = []

    def fake_eval(config):
        calls.append(float(config.temperature))
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"task_id": "a", "passed": True}, {"task_id": "b", "passed": False}]
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"pass@1": 0.5, "n_problems": 2, "temperature": 0.0}

    monkeypatch.setattr(cells, "cached_run", fake_eval)
    ev = cells.evaluate(small, tmp_path / "model", tmp_path / "eval")
    assert calls == [0.0] and set(ev) == {"greedy"}
    assert ev["greedy"]["per_problem"] == {"task_ids": ["a", "b"], "pass@1": [1.0, 0.0]}
    assert cells._cell_metrics(ev) == {"pass@1": 0.5}


def test_report_of_greedy_only_cells(tmp_path):
    """Cells without a sampled evaluation aggregate to greedy pass@1 only (hand-made cells)."""
    from wmtp_jax.study import report

    s = experiment.get_config("small")
    s.seeds = s.study_seeds = "0"
    with s.unlocked():
        s.output_dir = str(tmp_path)
    cells.record_study(s)
    scores = {"baseline": [1.0, 0.0, 0.0, 1.0], "verifiable": [1.0, 1.0, 0.0, 1.0]}
    for arm, per in scores.items():
        d = cells.cell_dir(tmp_path, arm, 0)
        d.mkdir(parents=True)
        cell = {
            "arm": arm,
            "seed": 0,
            "metrics": {"pass@1": sum(per) / 4},
            "temperature": None,
            "temperature_sweep": None,
            "samples": "s.jsonl",
            "sampled_samples": None,
            "n_problems": 4,
            "per_problem": {"task_ids": list("abcd"), "pass@1": per},
            "sampled_task_ids": [],
            "metrics_file": str(d / "metrics.jsonl"),
            "val_curve": [],
            "timings": {"train_s": 1.0, "eval_s": 1.0, "total_s": 2.0},
        }
        cells.write_json(d / cells.CELL_FILE, cell)
    res = report.aggregate(tmp_path, write=False)
    assert res["complete"]
    assert [m for m in res["arms"]["baseline"] if "pass@" in m] == ["pass@1"]
    assert res["arms"]["verifiable"]["pass@1"]["mean"] == 0.75
    assert res["paired"]["verifiable-baseline"]["delta"] == pytest.approx(0.25)
    md = report.markdown(res)
    assert "| verifiable | 1 | 4 | 0.750 [" in md and "sampled pass@" not in md
