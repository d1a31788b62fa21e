"""Entry point: `python -m wmtp_jax.main --config=configs/<pipeline>.py[:variant] [--config.k=v ...]`.

Dispatches on `config.pipeline` to `wmtp_jax.pipelines.<name>.run(config)` (a dotted module
path, e.g. "tests.train_toy", is imported as is). Unknown config keys are rejected by the locked
config; bad values by `configs.common.validate_config`; both exit non-zero naming the key.
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pipeline config file: configs/<pipeline>.py[:micro|:7b]", lock_config=True)


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def load_pipeline(name: str):
    module = name if "." in name else f"wmtp_jax.pipelines.{name}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            _fail(f"config.pipeline={name!r}: no pipeline module {module!r}")
        raise
    if not hasattr(mod, "run"):
        _fail(f"config.pipeline={name!r}: module {module!r} has no run(config)")
    return mod


def summary(result) -> str:
    """Where the outputs are (printed at the end of a run)."""
    if result is None or not hasattr(result, "output_dir"):
        return f"result: {result}"
    lines = [f"status: {result.status} at step {result.step}",
             f"checkpoint: {result.checkpoint_dir}"]
    if result.best_dir:
        lines.append(f"best checkpoint: {result.best_dir}")
    if (result.output_dir / "final_model").exists():
        lines.append(f"final model: {result.output_dir / 'final_model'}")
    lines.append(f"metrics: {result.metrics_file}")
    if result.mlflow_run_id:
        lines.append(f"mlflow: run {result.mlflow_run_id} in {result.mlflow_tracking_uri} "
                     f"(mlflow ui --backend-store-uri {result.mlflow_tracking_uri})")
    keys = [k for k in ("train/loss", "val/loss") if k in result.metrics]
    if keys:
        lines.append("final: " + ", ".join(f"{k}={result.metrics[k]:.4f}" for k in keys))
    return "\n".join(lines)


def enable_compilation_cache(directory: str) -> None:
    """Persist compiled XLA programs under `directory` ("" = off; JAX_COMPILATION_CACHE_DIR wins)."""
    import os

    import jax

    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))


def check_attention(implementation: str) -> None:
    """Log the configured attention; exit 2 when it cannot run on this backend (cudnn on CPU)."""
    import jax

    from wmtp_jax.ops.attention import check_backend

    try:
        check_backend(implementation)
    except ValueError as e:
        _fail(str(e))
    logging.info("attention: runtime.attention=%s on backend %s (the choice per shape is logged "
                 "when the step is traced)", implementation, jax.default_backend())


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        _fail("--config=configs/<pipeline>.py[:variant] is required")
    from configs.common import validate_config

    try:
        validate_config(config)
    except ValueError as e:
        _fail(str(e))
    logging.set_verbosity(str(config.logging.level).lower())

    from wmtp_jax.train.distributed import maybe_initialize

    maybe_initialize(config)
    enable_compilation_cache(config.runtime.get("compilation_cache", ""))
    check_attention(config.runtime.get("attention", "auto"))
    pipeline = load_pipeline(config.pipeline)
    from wmtp_jax.train.loop import NonFiniteLossError

    try:
        result = pipeline.run(config)
    except NonFiniteLossError as e:
        _fail(str(e))
    import jax

    if jax.process_index() == 0:
        print(summary(result), flush=True)


def _parse_flags(argv):
    """absl flag parsing with a one-line error for an unknown `--config.<key>` override."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        name = str(e).strip("\"'")
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and name in a.split("=")[0].split(".")]
        _fail(f"unknown config key {bad[0][2:] if bad else name!r} (configs are locked; "
              f"see the pipeline's config file)")


def run():
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
