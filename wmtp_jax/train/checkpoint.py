"""Training checkpoints (orbax V0 `CheckpointManager`), with exact resume across meshes.

Layout under `output_dir`::

    checkpoints/<step>/state    orbax pytree: {"step", "params" (trainable), "opt_state", "other"
                                (non-param model variables, e.g. RNG counters), "extra" (pipeline
                                state, e.g. the TD EMA), "rng", ["frozen_params"]}
    checkpoints/<step>/meta     JSON: step, data-iterator state, best metric so far, status
    checkpoints/<step>/config   JSON: the full config
    best/<step>/...             the same three items for the best validation metric (1 kept)
    final_model/                optional model directory (wmtp_jax.models.serialization format)

Periodic and final checkpoints share `checkpoints/` (retention `checkpoint.keep`, newest kept).
Writes are atomic (orbax writes a temporary directory and renames it on commit); uncommitted
temporaries from a killed run are removed on start. `restore` verifies what it reads and falls
back to the newest good checkpoint, moving a bad one to `corrupt_checkpoints/` with a warning;
a checkpoint that does not fit the model (shapes, `meta["model"]`) is an error, not a fallback.
Restores go into an abstract target placed on the CURRENT mesh (ShapeDtypeStruct +
NamedSharding), so a checkpoint restores on any mesh.
A save that fails (a read-only or full disk) raises `CheckpointSaveError` naming the step
directory and the OS error; `checkpoints/` and `best/` are probed for writing when the
`Checkpointer` is made, so an unwritable directory fails before the first step. orbax's
background save threads are non-daemon and wait up to its 300 s barrier timeout for a failed
peer: a command line ends the process after a save error (`wmtp_jax.main`) instead of joining them.
Typed PRNG keys are stored as their raw key data.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from wmtp_jax.models import serialization

CHECKPOINTS = "checkpoints"  # periodic / final step directories under output_dir
BEST = "best"  # the best validation step directory under output_dir


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_storable(tree):
    """Typed PRNG key arrays → raw uint32 key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_storable(tree, template):
    """Inverse of `to_storable`, key impls taken from the live `template`."""
    return jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        template,
        tree,
    )


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
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta", "config"))


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (the message names the step directory and OS error)."""


def _os_error(e: BaseException) -> BaseException:
    """The first OSError in `e`'s cause/context chain (orbax re-raises it from its threads, and
    tensorstore reports errno in its own exception), else `e`."""
    seen, x = set(), e
    while x is not None and id(x) not in seen:
        if isinstance(x, OSError):
            return x
        seen.add(id(x))
        x = x.__cause__ or x.__context__
    return e


# OS errors a save meets, recognised in the text of a tensorstore error (which has no errno)
_SAVE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def _save_error(path: Path, e: BaseException) -> CheckpointSaveError:
    cause = _os_error(e)
    if isinstance(cause, OSError):
        text = str(cause)
    else:
        text = _one_line(cause)
        known = [n for n in _SAVE_ERRNOS if os.strerror(n) in str(cause)]
        if known:
            text = f"[Errno {known[0]}] {os.strerror(known[0])}"
    return CheckpointSaveError(f"could not save checkpoint {path}: {text.splitlines()[0][:1000]}")


def _closed_loop_reports_to_the_log() -> None:
    """After a failed write, tensorstore's pending callbacks find orbax's asyncio loop closed and
    each reports `RuntimeError: Event loop is closed` through `sys.unraisablehook` (dozens of
    tracebacks on stderr). Those go to the log at INFO; every other report to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_wmtp_closed_loop", False):
        return

    def hook(unraisable):
        v = unraisable.exc_value
        if isinstance(v, RuntimeError) and str(v) == "Event loop is closed":
            logging.info("after a failed checkpoint write: %s (%s)", v, unraisable.err_msg)
        else:
            previous(unraisable)

    hook._wmtp_closed_loop = True
    sys.unraisablehook = hook


def _check_writable(directory: Path) -> None:
    """Create `directory` and a probe file in it, or raise CheckpointSaveError naming the OS error
    (root ignores permission bits, so os.access would not tell)."""
    probe = directory / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise CheckpointSaveError(f"checkpoint directory {directory} is not writable: {e}") from e


