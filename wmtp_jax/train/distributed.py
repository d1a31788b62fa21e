"""Multi-host start-up through `jax.distributed`.

Order of precedence: config flags (`distributed.coordinator_address`, `num_processes`,
`process_id`), then the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`), then cluster auto-detection (SLURM, Open MPI, Cloud TPU / GKE: jax's own
`initialize()` with no arguments). A single process with none of these is a no-op.
"""

from __future__ import annotations

import os

import jax
from absl import logging

_CLUSTER_ENV = (
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "")
    return int(v) if v.strip() else None


def resolve(config=None) -> dict | None:
    """The initialize() arguments ({} = auto-detect), or None for a plain single process."""
    d = getattr(config, "distributed", None) if config is not None else None
    coord = (d.coordinator_address if d is not None else "") or os.environ.get(
        "JAX_COORDINATOR_ADDRESS", ""
    )
    n = d.num_processes if d is not None and d.num_processes > 0 else _env_int("JAX_NUM_PROCESSES")
    pid = d.process_id if d is not None and d.process_id >= 0 else _env_int("JAX_PROCESS_ID")
    if coord:
        if n is None or pid is None:
            raise ValueError(
                f"distributed.coordinator_address={coord!r} needs num_processes and "
                "process_id (flags or JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
            )
        if not 0 <= pid < n:
            raise ValueError(f"distributed.process_id={pid} must be in [0, num_processes={n})")
        return {"coordinator_address": coord, "num_processes": n, "process_id": pid}
    if n is not None and n > 1:
        raise ValueError(
            f"num_processes={n} needs distributed.coordinator_address (or JAX_COORDINATOR_ADDRESS)"
        )
    if any(k in os.environ for k in _CLUSTER_ENV):
        return {}
    return None


def maybe_initialize(config=None) -> bool:
    """Call `jax.distributed.initialize` when running multi-process; returns whether it did."""
    if jax.distributed.is_initialized():
        return True
    kwargs = resolve(config)
    if kwargs is None:
        return False
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        # CPU collectives across processes (tests over loopback) go through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("jax.distributed.initialize(%s)", kwargs or "auto-detect")
    jax.distributed.initialize(**kwargs)
    logging.info(
        "process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0
