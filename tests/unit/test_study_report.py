"""The study report from committed light files: every study under docs/results re-aggregates to
its committed results.md / results.json byte for byte (what a fresh clone's `python -m
wmtp_jax.study.aggregate docs/results/<study>` prints), and the cells a study asked for
(study.json `cells`) decide what is missing: extra seeds for some arms do not make the other
arms incomplete."""

import json
import shutil
from pathlib import Path

import pytest

from wmtp_jax.configs import experiment
from wmtp_jax.study import cells, report

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
STUDIES = sorted(str(p.parent.relative_to(RESULTS)) for p in RESULTS.glob("**/study.json"))


@pytest.mark.parametrize("name", STUDIES)
def test_committed_study_reaggregates_to_its_committed_table(tmp_path, name):
    src = RESULTS / name
    out = tmp_path / name
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("results.*"))
    report.aggregate(out, write=True)
    assert (out / "results.md").read_text() == (src / "results.md").read_text()
    got, want = (json.loads((d / "results.json").read_text()) for d in (out, src))
    # numbers to 1e-9 relative: numpy's summation order may differ with another CPU's SIMD width
    assert got == _approx(want)


def _approx(x):
    if isinstance(x, dict):
        return {k: _approx(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_approx(v) for v in x]
    if isinstance(x, float):
        return pytest.approx(x, rel=1e-9, abs=1e-12)
    return x


def _study_dir(tmp_path, cells_asked):
    out = tmp_path / "study"
    src = RESULTS / "wmtp22"
    out.mkdir(parents=True)
    for s in (0, 5):
        for arm in ("baseline", "verifiable"):
            shutil.copytree(src / f"seed_{s}" / arm, out / f"seed_{s}" / arm)
    study = json.loads((src / "study.json").read_text())
    study.update(arms=["baseline", "verifiable", "ntp"], seeds=[0, 5])
    if cells_asked is None:
        study.pop("cells")
    else:
        study["cells"] = cells_asked
    (out / "study.json").write_text(json.dumps(study))
    return out


def test_missing_counts_only_the_cells_asked_for(tmp_path):
    asked = [["baseline", 0], ["baseline", 5], ["verifiable", 0], ["verifiable", 5], ["ntp", 0]]
    res = report.aggregate(_study_dir(tmp_path / "a", asked), write=False)
    assert res["missing"] == ["ntp/seed_0"] and not res["complete"]
    res = report.aggregate(_study_dir(tmp_path / "b", asked[:4]), write=False)
    assert res["missing"] == [] and res["complete"]
    assert res["paired"]["verifiable-baseline"]["seeds"] == [0, 5]
    # a study.json from before `cells`: every arm × every seed
    res = report.aggregate(_study_dir(tmp_path / "c", None), write=False)
    assert res["missing"] == ["ntp/seed_0", "ntp/seed_5"]


def test_record_study_unions_the_cells_of_every_job(tmp_path):
    c = experiment.get_config("smoke")
    c.output_dir = str(tmp_path)
    c.study_arms, c.study_seeds, c.arms, c.seeds = "baseline,verifiable", "0", "baseline", "1"
    cells.record_study(c)
    c.arms, c.seeds = "ntp", "2"
    cells.record_study(c)
    got = json.loads((tmp_path / cells.STUDY_FILE).read_text())
    assert got["cells"] == [["baseline", 0], ["baseline", 1], ["verifiable", 0], ["ntp", 2]]
    assert got["arms"] == ["baseline", "verifiable", "ntp"] and sorted(got["seeds"]) == [0, 1, 2]


def test_contrasts_pair_the_method_with_ntp_and_the_oracle_with_the_method(tmp_path):
    out = _study_dir(tmp_path, [["baseline", 0], ["baseline", 5], ["verifiable", 0]])
    res = report.aggregate(out, write=False)
    assert "contrasts" not in res  # neither ntp nor oracle: earlier reports stay unchanged
    # ntp := a copy of baseline's cells, so verifiable − ntp is verifiable − baseline exactly
    for s in (0, 5):
        shutil.copytree(out / f"seed_{s}" / "baseline", out / f"seed_{s}" / "ntp")
        f = out / f"seed_{s}" / "ntp" / cells.CELL_FILE
        f.write_text(json.dumps({**json.loads(f.read_text()), "arm": "ntp"}))
    res = report.aggregate(out, write=True)
    got, want = res["contrasts"]["verifiable-ntp"], res["paired"]["verifiable-baseline"]
    assert list(res["contrasts"]) == ["verifiable-ntp"] and got["seeds"] == [0, 5]
    # committed cells: verifiable 0.244 / 0.548, baseline 0.360 / 0.280 greedy pass@1
    assert got["delta"] == pytest.approx((0.244 + 0.548) / 2 - (0.360 + 0.280) / 2)
    assert got == want
    assert "| verifiable-ntp | 2 | 0.076 [" in (out / "results.md").read_text()
