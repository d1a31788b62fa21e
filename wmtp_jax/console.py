"""What the user sees: a one-line header, progress bars, warnings and the final summary.

Library INFO logs (orbax's option dumps, JAX, our own step logs) go to `<output_dir>/run.log` at
`logging.level`; the console shows WARNING and above, less orbax's tracebacks (a failed save's
threads each log one; the run then ends with one `error:` line). `WMTP_LOG_TO_CONSOLE=1`
restores the old behaviour (everything at `logging.level` on stderr), e.g. for debugging a hang.
"""

from __future__ import annotations

import logging as pylogging
import os
from pathlib import Path

import jax
from absl import logging

_file_handler: pylogging.Handler | None = None


def _not_an_orbax_traceback(record: pylogging.LogRecord) -> bool:
    return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


class _LazyFileHandler(pylogging.FileHandler):
    """Creates the file (and its directory) at the first record, so a run that refuses before
    logging anything (e.g. a busy output_dir) leaves nothing behind."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def route_logs(log_file: str | os.PathLike | None, level: str = "INFO") -> Path | None:
    """Sends log records at `level` to `log_file` (appended) and only warnings to the console.

    Called again with another file, it moves the file handler there. Returns the file path."""
    global _file_handler
    logging.set_verbosity(level.lower())
    if os.environ.get("WMTP_LOG_TO_CONSOLE") == "1":
        return None
    console = logging.get_absl_handler()
    console.setLevel(pylogging.WARNING)
    if _not_an_orbax_traceback not in console.filters:
        console.addFilter(_not_an_orbax_traceback)
    # MLflow prints INFO (database creation, run links) through a stream handler of its own,
    # configured when it is imported: keep its console at WARNING
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    pylogging.getLogger("mlflow").setLevel(pylogging.WARNING)
    root = pylogging.getLogger()
    if _file_handler is not None:
        root.removeHandler(_file_handler)
        _file_handler.close()
        _file_handler = None
    if log_file is None:
        return None
    path = Path(log_file)
    _file_handler = _LazyFileHandler(path, encoding="utf-8", delay=True)
    _file_handler.setLevel(level.upper())
    _file_handler.setFormatter(logging.PythonFormatter())
    root.addHandler(_file_handler)
    return path


def header(config, log_file: Path | None) -> str:
    """`wmtp_jax <pipeline> | <devices> | output <dir> | log <file>` (one line)."""
    devices = jax.devices()
    kinds = sorted({d.platform for d in devices})
    parts = [
        f"wmtp_jax {config.pipeline}",
        f"{len(devices)} {'/'.join(kinds)} device(s)"
        + (f" x {jax.process_count()} processes" if jax.process_count() > 1 else ""),
        f"output {config.output_dir}",
    ]
    if log_file is not None:
        parts.append(f"log {log_file}")
    return " | ".join(parts)
