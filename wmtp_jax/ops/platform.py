"""The platform a program is built for: the host's backend, or the target of an ahead-of-time
compile (`target_platform`). Backend-dependent choices made while tracing (which attention
kernel `auto` picks, whether a CPU-only kernel may be used) ask `current_platform()`, never
`jax.default_backend()`, so that tracing on a CPU host for a TPU or GPU topology picks what that
accelerator runs.

    with target_platform("tpu"):
        jax.jit(step, in_shardings=...).lower(*abstract_args).compile()

The setting is a `contextvars.ContextVar`: per thread (and per asyncio task), restored on exit.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

PLATFORMS = ("cpu", "gpu", "tpu")
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}
_TARGET: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "wmtp_target_platform", default=None
)
# NVIDIA device kinds (as jax names them, e.g. "NVIDIA H100 80GB HBM3") -> compute capability
GPU_COMPUTE_CAPABILITY = {
    "V100": (7, 0),
    "A100": (8, 0),
    "A800": (8, 0),
    "A10": (8, 6),
    "L4": (8, 9),
    "H100": (9, 0),
    "H800": (9, 0),
    "H200": (9, 0),
    "B200": (10, 0),
}


def canonical_platform(platform: str) -> str:
    """ "cpu" | "gpu" | "tpu" ("cuda" and "rocm" are "gpu"); ValueError for anything else."""
    name = _ALIASES.get(str(platform).lower(), str(platform).lower())
    if name not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; valid: {PLATFORMS} (or cuda, rocm)")
    return name


@contextlib.contextmanager
def target_platform(platform: str, *, compute_capability: str | None = None):
    """Trace for `platform` inside the block (see the module docstring). `compute_capability`
    ("9.0"): of a GPU target, where kernels depend on it (cuDNN's packed layout); default: from
    the device kind of the abstract mesh (`jax.set_mesh`), see `target_compute_capability`."""
    cc = None if compute_capability is None else _version(compute_capability)
    token = _TARGET.set((canonical_platform(platform), cc))
    try:
        yield
    finally:
        _TARGET.reset(token)


def current_platform() -> str:
    """The innermost `target_platform`, else `jax.default_backend()`."""
    target = _TARGET.get()
    return target[0] if target else canonical_platform(jax.default_backend())


def target_compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the GPU a program is traced for, or None when unknown: the local GPU's
    when there is no `target_platform`; else `target_platform`'s `compute_capability`, else the
    table entry of the abstract mesh's device kind (compile-only GPU devices name theirs)."""
    target = _TARGET.get()
    if target is None:
        if jax.default_backend() != "gpu":
            return None
        return _version(getattr(jax.local_devices()[0], "compute_capability", "") or "0")
    if target[0] != "gpu" or target[1] is not None:
        return target[1]
    mesh = jax.sharding.get_abstract_mesh()
    kind = "" if mesh.empty else str(mesh.abstract_device.device_kind).upper()
    hits = [cc for name, cc in GPU_COMPUTE_CAPABILITY.items() if name in kind.split()]
    return hits[0] if hits else None


def _version(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)
