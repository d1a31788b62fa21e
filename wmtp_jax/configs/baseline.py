"""Baseline: uniform MTP cross entropy (the original's
configs/{local/baseline_local,production/baseline}.yaml).

    python -m wmtp_jax.main --config=configs/baseline.py            # micro (bootstraps storage/)
    python -m wmtp_jax.main --config=configs/baseline.py:7b         # Meta MTP 7B, LoRA r64
"""

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro"):
    common.check_variant(variant)
    return common.build(
        "baseline",
        variant,
        "uniform-weight MTP baseline",
        {"models": {"policy": parts.policy_entry(variant)}},
        parts.data(variant, use_pairwise=False, mtp_policy=True),
        parts.mtp_training(variant, batch_7b=48, ga_7b=2),
        parts.loss_chunking(variant),
        # heads the CE trains: 0 = all K (MTP); 1 = next-token CE on head 0 only, the same trunk
        # (the study's `ntp` control: heads 1..K-1 get no gradient and decoding uses head 0)
        {"training": {"loss_heads": 0}},
        parts.final_eval(variant, enabled=variant == "small"),
    )


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.MTP_TARGETS)
    parts.validate_loss_chunking(c)
    common._check(
        c.training.loss_heads >= 0, "training.loss_heads", c.training.loss_heads, "need ≥ 0"
    )
    parts.validate_mtp_training(c)
