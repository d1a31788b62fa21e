"""Generation: KV-cache sampler (prefill + on-device decode loop) and self-speculative MTP decoding."""

from .sampler import (NO_STOP, Sampler, SamplingConfig, bucket_length, encode_stop_ids,
                      filter_logits, model_forward, sample_tokens, stop_match, truncate_at_stops)
from .speculative import compare_with_greedy, speculative_loop
