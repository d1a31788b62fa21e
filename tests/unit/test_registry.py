"""The one registry of pipelines: every config file is registered under its own name, every
entry resolves, unknown names are refused, and a prerequisite announces itself on the console."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from wmtp_jax import registry
from wmtp_jax.pipelines import bootstrap

CONFIGS = Path(registry.__file__).parent / "configs"


def test_every_pipeline_config_file_is_registered():
    files = {p.stem for p in CONFIGS.glob("*.py")} - {"__init__", "common", "parts"}
    assert files == set(registry.PIPELINES)


@pytest.mark.parametrize("name", sorted(registry.PIPELINES))
def test_entry_resolves_to_its_config_and_a_run(name):
    assert registry.get_config(name, "micro").pipeline == name
    assert registry.config_module(name).__name__ == registry.PIPELINES[name].config
    assert callable(registry.pipeline_module(name).run)


def test_unknown_pipeline_is_refused_naming_the_choices():
    with pytest.raises(registry.UnknownPipeline, match="unknown pipeline 'nope'; one of baseline"):
        registry.pipeline_module("nope")
    assert registry.config_module("nope") is None and registry.config_module(None) is None


def test_prerequisite_is_announced_in_one_console_line_before_it_runs(
    monkeypatch, capsys, tmp_path
):
    parent = registry.get_config("verifiable", "micro")
    seen = []

    def fake_run(cfg):
        seen.append(capsys.readouterr().out)  # what the console showed before the run started
        out = tmp_path / "critic"
        return SimpleNamespace(
            status="completed",
            step=1,
            output_dir=out,
            checkpoint_dir=out,
            best_dir=None,
            metrics_file=out / "metrics.jsonl",
            mlflow_run_id=None,
            mlflow_tracking_uri="",
            metrics={},
        )

    monkeypatch.setattr(registry, "run", fake_run)
    got = bootstrap._run_prerequisite("critic", "critic", parent)
    assert got == tmp_path / "critic" / "final_model"
    lines = seen[0].splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("[bootstrap] verifiable needs the micro critic: training it first")
    assert "(critic config, " in lines[0]
