"""Experiment: the WMTP study (configs/experiment.py; docs/study.md).

For every selected seed: the critic (and, for rho1, the reference) once, the critic credit, then
every selected arm trained from the same initial policy and evaluated on the test split. Each step
is skipped when its result is on disk. results.{json,md,png} are written once every cell of the
grid exists (`python -m wmtp_jax.study.aggregate DIR` writes them at any time). MLflow: one parent
run for the study, the runs of every cell and prerequisite nested under it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from wmtp_jax.configs.common import validate_config
from wmtp_jax.configs.experiment import parse_list
from wmtp_jax.study import cells, report
from wmtp_jax.train.tracking import Tracker


@dataclasses.dataclass
class StudyResult:
    output_dir: Path
    results: dict | None  # None until every cell of the grid exists
    n_done: int
    n_cells: int
    mlflow_run_id: str | None
    seconds: float

    def describe(self) -> str:
        lines = [
            f"study: {self.output_dir} ({self.n_done}/{self.n_cells} cells, this job "
            f"{self.seconds:.0f} s)"
        ]
        if self.results is not None:
            files = (report.RESULTS_JSON, report.RESULTS_MD, report.RESULTS_PNG)
            lines += [
                report.markdown(self.results).rstrip(),
                "results: " + ", ".join(str(self.output_dir / f) for f in files),
            ]
        else:
            lines.append(
                f"the table is written when every cell exists (or now: python -m "
                f"wmtp_jax.study.aggregate {self.output_dir})"
            )
        if self.mlflow_run_id:
            lines.append(f"mlflow: parent run {self.mlflow_run_id}")
        return "\n".join(lines)


def run(config) -> StudyResult:
    validate_config(config)  # again after the command-line overrides
    t0 = time.time()
    out = Path(config.output_dir)
    arms, seeds = parse_list(config.arms, "arms"), parse_list(config.seeds, "seeds", int)
    cells.ensure_storage(config)
    cells.record_study(config)
    with cells.locked(out / ".study.lock"):
        tracker = Tracker(config, out, resume=True)
    parent = tracker.run_id
    cells.say(f"{out}: arms {arms} × seeds {seeds}")
    cells.initial_policy(config)
    for seed in seeds:
        prereq = {"critic": cells.prerequisite(config, "critic", seed, parent)}
        if "rho1" in arms:
            prereq["reference"] = cells.prerequisite(config, "reference", seed, parent)
        cells.run_credit(config, seed, prereq["critic"]["model_dir"])
        for arm in arms:
            cells.run_cell(config, arm, seed, prereq, parent)
    res = report.aggregate(out, write=None)  # the table once every cell of the grid exists
    n_cells = len(res["grid"]["arms"]) * len(res["grid"]["seeds"])
    n_done = n_cells - len(res["missing"])
    if res["complete"]:
        flat = {
            f"{a}/{m.replace('@', '_at_')}": r[m]["mean"]
            for a, r in res["arms"].items()
            for m in r
            if m.startswith(("pass@", "sampled_pass@"))
        }
        if res.get("critic_credit"):
            flat["critic_credit/auroc"] = res["critic_credit"]["auroc"]
        tracker.log_metrics(flat, step=0)
        tracker.log_artifact(out / report.RESULTS_JSON)
        tracker.log_artifact(out / report.RESULTS_MD)
        tracker.log_artifact(out / report.RESULTS_PNG)
    tracker.end("FINISHED")
    return StudyResult(
        out, res if res["complete"] else None, n_done, n_cells, parent, time.time() - t0
    )
