"""Every config value is checked before anything starts: `wmtp_jax.main.run` (the command line
after flag parsing) ends a bad config with one `error: <key>: <reason>` line and exit 2, and
creates nothing. Values: types and ranges (configs.common.validate_config); paths, devices and
dataset splits (pipelines.preflight). The subprocess versions of a few of these are in
tests/integration/test_config_cli.py."""

import json
import os

import pytest

from wmtp_jax import main
from wmtp_jax.configs import baseline, evaluation, experiment, verifiable

BIG_SEED = 2**32


def set_key(c, key, value):
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def refused(c, capsys) -> str:
    """The one stderr line of main.run(c), which must exit 2."""
    with pytest.raises(SystemExit) as e:
        main.run(c)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working directory (relative storage/ paths land here); XLA_FLAGS restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    return tmp_path


def config(module=baseline, variant="micro", **overrides):
    c = module.get_config(variant)
    with c.unlocked():
        c.mlflow.experiment = ""
        for key, value in overrides.items():
            set_key(c, key, value)
    return c


@pytest.mark.parametrize(
    "key,value",
    [
        ("seed", BIG_SEED),
        ("seed", -1),
        ("data_sampling.seed", BIG_SEED),
        ("data_sampling.n_samples", 15),  # below one global batch of 16: no training data
        ("data_sampling.val_n_samples", 0),
        ("training.loss_chunk_size", -1),
        ("training.learning_rate", float("nan")),
        ("training.learning_rate", float("inf")),
        ("training.learning_rate", -1e-3),
        ("training.batch_size", 0),
        ("training.max_steps", 0),
        ("training.max_grad_norm", float("inf")),
        ("training.gradient_accumulation_steps", 0),
        ("training.lora.rank", 0),
        ("data.num_threads", 0),
        ("data.pack_rows", 17),
        ("dataset.max_length", 4),
        ("dataset.train", ""),
        ("checkpoint.keep", 0),
        ("mlflow.sync_timeout", -1.0),
        ("distributed.num_processes", 0),
        ("mesh.tensor", 0),
        ("runtime.dtype", "int8"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(cwd, capsys, key, value):
    err = refused(config(**{key: value}), capsys)
    assert err.startswith(f"error: {key}: {value!r} is invalid; "), err
    assert not any(cwd.iterdir())  # nothing created


def test_wrong_type_is_refused(cwd, capsys):
    """Types the flag parser lets through (an object-typed field) or that Python code can set
    (a float where an integer is needed)."""
    c = config(evaluation, **{"temperature": "hot"})
    assert refused(c, capsys).startswith("error: temperature: 'hot' is invalid")
    c = config(**{"training.max_steps": 2})
    with c.ignore_type():
        c.training.batch_size = 2.5
    assert refused(c, capsys).startswith("error: training.batch_size: 2.5 is invalid")


@pytest.mark.parametrize(
    "module,key,value",
    [
        (verifiable, "training.weight_clip_max", float("inf")),
        (verifiable, "final_eval.max_new_tokens", 0),
        (evaluation, "timeout", float("inf")),
        (evaluation, "sample_seed", BIG_SEED),
        (evaluation, "k", (0,)),
        (experiment, "seeds", str(BIG_SEED)),
        (experiment, "train.policy.n_samples", 1),
        (experiment, "eval.timeout", 0.0),
    ],
)
def test_pipeline_values(cwd, capsys, module, key, value):
    err = refused(config(module, **{key: value}), capsys)
    assert err.startswith(f"error: {key}: {value!r} is invalid; "), err


def test_distributed_process_id_within_the_processes(cwd, capsys):
    c = config(**{"distributed.num_processes": 2, "distributed.process_id": 2})
    assert refused(c, capsys).startswith("error: distributed.process_id: 2 is invalid")


# ---- paths and devices (pipelines.preflight) ---------------------------------------------------


def test_output_dir_that_is_a_file_or_under_one(cwd, capsys):
    (cwd / "f").write_text("x")
    err = refused(config(output_dir=str(cwd / "f")), capsys)
    assert err == f"error: output_dir: '{cwd / 'f'}' is invalid; it is a file, need a directory"
    err = refused(config(output_dir=str(cwd / "f/run")), capsys)
    assert f"it lies under the file {cwd / 'f'}" in err
    assert sorted(p.name for p in cwd.iterdir()) == ["f"]


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_lock_that_is_not_a_file(cwd, capsys, kind):
    out = cwd / "run"
    out.mkdir()
    if kind == "directory":
        (out / ".lock").mkdir()
    else:
        (cwd / "target").write_text("keep")
        (out / ".lock").symlink_to(cwd / "target")
    err = refused(config(output_dir=str(out)), capsys)
    assert err.startswith("error: output_dir: ") and f".lock is a {kind}" in err, err
    if kind == "symlink":
        assert (cwd / "target").read_text() == "keep"


def test_mesh_that_does_not_divide_the_devices(cwd, capsys):
    import jax

    n = jax.device_count()
    err = refused(config(**{"mesh.data": n + 1}), capsys)
    assert err.startswith("error: mesh: ") and f"{n} devices" in err, err
    if n > 1:  # the global batch over data × fsdp
        err = refused(config(**{"training.batch_size": n + 1}), capsys)
        assert err.startswith(f"error: training.batch_size: {n + 1} is invalid; need a multiple")


def test_model_path_that_is_a_file(cwd, capsys):
    (cwd / "model").write_text("x")
    for key in ("models.policy.path", "models.policy.tokenizer_path"):
        err = refused(config(**{key: str(cwd / "model")}), capsys)
        assert err.startswith(f"error: {key}: ") and "it is a file, need a directory" in err


def test_missing_model_dir_of_a_variant_that_is_not_bootstrapped(cwd, capsys):
    c = config(variant="7b", **{"dataset.path": str(cwd / "data")})
    err = refused(c, capsys)
    assert err.startswith("error: models.policy.path: ") and "no such directory" in err, err


def test_missing_dataset_split(cwd, capsys):
    data = cwd / "data" / "processed"
    data.mkdir(parents=True)
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_text("")
        (data / f"{split}_metadata.json").write_text(json.dumps({}))
    err = refused(config(**{"dataset.path": str(cwd / "data"), "dataset.train": "nosuch"}), capsys)
    assert err.startswith("error: dataset.train: 'nosuch' is invalid; unknown split"), err
    err = refused(
        config(**{"dataset.path": str(cwd / "data"), "dataset.validation": "test"}), capsys
    )
    assert err.startswith("error: dataset.validation: 'test' is invalid; split 'test' not found")
    (cwd / "file").write_text("x")
    err = refused(config(**{"dataset.path": str(cwd / "file")}), capsys)
    assert err.startswith("error: dataset.path: ") and "it is a file" in err


def test_evaluated_paths(cwd, capsys):
    (cwd / "file").write_text("x")
    err = refused(config(evaluation), capsys)
    assert err.startswith("error: checkpoint: '' is invalid; required: a model dir")
    err = refused(config(evaluation, checkpoint=str(cwd / "nope")), capsys)
    assert err.startswith("error: checkpoint: ") and "no such directory" in err
    for key in ("checkpoint", "base_model", "tokenizer_path", "data_dir"):
        c = config(evaluation, **{"checkpoint": str(cwd), key: str(cwd / "file")})
        err = refused(c, capsys)
        assert err.startswith(f"error: {key}: ") and "it is a file" in err, err


def test_defaults_pass(cwd):
    """Every shipped config and variant passes the value checks."""
    from wmtp_jax.configs import common, critic, ref_tuning, rho1

    for module in (baseline, critic, evaluation, ref_tuning, rho1, verifiable):
        for variant in ("micro", "small", "7b"):
            common.validate_config(module.get_config(variant))
    for variant in experiment.VARIANTS:
        common.validate_config(experiment.get_config(variant))


def test_missing_critic_at_another_than_the_default_path(cwd, capsys):
    """The micro bootstrap trains verifiable's critic only into its default run directory: a
    missing critic elsewhere is one error line, and nothing is trained or created."""
    c = config(verifiable, **{"models.value_model.path": str(cwd / "nosuch" / "critic")})
    err = refused(c, capsys)
    assert err.startswith("error: models.value_model.path: ") and "no such directory" in err, err
    assert "storage/checkpoints/critic/critic-micro/final_model" in err, err
    assert not (cwd / "storage").exists() and not (cwd / "nosuch").exists()
