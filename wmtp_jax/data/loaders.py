"""A training run's data: the tokenizer of a model dir, sampled records of a split, the
collator, and the train / validation loaders (`load`), all from a typed `DataSpec` (built once
from the config by the pipelines)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from wmtp_jax.data.collate import AlpacaCollator, PairwiseCollator
from wmtp_jax.data.grain_loader import DataLoader
from wmtp_jax.data.packing import packed_loaders
from wmtp_jax.data.sources import load_samples
from wmtp_jax.data.tokenizer import load_tokenizer as _load_tokenizer


class Sampling(NamedTuple):
    """The original's sampler settings (`data_sampling.*`)."""

    seed: int
    n_samples: int
    val_n_samples: int
    use_pairwise: bool
    max_pairs_per_problem: int | None  # None: no cap
    difficulty_bins: Mapping[str, tuple[int, int]]  # {bin: (lo, hi)} inclusive
    difficulty_weights: Mapping[str, float]
    use_length_balanced: bool
    length_bins: tuple[int, ...]

    def sampler_dict(self, *, validation: bool = False, pairwise: bool | None = None) -> dict:
        """The sampler's plain dict (validation: n_samples = val_n_samples)."""
        return {
            "n_samples": self.val_n_samples if validation else self.n_samples,
            "use_pairwise": self.use_pairwise if pairwise is None else bool(pairwise),
            "max_pairs_per_problem": self.max_pairs_per_problem,
            "difficulty_bins": {k: list(v) for k, v in self.difficulty_bins.items()},
            "difficulty_weights": dict(self.difficulty_weights),
            "use_length_balanced": self.use_length_balanced,
            "length_bins": list(self.length_bins),
        }


class DataSpec(NamedTuple):
    """What the loaders read: the dataset dir and its splits, the static sequence length, the
    global batch, the sampler, packing, and the devices a batch's rows are split over."""

    path: str
    train_split: str
    validation_split: str
    max_length: int
    batch_size: int  # global micro-batch
    seed: int  # train-loader shuffling
    sampling: Sampling
    append_eos: bool = True
    num_threads: int = 1
    packing: bool = False
    pack_rows: int = 0  # 0 = sized from the data
    batch_shards: int = 1  # data × fsdp devices (packed rows are a multiple of it)


class Loaders(NamedTuple):
    """What a pipeline trains on: the tokenizer, an endless shuffled train loader and a factory
    of one-pass validation loaders (None: no validation)."""

    tokenizer: Any
    train: Iterator
    val_iter_fn: Callable[[], Iterator] | None


def tokenizer_dir(path: str, tokenizer_path: str = "") -> str:
    """`tokenizer_path`, else `<path>/tokenizer` (model dir `path`'s own tokenizer)."""
    return tokenizer_path or str(Path(path) / "tokenizer")


def make_source(
    spec: DataSpec,
    split: str,
    *,
    pairwise: bool,
    validation: bool = False,
    critical: bool = False,
    siblings: bool = False,
):
    """Sampled records of `split` (all processes see the same global list; the loader shards);
    `critical`: pointwise records carry `critical_spans` (sources.critical_span_map);
    `siblings`: pair records carry the problem's other solutions (sources.load_samples)."""
    return load_samples(
        spec.path,
        split,
        spec.sampling.sampler_dict(validation=validation, pairwise=pairwise),
        seed=spec.sampling.seed,
        critical=critical,
        siblings=siblings,
    )


def make_collator(spec: DataSpec, tokenizer, *, pairwise: bool):
    cls = PairwiseCollator if pairwise else AlpacaCollator
    return cls(tokenizer, max_length=spec.max_length, append_eos=spec.append_eos)


def make_loaders(
    spec: DataSpec, tokenizer, *, pairwise: bool, critical: bool = False, siblings: bool = False
):
    """(endless shuffled train loader, val_iter_fn, n_val_records).

    Batches: per-process rows of a global batch of `spec.batch_size`, static length
    `spec.max_length`, plus `valid` (0 on padding rows of the last validation batch), plus
    `critical` `[B,L]` with `critical` (the oracle weighting; pointwise, unpacked), plus
    `{pos,neg}_value_target` `[B,L]` with `siblings` (the prefix_mc critic; pairs, unpacked)."""
    if critical and (pairwise or spec.packing):
        raise ValueError("critical spans need pointwise, unpacked batches")
    if siblings and (not pairwise or spec.packing):
        raise ValueError("prefix value targets need pairwise, unpacked batches")
    collate = make_collator(spec, tokenizer, pairwise=pairwise)
    bs = spec.batch_size
    kw = dict(pairwise=pairwise, critical=critical, siblings=siblings)
    train_src = make_source(spec, spec.train_split, **kw)
    train = DataLoader(
        train_src, collate, bs, seed=spec.seed, shuffle=True, num_threads=spec.num_threads
    )
    val_src = make_source(spec, spec.validation_split, validation=True, **kw)

    def val_iter_fn():
        return DataLoader(
            val_src,
            collate,
            bs,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
            num_threads=spec.num_threads,
        )

    if spec.packing:
        train, val_iter_fn = packed_loaders(
            tokenizer,
            collate,
            train_src,
            train,
            val_iter_fn,
            seq_len=spec.max_length,
            batch_size=bs,
            rows=spec.pack_rows,
            batch_shards=spec.batch_shards,
        )
    logging.info(
        "data: %d train / %d validation %s records from %s (max_length %d)",
        len(train_src),
        len(val_src),
        "pair" if pairwise else "pointwise",
        spec.path,
        spec.max_length,
    )
    return train, val_iter_fn, len(val_src)


def load(
    spec: DataSpec,
    tokenizer_dir: str,
    *,
    pairwise: bool,
    critical: bool = False,
    siblings: bool = False,
) -> Loaders:
    """The tokenizer in `tokenizer_dir` and the loaders of `spec` (`critical`, `siblings`: see
    make_loaders)."""
    tok = _load_tokenizer(tokenizer_dir)
    train, val_iter_fn, _ = make_loaders(
        spec, tok, pairwise=pairwise, critical=critical, siblings=siblings
    )
    return Loaders(tok, train, val_iter_fn)


def steps_per_epoch(loaders: Loaders) -> int | None:
    """Micro-batches per process per epoch of the train loader (None when it has no epochs)."""
    return getattr(loaders.train, "steps_per_epoch", None)


def count_response_tokens(batch) -> int:
    """Tokens per micro-batch for throughput: attention-mask ones (pos + neg for pairs)."""
    keys = [k for k in batch if k.endswith("attention_mask")]
    return int(sum(np.asarray(batch[k]).sum() for k in keys))
