"""Layout hints for activations under a device mesh.

The batch axes of the mesh (`wmtp_jax.train.mesh`) split every batch, whatever the strategy.
Parameters carry their own shardings; hidden states get one here. Without it XLA's partitioner
is free to leave FSDP-sharded (frozen) weights in place and all-reduce batch-replicated partial
activations instead of gathering the weights (observed at 7b: 1.1 TiB of all-reduce per device
and step for the verifiable pipeline, `docs/scaling.md`).
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")  # the mesh axes of the batch


def constrain_batch(x: jax.Array) -> jax.Array:
    """x `[B, ...]` constrained to be split over the batch axes on its leading dim, the rest
    replicated, under the mesh being traced (`jax.set_mesh`, the train step); unchanged without a
    multi-device mesh or where the batch axes do not divide B. Values are unchanged."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    return jax.lax.with_sharding_constraint(x, P(axes if len(axes) > 1 else axes[0]))
