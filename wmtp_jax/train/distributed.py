"""Multi-host start-up through `jax.distributed`.

Order of precedence: config flags (`distributed.coordinator_address`, `num_processes`,
`process_id`), then the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`), then cluster auto-detection (SLURM, Open MPI, Cloud TPU / GKE: jax's own
`initialize()` with no arguments). A single process with none of these is a no-op.

Deadline: when the processes have not all reached the coordinator within
`distributed.initialization_timeout` seconds (default 300, jax's own), the process prints one
`error:` line naming the coordinator and exits 2. jax's own timeout ends the process with a C++
fatal error and a stack trace (not an exception), so a watchdog thread ends it first; jax's
deadline is set 30 s later as a backstop.
"""

from __future__ import annotations

import math
import os
import sys
import threading

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


DEFAULT_TIMEOUT = 300.0  # jax.distributed.initialize's own default (seconds)


def initialization_timeout(config=None) -> float:
    """`distributed.initialization_timeout` (seconds, finite and > 0; default 300)."""
    d = getattr(config, "distributed", None) if config is not None else None
    t = d.get("initialization_timeout", DEFAULT_TIMEOUT) if d is not None else DEFAULT_TIMEOUT
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(
            f"distributed.initialization_timeout={t!r} must be a finite number of seconds > 0"
        )
    return float(t)


def _deadline(seconds: float, what: str) -> threading.Timer:
    """A started watchdog: one `error:` line and exit 2 after `seconds` unless cancelled."""

    def expire():
        print(
            f"error: {what} did not complete within distributed.initialization_timeout="
            f"{seconds:g} s: the coordinator is unreachable or not every process started",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def maybe_initialize(config=None) -> bool:
    """Call `jax.distributed.initialize` when running multi-process; returns whether it did.
    Ends the process (one line, exit 2) when it does not complete in time (see above)."""
    if jax.distributed.is_initialized():
        return True
    kwargs = resolve(config)
    if kwargs is None:
        return False
    timeout = initialization_timeout(config)
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        # CPU collectives across processes (tests over loopback) go through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("jax.distributed.initialize(%s)", kwargs or "auto-detect")
    where = kwargs.get("coordinator_address", "auto-detected")
    who = f"process {kwargs['process_id']} of {kwargs['num_processes']}" if kwargs else "process"
    watchdog = _deadline(timeout, f"joining the coordinator {where} ({who})")
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=math.ceil(timeout) + 30)
    finally:
        watchdog.cancel()
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
