#!/usr/bin/env bash
# The test command (README quickstart, .ci/run): installs what it needs, then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -k rope`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
WORKERS="${WMTP_TEST_WORKERS:-2}"
echo "[test] ruff check + ruff format --check" >&2
ruff check --quiet .
ruff format --check --quiet .
set +e
python -m pytest -n "$WORKERS" --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): treating as failure" >&2
  exit 1
fi
exit "$rc"
