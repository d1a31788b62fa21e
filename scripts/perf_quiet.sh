#!/usr/bin/env bash
# The issue-16 measurements on a quiet machine, into one log under storage/perf/:
#   uptime; the torch-bar train step vs the PyTorch original (cpu_flash, blockwise and xla
#   attention),
#   3 runs alternated; the attention sweep S=256,1024,2048,4096 next to torch SDPA; uptime.
# Run it when nothing else runs (check `uptime` first: the 1-minute load average should be
# well under 1); the log names the load average before and after every command.
#   bash scripts/perf_quiet.sh            # ~15-30 min on a 2-core host
#   STEPS=20 WARMUP=3 bash scripts/perf_quiet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-$(nproc)}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
DIR=storage/perf
mkdir -p "$DIR"
LOG=$DIR/perf_quiet_$STAMP.log
JSONL=$DIR/perf_quiet_$STAMP.jsonl
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
run() {
    echo "+ $*" | tee -a "$LOG"
    echo "uptime before: $(uptime)" | tee -a "$LOG"
    { "$@" 2>&1 || echo "exit code $?"; } | tee -a "$LOG"  # a failing command: noted, go on
    echo "uptime after:  $(uptime)" | tee -a "$LOG"
}
{
    echo "perf_quiet $STAMP, git $(git rev-parse --short HEAD), $(nproc) cores"
    python -c "import jax, torch; print('jax', jax.__version__, 'torch', torch.__version__)"
    echo "XLA_FLAGS=${XLA_FLAGS:-}"
} | tee -a "$LOG"
for i in 1 2 3; do
    # the three steps compiled once per run; within a run the jax and torch steps alternate
    run python -m wmtp_jax.bench --compare-torch --preset torch-bar \
        --attention-impl cpu_flash,blockwise,xla --threads "$THREADS" \
        --steps "$STEPS" --warmup "$WARMUP" --out "$JSONL"
done
# an implementation whose compiled program would not fit is reported as skipped (needs X GiB)
run python -m wmtp_jax.bench --attention --attention-seq 256,1024,2048,4096 \
    --threads "$THREADS" --steps "$STEPS" --warmup 1 --out "$JSONL"
echo "log: $LOG, rows: $JSONL" | tee -a "$LOG"