class Checkpointer:
    """Periodic/final (`checkpoints/`, newest `keep`) and best (`best/`, 1) checkpoints."""

    def __init__(self, output_dir, keep: int = 3, async_: bool = True):
        self.root = Path(output_dir).absolute()
        _closed_loop_reports_to_the_log()
        for sub in (CHECKPOINTS, BEST):
            _check_writable(self.root / sub)
        self.periodic = _manager(self.root / CHECKPOINTS, keep, async_)
        self.best = _manager(self.root / BEST, 1, async_)
        self._pending = {False: None, True: None}  # the step dir of each manager's last save

    def _mgr(self, best: bool) -> ocp.CheckpointManager:
        return self.best if best else self.periodic

    def _finish(self, best: bool) -> None:
        """Wait for `best`'s manager's async save; CheckpointSaveError if it failed."""
        try:
            self._mgr(best).wait_until_finished()
        except Exception as e:  # noqa: BLE001 -- whatever orbax raised, the save failed
            raise _save_error(self._pending[best] or self._mgr(best).directory, e) from e

    def save(self, step: int, state, meta: dict, config: dict, *, best: bool = False) -> Path:
        """Start saving `step` (async); CheckpointSaveError if this or an earlier save failed."""
        mgr = self._mgr(best)
        path = mgr.directory / str(step)
        if step in mgr.all_steps():  # e.g. the final step was also a periodic one
            return path
        meta = dict(meta, step=int(step))
        # The two managers' async finalisations use the same orbax multi-host barrier names
        # ("Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing"): never let
        # a save on one overlap the other's.
        self._finish(not best)
        self._finish(best)
        self._pending[best] = path
        try:
            mgr.save(
                int(step),
                force=True,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(to_storable(state)),
                    meta=ocp.args.JsonSave(_jsonable(meta)),
                    config=ocp.args.JsonSave(_jsonable(config)),
                ),
            )
        except Exception as e:  # noqa: BLE001 -- whatever orbax raised, the save failed
            raise _save_error(path, e) from e
        return path

    def latest_step(self, best: bool = False) -> int | None:
        return self._mgr(best).latest_step()

    def restore(
        self,
        template,
        step: int | None = None,
        *,
        best: bool = False,
        expect: dict | None = None,
        check_meta=None,
    ):
        """(state, meta) of `step`, or of the newest good checkpoint; placed like `template`.

        Without `step`, checkpoints are tried newest first. One that cannot be read or fails
        verification (meta fields of the right types, meta step = its directory's step,
        `check_meta(meta)` passes, every float leaf finite) is moved to
        `<output_dir>/corrupt_checkpoints/` with a warning naming it, and the previous one is
        tried. A checkpoint that does not fit (`expect` keys of meta["model"] differ, or a
        template leaf is missing or shaped otherwise, or `check_meta` raises it) raises
        IncompatibleCheckpoint: that is a config or model change, not a bad file, and falling
        back would not help.
        """
        mgr = self._mgr(best)
        steps = [step] if step is not None else sorted(mgr.all_steps(), reverse=True)
        if not steps or steps[0] is None:
            raise FileNotFoundError(f"no checkpoint under {mgr.directory}")
        bad = []
        for s in steps:
            path = mgr.directory / str(s)
            try:
                state, meta = _restore_step(mgr, s, template, expect, check_meta)
            except IncompatibleCheckpoint:
                raise
            except Exception as e:  # noqa: BLE001 -- any read/verify failure: try the previous one
                if step is not None:
                    raise CorruptCheckpoint(
                        f"checkpoint {path} is unreadable: {_one_line(e)}"
                    ) from e
                moved = self._quarantine(mgr, s)
                bad.append(str(path))
                logging.warning(
                    "checkpoint %s is unreadable (%s); moved to %s; falling back to "
                    "the previous checkpoint",
                    path,
                    _one_line(e),
                    moved,
                )
                continue
            if bad:
                logging.warning(
                    "restored checkpoint %s after skipping bad checkpoint(s) %s",
                    path,
                    ", ".join(bad),
                )
            return state, meta
        raise CorruptCheckpoint(
            f"no readable checkpoint under {mgr.directory}: every one failed "
            f"({', '.join(bad)}; moved to {self.root / QUARANTINE})"
        )

    def _quarantine(self, mgr: ocp.CheckpointManager, step: int) -> Path:
        """Move a bad step directory out of the manager's sight (a new save may reuse the step)."""
        dst = self.root / QUARANTINE / f"{mgr.directory.name}-{step}-{int(time.time())}"
        if jax.process_index() == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(mgr.directory / str(step), dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"wmtp_quarantine_{step}")
        mgr.reload()
        return dst

    def read_config(self, step: int | None = None, *, best: bool = False) -> dict:
        mgr = self._mgr(best)
        return read_config(mgr.directory / str(mgr.latest_step() if step is None else step))

    def path(self, step: int, *, best: bool = False) -> Path:
        return self._mgr(best).directory / str(step)

    def wait(self):
        """Wait for both managers' saves; CheckpointSaveError if one failed."""
        self._finish(False)
        self._finish(True)

    def close(self):
        self.periodic.close()
        self.best.close()


