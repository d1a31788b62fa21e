"""Critic: independent value model (HF-layout LLaMA backbone + value head) trained on pairs
(the original's configs/local/critic_local.yaml, production critic_mlp.yaml (λ-return, MSE) and
critic_mlp_pairwise.yaml (pairwise ranking, consumed by verifiable)).

    python -m wmtp_jax.main --config=configs/critic.py              # micro (bootstraps storage/)
    python -m wmtp_jax.main --config=configs/critic.py:7b           # Sheared-LLaMA-2.7B, pairwise
    python -m wmtp_jax.main --config=configs/critic.py:7b \
        --config.training.value_loss.type=lambda_return
The trained critic is exported to `<output_dir>/final_model` (load_critic), verifiable's default.
"""

import ml_collections

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("critic", variant)
    micro = variant != "7b"  # micro and small run on a CPU
    with c.unlocked():
        c.experiment.description = "independent value model (critic)"
        c.models = ml_collections.ConfigDict(
            {
                "value_model": parts.model_entry(
                    "micro-llama" if micro else "ref-sheared-llama-2.7b",
                    parts.MICRO_LLAMA if micro else parts.PROD_LLAMA,
                )
            }
        )
        parts.add_data(c, variant, use_pairwise=True, seed=42 if micro else 84)
        if not micro:
            c.data_sampling.use_length_balanced = True
        t = c.training
        t.backbone_frozen = True  # without LoRA: only the value head trains
        t.use_lora = True
        t.lora = parts.lora_entry(32, 64.0, 0.1, parts.HF_TARGETS)
        t.lora.learning_rate = 2e-5
        t.lora.weight_decay = 0.01
        t.value_head = ml_collections.ConfigDict(
            {"type": "mlp", "dropout": 0.2, "learning_rate": 1e-4, "weight_decay": 0.01}
        )
        t.value_loss = ml_collections.ConfigDict(
            {
                "type": "pairwise_ranking",
                "gamma": 1.0,
                "coef": 1.0,
                "loss_fn": "huber",
                "huber_delta": 0.5,
                "bias_init": 0.0,
                "lambda_schedule": {
                    "type": "linear",
                    "value": 0.995,
                    "start": 1.0,
                    "end": 0.95,
                    "warmup_steps": 250,
                    "decay_steps": 500,
                },
            }
        )
        if micro:
            t.max_steps = 200
            t.batch_size = 8
            t.eval_every_steps = 100
            c.checkpoint.every_steps = 100
            t.lora.rank, t.lora.alpha, t.lora.dropout = 16, 32.0, 0.0
            t.lora.learning_rate, t.value_head.learning_rate = 3e-3, 3e-3
            t.value_head.dropout = 0.0
            t.value_loss.lambda_schedule.update({"warmup_steps": 10, "decay_steps": 50})
        else:
            t.batch_size, t.gradient_accumulation_steps = 96, 1
            t.lr_scheduler.update({"warmup_ratio": 0.05, "min_lr_ratio": 0.0})
    if variant == "small":
        parts.apply_small(c)
    return finalize(c)


def validate(c):
    """Pipeline-specific value checks (ValueError naming the key); run again after overrides."""
    parts.validate_data(c)
    t = c.training
    parts.validate_lora(c, parts.HF_TARGETS)
    parts.validate_choice(t.value_head.type, "training.value_head.type", parts.VALUE_HEADS)
    parts.validate_choice(t.value_loss.type, "training.value_loss.type", parts.VALUE_LOSSES)
    parts.validate_choice(t.value_loss.loss_fn, "training.value_loss.loss_fn", parts.VALUE_LOSS_FNS)
    parts.validate_choice(
        t.value_loss.lambda_schedule.type,
        "training.value_loss.lambda_schedule.type",
        parts.LAMBDA_SCHEDULES,
    )
    for key in ("lora.learning_rate", "value_head.learning_rate"):
        g, k = key.split(".")
        v = t[g][k]
        common._check(0 < v <= 1, f"training.{key}", v, "need 0 < lr ≤ 1")
    common._check(
        0 <= t.value_head.dropout < 1,
        "training.value_head.dropout",
        t.value_head.dropout,
        "need 0 ≤ p < 1",
    )
    common._check(
        t.value_loss.huber_delta > 0,
        "training.value_loss.huber_delta",
        t.value_loss.huber_delta,
        "need > 0",
    )
    common._check(
        0 < t.value_loss.gamma <= 1,
        "training.value_loss.gamma",
        t.value_loss.gamma,
        "need 0 < γ ≤ 1",
    )
    common._check(
        not (t.value_loss.type in ("first_divergence", "prefix_mc") and c.data.packing),
        "training.value_loss.type",
        t.value_loss.type,
        "per-token pair targets: needs data.packing=False",
    )
    common._check(
        c.data_sampling.use_pairwise,
        "data_sampling.use_pairwise",
        c.data_sampling.use_pairwise,
        "the critic trains on pairs (must be true)",
    )


def finalize(c):
    validate(c)
    return common.finalize(c)
