#!/usr/bin/env bash
# The power pilot of the issue-22 study (docs/study.md), on VALIDATION problems only: baseline
# seeds at three settings of the policy's steps and learning rate, greedy pass@1 on all 250
# validation problems, no critic. A setting with a smaller seed-to-seed spread is one a study
# aiming at a narrower interval would run. Re-running resumes; each setting is a study dir
# published to docs/results/wmtp22-pilot/<setting> (`python -m wmtp_jax.study.aggregate` on it).
#   nice -n 10 bash scripts/pilot_wmtp22.sh
# The pre-registered setting's baseline models already exist in the study dir for the seeds it
# has run: they are reused (training is deterministic and the evaluation split does not enter
# it), so that setting costs one validation pass per seed.
set -euo pipefail
STUDY=${STUDY:-storage/experiments/wmtp22}
OUT=${OUT:-storage/experiments/wmtp22-pilot}
PUB=${PUB:-docs/results/wmtp22-pilot}
# name max_steps learning_rate seeds  (s600_lr3e-3 is the pre-registered study's setting)
SETTINGS=(
  "s600_lr3e-3 600 0.003 4,5,6,7,8,9"
  "s1200_lr3e-3 1200 0.003 4,5,6"
  "s600_lr1e-3 600 0.001 4,5,6"
)
for setting in "${SETTINGS[@]}"; do
  read -r name steps lr seeds <<<"$setting"
  for s in ${seeds//,/ }; do
    cell="$OUT/$name/seed_$s/baseline"
    done_file="$STUDY/seed_$s/baseline/train_done.json"
    if [ "$name" = s600_lr3e-3 ] && [ -f "$done_file" ] && [ ! -f "$cell/train_done.json" ]; then
      mkdir -p "$cell"
      cp "$STUDY/seed_$s/baseline/metrics.jsonl" "$cell/"
      # the study's model, evaluated here; its MLflow run stays the study's (not logged into)
      python - "$done_file" "$cell" <<'PY'
import json, sys
from pathlib import Path
info = json.loads(Path(sys.argv[1]).read_text())
info.update(mlflow_run_id=None, metrics_file=f"{sys.argv[2]}/metrics.jsonl", reused=sys.argv[1])
Path(sys.argv[2], "train_done.json").write_text(json.dumps(info, indent=2) + "\n")
PY
    fi
    python -m wmtp_jax.main --config=configs/experiment.py \
      --config.output_dir="$OUT/$name" --config.publish_dir="$PUB/$name" \
      --config.arms=baseline --config.study_arms=baseline --config.seeds="$s" \
      --config.study_seeds="$seeds" --config.critics=none \
      --config.eval.split=valid --config.eval.temperatures='()' \
      --config.train.policy.max_steps="$steps" --config.train.policy.learning_rate="$lr"
  done
done
