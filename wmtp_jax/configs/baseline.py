"""Baseline: uniform MTP cross entropy (the original's
configs/{local/baseline_local,production/baseline}.yaml).

    python -m wmtp_jax.main --config=configs/baseline.py            # micro (bootstraps storage/)
    python -m wmtp_jax.main --config=configs/baseline.py:7b         # Meta MTP 7B, LoRA r64
"""

import ml_collections

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("baseline", variant)
    with c.unlocked():
        c.experiment.description = "uniform-weight MTP baseline"
        c.models = ml_collections.ConfigDict({"policy": parts.policy_entry(variant)})
        parts.add_data(c, variant, use_pairwise=False)
        parts.add_mtp_training(c, variant, batch_7b=48, ga_7b=2)
        parts.add_loss_chunking(c, variant)
        parts.add_final_eval(c, variant, enabled=variant == "small")
    if variant == "small":
        parts.apply_small(c)
    return finalize(c)


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.MTP_TARGETS)
    parts.validate_mtp_training(c)


def finalize(c):
    validate(c)
    return common.finalize(c)
