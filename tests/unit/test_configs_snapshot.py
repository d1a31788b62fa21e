"""Every pipeline config, every variant: the printed resolved config (`str(config)`, the YAML the
ConfigDict prints) and each key's field type (what a `--config.<key>=` override is parsed as)
equal the snapshot in tests/fixtures/configs/<pipeline>_<variant>.txt.

After a deliberate config change: `WMTP_UPDATE_CONFIG_SNAPSHOTS=1 python -m pytest
tests/unit/test_configs_snapshot.py`, then review the diff of the fixtures.
"""

import os
from pathlib import Path

import ml_collections
import pytest

from wmtp_jax.configs import baseline, critic, evaluation, experiment, ref_tuning, rho1, verifiable

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "configs"
TRAINING_VARIANTS = ("micro", "small", "7b")
CASES = [
    (module, variant)
    for module in (baseline, critic, evaluation, ref_tuning, rho1, verifiable)
    for variant in TRAINING_VARIANTS
] + [(experiment, v) for v in experiment.VARIANTS]


def field_types(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """`<key path>: <field type>` for every leaf, sorted by key."""
    out = []
    for key in sorted(c.keys()):
        value = c[key]
        if isinstance(value, ml_collections.ConfigDict):
            out += field_types(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {c.get_type(key).__name__}")
    return out


def render(c: ml_collections.ConfigDict) -> str:
    return str(c) + "# field types\n" + "\n".join(field_types(c)) + "\n"


@pytest.mark.parametrize(
    "module,variant", CASES, ids=[f"{m.__name__.split('.')[-1]}-{v}" for m, v in CASES]
)
def test_resolved_config_is_unchanged(module, variant):
    name = module.__name__.split(".")[-1]
    path = FIXTURES / f"{name}_{variant}.txt"
    got = render(module.get_config(variant))
    if os.environ.get("WMTP_UPDATE_CONFIG_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert got == path.read_text(encoding="utf-8")


def test_every_pipeline_config_is_covered():
    """A new pipeline needs its snapshot."""
    from wmtp_jax import registry

    assert set(registry.PIPELINES) == {m.__name__.split(".")[-1] for m, _ in CASES}


def test_a_key_is_set_once():
    """Tables join into one config; a key given by two tables is refused."""
    from wmtp_jax.configs import common

    assert common.merge({"a": {"b": 1}}, {"a": {"c": 2}, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(ValueError, match="config key a.b is set twice"):
        common.merge({"a": {"b": 1}}, {"a": {"b": 1}})
