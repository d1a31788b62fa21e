"""`:small` configs: the micro pipelines on SmolLM2-135M-Instruct (converted by the bootstrap)."""

import pytest

from configs import baseline, critic, evaluation, parts, ref_tuning, rho1, verifiable


@pytest.mark.parametrize(
    "module,paths",
    [
        (ref_tuning, {"policy": parts.SMALL_LLAMA}),
        (critic, {"value_model": parts.SMALL_LLAMA}),
        (verifiable, {"policy": parts.SMALL_POLICY}),
        (baseline, {"policy": parts.SMALL_POLICY}),
        (rho1, {"policy": parts.SMALL_POLICY}),
    ],
)
def test_small_configs_use_the_converted_model_and_cpu_settings(module, paths):
    c = module.get_config("small")
    assert c.variant == "small" and c.runtime.dtype == "float32"
    for role, path in paths.items():
        assert c.models[role].path == path
    assert (c.training.max_steps, c.training.batch_size, c.dataset.max_length) == (4, 2, 256)
    assert (
        c.dataset.path == parts.MICRO_DATASET and c.training.loss_chunk_size == 0
        if "loss_chunk_size" in c.training
        else True
    )
    assert c.output_dir.endswith(f"{c.pipeline}-small")


def test_small_prerequisites_and_evaluation():
    assert (
        verifiable.get_config("small").models.value_model.path
        == "storage/checkpoints/critic/critic-small/final_model"
    )
    assert (
        rho1.get_config("small").models.reference.path
        == "storage/checkpoints/ref_tuning/ref_tuning-small/final_model"
    )
    e = evaluation.get_config("small")
    assert (e.benchmark, e.prompt_format, e.limit, e.temperature) == ("humaneval", "chat", 5, 0.0)
