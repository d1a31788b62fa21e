"""Orbax checkpointer: restore on another mesh, retention, best kept apart, metadata.

Also the tracking utils.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.checkpoint import Checkpointer, decode_bytes
from wmtp_jax.train.tracking import flatten_config


def _state(mesh, scale=1.0):
    params = {"w": jnp.arange(64.0).reshape(8, 8) * scale, "b": jnp.ones(8) * scale}
    sh = {"w": NamedSharding(mesh, P("fsdp")), "b": NamedSharding(mesh, P())}
    rngs = nnx.Rngs(dropout=3)
    _, other = nnx.split(rngs)  # typed PRNG key + counter, as a model's RNG streams
    return {
        "step": jnp.int32(5),
        "params": jax.device_put(params, sh),
        "other": other,
        "rng": jax.random.PRNGKey(1),
    }


def test_save_restore_on_other_mesh_and_retention(tmp_path):
    m8 = mesh_lib.make_mesh(1, 8, 1)
    ck = Checkpointer(tmp_path, keep=2)
    for step in (2, 4, 6):
        ck.save(step, _state(m8, step), {"data_iter": b"\x00pos", "best": None}, {"lr": 1e-3})
    best_meta = {"metric": "val/loss", "value": 1.0, "step": 4}
    ck.save(4, _state(m8, 40.0), {"best": best_meta}, {"lr": 1e-3}, best=True)
    ck.wait()
    assert ck.periodic.all_steps() == [4, 6] and ck.latest_step() == 6
    assert ck.latest_step(best=True) == 4
    # restore onto a 2-device mesh (different sharding than saved)
    m2 = mesh_lib.make_mesh(1, 2, 1, devices=jax.devices()[:2])
    template = _state(m2, 0.0)
    state, meta = Checkpointer(tmp_path, keep=2).restore(template)
    np.testing.assert_array_equal(
        np.asarray(state["params"]["w"]), np.arange(64.0).reshape(8, 8) * 6
    )
    assert state["params"]["w"].sharding == template["params"]["w"].sharding
    assert jax.dtypes.issubdtype(
        state["other"]["dropout"]["key"].get_value().dtype, jax.dtypes.prng_key
    )
    assert decode_bytes(meta["data_iter"]) == b"\x00pos" and meta["step"] == 6
    best, bmeta = ck.restore(template, best=True)
    assert float(best["params"]["b"][0]) == 40.0 and bmeta["best"] == best_meta
    assert ck.read_config() == {"lr": 1e-3}


def test_uncommitted_tmp_dirs_are_ignored(tmp_path):
    m = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(1, _state(m), {}, {})
    ck.wait()
    (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123").mkdir()  # as after a SIGKILL
    again = Checkpointer(tmp_path, keep=3)
    assert again.latest_step() == 1


def test_flatten_config_truncates():
    flat = flatten_config({"a": {"b": 1, "c": {"d": "x" * 7000}}, "e": (1, 2)})
    assert flat["a.b"] == "1" and flat["e"] == "(1, 2)"
    assert len(flat["a.c.d"]) == 6000 and flat["a.c.d"].endswith("...")


def test_export_model_hands_host_params_to_models_io(tmp_path, monkeypatch):
    """export_model → wmtp_jax.models.serialization.save_model(dir, pure host params, kind=...,
    args=...)."""
    from wmtp_jax.models import serialization
    from wmtp_jax.train.checkpoint import export_model

    class Tiny(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(4.0))
            self.drop = nnx.Dropout(0.1, rngs=nnx.Rngs(0))  # non-param state is not exported

    seen = {}

    def fake_save(directory, params, **kw):
        seen.update(directory=directory, params=params, **kw)
        return tmp_path / "out"

    monkeypatch.setattr(serialization, "save_model", fake_save)
    assert export_model(tmp_path / "m", Tiny(), kind="mtp", args="ARGS") == tmp_path / "out"
    assert seen["kind"] == "mtp" and seen["args"] == "ARGS" and seen["force"] is True
    assert list(seen["params"]) == ["w"] and isinstance(seen["params"]["w"], np.ndarray)
    np.testing.assert_array_equal(seen["params"]["w"], np.arange(4.0))


def test_restore_refuses_a_model_that_does_not_fit_and_reports_all_bad(tmp_path):
    import pytest

    from wmtp_jax.train.checkpoint import CorruptCheckpoint, IncompatibleCheckpoint

    m = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ck = Checkpointer(tmp_path, keep=3)
    for step in (1, 2):
        ck.save(step, _state(m), {"model": {"n_future_tokens": 4}}, {})
    ck.wait()
    other = _state(m)
    other["params"]["w"] = jnp.zeros((4, 8))
    with pytest.raises(
        IncompatibleCheckpoint,
        match=r"checkpoints/2 does not fit the model being "
        r"trained: params/w has shape \(8, 8\) in the checkpoint, \(4, 8\) now",
    ):
        ck.restore(other)
    assert ck.periodic.all_steps() == [1, 2]  # a mismatch moves nothing aside
    for step in (1, 2):
        (tmp_path / "checkpoints" / str(step) / "meta" / "metadata").write_text("{")
    with pytest.raises(
        CorruptCheckpoint,
        match=r"no readable checkpoint under .*checkpoints/2, "
        r".*checkpoints/1; moved to .*corrupt_checkpoints",
    ):
        ck.restore(_state(m))
    assert ck.latest_step() is None and len(list((tmp_path / "corrupt_checkpoints").iterdir())) == 2


def test_readable_but_wrong_meta_is_moved_aside_and_the_previous_checkpoint_restored(tmp_path):
    import json

    import pytest

    from wmtp_jax.train.checkpoint import check_meta_fields

    m = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ck = Checkpointer(tmp_path, keep=5)
    good = {"status": "periodic", "best": {"metric": "val/loss", "value": 1.5, "step": 1}}
    for step in (1, 2, 3):
        ck.save(step, _state(m, step), dict(good, data_iter={"n": step}), {})
    ck.wait()
    meta3 = tmp_path / "checkpoints" / "3" / "meta" / "metadata"
    meta3.write_text(json.dumps(dict(good, step=3, best=dict(good["best"], value="1.5"))))
    meta2 = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta2.write_text(json.dumps(dict(good, step=2, data_iter={"n": "2"})))

    def check_meta(meta):  # as a loader's check_state: a mistyped position is a bad checkpoint
        if type(meta["data_iter"]["n"]) is not int:
            raise ValueError(f"n={meta['data_iter']['n']!r}")

    state, meta = ck.restore(_state(m, 0.0), check_meta=check_meta)
    assert meta["step"] == 1 and float(state["params"]["b"][0]) == 1.0
    moved = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "corrupt_checkpoints").iterdir())
    assert moved == ["checkpoints-2", "checkpoints-3"] and ck.periodic.all_steps() == [1]
    for bad, field in [
        ({"step": "1"}, "meta step '1' != directory step 1"),
        ({"step": 1, "status": 3}, "meta status 3"),
        ({"step": 1, "model": []}, "meta model"),
        ({"step": 1, "best": {"metric": "m", "value": float("nan"), "step": 1}}, "meta best"),
        ({"step": 1, "best": {"metric": "m", "value": 1.0, "step": 2}}, "meta best"),
        ([1], "meta is list"),
    ]:
        with pytest.raises(ValueError, match=field):
            check_meta_fields(bad, 1)


def test_items_beyond_the_template_are_not_read(tmp_path):
    """A run that stores `frozen_params` (the critic's frozen backbone) resumes into a template
    without them: its good checkpoints are restored, not moved to corrupt_checkpoints/."""
    m = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ck = Checkpointer(tmp_path, keep=3)
    for step in (1, 2):
        frozen = {"backbone": {"kernel": jnp.full((4, 4), 7.0)}}
        ck.save(step, dict(_state(m, step), frozen_params=frozen), {}, {})
    ck.wait()
    state, meta = Checkpointer(tmp_path, keep=3).restore(_state(m, 0.0))
    assert meta["step"] == 2 and "frozen_params" not in state
    np.testing.assert_array_equal(np.asarray(state["params"]["b"]), np.full(8, 2.0))
    assert not (tmp_path / "corrupt_checkpoints").exists()


def test_a_structure_mismatch_of_a_readable_checkpoint_is_one_line_and_moves_nothing(tmp_path):
    """A valid checkpoint whose tree differs from the model's (a leaf more, or a leaf where the
    model has a node of the same name and shape) is IncompatibleCheckpoint: one line, naming the
    checkpoint, both steps left in place."""
    import pytest

    from wmtp_jax.train.checkpoint import IncompatibleCheckpoint

    m = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ck = Checkpointer(tmp_path, keep=3)
    for step in (1, 2):
        s = _state(m, step)
        s["params"]["extra"] = jnp.zeros(3)
        ck.save(step, s, {}, {})
    ck.wait()
    ck = Checkpointer(tmp_path, keep=3)
    with pytest.raises(IncompatibleCheckpoint) as e:
        ck.restore(_state(m, 0.0))
    assert "\n" not in str(e.value), str(e.value)
    assert "checkpoints/2 does not fit the model being trained: params/extra is not in the " in (
        str(e.value)
    )
    nested = _state(m, 0.0)  # params/b/value: the same leaf name and shape, another tree
    nested["params"]["extra"] = jnp.zeros(3)
    nested["params"]["b"] = {"value": nested["params"]["b"]}
    with pytest.raises(IncompatibleCheckpoint) as e:
        ck.restore(nested)
    assert "\n" not in str(e.value) and "checkpoints/2 does not fit the model" in str(e.value)
    assert "tree structures do not match" in str(e.value)
    assert ck.periodic.all_steps() == [1, 2] and not (tmp_path / "corrupt_checkpoints").exists()
