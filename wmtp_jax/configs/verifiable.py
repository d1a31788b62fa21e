"""Verifiable (WMTP): frozen critic → advantages (GAE | TD) → whitening (EMA | batch) → token
weights → weighted MTP CE
(the original's configs/{local/verifiable_local,production/verifiable}.yaml).

    python -m wmtp_jax.main --config=configs/verifiable.py          # micro: bootstraps storage/,
                                                                    # trains a micro critic first
    python -m wmtp_jax.main --config=configs/verifiable.py:7b       # Meta MTP 7B + 2.7B critic
"""

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro"):
    common.check_variant(variant)
    cpu = variant != "7b"  # micro and small run on a CPU
    return common.build(
        "verifiable",
        variant,
        "TD-weighted MTP with an independent value model",
        {
            "models": {
                "policy": parts.policy_entry(variant),
                # a critic model dir (load_critic), exported by the critic pipeline
                "value_model": {
                    "path": parts.critic_output(variant),
                    "dtype": parts.frozen_dtype(variant),
                },
            },
            # control (the study's controls, docs/study.md): none = the method; permute = its
            # weights shuffled among each batch's valid tokens; oracle = oracle_ratio : 1 on the
            # tokens where a mutant deviates (needs pointwise, unpacked data), both at the
            # method's mean weight
            "weighting": {
                "advantage": "gae",
                "whitening": "ema",
                "control": "none",
                "oracle_ratio": 4.0,
            },
            "training": {
                "gamma": 1.0,
                "td_lambda": 0.95,
                "initial_value": 0.5,
                # :small: its critic trains 4 steps, so its whitened TD errors are mostly noise;
                # β = 3 keeps their weights near 1 (chosen on validation, docs/conversion.md)
                "beta": 3.0 if variant == "small" else 1.0,
                "weight_clip_min": 0.1,
                "weight_clip_max": 3.0,
                "td_ema_momentum": 0.1,
                "td_ema_warmup_steps": 5 if cpu else 10,
            },
            "data": {"use_negatives": False},  # true: also train on each pair's incorrect side
        },
        parts.data(variant, use_pairwise=False, mtp_policy=True),
        parts.mtp_training(variant, batch_7b=48, ga_7b=2),
        parts.loss_chunking(variant),
        # closing the loop: greedy pass@1 of the initial and the trained policy at the end
        parts.final_eval(variant),
    )


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    parts.validate_lora(c, parts.MTP_TARGETS)
    parts.validate_loss_chunking(c)
    common.check_int(c, "final_eval.limit", 0)
    common.check_int(c, "final_eval.max_new_tokens", 1)
    parts.validate_mtp_training(c)
    t = c.training
    parts.validate_choice(c.weighting.advantage, "weighting.advantage", parts.ADVANTAGES)
    parts.validate_choice(c.weighting.whitening, "weighting.whitening", parts.WHITENINGS)
    parts.validate_choice(c.weighting.control, "weighting.control", parts.CONTROLS)
    common._check(
        c.weighting.oracle_ratio > 0,
        "weighting.oracle_ratio",
        c.weighting.oracle_ratio,
        "need > 0",
    )
    common._check(
        c.weighting.control != "oracle" or not (c.data.use_negatives or c.data.packing),
        "weighting.control",
        c.weighting.control,
        "oracle needs data.use_negatives=False and data.packing=False",
    )
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
