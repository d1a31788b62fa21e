"""Mesh shapes, per-strategy rules, batch sharding, and common config validation."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from wmtp_jax.configs import common
from wmtp_jax.models.partitioning import logical_to_mesh_spec
from wmtp_jax.train import mesh as mesh_lib


def test_resolve_mesh_shape():
    assert mesh_lib.resolve_mesh_shape(1, -1, 1, 8) == (1, 8, 1)
    assert mesh_lib.resolve_mesh_shape(2, -1, 2, 8) == (2, 2, 2)
    assert mesh_lib.resolve_mesh_shape(-1, 4, 1, 8) == (2, 4, 1)
    with pytest.raises(ValueError, match="8 devices are not divisible"):
        mesh_lib.resolve_mesh_shape(3, -1, 1, 8)
    with pytest.raises(ValueError, match="has 4 devices but 8"):
        mesh_lib.resolve_mesh_shape(1, 4, 1, 8)
    with pytest.raises(ValueError, match="at most one"):
        mesh_lib.resolve_mesh_shape(-1, -1, 1, 8)


def test_make_mesh_axes():
    m = mesh_lib.make_mesh(2, -1, 1)
    assert m.axis_names == ("data", "fsdp", "tensor") and dict(m.shape) == {
        "data": 2,
        "fsdp": 4,
        "tensor": 1,
    }
    m1 = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    assert m1.size == 1


def test_rules_per_strategy():
    m = mesh_lib.make_mesh(1, 4, 2, devices=jax.devices()[:8])
    spec = P("embed", "mlp")
    full = mesh_lib.rules_for("FULL_SHARD")
    zero2 = mesh_lib.rules_for("SHARD_GRAD_OP")
    ddp = mesh_lib.rules_for("NO_SHARD")
    assert logical_to_mesh_spec(spec, full.params, m) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(spec, full.opt_state, m) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(spec, zero2.params, m) == P(None, "tensor")
    assert logical_to_mesh_spec(spec, zero2.opt_state, m) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(spec, ddp.params, m) == P(None, "tensor")
    assert logical_to_mesh_spec(spec, ddp.opt_state, m) == P(None, "tensor")
    for r in (full, zero2, ddp):  # batch always over the data-parallel axes
        assert dict(r.params)["batch"] == ("data", "fsdp")
    with pytest.raises(ValueError, match="runtime.sharding='FOO'"):
        mesh_lib.rules_for("FOO")


def test_shard_batch_and_check():
    m = mesh_lib.make_mesh(2, 4, 1)
    x = np.arange(8 * 3).reshape(8, 3)
    b = mesh_lib.shard_batch({"x": x}, m)
    assert b["x"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(b["x"]), x)
    s = mesh_lib.shard_batch({"x": np.stack([x, x])}, m, stacked=True)
    assert s["x"].shape == (2, 8, 3) and s["x"].sharding.spec == P(None, ("data", "fsdp"))
    assert mesh_lib.check_batch_size(8, m) == 8
    with pytest.raises(ValueError, match="training.batch_size=6"):
        mesh_lib.check_batch_size(6, m)


def test_common_config_keys_and_variants():
    c = common.finalize(common.get_config("toy", "micro"))  # a pipeline with no config module
    for key in [
        "pipeline",
        "output_dir",
        "seed",
        "resume",
        "training.max_steps",
        "training.batch_size",
        "training.gradient_accumulation_steps",
        "training.learning_rate",
        "training.eval_every_steps",
        "training.log_interval",
        "training.max_grad_norm",
        "training.lr_scheduler.type",
        "training.lr_scheduler.warmup_ratio",
        "training.lr_scheduler.min_lr_ratio",
        "training.n_epochs",
        "checkpoint.every_steps",
        "checkpoint.keep",
        "checkpoint.save_final",
        "checkpoint.save_best",
        "checkpoint.save_lora_only",
        "mesh.data",
        "mesh.fsdp",
        "mesh.tensor",
        "runtime.sharding",
        "runtime.dtype",
        "runtime.remat",
        "runtime.attention",
        "mlflow.tracking_uri",
        "mlflow.experiment",
        "experiment.name",
        "experiment.description",
        "experiment.tags",
        "logging.level",
        "distributed.coordinator_address",
        "distributed.num_processes",
        "distributed.process_id",
    ]:
        node = c
        for part in key.split("."):
            node = node[part]
    assert c.mlflow.tracking_uri.startswith("sqlite:///storage/")
    with pytest.raises(AttributeError):
        c.training.nonexistent = 1  # locked
    big = common.get_config("baseline", "7b")
    assert (big.runtime.dtype, big.runtime.remat, big.training.lr_scheduler.type) == (
        "bfloat16",
        "full",
        "cosine",
    )
    with pytest.raises(ValueError, match="variant"):
        common.get_config("baseline", "huge")
    assert c.runtime.attention == "auto"


def test_config_attention_names_are_the_ops_implementations():
    from wmtp_jax.ops.attention import IMPLEMENTATIONS

    assert common.ATTENTION == IMPLEMENTATIONS


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("runtime.sharding", "FOO", "runtime.sharding: 'FOO'"),
        ("training.max_steps", 0, "training.max_steps: 0"),
        ("training.batch_size", -2, "training.batch_size: -2"),
        ("training.gradient_accumulation_steps", 0, "gradient_accumulation_steps: 0"),
        ("training.lr_scheduler.type", "step", "lr_scheduler.type: 'step'"),
        ("runtime.dtype", "int8", "runtime.dtype: 'int8'"),
        ("runtime.remat", "some", "runtime.remat: 'some'"),
        ("runtime.attention", "flash", "runtime.attention: 'flash'"),
        ("mesh.fsdp", 0, "mesh.fsdp: 0"),
    ],
)
def test_validation_names_the_key(key, value, match):
    c = common.get_config("baseline", "micro")
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        common.validate_config(c)