QUARANTINE = "corrupt_checkpoints"


def _restore_step(mgr: ocp.CheckpointManager, step: int, template, expect: dict | None, check_meta):
    """(state, meta) of one step, checked to fit `template` / `expect` and verified. Top-level
    items the checkpoint holds beyond the template (e.g. `frozen_params`) are not read."""
    path = mgr.directory / str(step)
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    check_meta_fields(meta, step)
    if check_meta is not None:
        check_meta(meta)
    stored = _check_compatible(path, meta, template, expect)
    target = abstract_target(template)
    try:
        # a partial restore of the `state` item: top-level items the template lacks are not read
        restored = ocp.PyTreeCheckpointer().restore(
            path / "state",
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=any(k not in target for k in stored),
            ),
        )
    except ValueError as e:
        if "tree structures do not match" not in str(e):
            raise
        # the metadata was read: a readable checkpoint of another structure, not a bad file
        raise IncompatibleCheckpoint(
            f"checkpoint {path} does not fit the model being trained ({_one_line(e)}); resume "
            f"with the same model and config, or train into a new output_dir"
        ) from e
    state = from_storable(restored, template)
    _verify(path, step, state, meta)
    return state, meta


class CorruptCheckpoint(RuntimeError):
    """No readable checkpoint (or an explicitly requested one is unreadable)."""


