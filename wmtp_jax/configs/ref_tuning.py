"""Ref-tuning: NTP SFT of the HF-layout LLaMA that rho1 uses as its reference
(the original's configs/{local/ref_tuning_local,production/ref_tuning}.yaml;
`models.policy` is the HF model).

    python -m wmtp_jax.main --config=configs/ref_tuning.py          # micro llama (bootstraps)
    python -m wmtp_jax.main --config=configs/ref_tuning.py:7b       # Sheared-LLaMA-2.7B, LoRA r32
The tuned model is exported to `<output_dir>/final_model` (load_llama), rho1's default reference.
"""

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro"):
    common.check_variant(variant)
    if variant == "7b":  # LoRA r32
        training = common.schedule(
            variant,
            max_steps=-1,
            batch_size=96,
            gradient_accumulation_steps=1,
            learning_rate=5e-5,
            eval_every_steps=200,
            warmup_ratio=0.03,
            min_lr_ratio=0.005,
            checkpoint_every_steps=200,
            save_lora_only=False,
        )
    else:  # full fine-tuning
        training = parts.cpu_schedule(variant, max_steps=300, batch_size=16, eval_every_steps=100)
    return common.build(
        "ref_tuning",
        variant,
        "NTP supervised fine-tuning of the Rho-1 reference model",
        {"models": {"policy": parts.llama_entry(variant)}},
        parts.data(
            variant,
            use_pairwise=False,
            seed=24 if variant == "7b" else 42,
            max_pairs_per_problem=50 if variant == "7b" else None,
        ),
        training,
        {
            "training": {
                "use_lora": variant == "7b",
                "lora": parts.lora_entry(32, 64.0, 0.1, parts.HF_TARGETS),
            }
        },
    )


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.HF_TARGETS)
