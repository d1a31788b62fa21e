"""Rho-1: a frozen reference (HF-layout LLaMA) selects the top `k_percent` tokens per head by
excess loss; weighted MTP CE on the selection
(the original's configs/{local/rho1_local,production/rho1}.yaml).

    python -m wmtp_jax.main --config=configs/rho1.py    # micro: bootstraps storage/,
                                                        # ref-tunes a micro reference first
    python -m wmtp_jax.main --config=configs/rho1.py:7b
"""

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro"):
    common.check_variant(variant)
    reference = {
        "micro": "micro-llama-ref",
        "small": "smollm2-135m-ref",
        "7b": "ref-sheared-llama-2.7b",
    }[variant]
    return common.build(
        "rho1",
        variant,
        "Rho-1 reference-selected MTP",
        {
            "models": {
                "policy": parts.policy_entry(variant),
                # an HF-layout llama model dir (load_llama; LoRA factors are merged on load)
                "reference": {
                    "name": reference,
                    "path": parts.reference_output(variant),
                    "dtype": parts.frozen_dtype(variant),
                },
            }
        },
        parts.data(variant, use_pairwise=False, mtp_policy=True),
        parts.mtp_training(variant, batch_7b=128, ga_7b=1),
        {"training": {"k_percent": 0.7 if variant == "7b" else 0.6, "rho1_mode": "signed"}},
    )


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
