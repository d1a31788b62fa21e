"""Analytic FLOPs of wmtp_jax.bench.flops against hand-computed values and the real models."""

import jax
import numpy as np
import pytest
from flax import nnx

from wmtp_jax.bench import flops
from wmtp_jax.models.args import ModelArgs

# dim 8, 2 heads (hd 4), FFN 16, vocab 10: N_block = 4·8·8 + 3·8·16 = 640
TINY = ModelArgs(dim=8, n_layers=2, n_heads=2, vocab_size=10, ffn_hidden_dim=16, n_future_tokens=1)


def test_block_and_lora_params_by_hand():
    assert flops.block_params(TINY) == 640
    # r·(in+out): wq wk wv wo 2·16 each, w1 w2 w3 2·24 each
    assert flops.lora_block_params(TINY, 2) == 4 * 32 + 3 * 48
    assert flops.lora_block_params(TINY, 2, ("wq", "wv")) == 64
    assert flops.lora_block_params(TINY, 0) == 0
    with pytest.raises(ValueError, match="q_proj"):
        flops.lora_block_params(TINY, 2, ("q_proj",))


def test_micro_policy_and_verifiable_by_hand():
    # micro policy: D=256, F=704 (multiple_of 64), 2 trunk + 4 heads, V=1024
    a = ModelArgs(
        dim=256, n_layers=6, n_heads=4, vocab_size=1024, multiple_of=64, n_future_tokens=4
    )
    c = ModelArgs(dim=256, n_layers=3, n_heads=4, vocab_size=1024, multiple_of=64)
    assert a.hidden_dim == 704 and flops.block_params(a) == 802816
    assert flops.policy_params(a) == 6 * 802816 + 4 * 256 * 1024
    s = 64
    base = flops.train_flops_per_token("baseline", a, s)
    assert base["attention"] == 6 * 6 * s * 256
    assert base["total"] == 6 * 5865472 + 6 * 6 * s * 256
    ver = flops.train_flops_per_token("verifiable", a, s, critic_args=c)
    head = 256 * 64 + 64 * 32 + 32
    assert ver["critic_forward"] == 2 * (3 * 802816 + head) + 3 * 2 * s * 256
    assert ver["total"] == base["total"] + ver["critic_forward"]


def test_lora_counts_frozen_base_honestly():
    s = 4
    full = flops.train_flops_per_token("baseline", TINY, s)
    lora = flops.train_flops_per_token("baseline", TINY, s, lora_rank=2)
    n, n_lora, attn = 2 * 640 + 8 * 10, 2 * 272, 2 * 6 * s * 8
    assert full["total"] == 6 * n + attn == 8544
    assert lora["total"] == 4 * n + 6 * n_lora + attn == 9088
    assert lora["n_params_lora"] == n_lora
    # critic with LoRA: the value head is trained (6·N_head), the backbone frozen (4·N)
    crit = flops.train_flops_per_token("critic", TINY, s, lora_rank=2)
    head = 8 * 2 + 2 * 1 + 1
    assert crit["total"] == 4 * 2 * 640 + 6 * (n_lora + head) + attn
    with pytest.raises(ValueError, match="critic_args"):
        flops.train_flops_per_token("verifiable", TINY, s)


def _kernel_sizes(model) -> int:
    state = nnx.state(model, nnx.Param)
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return sum(int(np.size(x)) for p, x in leaves if "kernel" in jax.tree_util.keystr(p))


def test_param_formulas_match_the_real_models():
    from wmtp_jax.models.mtp import MTPTransformer
    from wmtp_jax.models.value import ValueModel

    a = ModelArgs(
        dim=16, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=40, multiple_of=8, n_future_tokens=2
    )
    m = nnx.eval_shape(lambda: MTPTransformer(a, rngs=nnx.Rngs(0)))
    # the model holds the output projection once; the FLOPs count it once per head
    assert (
        _kernel_sizes(m) == flops.policy_params(a) - (a.n_future_tokens - 1) * a.dim * a.vocab_size
    )
    c = nnx.eval_shape(lambda: ValueModel(a, rngs=nnx.Rngs(0), head_type="mlp"))
    assert _kernel_sizes(c) == flops.critic_params(a, "mlp")  # backbone + fc1, fc2, fc3 kernels
    ml = nnx.eval_shape(lambda: MTPTransformer(a, rngs=nnx.Rngs(0), lora=_lora(3)))
    lora_sizes = sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(ml, nnx.LoRAParam)))
    assert lora_sizes == (a.n_layers) * flops.lora_block_params(a, 3)


def _lora(rank):
    from wmtp_jax.models.lora import LoRAConfig

    return LoRAConfig(rank=rank, targets=flops.ALL_TARGETS)


def test_peak_table_and_mfu():
    assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3", "gpu") == 989e12
    assert flops.peak_flops_per_device("NVIDIA H100 PCIe", "gpu") == 756e12
    assert flops.peak_flops_per_device("NVIDIA H200", "gpu") == 989e12
    assert flops.peak_flops_per_device("NVIDIA A100-SXM4-80GB", "gpu") == 312e12
    assert flops.peak_flops_per_device("TPU v5 lite", "tpu") == 197e12
    assert flops.peak_flops_per_device("TPU v5p", "tpu") == 459e12
    assert flops.peak_flops_per_device("TPU v4", "tpu") == 275e12
    assert flops.peak_flops_per_device("cpu", "cpu") is None
    assert flops.peak_flops_per_device("cpu", "cpu", 2.0) == 2e12
    assert flops.mfu(4e12, 2.0, 1e12, 4) == pytest.approx(0.5)
    assert flops.mfu(4e12, 2.0, None, 4) is None
