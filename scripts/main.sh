#!/usr/bin/env bash
# The main job (README quickstart): installs what it needs, then runs
#   python -m wmtp_jax.main --config=configs/verifiable.py  (micro variant, embedded default)
# Arguments replace the default config, e.g. `bash scripts/main.sh --config=configs/baseline.py:micro`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
if [ "$#" -eq 0 ]; then set -- --config=configs/verifiable.py; fi
exec python -m wmtp_jax.main "$@"
