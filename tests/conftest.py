"""Test-wide settings: CPU JAX with 8 fake devices (sharded tests), float32 parity precision."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent XLA cache for the whole run: CLI subprocesses that compile the same train/eval
# programs (resume, prerequisites, repeated micro runs) reuse them instead of recompiling.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/wmtp_jax_test_jax_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
