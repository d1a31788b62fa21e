"""Generation: KV-cache sampler (prefill + on-device decode loop) and self-speculative MTP
decoding."""

from .decode import model_forward
from .sampler import Sampler, bucket_length, compare_with_greedy
from .sampling import SamplingConfig, filter_logits, sample_tokens
from .speculative import speculative_loop
from .stops import NO_STOPS, StopTexts, stop_hit, token_texts, truncate_at_stops
