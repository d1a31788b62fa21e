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
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "wmtp_target_platform", default=None
)


def canonical_platform(platform: str) -> str:
    """ "cpu" | "gpu" | "tpu" ("cuda" and "rocm" are "gpu"); ValueError for anything else."""
    name = _ALIASES.get(str(platform).lower(), str(platform).lower())
    if name not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; valid: {PLATFORMS} (or cuda, rocm)")
    return name


@contextlib.contextmanager
def target_platform(platform: str):
    """Trace for `platform` inside the block (see the module docstring)."""
    token = _TARGET.set(canonical_platform(platform))
    try:
        yield
    finally:
        _TARGET.reset(token)


def current_platform() -> str:
    """The innermost `target_platform`, else `jax.default_backend()`."""
    return _TARGET.get() or canonical_platform(jax.default_backend())
