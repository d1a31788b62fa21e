"""Layout hints for activations under a device mesh.

The batch axes of the mesh (`wmtp_jax.train.mesh`) split every batch, whatever the strategy.
Parameters carry their own shardings; hidden states get one here. Without it XLA's partitioner
is free to leave FSDP-sharded (frozen) weights in place and all-reduce batch-replicated partial
activations instead of gathering the weights (observed at 7b: 1.1 TiB of all-reduce per device
and step for the verifiable pipeline, `docs/scaling.md`).
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")  # the mesh axes of the batch (wmtp_jax.train.mesh builds on them)


def batch_axes(mesh, b: int) -> tuple[str, ...]:
    """The batch axes of `mesh` that split `b` rows: each axis of size > 1, in order, kept while
    the product of those kept divides b (the rule of every batch layout: this pin, splash's
    shard_map)."""
    axes, size = [], 1
    for a in BATCH_AXES:
        n = mesh.shape.get(a, 1)
        if n > 1 and b % (size * n) == 0:
            axes.append(a)
            size *= n
    return tuple(axes)


def constrain_batch(x: jax.Array) -> jax.Array:
    """x `[B, ...]` constrained to be split over `batch_axes(mesh, B)` on its leading dim, the
    rest replicated, under the mesh being traced (`jax.set_mesh`, the train step); unchanged
    without a multi-device mesh or when no batch axis splits B. Values are unchanged."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = batch_axes(mesh, x.shape[0])
    if not axes:
        return x
    return jax.lax.with_sharding_constraint(x, P(axes if len(axes) > 1 else axes[0]))
