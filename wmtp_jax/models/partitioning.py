"""Logical axis names -> mesh axes, and sharded model initialisation.

Parameters carry logical axis names (`out_sharding` metadata, see conversion/mapping.py and
docs/design.md); a rules table maps each name to a mesh axis (or None = replicated). The training
mesh (`wmtp_jax.train.mesh`) picks the table per strategy (FULL_SHARD / SHARD_GRAD_OP / NO_SHARD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# FSDP over `fsdp`, tensor parallel over `tensor`, batch over (`data`, `fsdp`).
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("mtp_heads", None),
    ("lora_rank", None),
    ("value_hidden", None),
)

# Everything replicated (DDP / single device), batch still split over the data-parallel axes.
REPLICATED_RULES: Rules = (("batch", ("data", "fsdp")),)


def logical_to_mesh_spec(spec: P | None, rules: Rules, mesh: Mesh | None = None) -> P:
    """Map a PartitionSpec of logical names to mesh axes; unknown names and size-1 axes -> None.

    A mesh axis is used at most once per spec (first dimension wins), as GSPMD requires.
    """
    if spec is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in spec:
        axes = table.get(name) if isinstance(name, str) else None
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        keep = tuple(
            a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1)
        )
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else keep)
    return P(*out)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop mesh axes that do not divide the dimension (e.g. an 8-way axis on a dim of 4)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        tup = (axes,) if isinstance(axes, str) else tuple(axes)
        size = 1
        for a in tup:
            size *= mesh.shape[a]
        out.append(axes if dim % size == 0 else None)
    return P(*out)


def state_shardings(state, mesh: Mesh, rules: Rules):
    """NamedSharding per leaf of an (abstract) nnx.State, from its logical axis metadata."""
    specs = nnx.get_partition_spec(state)

    def one(var, spec):
        spec = spec.get_value() if isinstance(spec, nnx.Variable) else spec
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        shape = getattr(value, "shape", ())
        mesh_spec = logical_to_mesh_spec(spec, rules, mesh) if isinstance(spec, P) else P()
        return NamedSharding(mesh, _fit(mesh_spec, tuple(shape), mesh))

    return jax.tree.map(one, state, specs, is_leaf=lambda x: isinstance(x, nnx.Variable))


M = TypeVar("M", bound=nnx.Module)


def init_sharded(make_model: Callable[[], M], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> M:
    """Build `make_model()` with every array created directly in its sharded layout.

    No full copy is made.
    """
    abstract = nnx.eval_shape(make_model)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules)

    @jax.jit
    def create():
        _, state = nnx.split(make_model())
        return jax.lax.with_sharding_constraint(state, shardings)

    return nnx.merge(graphdef, create())


def shard_model(model: M, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> M:
    """Place an existing model's state on `mesh` according to `rules` (in place)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
    return model
