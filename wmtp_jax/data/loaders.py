"""A training run's data from its config: the tokenizer of a model entry, sampled records of a
split, the collator, and the train / validation loaders (`load`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from wmtp_jax.data.collate import AlpacaCollator, PairwiseCollator
from wmtp_jax.data.grain_loader import DataLoader
from wmtp_jax.data.packing import packed_loaders
from wmtp_jax.data.sources import load_samples
from wmtp_jax.data.tokenizer import load_tokenizer as _load_tokenizer


class Loaders(NamedTuple):
    """What a pipeline trains on: the tokenizer, an endless shuffled train loader and a factory
    of one-pass validation loaders (None: no validation)."""

    tokenizer: Any
    train: Iterator
    val_iter_fn: Callable[[], Iterator] | None


def tokenizer_path(entry) -> str:
    """models.<role>.tokenizer_path, else `<path>/tokenizer`."""
    return entry.tokenizer_path or str(Path(entry.path) / "tokenizer")


def load_tokenizer(entry):
    """The tokenizer of model entry `entry` (see tokenizer_path)."""
    return _load_tokenizer(tokenizer_path(entry))


def sampling_dict(config, *, validation: bool = False, pairwise: bool | None = None) -> dict:
    """data_sampling as the sampler's plain dict (validation: n_samples = val_n_samples)."""
    s = config.data_sampling
    return {
        "n_samples": int(s.val_n_samples if validation else s.n_samples),
        "use_pairwise": bool(s.use_pairwise if pairwise is None else pairwise),
        "max_pairs_per_problem": s.max_pairs_per_problem or None,
        "difficulty_bins": {k: list(v) for k, v in s.difficulty_bins.items()},
        "difficulty_weights": dict(s.difficulty_weights),
        "use_length_balanced": bool(s.use_length_balanced),
        "length_bins": list(s.length_bins),
    }


def make_source(config, split: str, *, pairwise: bool, validation: bool = False):
    """Sampled records of `split` (all processes see the same global list; the loader shards)."""
    return load_samples(
        config.dataset.path,
        split,
        sampling_dict(config, validation=validation, pairwise=pairwise),
        seed=int(config.data_sampling.seed),
    )


def make_collator(config, tokenizer, *, pairwise: bool):
    cls = PairwiseCollator if pairwise else AlpacaCollator
    return cls(
        tokenizer,
        max_length=int(config.dataset.max_length),
        append_eos=bool(config.data.append_eos),
    )


def make_loaders(config, tokenizer, *, pairwise: bool):
    """(endless shuffled train loader, val_iter_fn, n_val_records).

    Batches: per-process rows of a global batch of `training.batch_size`, static length
    `dataset.max_length`, plus `valid` (0 on padding rows of the last validation batch)."""
    collate = make_collator(config, tokenizer, pairwise=pairwise)
    bs = int(config.training.batch_size)
    train_src = make_source(config, config.dataset.train, pairwise=pairwise)
    train = DataLoader(
        train_src,
        collate,
        bs,
        seed=int(config.seed),
        shuffle=True,
        num_threads=int(config.data.num_threads),
    )
    val_src = make_source(config, config.dataset.validation, pairwise=pairwise, validation=True)

    def val_iter_fn():
        return DataLoader(
            val_src,
            collate,
            bs,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
            num_threads=int(config.data.num_threads),
        )

    if config.data.get("packing", False):
        train, val_iter_fn = packed_loaders(
            config, tokenizer, collate, train_src, train, val_iter_fn
        )
    logging.info(
        "data: %d train / %d validation %s records from %s (max_length %d)",
        len(train_src),
        len(val_src),
        "pair" if pairwise else "pointwise",
        config.dataset.path,
        config.dataset.max_length,
    )
    return train, val_iter_fn, len(val_src)


def load(config, entry, *, pairwise: bool) -> Loaders:
    """The tokenizer of model entry `entry` and the loaders of config.dataset."""
    tok = load_tokenizer(entry)
    train, val_iter_fn, _ = make_loaders(config, tok, pairwise=pairwise)
    return Loaders(tok, train, val_iter_fn)


def steps_per_epoch(loaders: Loaders) -> int | None:
    """Micro-batches per process per epoch of the train loader (None when it has no epochs)."""
    return getattr(loaders.train, "steps_per_epoch", None)


def count_response_tokens(batch) -> int:
    """Tokens per micro-batch for throughput: attention-mask ones (pos + neg for pairs)."""
    keys = [k for k in batch if k.endswith("attention_mask")]
    return int(sum(np.asarray(batch[k]).sum() for k in keys))
