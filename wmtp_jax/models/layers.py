"""Transformer building blocks shared by the Meta MTP policy and the HF-layout LLaMA, re-exported
from their modules: `primitives` (dtypes, Linear, Embed, RMSNorm), `rope` (rotate-half RoPE),
`cache` (the static KV cache), `blocks` (attention, SwiGLU, block) and `stacking` (stacked
blocks under scan / vmap, remat, attention inputs).
"""

from .blocks import Attention, Block, FeedForward
from .cache import (
    KV,
    cache_entry,
    cache_len,
    cache_mask,
    cached_attention,
    empty_cache,
    write_cache,
)
from .primitives import DTYPES, Array, Embed, Linear, RMSNorm, param, to_dtype, torch_linear_init
from .rope import apply_rope, rope_cos_sin, rope_inv_freq
from .stacking import (
    REMAT_POLICIES,
    attention_inputs,
    maybe_remat,
    scan_blocks,
    stack_blocks,
    vmap_blocks,
)

__all__ = [
    "DTYPES",
    "KV",
    "REMAT_POLICIES",
    "Array",
    "Attention",
    "Block",
    "Embed",
    "FeedForward",
    "Linear",
    "RMSNorm",
    "apply_rope",
    "attention_inputs",
    "cache_entry",
    "cache_len",
    "cache_mask",
    "cached_attention",
    "empty_cache",
    "maybe_remat",
    "param",
    "rope_cos_sin",
    "rope_inv_freq",
    "scan_blocks",
    "stack_blocks",
    "to_dtype",
    "torch_linear_init",
    "vmap_blocks",
    "write_cache",
]
