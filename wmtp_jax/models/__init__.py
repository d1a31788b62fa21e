"""wmtp_jax.models: Flax NNX models (Meta MTP policy, HF-layout LLaMA, value model) and LoRA."""

from .args import ModelArgs
from .mtp import MTPTransformer
