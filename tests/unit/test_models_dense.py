"""Which Linears project through `ops.dense` (tests/unit/test_ops_dense.py tests the function):
not inside remat, whose policies must see a dot, and not with LoRA."""

import pytest
from flax import nnx

from wmtp_jax.models.args import ModelArgs
from wmtp_jax.models.layers import Block
from wmtp_jax.models.lora import LoRAConfig


@pytest.mark.parametrize(
    "remat,lora,want", [("none", 0, True), ("dots", 0, False), ("none", 2, False)]
)
def test_blocks_use_dense_without_remat_and_lora(remat, lora, want):
    """Inside remat a policy like `dots` must see the dot (a custom VJP hides it); LoRA's frozen
    kernel needs no gradient (a custom VJP would compute it anyway)."""
    args = ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32, multiple_of=8, remat=remat)
    targets = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    cfg = LoRAConfig(rank=lora, alpha=1.0, dropout=0.0, targets=targets) if lora else None
    block = Block(args, rngs=nnx.Rngs(0), lora=cfg)
    linears = [block.attention.wq, block.attention.wo, block.feed_forward.w1]
    assert [m.dense_vjp for m in linears] == [want] * 3
