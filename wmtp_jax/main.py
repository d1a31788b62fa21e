"""Entry point.

`python -m wmtp_jax.main --config=configs/<pipeline>.py[:variant] [--config.k=v ...]`.

Dispatches on `config.pipeline` to its registered module's `run(config)` (wmtp_jax.registry);
`cli(pipeline)` / `run(config, pipeline)` run another module's `run(config)` the same way (a
pipeline kept outside the package, e.g. the tests' toy one). Config errors exit 2 with one line
naming the problem: a missing config file, an unknown variant, an unknown key (the config is
locked), a value of the wrong type, a bad value (`configs.common.validate_config`), an unknown
pipeline. So do the run's refusals (busy output_dir, a checkpoint that does not fit, no readable
checkpoint, a NaN loss, bad training data: `DataError` naming file:line). A failed checkpoint
save exits 1 with one line at once (`abandon`).
"""

from __future__ import annotations

import functools
import logging as pylogging
import os
import sys
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from wmtp_jax import configs as _configs_package
from wmtp_jax import console, registry
from wmtp_jax.configs.common import ConfigError, validate_config
from wmtp_jax.data.records import DataError
from wmtp_jax.ops.attention import check_backend
from wmtp_jax.train.checkpoint import (
    CheckpointSaveError,
    CorruptCheckpoint,
    IncompatibleCheckpoint,
)
from wmtp_jax.train.distributed import maybe_initialize
from wmtp_jax.train.lock import OutputDirBusy, release_all
from wmtp_jax.train.loop import NonFiniteLossError
from wmtp_jax.train.xla_flags import apply_cpu_defaults

