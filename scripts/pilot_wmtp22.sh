#!/usr/bin/env bash
# The power pilot of the issue-22 study (docs/study.md), on VALIDATION problems only: baseline ×
# seeds 0-3 at three settings of the policy's steps and learning rate, greedy pass@1 on all 250
# validation problems, no critic. The setting with the smallest seed-to-seed spread is the one a
# study aiming at a narrower interval would run. Re-running resumes; each setting is a study dir
# published to docs/results/wmtp22-pilot/<setting> (`python -m wmtp_jax.study.aggregate` on it).
#   nice -n 10 bash scripts/pilot_wmtp22.sh
set -euo pipefail
OUT=${OUT:-storage/experiments/wmtp22-pilot}
PUB=${PUB:-docs/results/wmtp22-pilot}
SEEDS=${SEEDS:-0 1 2 3}
# name max_steps learning_rate  (s600_lr3e-3 is the pre-registered study's setting)
SETTINGS=("s600_lr3e-3 600 0.003" "s1200_lr3e-3 1200 0.003" "s600_lr1e-3 600 0.001")
for s in $SEEDS; do
  for setting in "${SETTINGS[@]}"; do
    read -r name steps lr <<<"$setting"
    python -m wmtp_jax.main --config=configs/experiment.py \
      --config.output_dir="$OUT/$name" --config.publish_dir="$PUB/$name" \
      --config.arms=baseline --config.study_arms=baseline --config.seeds="$s" \
      --config.study_seeds="${SEEDS// /,}" --config.critics=none \
      --config.eval.split=valid --config.eval.temperatures='()' \
      --config.train.policy.max_steps="$steps" --config.train.policy.learning_rate="$lr"
  done
done
