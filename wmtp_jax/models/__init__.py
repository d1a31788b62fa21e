"""wmtp_jax.models: Flax NNX models (Meta MTP policy, HF-layout LLaMA, value model) and LoRA."""

from .args import ModelArgs

# Checkpoint loading/saving (wmtp_jax.models.io) is exported below by its owner.
from .io import load_critic, load_llama, load_params, load_policy, save_model  # noqa: E402
from .layers import DTYPES, REMAT_POLICIES  # the runtime.dtype / runtime.remat names
from .llama import Llama
from .lora import LoRAConfig, lora_state, merge_lora, trainable_filter
from .mtp import MTPTransformer
from .value import (
    VALUE_HEADS,
    LinearValueHead,
    MLPValueHead,
    SigmoidValueHead,
    ValueModel,
    create_value_head,
)