PACKAGED_CONFIGS = Path(_configs_package.__file__).parent

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pipeline config file: configs/<pipeline>.py[:micro|:7b]", lock_config=True
)


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def abandon(msg: str, code: int = 1) -> None:
    """Print `error: msg`, drop the output_dir locks, flush the logs and end the process now.

    After a failed checkpoint save orbax's non-daemon save threads wait for their failed peer
    (up to orbax's 300 s barrier timeout) and would run during interpreter shutdown: nothing is
    left to save, so the process does not join them."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    release_all()
    pylogging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def load_pipeline(name: str):
    """The registered pipeline module of `name` (wmtp_jax.registry; exit 2 when there is none)."""
    try:
        return registry.pipeline_module(name)
    except registry.UnknownPipeline as e:
        _fail(f"config.pipeline={name!r}: {e}")


def summary(result) -> str:
    """Where the outputs are (printed at the end of a run)."""
    if callable(getattr(result, "describe", None)):
        return result.describe()
    if isinstance(result, dict) and "benchmark" in result:  # an evaluation summary
        scores = ", ".join(
            f"{k} {v:.4f}" for k, v in result.items() if k.startswith("pass@") or k == "accuracy"
        )
        return "\n".join(
            [
                f"{result['benchmark']} {result['split']}: {scores} "
                f"({result['n_problems']} problems, "
                f"temperature {result['temperature']:g}, "
                f"sandbox {result.get('sandbox', {}).get('policy', 'n/a')})",
                f"outputs: {result['output_dir']} (samples.jsonl, results.jsonl, summary.json)",
            ]
        )
    if result is None or not hasattr(result, "output_dir"):
        return f"result: {result}"
    lines = [
        f"status: {result.status} at step {result.step}",
        f"checkpoint: {result.checkpoint_dir}",
    ]
    if result.best_dir:
        lines.append(f"best checkpoint: {result.best_dir}")
    if (result.output_dir / "final_model").exists():
        lines.append(f"final model: {result.output_dir / 'final_model'}")
    lines.append(f"metrics: {result.metrics_file}")
    if result.mlflow_run_id:
        lines.append(
            f"mlflow: run {result.mlflow_run_id} in {result.mlflow_tracking_uri} "
            f"(mlflow ui --backend-store-uri {result.mlflow_tracking_uri})"
        )
    keys = [k for k in ("train/loss", "val/loss") if k in result.metrics]
    if keys:
        lines.append("final: " + ", ".join(f"{k}={result.metrics[k]:.4f}" for k in keys))
    ev = getattr(result, "evaluation", None)
    if ev:
        lines.append(
            f"pass@1 (greedy, {ev['benchmark']} {ev['split']}, {ev['n_problems']} "
            f"problems): initial policy {ev['initial_pass@1']:.3f} -> trained "
            f"{ev['pass@1']:.3f}"
        )
    return "\n".join(lines)


def enable_compilation_cache(directory: str) -> None:
    """Persist compiled XLA programs under `directory`.

    "" = off; JAX_COMPILATION_CACHE_DIR wins.
    """
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))


def check_attention(implementation: str) -> None:
    """Exit 2 when the configured attention cannot run on this backend (cudnn on CPU); `fit`
    logs the setting, and the choice per shape is logged when a step is traced."""
    try:
        check_backend(implementation)
    except ValueError as e:
        _fail(str(e))


def main(argv, pipeline=None):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    try:
        config = _CONFIG.value
    except Exception as e:  # noqa: BLE001 -- ml_collections reports a failed load lazily
        _fail(f"--config: {_last_line(e)}")
    if config is None:
        _fail("--config=configs/<pipeline>.py[:variant] is required")
    try:
        run(config, pipeline)
    except CheckpointSaveError as e:
        abandon(str(e))


def run(config, pipeline=None):
    """Run `pipeline.run(config)` as the command line does (`pipeline`: a module with
    `run(config)`; default the registered module of `config.pipeline`): validate the config, set the
    log level, join a multi-process run, route library logs to `<output_dir>/run.log`, print the
    header, run, print the summary. Config errors and the run's refusals exit 2 with one line."""
    apply_cpu_defaults()  # before the first computation (docs/performance_step.md)
    try:
        validate_config(config)
    except ValueError as e:
        _fail(str(e))
    level = str(config.logging.level)
    console.route_logs(None, level)  # the console shows warnings only, from here on
    try:
        maybe_initialize(config)
    except ValueError as e:
        _fail(str(e))
    out = str(config.output_dir)
    name = "run.log" if jax.process_index() == 0 else f"run.{jax.process_index()}.log"
    log_file = console.route_logs(os.path.join(out, name) if out and out != "auto" else None, level)
    if jax.process_index() == 0:
        print(console.header(config, log_file), flush=True)
    enable_compilation_cache(config.runtime.get("compilation_cache", ""))
    check_attention(config.runtime.get("attention", "auto"))
    pipeline = pipeline if pipeline is not None else load_pipeline(config.pipeline)
    try:
        result = pipeline.run(config)
    except (
        NonFiniteLossError,
        OutputDirBusy,
        IncompatibleCheckpoint,
        CorruptCheckpoint,
        ConfigError,
        DataError,
    ) as e:
        _fail(str(e))
    if jax.process_index() == 0:
        print(summary(result), flush=True)
    return result


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _config_arg(argv) -> int | None:
    """Index in argv of the `--config` value (`--config=V` or `--config V`)."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return i
        if a == "--config" and i + 1 < len(argv):
            return i + 1
    return None


def resolve_config_file(path: str) -> str:
    """`path`, or, when no such file exists, the packaged config of that name: so
    `--config=configs/baseline.py` works from any directory once wmtp_jax is installed."""
    if os.path.isfile(path):
        return path
    packaged = PACKAGED_CONFIGS / os.path.basename(path)
    if os.path.dirname(path) in ("configs", "wmtp_jax/configs") and packaged.is_file():
        return str(packaged)
    return path


def _parse_flags(argv):
    """absl flag parsing; config errors (file, variant, key, value type) exit 2 with one line."""
    i = _config_arg(argv)
    if i is not None:
        prefix, value = (
            ("--config=", argv[i][len("--config=") :])
            if argv[i].startswith("--config=")
            else ("", argv[i])
        )
        file, _, variant = value.partition(":")
        file = resolve_config_file(file)
        if not os.path.isfile(file):
            _fail(f"--config: no config file {file!r}")
        argv = [*argv[:i], prefix + file + (":" + variant if variant else ""), *argv[i + 1 :]]
    try:
        return flags.FLAGS(argv)
    except flags.IllegalFlagValueError as e:  # bad variant, wrong value type, get_config error
        _fail(_last_line(e) if "Error whilst parsing config file" in str(e) else str(e))
    except (AttributeError, KeyError) as e:
        name = str(e).strip("\"'")
        bad = [
            a.split("=")[0]
            for a in argv
            if a.startswith("--config.") and name in a.split("=")[0].split(".")
        ]
        _fail(
            f"unknown config key {bad[0][2:] if bad else name!r} (configs are locked; "
            f"see the pipeline's config file)"
        )


def cli(pipeline=None):
    """`python -m wmtp_jax.main`; `pipeline`: a module whose `run(config)` is run instead of
    `config.pipeline`'s (a pipeline's own `__main__`, e.g. `python -m tests.train_toy`)."""
    app.run(functools.partial(main, pipeline=pipeline), flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
