"""Ref-tuning: NTP SFT of the HF-layout LLaMA that rho1 uses as its reference
(the original's configs/{local/ref_tuning_local,production/ref_tuning}.yaml;
`models.policy` is the HF model).

    python -m wmtp_jax.main --config=configs/ref_tuning.py          # micro llama (bootstraps)
    python -m wmtp_jax.main --config=configs/ref_tuning.py:7b       # Sheared-LLaMA-2.7B, LoRA r32
The tuned model is exported to `<output_dir>/final_model` (load_llama), rho1's default reference.
"""

import ml_collections

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("ref_tuning", variant)
    micro = variant != "7b"  # micro and small run on a CPU
    with c.unlocked():
        c.experiment.description = "NTP supervised fine-tuning of the Rho-1 reference model"
        c.models = ml_collections.ConfigDict(
            {
                "policy": parts.model_entry(
                    "micro-llama" if micro else "ref-sheared-llama-2.7b",
                    parts.MICRO_LLAMA if micro else parts.PROD_LLAMA,
                )
            }
        )
        parts.add_data(c, variant, use_pairwise=False, seed=42 if micro else 24)
        if not micro:
            c.data_sampling.max_pairs_per_problem = 50
        t = c.training
        t.use_lora = not micro
        t.lora = parts.lora_entry(32, 64.0, 0.1, parts.HF_TARGETS)
        if micro:
            t.max_steps = 300
            t.batch_size = 16
            t.learning_rate = 3e-3
            t.eval_every_steps = 100
            c.checkpoint.every_steps = 100
        else:
            t.batch_size, t.gradient_accumulation_steps, t.learning_rate = 96, 1, 5e-5
    if variant == "small":
        parts.apply_small(c)
    return finalize(c)


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.HF_TARGETS)


def finalize(c):
    validate(c)
    return common.finalize(c)
