"""Data: prepare (raw -> processed records), synthetic task, records, sampling, collate, loader.

Public API: `AlpacaCollator`, `PairwiseCollator`, `apply_alpaca_template`, `DataLoader`,
`load_samples`, `sample_pairs`, `load_tokenizer`, `train_micro_tokenizer`,
`ensure_micro_tokenizer`, `ensure_synthetic`, `JsonlRecords`, `DataError`.
"""

from wmtp_jax.data.collate import (IGNORE_INDEX, AlpacaCollator, PairwiseCollator,
                                   apply_alpaca_template)
from wmtp_jax.data.loader import DataLoader
from wmtp_jax.data.records import DataError, JsonlRecords
from wmtp_jax.data.sampling import (SamplingShortfall, pointwise_indices, sample_length_balanced_pairs,
                                    sample_pairs, sample_unique_pairs, shard)
from wmtp_jax.data.sources import SampledSource, load_samples, resolve_split
from wmtp_jax.data.tokenizer import ensure_micro_tokenizer, load_tokenizer, train_micro_tokenizer


def ensure_synthetic(out_dir, seed: int = 0, tokenizer_dir=None, n_problems=None):
    """Creates the synthetic dataset under `out_dir` (processed/...) unless present; returns the
    processed dir. See `wmtp_jax.data.synthetic.ensure_synthetic`."""
    from wmtp_jax.data.synthetic import ensure_synthetic as _ensure

    return _ensure(out_dir, seed=seed, tokenizer_dir=tokenizer_dir, n_problems=n_problems)
