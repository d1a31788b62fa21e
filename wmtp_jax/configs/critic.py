"""Critic: independent value model (HF-layout LLaMA backbone + value head) trained on pairs
(the original's configs/local/critic_local.yaml, production critic_mlp.yaml (λ-return, MSE) and
critic_mlp_pairwise.yaml (pairwise ranking, consumed by verifiable)).

    python -m wmtp_jax.main --config=configs/critic.py              # micro (bootstraps storage/)
    python -m wmtp_jax.main --config=configs/critic.py:7b           # Sheared-LLaMA-2.7B, pairwise
    python -m wmtp_jax.main --config=configs/critic.py:7b \
        --config.training.value_loss.type=lambda_return
The trained critic is exported to `<output_dir>/final_model` (load_critic), verifiable's default.
"""

from wmtp_jax.configs import common, parts


def get_config(variant: str = "micro"):
    common.check_variant(variant)
    big = variant == "7b"
    if big:
        steps = common.schedule(
            variant,
            max_steps=-1,
            batch_size=96,
            gradient_accumulation_steps=1,
            learning_rate=None,
            eval_every_steps=200,
            warmup_ratio=0.05,
            min_lr_ratio=0.0,
            checkpoint_every_steps=200,
            save_lora_only=False,
        )
        lora = parts.lora_entry(32, 64.0, 0.1, parts.HF_TARGETS)
    else:
        steps = parts.cpu_schedule(
            variant, max_steps=200, batch_size=8, eval_every_steps=100, learning_rate=None
        )
        lora = parts.lora_entry(16, 32.0, 0.0, parts.HF_TARGETS)
    # parameter groups: LoRA factors and the value head, each with its own LR
    lora_lr, head_lr = {"micro": (3e-3, 3e-3), "small": (1e-4, 1e-3), "7b": (2e-5, 1e-4)}[variant]
    training = {
        "backbone_frozen": True,  # without LoRA: only the value head trains
        "use_lora": True,
        "lora": {**lora, "learning_rate": lora_lr, "weight_decay": 0.01},
        "value_head": {
            "type": "mlp",
            "dropout": 0.2 if big else 0.0,
            "learning_rate": head_lr,
            "weight_decay": 0.01,
        },
        "value_loss": {
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
                "warmup_steps": 250 if big else 10,
                "decay_steps": 500 if big else 50,
            },
        },
    }
    return common.build(
        "critic",
        variant,
        "independent value model (critic)",
        {"models": {"value_model": parts.llama_entry(variant)}},
        parts.data(variant, use_pairwise=True, seed=84 if big else 42, use_length_balanced=big),
        steps,
        {"training": training},
    )


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
    common.check_number(c, "training.value_loss.coef", 0)
    for key in ("value", "start", "end"):
        common.check_number(c, f"training.value_loss.lambda_schedule.{key}", 0, 1)
    for key in ("warmup_steps", "decay_steps"):
        common.check_int(c, f"training.value_loss.lambda_schedule.{key}", 0)
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
