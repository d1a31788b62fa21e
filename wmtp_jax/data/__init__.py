"""Data: prepare (raw -> processed records), synthetic task, records, sampling, collate, loader.

Public API (imported lazily, so `python -m wmtp_jax.data.prepare` does not load grain/jax):
`AlpacaCollator`, `PairwiseCollator`, `apply_alpaca_template`, `IGNORE_INDEX`, `DataLoader`,
`load_samples`, `SampledSource`, `resolve_split`, `sample_pairs`, `sample_unique_pairs`,
`sample_length_balanced_pairs`, `pointwise_indices`, `shard`, `SamplingShortfall`,
`load_tokenizer`, `train_micro_tokenizer`, `ensure_micro_tokenizer`, `ensure_synthetic`,
`JsonlRecords`, `DataError`.
"""

import importlib

_EXPORTS = {
    "wmtp_jax.data.collate": (
        "AlpacaCollator",
        "PairwiseCollator",
        "apply_alpaca_template",
        "IGNORE_INDEX",
    ),
    "wmtp_jax.data.grain_loader": ("DataLoader",),
    "wmtp_jax.data.records": ("DataError", "JsonlRecords"),
    "wmtp_jax.data.pairs": (
        "SamplingShortfall",
        "pointwise_indices",
        "sample_pairs",
        "sample_unique_pairs",
        "sample_length_balanced_pairs",
        "shard",
    ),
    "wmtp_jax.data.sources": ("SampledSource", "load_samples", "resolve_split"),
    "wmtp_jax.data.tokenizer": (
        "ensure_micro_tokenizer",
        "load_tokenizer",
        "train_micro_tokenizer",
    ),
    "wmtp_jax.data.synthetic": ("ensure_synthetic",),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'wmtp_jax.data' has no attribute {name!r}")
