"""The training mesh, per-strategy sharding rules, and batch / model placement.

Mesh axes are ("data", "fsdp", "tensor"). A strategy picks two logical→mesh rule tables (see
`wmtp_jax.models.partitioning`): one for parameters (and the frozen models) and one for the
optimizer state (and the reduced gradients):

    FULL_SHARD     params, grads, optimizer state over `fsdp`          (ZeRO-3 / FSDP)
    SHARD_GRAD_OP  params replicated over `fsdp`; grads + opt state over `fsdp`   (ZeRO-2)
    NO_SHARD       everything replicated over `fsdp`                    (DDP)

Tensor-parallel names (`heads`, `mlp`, `vocab` → `tensor`) apply under every strategy; with
mesh.tensor = 1 they are no-ops. Batches are split over (data, fsdp) on their batch dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax.models.partitioning import DEFAULT_RULES, Rules, state_shardings
from wmtp_jax.ops.layout import BATCH_AXES

AXES = ("data", "fsdp", "tensor")
STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD")


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[int, int, int]:
    """Replace the (at most one) -1 by the rest of the devices; the product must be n_devices."""
    shape = [int(data), int(fsdp), int(tensor)]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(AXES, shape))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh {dict(zip(AXES, shape))}: sizes must be ≥ 1 or -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n_devices % known:
            raise ValueError(
                f"mesh {dict(zip(AXES, shape))}: {n_devices} devices are not "
                f"divisible by the fixed axes' product {known}"
            )
        shape[shape.index(-1)] = n_devices // known
    if int(np.prod(shape)) != n_devices:
        raise ValueError(
            f"mesh {dict(zip(AXES, shape))} has {int(np.prod(shape))} devices but "
            f"{n_devices} are available (set mesh.data/fsdp/tensor, -1 = the rest)"
        )
    return tuple(shape)


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence | None = None
) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all global devices)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    if devices == jax.devices():
        dev = jax.make_mesh(shape, AXES, devices=devices).devices
    else:
        dev = np.asarray(devices).reshape(shape)
    return Mesh(dev, AXES)


def mesh_from_config(config) -> Mesh:
    return make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)


def _drop_axis(rules: Rules, axis: str) -> Rules:
    """Remove `axis` from every non-batch rule (the dimension becomes replicated over it)."""
    out = []
    for name, axes in rules:
        if name != "batch" and axes is not None:
            tup = (axes,) if isinstance(axes, str) else tuple(axes)
            tup = tuple(a for a in tup if a != axis)
            axes = None if not tup else tup[0] if len(tup) == 1 else tup
        out.append((name, axes))
    return tuple(out)


class ShardingRules(NamedTuple):
    params: Rules  # trainable + frozen params, frozen models
    opt_state: Rules  # optimizer moments and reduced gradients


def rules_for(strategy: str, base: Rules = DEFAULT_RULES) -> ShardingRules:
    if strategy not in STRATEGIES:
        raise ValueError(f"runtime.sharding={strategy!r} is invalid; one of {STRATEGIES}")
    replicated = _drop_axis(base, "fsdp")
    if strategy == "FULL_SHARD":
        return ShardingRules(base, base)
    if strategy == "SHARD_GRAD_OP":
        return ShardingRules(replicated, base)
    return ShardingRules(replicated, replicated)


def tree_shardings(tree, mesh: Mesh, rules: Rules):
    """NamedSharding per Variable / array of any pytree (nnx.State, optax state, dicts).

    Leaves without logical-axis metadata are replicated. The result is a prefix tree of `tree`
    (one sharding per Variable), usable as jit in/out shardings and by `jax.device_put`.
    """
    return state_shardings(tree, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def abstract_like(tree, shardings):
    """ShapeDtypeStruct tree (same structure as `tree`, Variables kept) placed on `shardings`."""

    def one(sharding, sub):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), sub
        )

    return jax.tree.map(
        one, shardings, tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
    )


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def put_global(tree, shardings):
    """`jax.device_put` that also works multi-process (values identical on every process).

    `shardings` is a prefix tree of `tree` (e.g. from `tree_shardings`). Multi-process, each leaf
    becomes a global array built from this process's copy of the value; typed PRNG keys go
    through their raw key data.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def leaf(sharding, x):
        if _is_key(x):
            return jax.random.wrap_key_data(
                leaf(sharding, jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(
        lambda s, sub: jax.tree.map(lambda x: leaf(s, x), sub),
        shardings,
        tree,
        is_leaf=lambda s: isinstance(s, jax.sharding.Sharding),
    )


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
    """Sharding of a batch leaf: [B, ...] (or [GA, B, ...] when stacked) split over (data, fsdp)."""
    return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(global_batch: int, mesh: Mesh, key: str = "training.batch_size") -> int:
    """Validate a global batch against the mesh and process count; returns the per-process batch."""
    dp, n_proc = data_parallel_size(mesh), jax.process_count()
    if global_batch % dp or global_batch % n_proc:
        raise ValueError(
            f"{key}={global_batch} must be divisible by the data-parallel size "
            f"data×fsdp={dp} and by the process count {n_proc}"
        )
    return global_batch // n_proc


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, stacked: bool = False) -> dict:
    """Per-process numpy batch → global jax arrays split over (data, fsdp).

    Each process passes its own rows; the global batch dimension is the concatenation over
    processes (`jax.make_array_from_process_local_data`).
    """
    sharding = batch_sharding(mesh, stacked)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), dict(batch)
    )


def shard_frozen(model: nnx.Module, mesh: Mesh, strategy: str = "FULL_SHARD") -> nnx.Module:
    """Place a frozen (inference-only) model on the mesh with the strategy's parameter rules."""
    state = nnx.state(model)
    nnx.update(model, put_global(state, tree_shardings(state, mesh, rules_for(strategy).params)))
    return model
