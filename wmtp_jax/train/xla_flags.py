"""XLA:CPU flag defaults, measured per jax release (docs/performance_step.md).

XLA reads `XLA_FLAGS` once, when the first backend starts, so `apply_cpu_defaults()` must run
before the first computation (importing jax is fine). The entry points (`wmtp_jax.main.run`,
`python -m wmtp_jax.bench`) call it. A flag the user already put in `XLA_FLAGS` wins, and a jax
release without a measured entry gets nothing: XLA aborts on a flag it does not know, and the
experimental names below may be renamed by a later release.

`--xla_cpu_experimental_ynn_fusion_type=dot` (jax 0.10): XLA:CPU's YNNPACK library fusions
take dots together with their elementwise producers and consumers instead of one library call
per dot (the release's default, `individual_dot,reduce`), which drops transposing copies around
the GEMMs. At the `torch-bar` shape (D256 L6 K4 V4096 B8 S256 f32) the baseline train step
takes 15-21 % less process CPU time; the first loss moves by 1.1e-7 relative.
"""

from __future__ import annotations

import os

import jax

# jax "major.minor" -> flags measured a win on that release
CPU_DEFAULTS: dict[str, tuple[str, ...]] = {
    "0.10": ("--xla_cpu_experimental_ynn_fusion_type=dot",),
}


def _name(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-")


def with_cpu_defaults(xla_flags: str, jax_version: str) -> str:
    """`xla_flags` (an `XLA_FLAGS` value) plus the defaults for `jax_version` whose flag names
    it does not already set."""
    defaults = CPU_DEFAULTS.get(".".join(jax_version.split(".")[:2]), ())
    have = {_name(f) for f in xla_flags.split()}
    extra = [f for f in defaults if _name(f) not in have]
    return " ".join([*xla_flags.split(), *extra])


def apply_cpu_defaults(environ=os.environ) -> str:
    """Write `with_cpu_defaults` into `environ["XLA_FLAGS"]` (before the first computation)
    → the value now set."""
    value = with_cpu_defaults(environ.get("XLA_FLAGS", ""), jax.__version__)
    if value:
        environ["XLA_FLAGS"] = value
    return value
