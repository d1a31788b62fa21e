"""Compiles and registers the C++ CPU kernels (XLA FFI custom calls) on first use.

`flash_cpu.cc` is compiled with the system C++ compiler (`$CXX`, else `c++`/`g++`) into a cache
directory (`$WMTP_JAX_KERNEL_CACHE`, else `~/.cache/wmtp_jax/kernels`), keyed by a hash of the
source, the flags, the compiler's version, jaxlib's version and the CPU's instruction-set flags
(it is built with `-march=native`). Concurrent processes share one build (a file lock). Without a
compiler the kernels are unavailable and `unavailable()` says why; `WMTP_JAX_CPU_KERNELS=0`
switches them off.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jaxlib

SOURCE = Path(__file__).with_name("flash_cpu.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
TARGETS = {"wmtp_flash_fwd": "WmtpFlashFwd", "wmtp_flash_bwd": "WmtpFlashBwd"}
BUILD_TIMEOUT_S = 300

_state: dict = {}


def compiler() -> str | None:
    """The C++ compiler to use: `$CXX`, else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    root = os.environ.get("WMTP_JAX_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "wmtp_jax" / "kernels"


def _build(cxx: str) -> Path:
    """The compiled library's path (built now unless cached)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join(
            [SOURCE.read_text(), " ".join(FLAGS), version, jaxlib.__version__, _cpu_flags()]
        ).encode()
    ).hexdigest()[:16]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"flash_cpu-{key}.so"
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():
            return lib
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode:
            os.unlink(tmp)
            err = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise RuntimeError(f"{Path(cxx).name} failed to build {SOURCE.name}: {err}")
        os.replace(tmp, lib)
    return lib


def _load() -> str | None:
    """Builds, loads and registers the kernels once; None, or why they are unavailable."""
    if os.environ.get("WMTP_JAX_CPU_KERNELS", "1") == "0":
        return "switched off by WMTP_JAX_CPU_KERNELS=0"
    if platform.system() != "Linux":
        return f"built for Linux only, this is {platform.system()}"
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler found (set $CXX, or install g++)"
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(
                target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
            )
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    _state["lib"] = lib
    return None


def unavailable() -> str | None:
    """None when the CPU kernels are registered (building them on the first call), else a
    one-line reason."""
    if "why" not in _state:
        _state["why"] = _load()
    return _state["why"]
