#!/usr/bin/env bash
# The pre-registered controlled study (docs/results.md), in order of priority; re-running it
# resumes (finished critics, credits and cells are reused). Finished cells' light files land in
# docs/results/wmtp22 (commit them); `python -m wmtp_jax.study.aggregate docs/results/wmtp22`
# rebuilds the table.
#   PRIMARY=verifiable nice -n 10 bash scripts/study_wmtp22.sh
set -euo pipefail
PRIMARY=${PRIMARY:-verifiable}
OUT=${OUT:-storage/experiments/wmtp22}
PUB=${PUB:-docs/results/wmtp22}
OTHERS="ntp,random_weights,oracle,verifiable,verifiable_lambda_mse,verifiable_divergence,verifiable_prefix_mc"
OTHERS=$(echo "$OTHERS" | tr ',' '\n' | grep -vx "$PRIMARY" | paste -sd, -)
CRITICS=ranking,lambda_mse,divergence,prefix_mc
study() {
  python -m wmtp_jax.main --config=configs/experiment.py \
    --config.output_dir="$OUT" --config.publish_dir="$PUB" \
    --config.study_arms="baseline,$PRIMARY,$OTHERS" --config.study_seeds=0,1,2,3,4 "$@"
}
# 1. the primary comparison, seed by seed (every critic's credit on seeds 0-4)
for s in 0 1 2 3 4; do study --config.arms="baseline,$PRIMARY" --config.seeds=$s --config.critics=$CRITICS; done
for s in 5 6 7 8 9; do study --config.arms="baseline,$PRIMARY" --config.seeds=$s --config.critics=ranking; done
# 2. the controls and the other critics, seeds 0-4
for s in 0 1 2 3 4; do study --config.arms="$OTHERS" --config.seeds=$s --config.critics=$CRITICS; done
