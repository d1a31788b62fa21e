"""Rho-1: a frozen reference (HF-layout LLaMA) selects the top `k_percent` tokens per head by
excess loss; weighted MTP CE on the selection
(the original's configs/{local/rho1_local,production/rho1}.yaml).

    python -m wmtp_jax.main --config=configs/rho1.py    # micro: bootstraps storage/,
                                                        # ref-tunes a micro reference first
    python -m wmtp_jax.main --config=configs/rho1.py:7b
"""

import ml_collections

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("rho1", variant)
    micro = variant != "7b"  # micro and small run on a CPU
    with c.unlocked():
        c.experiment.description = "Rho-1 reference-selected MTP"
        c.models = ml_collections.ConfigDict(
            {
                "policy": parts.policy_entry(variant),
                # an HF-layout llama model dir (load_llama; LoRA factors are merged on load)
                "reference": {
                    "name": "micro-llama-ref" if micro else "ref-sheared-llama-2.7b",
                    "checkpoint_path": parts.reference_output(variant),
                    "dtype": "float32" if micro else "bfloat16",
                },
            }
        )
        parts.add_data(c, variant, use_pairwise=False)
        parts.add_mtp_training(c, variant, batch_7b=128, ga_7b=1)
        t = c.training
        t.k_percent = 0.6 if micro else 0.7
        t.rho1_mode = "signed"
    if variant == "small":
        parts.apply_small(c)
    return finalize(c)


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.MTP_TARGETS)
    parts.validate_mtp_training(c)
    common._check(
        0 < c.training.k_percent <= 1,
        "training.k_percent",
        c.training.k_percent,
        "need 0 < k ≤ 1 (the fraction of valid tokens kept)",
    )
    parts.validate_choice(c.training.rho1_mode, "training.rho1_mode", parts.RHO1_MODES)


def finalize(c):
    validate(c)
    return common.finalize(c)
