#!/usr/bin/env bash
# The 7b compile runs behind docs/scaling.md: one `python -m wmtp_jax.compile` per line of the
# queue file given ("<pipeline> <topology> <name> [extra args...]"), JSON and console output
# under docs/scaling/. Runs on a CPU-only host (libtpu from the dev extra); minutes per line.
set -uo pipefail
queue="$1"
out="${2:-docs/scaling}"
mkdir -p "$out"
while read -r pipeline topo name rest; do
  [ -z "$pipeline" ] && continue
  case "$pipeline" in \#*) continue ;; esac
  echo "== $pipeline $topo $name $rest ($(date -u +%H:%M:%S))"
  # shellcheck disable=SC2086
  python -m wmtp_jax.compile --config="configs/$pipeline.py:7b" --topology="$topo" \
    --out="$out/$name.json" $rest > "$out/$name.txt" 2> "$out/$name.err"
  echo "   exit $? ($(date -u +%H:%M:%S))"
done < "$queue"
