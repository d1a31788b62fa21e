"""Baseline: uniform MTP cross entropy (seed configs/{local/baseline_local,production/baseline}.yaml).

    python -m wmtp_jax.main --config=configs/baseline.py            # micro (bootstraps storage/)
    python -m wmtp_jax.main --config=configs/baseline.py:7b         # Meta MTP 7B, LoRA r64
"""

import ml_collections

from configs import common, parts


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("baseline", variant)
    micro = variant == "micro"
    with c.unlocked():
        c.experiment.description = "uniform-weight MTP baseline"
        c.models = ml_collections.ConfigDict({"policy": parts.model_entry(
            "micro-mtp" if micro else "meta-llama-mtp",
            parts.MICRO_POLICY if micro else parts.PROD_POLICY)})
        parts.add_data(c, variant, use_pairwise=False)
        t = c.training
        t.use_lora = not micro
        t.lora = (parts.lora_entry(16, 32.0, 0.05, parts.MTP_TARGETS) if micro
                  else parts.lora_entry(64, 128.0, 0.05, parts.MTP_TARGETS))
        parts.add_loss_chunking(c, variant)
        if micro:
            t.max_steps = 100
            t.batch_size = 8
            t.eval_every_steps = 50
            c.checkpoint.every_steps = 50
            t.learning_rate = 2e-3
        else:
            t.batch_size, t.gradient_accumulation_steps, t.learning_rate = 48, 2, 1e-4
            c.checkpoint.save_lora_only = True
    return finalize(c)


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.MTP_TARGETS)


def finalize(c):
    validate(c)
    return common.finalize(c)
