"""Generic training runtime: mesh + sharding, optimizer, checkpoints, tracking, the train loop."""

from wmtp_jax.train.checkpoint import Checkpointer, export_model
from wmtp_jax.train.distributed import maybe_initialize
from wmtp_jax.train.loop import NonFiniteLossError, TrainResult, TrainTask, fit, total_steps
from wmtp_jax.train.mesh import (
    check_batch_size,
    make_mesh,
    mesh_from_config,
    rules_for,
    shard_batch,
    shard_frozen,
)
from wmtp_jax.train.optimizer import clip_by_global_norm, lr_schedule, make_optimizer
from wmtp_jax.train.tracking import Tracker

__all__ = [
    "Checkpointer",
    "export_model",
    "maybe_initialize",
    "NonFiniteLossError",
    "TrainResult",
    "TrainTask",
    "fit",
    "total_steps",
    "check_batch_size",
    "make_mesh",
    "mesh_from_config",
    "rules_for",
    "shard_batch",
    "shard_frozen",
    "clip_by_global_norm",
    "lr_schedule",
    "make_optimizer",
    "Tracker",
]
