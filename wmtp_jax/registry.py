"""The one table of pipelines: each name's config module and pipeline module.

`config.pipeline` (and `--config=configs/<name>.py`) selects a row. Modules are named here and
imported on first use, so the registry itself imports nothing from the package: configs (below
the pipelines) and main, the bench and the study (above them) all read the same table without an
upward import. Nothing else picks a module by pipeline name.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple


class Entry(NamedTuple):
    config: str  # module with get_config(variant) [and validate(config)]
    pipeline: str  # module with run(config) [and build(config, mesh, ...) for training ones]


PIPELINES: dict[str, Entry] = {
    "baseline": Entry("wmtp_jax.configs.baseline", "wmtp_jax.pipelines.baseline"),
    "critic": Entry("wmtp_jax.configs.critic", "wmtp_jax.pipelines.critic"),
    "verifiable": Entry("wmtp_jax.configs.verifiable", "wmtp_jax.pipelines.verifiable"),
    "rho1": Entry("wmtp_jax.configs.rho1", "wmtp_jax.pipelines.rho1"),
    "ref_tuning": Entry("wmtp_jax.configs.ref_tuning", "wmtp_jax.pipelines.ref_tuning"),
    "evaluation": Entry("wmtp_jax.configs.evaluation", "wmtp_jax.pipelines.evaluation"),
    "experiment": Entry("wmtp_jax.configs.experiment", "wmtp_jax.study.experiment"),
}


class UnknownPipeline(ValueError):
    """A pipeline name the registry does not hold."""


def _entry(name: str) -> Entry:
    if name not in PIPELINES:
        raise UnknownPipeline(f"unknown pipeline {name!r}; one of {', '.join(PIPELINES)}")
    return PIPELINES[name]


def config_module(name: str) -> ModuleType | None:
    """The config module of pipeline `name`, or None when the registry has no such pipeline (a
    pipeline kept outside the package, e.g. the tests' toy one)."""
    if not isinstance(name, str) or name not in PIPELINES:
        return None
    return importlib.import_module(PIPELINES[name].config)


def get_config(name: str, variant: str = "micro"):
    """`get_config(variant)` of pipeline `name`'s config module (UnknownPipeline if none)."""
    return importlib.import_module(_entry(name).config).get_config(variant)


def pipeline_module(name: str) -> ModuleType:
    """The module whose `run(config)` runs pipeline `name` (UnknownPipeline if none)."""
    return importlib.import_module(_entry(name).pipeline)


def run(config):
    """`run(config)` of `config.pipeline`."""
    return pipeline_module(config.pipeline).run(config)
