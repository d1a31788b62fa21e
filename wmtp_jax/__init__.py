"""wmtp_jax: Weighted Multi-Token Prediction in JAX / Flax NNX."""

__version__ = "0.1.0"
