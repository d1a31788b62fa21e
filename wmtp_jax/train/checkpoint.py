"""Training checkpoints (orbax V0 `CheckpointManager`), with exact resume across meshes.

Layout under `output_dir`::

    checkpoints/<step>/state    orbax pytree: {"step", "params" (trainable), "opt_state", "other"
                                (non-param model variables, e.g. RNG counters), "extra" (pipeline
                                state, e.g. the TD EMA), "rng", ["frozen_params"]}
    checkpoints/<step>/meta     JSON: step, data-iterator state, best metric so far, status
    checkpoints/<step>/config   JSON: the full config
    best/<step>/...             the same three items for the best validation metric (1 kept)
    final_model/                optional model directory (wmtp_jax.models.io format)

Periodic and final checkpoints share `checkpoints/` (retention `checkpoint.keep`, newest kept).
Writes are atomic (orbax writes a temporary directory and renames it on commit); uncommitted
temporaries from a killed run are removed on start. Restores go into an abstract target placed
on the CURRENT mesh (ShapeDtypeStruct + NamedSharding), so a checkpoint restores on any mesh.
Typed PRNG keys are stored as their raw key data.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_storable(tree):
    """Typed PRNG key arrays → raw uint32 key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_storable(tree, template):
    """Inverse of `to_storable`, key impls taken from the live `template`."""
    return jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        template, tree)


def abstract_target(template):
    """ShapeDtypeStruct tree with each live leaf's current sharding (storable dtypes)."""
    def one(x):
        x = jax.random.key_data(x) if _is_key(x) else x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return jax.tree.map(one, template)


def _manager(directory: Path, keep: int, async_: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_,
        create=True,
    )
    return ocp.CheckpointManager(directory, options=options,
                                 item_names=("state", "meta", "config"))


class Checkpointer:
    """Periodic/final (`checkpoints/`, newest `keep`) and best (`best/`, 1) checkpoints."""

    def __init__(self, output_dir, keep: int = 3, async_: bool = True):
        self.root = Path(output_dir).absolute()
        self.periodic = _manager(self.root / "checkpoints", keep, async_)
        self.best = _manager(self.root / "best", 1, async_)

    def _mgr(self, best: bool) -> ocp.CheckpointManager:
        return self.best if best else self.periodic

    def save(self, step: int, state, meta: dict, config: dict, *, best: bool = False) -> Path:
        mgr = self._mgr(best)
        if step in mgr.all_steps():  # e.g. the final step was also a periodic one
            return mgr.directory / str(step)
        meta = dict(meta, step=int(step))
        # The two managers' async finalisations use the same orbax multi-host barrier names
        # ("Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing"): never let
        # a save on one overlap the other's.
        self._mgr(not best).wait_until_finished()
        mgr.save(int(step), force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(to_storable(state)),
            meta=ocp.args.JsonSave(_jsonable(meta)),
            config=ocp.args.JsonSave(_jsonable(config))))
        return mgr.directory / str(step)

    def latest_step(self, best: bool = False) -> int | None:
        return self._mgr(best).latest_step()

    def restore(self, template, step: int | None = None, *, best: bool = False):
        """(state, meta) of `step` (default latest), placed like the live `template`."""
        mgr = self._mgr(best)
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {mgr.directory}")
        out = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_target(template)),
            meta=ocp.args.JsonRestore()))
        return from_storable(out.state, template), dict(out.meta)

    def read_config(self, step: int | None = None, *, best: bool = False) -> dict:
        mgr = self._mgr(best)
        step = mgr.latest_step() if step is None else step
        return dict(mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)

    def path(self, step: int, *, best: bool = False) -> Path:
        return self._mgr(best).directory / str(step)

    def wait(self):
        self.periodic.wait_until_finished()
        self.best.wait_until_finished()

    def close(self):
        self.periodic.close()
        self.best.close()


def _jsonable(x):
    """Round-trip through JSON (numpy scalars → Python, bytes → str)."""
    def default(o):
        if isinstance(o, (np.generic,)):
            return o.item()
        if isinstance(o, bytes):
            return {"__bytes__": o.decode("latin-1")}
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"checkpoint metadata: {type(o).__name__} is not JSON-serialisable")
    return json.loads(json.dumps(x, default=default))


def decode_bytes(x):
    """Undo `_jsonable`'s bytes encoding (data-iterator states may be bytes)."""
    if isinstance(x, dict):
        if set(x) == {"__bytes__"}:
            return x["__bytes__"].encode("latin-1")
        return {k: decode_bytes(v) for k, v in x.items()}
    if isinstance(x, list):
        return [decode_bytes(v) for v in x]
    return x


def export_model(directory, model, **save_model_kwargs) -> Path:
    """Write `model` as a model directory readable by `wmtp_jax.models.io.load_*`.

    `save_model_kwargs` go to `wmtp_jax.models.io.save_model` (kind=..., args=..., lora=...).
    Multi-host: parameters are gathered to every host, process 0 writes, all wait.
    """
    from flax import nnx
    from jax.experimental import multihost_utils

    from wmtp_jax.models import io

    params = nnx.state(model, nnx.Param).to_pure_dict()
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    else:
        params = jax.device_get(params)
    path = Path(directory).absolute()
    if jax.process_index() == 0:
        path = io.save_model(directory, params, force=True, **save_model_kwargs)
        logging.info("exported model to %s", path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("wmtp_export_model")
    return path
