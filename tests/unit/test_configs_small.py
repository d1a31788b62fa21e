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
    mtp = "warm_start" in c.training  # the MTP policies: warm start + a 16-step fine-tune
    want = (32, 4, 128) if mtp else (4, 2, 256)
    assert (c.training.max_steps, c.training.batch_size, c.dataset.max_length) == want
    if mtp:
        assert (c.training.warm_start.mode, c.training.warm_start.steps) == ("auto", 8)
        if "final_eval" in c:
            assert c.final_eval.probe_limit == 32 and c.final_eval.probe_split == "valid"
        assert len(c.training.head_loss_weights) == parts.SMALL_N_FUTURE
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


def test_warm_start_is_off_by_default_outside_hf_to_mtp_and_keys_are_checked():
    from wmtp_jax.configs.common import ConfigError, validate_config

    for variant in ("micro", "7b"):
        assert baseline.get_config(variant).training.warm_start.mode == "auto"
        assert baseline.get_config(variant).training.head_loss_weights == ()
    for key, value in (
        ("training.warm_start.mode", "sometimes"),
        ("training.warm_start.steps", -1),
        ("training.warm_start.lr_scale", 0.0),
        ("training.head_loss_weights", (0.0, 0.0)),
        ("final_eval.probe_split", "test"),
    ):
        c = baseline.get_config("small")
        with c.unlocked():
            node, leaf = c, key.split(".")
            for k in leaf[:-1]:
                node = node[k]
            node[leaf[-1]] = value
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config(c)
