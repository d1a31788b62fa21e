"""Performance harness: `python -m wmtp_jax.bench` (see docs/performance.md).

train_step.py times the real jitted train step of the baseline / critic / verifiable pipelines,
decode.py greedy vs self-speculative decoding, flops.py the analytic model FLOPs behind MFU,
plot.py throughput against batch and sequence length. Every result is one JSON line carrying
`machine_info()`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import flax
import jax
import jaxlib


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            != ""
        )
        return {"commit": sha or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info() -> dict:
    """Versions, backend, devices, host CPU and the commit the numbers belong to."""
    devs = jax.devices()
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "device_kind": devs[0].device_kind,
        "device_count": len(devs),
        "process_count": jax.process_count(),
        "cpu_model": _cpu_model(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_cores": os.cpu_count(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        **_commit(),
    }


def append_jsonl(path, row: dict) -> dict:
    """Append `row` (with a timestamp and the current load average) as one JSON line."""
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": list(os.getloadavg()), **row}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    return row
