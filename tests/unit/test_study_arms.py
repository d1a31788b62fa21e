"""The study's arms differ from baseline only in their weighting (configs.experiment.ARM_SPECS)."""

import pytest

from wmtp_jax.configs import experiment
from wmtp_jax.study import cells


@pytest.fixture(scope="module")
def study():
    c = experiment.get_config("micro")
    c.arms = ",".join(experiment.ARMS)
    return c


def test_every_arm_shares_the_policy_data_and_steps(study):
    base = cells.arm_config(study, "baseline", 3)
    for arm in experiment.ARMS:
        c = cells.arm_config(study, arm, 3, critic="/crit", reference="/ref")
        assert c.models.policy.path == base.models.policy.path, arm
        assert (c.seed, c.data_sampling.seed) == (3, 3), arm
        for k in ("max_steps", "batch_size", "learning_rate"):
            assert c.training[k] == base.training[k], (arm, k)
        assert c.dataset.path == base.dataset.path


def test_arm_specific_settings(study):
    assert cells.arm_config(study, "ntp", 0).training.loss_heads == 1
    assert cells.arm_config(study, "baseline", 0).training.loss_heads == 0
    o = cells.arm_config(study, "oracle", 0, critic="/c")
    assert o.weighting.control == "oracle" and o.weighting.oracle_ratio == study.oracle_ratio
    r = cells.arm_config(study, "random_weights", 0, critic="/c")
    assert r.weighting.control == "permute" and r.models.value_model.path == "/c"
    assert cells.arm_config(study, "verifiable", 0, critic="/c").weighting.control == "none"
    assert cells.arm_critic(study, "random_weights") == study.control_critic
    assert cells.arm_critic(study, "verifiable_prefix_mc") == "prefix_mc"
    assert cells.arm_critic(study, "baseline") is None


def test_critics_needed_and_dirs(study):
    s = experiment.get_config("smoke")
    assert s.critics == "ranking"
    assert cells.critics_needed(s, ["baseline", "verifiable_divergence"]) == [
        "ranking",
        "divergence",
    ]
    assert cells.critic_role("ranking") == "critic"
    assert cells.credit_dir("o", 1, "prefix_mc").as_posix() == "o/seed_1/credit_prefix_mc"


def test_bad_critic_names_the_key():
    c = experiment.get_config("smoke")
    c.critics = "ranking,nope"
    with pytest.raises(ValueError, match="critics"):
        experiment.validate(c)
