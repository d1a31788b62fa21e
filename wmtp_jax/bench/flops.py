"""Analytic model FLOPs of one train step (MFU numerator) and peak device FLOP/s (denominator).

Notation: D = dim, H·hd = n_heads·head_dim (= D), KV·hd = n_kv_heads·head_dim, F = FFN hidden,
V = vocab, K = n_future_tokens, S = sequence length, r = LoRA rank.

Matmul parameters a token goes through (embedding lookups are gathers and count 0):

    N_block  = D·H·hd (wq) + 2·D·KV·hd (wk, wv) + H·hd·D (wo) + 3·D·F (w1, w2, w3)
    N_policy = (n_trunk + K)·N_block + K·D·V      (every head block + the shared output projection
                                                   applied once per head; n_trunk = n_layers − K)
    N_critic = n_layers_c·N_block_c + N_value_head   (mlp head: D·D/4 + D/4·D/8 + D/8)
    N_lora   = Σ over targeted linears of every block of r·(in + out)

Causal attention (MaxText convention since AI-Hypercomputer/maxtext PR #1988: the masked upper
triangle is not counted, i.e. half of PaLM's 12·S·D): per token and per attention block,
forward QKᵀ + AV = 2·2·(S/2)·H·hd = 2·S·H·hd, training (forward + backward) 6·S·H·hd.

Model FLOPs per token (remat recomputation is NOT counted — this is MFU, not HFU):

    full fine-tuning      6·N_trainable_model + 6·S·H·hd·n_attn_blocks
    LoRA, frozen base     2·N (forward) + 2·N (backward, activation gradients only; no weight
                          gradients for frozen weights) + 6·N_lora (+ 6·N_value_head for a
                          critic, whose head is trained) + 6·S·H·hd·n_attn_blocks
    verifiable adds       the frozen critic forward 2·N_critic + 2·S·H_c·hd_c·n_layers_c
    rho1 adds             the frozen reference forward 2·N_llama + 2·S·H_r·hd_r·n_layers_r
    critic pipeline       its model is the critic; a pair of sequences is 2 sequences
    ref_tuning            its model is a llama: N_llama = n_layers·N_block + D·V

Decoding (`decode_flops`, head 0 only as the sampler runs it): prefill 2·N_head0 per prompt
token + causal attention 2·L·H·hd per token per block; one decode step 2·N_head0 per row +
4·T·H·hd per block (the query reads all T cache slots), N_head0 = (n_trunk + 1)·N_block + D·V.

Step FLOPs = per-token FLOPs × tokens (GA·B·S for the policy pipelines, 2·GA·B·S for the
critic's pairs). MFU = step FLOPs / step seconds / (peak FLOP/s per device × devices).
"""

from __future__ import annotations

from collections.abc import Sequence

from wmtp_jax.models.args import ModelArgs

ALL_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

# Dense bf16 peak TFLOP/s per device (vendor data sheets; no sparsity). Matched in order against
# `device.device_kind` (lower-cased substring).
PEAK_TFLOPS = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),  # SXM
    ("h200", 989.0),
    ("gh200", 989.0),
    ("a100", 312.0),
    ("tpu v5 lite", 197.0),  # v5e
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),
    ("tpu v6 lite", 918.0),  # Trillium v6e
    ("tpu v4", 275.0),
)


def _linear_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    d, f = args.dim, args.hidden_dim
    q, kv = args.n_heads * args.head_dim, args.kv_heads * args.head_dim
    return {
        "wq": (d, q),
        "wk": (d, kv),
        "wv": (d, kv),
        "wo": (q, d),
        "w1": (d, f),
        "w2": (f, d),
        "w3": (d, f),
    }


def block_params(args: ModelArgs) -> int:
    """N_block: matmul parameters of one transformer block (norm scales excluded)."""
    return sum(i * o for i, o in _linear_shapes(args).values())


def lora_block_params(args: ModelArgs, rank: int, targets: Sequence[str] = ALL_TARGETS) -> int:
    """LoRA parameters of one block: r·(in + out) per targeted linear."""
    shapes = _linear_shapes(args)
    bad = [t for t in targets if t not in shapes]
    if bad:
        raise ValueError(f"unknown LoRA target(s) {bad}; valid: {sorted(shapes)}")
    return sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets) if rank else 0


