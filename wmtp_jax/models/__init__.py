"""wmtp_jax.models: Flax NNX models (Meta MTP policy, HF-layout LLaMA, value model) and LoRA."""

from .args import ModelArgs
from .llama import Llama
from .lora import LoRAConfig, lora_state, merge_lora, trainable_filter
from .mtp import MTPTransformer

# Checkpoint loading/saving (wmtp_jax.models.serialization) is exported below by its owner.
from .serialization import load_critic, load_llama, load_params, load_policy, save_model  # noqa: E402
from .value import (
    VALUE_HEADS,
    LinearValueHead,
    MLPValueHead,
    SigmoidValueHead,
    ValueModel,
    create_value_head,
)
