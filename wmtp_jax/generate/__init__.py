"""Generation: KV-cache sampler (prefill + on-device decode loop) and self-speculative MTP
decoding."""

from .sampler import (
    NO_STOPS,
    Sampler,
    SamplingConfig,
    StopTexts,
    bucket_length,
    filter_logits,
    model_forward,
    sample_tokens,
    stop_hit,
    token_texts,
    truncate_at_stops,
)
from .speculative import compare_with_greedy, speculative_loop
