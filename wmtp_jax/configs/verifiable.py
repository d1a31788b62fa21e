"""Verifiable (WMTP): frozen critic → advantages (GAE | TD) → whitening (EMA | batch) → token
weights → weighted MTP CE
(the original's configs/{local/verifiable_local,production/verifiable}.yaml).

    python -m wmtp_jax.main --config=configs/verifiable.py          # micro: bootstraps storage/,
                                                                    # trains a micro critic first
    python -m wmtp_jax.main --config=configs/verifiable.py:7b       # Meta MTP 7B + 2.7B critic
"""

import ml_collections

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("verifiable", variant)
    micro = variant != "7b"  # micro and small run on a CPU
    with c.unlocked():
        c.experiment.description = "TD-weighted MTP with an independent value model"
        c.models = ml_collections.ConfigDict(
            {
                "policy": parts.policy_entry(variant),
                # a critic model dir (load_critic), exported by the critic pipeline
                "value_model": {
                    "checkpoint_path": parts.critic_output(variant),
                    "dtype": "float32" if micro else "bfloat16",
                },
            }
        )
        parts.add_data(c, variant, use_pairwise=False)
        c.data.use_negatives = False  # true: also train on the incorrect side of each pair
        c.weighting = ml_collections.ConfigDict({"advantage": "gae", "whitening": "ema"})
        parts.add_mtp_training(c, variant, batch_7b=48, ga_7b=2)
        parts.add_loss_chunking(c, variant)
        t = c.training
        t.gamma = 1.0
        t.td_lambda = 0.95
        t.initial_value = 0.5
        t.beta = 1.0
        t.weight_clip_min = 0.1
        t.weight_clip_max = 3.0
        t.td_ema_momentum = 0.1
        t.td_ema_warmup_steps = 10
        if micro:
            t.td_ema_warmup_steps = 5
        parts.add_final_eval(c, variant)
    if variant == "small":
        parts.apply_small(c)
    return finalize(c)


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.MTP_TARGETS)
    parts.validate_mtp_training(c)
    t = c.training
    parts.validate_choice(c.weighting.advantage, "weighting.advantage", parts.ADVANTAGES)
    parts.validate_choice(c.weighting.whitening, "weighting.whitening", parts.WHITENINGS)
    common._check(t.beta > 0, "training.beta", t.beta, "need > 0")
    common._check(
        0 <= t.weight_clip_min <= t.weight_clip_max,
        "training.weight_clip_min",
        t.weight_clip_min,
        f"need 0 ≤ min ≤ weight_clip_max={t.weight_clip_max}",
    )
    common._check(0 <= t.td_lambda <= 1, "training.td_lambda", t.td_lambda, "need 0 ≤ λ ≤ 1")
    common._check(0 < t.gamma <= 1, "training.gamma", t.gamma, "need 0 < γ ≤ 1")
    common._check(
        0 <= t.td_ema_momentum <= 1, "training.td_ema_momentum", t.td_ema_momentum, "need 0 ≤ m ≤ 1"
    )
    common._check(
        t.td_ema_warmup_steps >= 0,
        "training.td_ema_warmup_steps",
        t.td_ema_warmup_steps,
        "need ≥ 0",
    )


def finalize(c):
    validate(c)
    return common.finalize(c)