def value_head_params(dim: int, head_type: str = "mlp") -> int:
    if head_type == "mlp":
        return dim * (dim // 4) + (dim // 4) * (dim // 8) + dim // 8
    return dim


def attention_train_flops(args: ModelArgs, seq: int) -> int:
    """Causal attention FLOPs per token per block, forward + backward: 6·S·H·hd."""
    return 6 * seq * args.n_heads * args.head_dim


def attention_forward_flops(args: ModelArgs, seq: int) -> int:
    """Causal attention FLOPs per token per block, forward only: 2·S·H·hd."""
    return 2 * seq * args.n_heads * args.head_dim


def policy_params(args: ModelArgs) -> int:
    """N_policy: (n_trunk + K)·N_block + K·D·V (output projection counted once per head)."""
    k = args.n_future_tokens
    return (args.n_trunk_layers + k) * block_params(args) + k * args.dim * args.vocab_size


def critic_params(args: ModelArgs, head_type: str = "mlp") -> int:
    return args.n_layers * block_params(args) + value_head_params(args.dim, head_type)


def llama_params(args: ModelArgs) -> int:
    """N_llama: n_layers·N_block + D·V (the LM head; a tied head is still a matmul)."""
    return args.n_layers * block_params(args) + args.dim * args.vocab_size


def _train_flops(n_base: int, n_lora: int, n_head_trainable: int, attn: int, lora: bool) -> int:
    if not lora:
        return 6 * n_base + attn
    return 4 * n_base + 6 * (n_lora + n_head_trainable) + attn


def train_flops_per_token(
    pipeline: str,
    args: ModelArgs,
    seq: int,
    *,
    lora_rank: int = 0,
    lora_targets: Sequence[str] = ALL_TARGETS,
    critic_args: ModelArgs | None = None,
    value_head: str = "mlp",
) -> dict:
    """Model FLOPs per token of one train step, with its parts (see the module docstring).

    pipeline: baseline | verifiable (policy `args` + frozen critic `critic_args`) | rho1 (policy
    + frozen reference `critic_args`) | critic (`args` is then the critic's backbone) |
    ref_tuning (`args` a llama). Returns {"total", "matmul", "attention",
    "critic_forward", "n_params_matmul", "n_params_lora"}.
    """
    lora = lora_rank > 0
    if pipeline in ("critic", "ref_tuning"):
        critic = pipeline == "critic"
        n_head = value_head_params(args.dim, value_head) if critic else 0
        blocks = args.n_layers * block_params(args)
        n_base = (blocks if critic else llama_params(args)) + (0 if lora else n_head)
        n_lora = args.n_layers * lora_block_params(args, lora_rank, lora_targets)
        attn = args.n_layers * attention_train_flops(args, seq)
        total = _train_flops(n_base, n_lora, n_head, attn, lora)
        return {
            "total": total,
            "matmul": total - attn,
            "attention": attn,
            "critic_forward": 0,
            "n_params_matmul": n_base + (n_head if lora else 0),
            "n_params_lora": n_lora,
        }
    if pipeline not in ("baseline", "verifiable", "rho1"):
        raise ValueError(
            f"unknown pipeline {pipeline!r}; valid: baseline, critic, verifiable, rho1, ref_tuning"
        )
    n_blocks = args.n_trunk_layers + args.n_future_tokens
    n_base = policy_params(args)
    n_lora = n_blocks * lora_block_params(args, lora_rank, lora_targets)
    attn = n_blocks * attention_train_flops(args, seq)
    total = _train_flops(n_base, n_lora, 0, attn, lora)
    crit = 0
    if pipeline in ("verifiable", "rho1"):
        if critic_args is None:
            raise ValueError(f"pipeline {pipeline!r} needs critic_args (the frozen model's shape)")
        n_frozen = (
            critic_params(critic_args, value_head)
            if pipeline == "verifiable"
            else llama_params(critic_args)
        )
        crit = 2 * n_frozen + critic_args.n_layers * attention_forward_flops(critic_args, seq)
    return {
        "total": total + crit,
        "matmul": total - attn,
        "attention": attn,
        "critic_forward": crit,
        "n_params_matmul": n_base,
        "n_params_lora": n_lora,
    }


def decode_flops(args: ModelArgs, batch: int, prompt_len: int, cache_len: int) -> dict:
    """{"prefill", "step"}: FLOPs of the prefill of `batch` prompts of `prompt_len` tokens and of
    one decode step over a `cache_len`-slot cache (head 0; see the module docstring)."""
    n_blocks = args.n_trunk_layers + 1  # a llama (K = 1): all n_layers
    n = n_blocks * block_params(args) + args.dim * args.vocab_size
    hd = args.n_heads * args.head_dim
    prefill = batch * prompt_len * (2 * n + n_blocks * attention_forward_flops(args, prompt_len))
    step = batch * (2 * n + n_blocks * 4 * cache_len * hd)
    return {"prefill": prefill, "step": step}


def peak_flops_per_device(
    device_kind: str, platform: str, override_tflops: float | None = None
) -> float | None:
    """Peak FLOP/s of one device: `override_tflops`·1e12 if given, else the dense-bf16 table entry
    for `device_kind`; None on CPU or an unknown device (MFU is then reported as null)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    if platform == "cpu":
        return None
    kind = device_kind.lower()
    for name, tflops in PEAK_TFLOPS:
        if name in kind:
            return tflops * 1e12
    return None


def mfu(
    step_flops: float, step_seconds: float, peak_per_device: float | None, n_devices: int
) -> float | None:
    if not peak_per_device or step_seconds <= 0:
        return None
    return step_flops / step_seconds / (peak_per_device * n_devices)