class IncompatibleCheckpoint(ValueError):
    """The checkpoint is readable but does not fit the model/config being trained."""


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def _check_compatible(path: Path, meta: dict, template, expect: dict | None) -> dict:
    """The stored state's metadata tree, or IncompatibleCheckpoint naming what differs: `expect`
    vs meta["model"], then the leaves (missing, shaped otherwise, or stored beyond the model
    within a top-level item the template restores)."""
    saved = meta.get("model") or {}
    diff = [
        f"{k}={saved[k]!r} in the checkpoint, {v!r} now"
        for k, v in (expect or {}).items()
        if k in saved and saved[k] != v
    ]
    if diff:
        raise IncompatibleCheckpoint(
            f"checkpoint {path} was trained with another model: {'; '.join(diff)}; resume with "
            f"the same model, or train into a new output_dir"
        )
    item = ocp.StandardCheckpointer().metadata(path / "state").item_metadata
    if item is None:  # a corrupt file, not a mismatch: the caller falls back
        raise ValueError(f"{path / 'state'}: array metadata unreadable")
    tree = item.tree
    if not isinstance(tree, dict):
        raise ValueError(f"{path / 'state'}: the stored state is not a dict")
    have = {_leaf_name(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    bad = []
    want = set()
    for k, v in jax.tree_util.tree_leaves_with_path(abstract_target(template)):
        name = _leaf_name(k)
        want.add(name)
        if name not in have:
            bad.append(f"{name} is missing")
        elif have[name] != tuple(v.shape):
            bad.append(f"{name} has shape {have[name]} in the checkpoint, {tuple(v.shape)} now")
    restored = [k for k in tree if k in template]  # the other top-level items are not read
    bad += [
        f"{name} is not in the model"
        for name in sorted(have)
        if name not in want and name.split("/")[0] in restored
    ]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise IncompatibleCheckpoint(
            f"checkpoint {path} does not fit the model being trained: {'; '.join(bad[:3])}{more}; "
            f"resume with the same model and config, or train into a new output_dir"
        )
    return tree


def _leaf_name(path) -> str:
    """ "params/heads/0/kernel": dict keys, indices and attributes; the trailing "value" of an NNX
    Variable (an attribute live, a dict key once stored) dropped."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        else:
            parts.append(str(getattr(k, "key", k)))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def check_meta_fields(meta, step: int) -> None:
    """ValueError naming the first field of a checkpoint's meta that is missing or mistyped:
    step (= the directory's), and where present status (a string), model (an object), best
    (None or {metric, value: a finite number, step <= this step}). The data-iterator state is
    the loader's to check (`check_state`)."""
    if not isinstance(meta, dict):
        raise ValueError(f"meta is {type(meta).__name__}, not an object")
    if type(meta.get("step")) is not int or meta["step"] != step:
        raise ValueError(f"meta step {meta.get('step')!r} != directory step {step}")
    if not isinstance(meta.get("status", ""), str):
        raise ValueError(f"meta status {meta['status']!r} is not a string")
    if not isinstance(meta.get("model", {}), dict):
        raise ValueError(f"meta model {meta['model']!r} is not an object")
    best = meta.get("best")
    if best is None:
        return
    ok = (
        isinstance(best, dict)
        and isinstance(best.get("metric"), str)
        and type(best.get("value")) in (int, float)
        and math.isfinite(best["value"])
        and type(best.get("step")) is int
        and 0 <= best["step"] <= step
    )
    if not ok:
        raise ValueError(f"meta best {best!r} is not {{metric, finite value, step <= {step}}}")


def _verify(path: Path, step: int, state, meta: dict):
    """No NaN/inf in the state (the NaN guard never saves one)."""
    floats = [
        x
        for x in jax.tree.leaves(state)
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, np.floating)
    ]
    finite = jax.device_get([jnp.isfinite(x).all() for x in floats])
    if not all(bool(f) for f in finite):
        raise ValueError("non-finite values in the restored state")


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
    """Write `model` as a model directory readable by `wmtp_jax.models.serialization.load_*`.

    `save_model_kwargs` go to `wmtp_jax.models.serialization.save_model` (kind=..., args=...,
    lora=...).
    Multi-host: parameters are gathered to every host, process 0 writes, all wait.
    """
    params = nnx.state(model, nnx.Param).to_pure_dict()
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    else:
        params = jax.device_get(params)
    path = Path(directory).absolute()
    if jax.process_index() == 0:
        path = serialization.save_model(directory, params, force=True, **save_model_kwargs)
        logging.info("exported model to %s", path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("wmtp_export_model")
    return path


# ---- reading a step directory without a manager (evaluation; never writes or cleans up) -------


def locate(path, *, best: bool = False) -> tuple[Path, Path, bool, int]:
    """(step dir, run dir, is_best, step) of `<run>/{checkpoints,best}/<step>`, or of a run dir's
    newest committed step under `best/` (`best`) or `checkpoints/`. FileNotFoundError if none."""
    path = Path(path)
    if (path / "state").is_dir():
        return path, path.parent.parent, path.parent.name == BEST, int(path.name)
    sub = path / (BEST if best else CHECKPOINTS)
    steps = sorted(
        int(p.name) for p in sub.glob("*") if p.name.isdigit() and (p / "state").is_dir()
    )
    if not steps:
        raise FileNotFoundError(f"no training checkpoint under {sub}")
    return sub / str(steps[-1]), path, best, steps[-1]


def read_config(step_dir) -> dict:
    """The run config stored with a checkpoint step (its `config` item)."""
    item = Path(step_dir).absolute() / "config"
    return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(item))


def read_params(step_dir) -> dict[tuple[str, ...], np.ndarray]:
    """{key path: host array} of the `params` (+ `frozen_params`) of a checkpoint step's state;
    key paths are the model's parameter paths (NNX `value` / `raw_value` leaves dropped)."""
    state_dir = Path(step_dir).absolute() / "state"
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(state_dir).item_metadata.tree
    keep = {k: meta[k] for k in ("params", "frozen_params") if k in meta}
    args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), keep)
    tree = ckptr.restore(
        state_dir, args=ocp.args.PyTreeRestore(item=keep, restore_args=args, partial_restore=True)
    )
    flat = {}
    for sub in keep:
        for p, v in flatten(tree[sub]).items():
            flat[tuple(k for k in p if k not in ("value", "raw_value"))] = v
    return flat


def flatten(tree, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """{key path (str keys): leaf} of a nested dict."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out
