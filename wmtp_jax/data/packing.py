"""Sequence packing: the collated samples of one loader batch packed into fixed rows `[R, S]`.

A loader batch holds N right-padded samples (`input_ids`, `attention_mask`, `labels` `[N, L]`,
per-sample floats such as `is_correct` `[N]`, `valid` `[N]`). `pack_batch` places them, in batch
order, first-fit into R rows of S tokens: sample i goes into the first row with room for all of
its tokens. A sample that fits no row is **cut at a row end**: it goes into the row with the most
room left (the first such row), keeps its first `room` tokens and loses the rest (exactly as the
collator truncates at `max_length`; no continuation in another row, whose tokens could not attend
to the sample's prompt). A sample meeting full rows is dropped. Rows with `valid = 0` (the
padding rows of a last validation batch) are never packed. Cut and dropped samples and tokens
are counted (`pack_batch`'s stats; per metrics window in training, `PackedLoader.window_metrics`).

Packed batch (all `[R, S]` unless said): `input_ids` (pad_id on padding), `labels` (-100 on
padding), `segment_ids` int32 (1, 2, ... in placement order per row, 0 = padding),
`positions` int32 (0, 1, ... restarting per segment, 0 on padding), `attention_mask` = segment
ids > 0, every per-sample float `[N]` spread over its tokens (e.g. `is_correct` `[R, S]`, 0 on
padding), and `valid` `[R]` (1 for a row holding a segment).

Pairwise batches (`pos_*` / `neg_*`, the critic's) pack the same way with the two sides of a
pair on the same row of the pos and neg arrays under the same segment id; a pair needs room on
both sides (a cut cuts each side to its own room).

Packing is a pure function of one loader batch: the data order, the loader's state and its
exact resume are the loader's (`PackedLoader` only transforms its batches). The number of
samples per step stays `training.batch_size`; only the rows they occupy shrink from N to R.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from wmtp_jax.data.collate import IGNORE_INDEX

SEQ_KEYS = ("input_ids", "attention_mask", "labels")


def plan(lengths, rows: int, seq_len: int, valid=None) -> list[tuple[int, int, int, int]]:
    """First-fit placement: [(sample, row, offset, n_tokens)] in sample order.

    lengths `[N]` (or `[N, 2]` for pairs: both sides must fit; offsets then per side, see
    `plan_pairs`). n_tokens < length means the sample was cut at the row end.
    """
    lengths = np.asarray(lengths, np.int64)
    free = np.full(rows, seq_len, np.int64)
    out = []
    for i, n in enumerate(lengths):
        if (valid is not None and not valid[i]) or n <= 0:
            continue
        fits = np.nonzero(free >= n)[0]
        r = int(fits[0]) if fits.size else int(np.argmax(free))
        take = int(min(n, free[r]))
        if take <= 0:
            continue
        out.append((i, r, seq_len - int(free[r]), take))
        free[r] -= take
    return out


def plan_pairs(pos_len, neg_len, rows: int, seq_len: int, valid=None):
    """Pair placement: [(sample, row, pos_offset, pos_take, neg_offset, neg_take)]; first row
    where both sides fit, else the row with the most room on its tighter side (each side cut to
    its own room); a pair with no room on either side is dropped."""
    free = np.full((rows, 2), seq_len, np.int64)
    out = []
    for i, (p, q) in enumerate(zip(np.asarray(pos_len), np.asarray(neg_len))):
        if (valid is not None and not valid[i]) or p <= 0 or q <= 0:
            continue
        fits = np.nonzero((free[:, 0] >= p) & (free[:, 1] >= q))[0]
        r = int(fits[0]) if fits.size else int(np.argmax(free.min(axis=1)))
        tp, tq = int(min(p, free[r, 0])), int(min(q, free[r, 1]))
        if tp <= 0 or tq <= 0:
            continue
        out.append((i, r, seq_len - int(free[r, 0]), tp, seq_len - int(free[r, 1]), tq))
        free[r] -= (tp, tq)
    return out


def _lengths(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool).sum(axis=1)


def _fill(batch, prefix, placements, rows, seq_len, pad_id, scalars) -> dict:
    """Write the placed samples of `batch` (keys prefix + SEQ_KEYS) into `[rows, seq_len]`."""
    ids = np.full((rows, seq_len), pad_id, np.int32)
    labels = np.full((rows, seq_len), IGNORE_INDEX, np.int32)
    seg = np.zeros((rows, seq_len), np.int32)
    pos = np.zeros((rows, seq_len), np.int32)
    spread = {k: np.zeros((rows, seq_len), np.float32) for k in scalars}
    next_id = np.ones(rows, np.int32)
    src_ids, src_labels = batch[prefix + "input_ids"], batch[prefix + "labels"]
    for i, r, off, n in placements:
        sl = slice(off, off + n)
        ids[r, sl] = src_ids[i, :n]
        labels[r, sl] = src_labels[i, :n]
        seg[r, sl] = next_id[r]
        pos[r, sl] = np.arange(n)
        for k in scalars:
            spread[k][r, sl] = batch[k][i]
        next_id[r] += 1
    out = {
        prefix + "input_ids": ids,
        prefix + "attention_mask": (seg > 0).astype(np.int32),
        prefix + "labels": labels,
        prefix + "segment_ids": seg,
        prefix + "positions": pos,
    }
    out.update(spread)
    return out


def pack_batch(
    batch: Mapping[str, np.ndarray], rows: int, seq_len: int, *, pad_id: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(packed batch, stats) of one collated loader batch (pointwise or pairwise; see the module
    docstring). stats (ints): samples (valid ones), packed, tokens (theirs, pos + neg for pairs),
    cut_samples / cut_tokens (samples cut at a row end / the tokens they lost), dropped /
    dropped_tokens (samples meeting only full rows / their tokens)."""
    if rows < 1 or seq_len < 1:
        raise ValueError(f"packing needs rows ≥ 1 and seq_len ≥ 1, got {rows}, {seq_len}")
    valid = np.asarray(batch["valid"]) > 0 if "valid" in batch else None
    pairwise = "pos_input_ids" in batch
    n = len(batch["pos_input_ids" if pairwise else "input_ids"])
    scalars = [
        k
        for k, v in batch.items()
        if k != "valid" and np.asarray(v).ndim == 1 and np.asarray(v).dtype.kind == "f"
    ]
    if pairwise:
        lp, ln = _lengths(batch["pos_attention_mask"]), _lengths(batch["neg_attention_mask"])
        placed = plan_pairs(lp, ln, rows, seq_len, valid)
        out = _fill(batch, "pos_", [(i, r, o, t) for i, r, o, t, _, _ in placed], rows, seq_len,
                    pad_id, scalars)  # fmt: skip
        out.update(
            _fill(batch, "neg_", [(i, r, o, t) for i, r, _, _, o, t in placed], rows, seq_len,
                  pad_id, []))  # fmt: skip
        total = lp + ln
        kept = {i: t1 + t2 for i, _, _, t1, _, t2 in placed}
        any_tok = out["pos_segment_ids"].max(axis=1) > 0
    else:
        lens = _lengths(batch["attention_mask"])
        placed = plan(lens, rows, seq_len, valid)
        out = _fill(batch, "", placed, rows, seq_len, pad_id, scalars)
        total = lens
        kept = {p[0]: p[3] for p in placed}
        any_tok = out["segment_ids"].max(axis=1) > 0
    out["valid"] = any_tok.astype(np.float32)
    live = np.ones(n, bool) if valid is None else valid
    total = np.asarray(total, np.int64)
    lost = [int(total[i]) - t for i, t in kept.items()]
    stats = {
        "samples": int(live.sum()),
        "packed": len(placed),
        "tokens": int(total[live].sum()),
        "cut_samples": sum(x > 0 for x in lost),
        "cut_tokens": sum(lost),
        "dropped": int(live.sum()) - len(placed),
        "dropped_tokens": int(total[live].sum()) - sum(int(total[i]) for i in kept),
    }
    return out, stats


STAT_KEYS = ("samples", "packed", "tokens", "cut_samples", "cut_tokens", "dropped",
             "dropped_tokens")  # fmt: skip
# pack_batch stat → the metric PackedLoader.window_metrics logs it as (summed over a window)
WINDOW_METRICS = {
    "cut_samples": "data/cut_samples",
    "cut_tokens": "data/cut_tokens",
    "dropped": "data/dropped_samples",
    "dropped_tokens": "data/dropped_tokens",
}


class PackedLoader:
    """Wraps a `DataLoader` (or any batch iterator with get_state/set_state): yields
    `pack_batch(batch, rows, seq_len)`; state, length and steps per epoch are the inner loader's,
    so resuming is exactly the unpacked loader's resume. `stats` accumulates pack_batch's counts
    over the run; `window_metrics` reports them per train-loop metrics window.
    """

    def __init__(self, loader, rows: int, seq_len: int, *, pad_id: int = 0):
        self.loader, self.rows, self.seq_len, self.pad_id = loader, int(rows), int(seq_len), pad_id
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self._window_start = dict(self.stats)  # `stats` when the current window began
        self._pads: list[float] = []

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        packed, st = pack_batch(next(self.loader), self.rows, self.seq_len, pad_id=self.pad_id)
        for k, v in st.items():
            self.stats[k] += v
        self._pads.append(pad_fraction(packed))
        return packed

    def window_metrics(self) -> dict[str, float]:
        """This process's packing counts over the batches drawn since the last call (the train
        loop logs them with each metrics window, host side): data/cut_samples, data/cut_tokens,
        data/dropped_samples, data/dropped_tokens (sums), data/pad_fraction (mean over the
        batches); {} when no batch was drawn."""
        if not self._pads:
            return {}
        start = self._window_start
        out = {name: float(self.stats[k] - start[k]) for k, name in WINDOW_METRICS.items()}
        out["data/pad_fraction"] = float(np.mean(self._pads))
        self._window_start, self._pads = dict(self.stats), []
        return out

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch

    def get_state(self) -> dict[str, Any]:
        return self.loader.get_state()

    def check_state(self, state: Any) -> None:
        self.loader.check_state(state)

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.loader.set_state(state)


def packing_of(batch) -> dict:
    """{"segment_ids", "positions"} of a packed batch (data.packing), else both None."""
    return {"segment_ids": batch.get("segment_ids"), "positions": batch.get("positions")}


def pad_fraction(batch: Mapping[str, np.ndarray]) -> float:
    """Share of padding slots over every `*attention_mask` array of a batch."""
    masks = [np.asarray(v) for k, v in batch.items() if k.endswith("attention_mask")]
    slots = sum(m.size for m in masks)
    return 1.0 - sum(float(m.sum()) for m in masks) / max(slots, 1)


def suggest_rows(lengths, batch_size: int, seq_len: int, headroom: float = 1.15) -> int:
    """Rows for `batch_size` samples of the given token lengths: ⌈headroom · batch_size ·
    mean(min(length, seq_len)) / seq_len⌉, within [1, batch_size]. headroom > 1 leaves room for
    batches longer than the mean (fewer cuts; the cut tokens are counted, see PackedLoader)."""
    lens = np.minimum(np.asarray(lengths, np.float64), seq_len)
    if lens.size == 0:
        return int(batch_size)
    rows = int(np.ceil(headroom * batch_size * lens.mean() / seq_len))
    return max(1, min(int(batch_size), rows))


def batch_shards(data: int, fsdp: int, tensor: int) -> int:
    """Devices a batch's rows are split over: data × fsdp of the mesh axes (a -1 axis takes the
    rest of the devices; the tensor axis replicates the batch)."""
    if int(tensor) == -1:
        return int(data) * int(fsdp)
    return jax.device_count() // int(tensor)


AUTO_PROBE = 256  # records tokenized to size the rows when data.pack_rows = 0


def packed_loaders(
    tokenizer,
    collate,
    train_src,
    train,
    val_iter_fn,
    *,
    seq_len: int,
    batch_size: int,
    rows: int,
    batch_shards: int,
):
    """(PackedLoader(train), val_iter_fn yielding packed batches) for `data.packing`.

    Rows per global batch: `rows` (data.pack_rows), or when 0 `suggest_rows` on the lengths of
    the first AUTO_PROBE training records; rounded up to a multiple of the process count (each
    process packs its own samples into its share of the rows) and of `batch_shards`."""
    bs = int(batch_size)
    if rows <= 0:
        probe = [train_src[i] for i in range(min(AUTO_PROBE, len(train_src)))]
        enc = collate(probe)
        keys = [k for k in enc if k.endswith("attention_mask")]
        lens = np.max([_lengths(enc[k]) for k in keys], axis=0)  # pairs: the longer side
        rows = suggest_rows(lens, bs, seq_len)
    procs = jax.process_count()
    step = math.lcm(procs, batch_shards)
    rows = -(-rows // step) * step
    local = rows // procs
    pad_id = int(tokenizer.pad_token_id)
    logging.info(
        "packing: %d samples per step into %d rows of %d tokens (%d per process)",
        bs,
        rows,
        seq_len,
        local,
    )

    def packed_val():
        return PackedLoader(val_iter_fn(), local, seq_len, pad_id=pad_id)

    return PackedLoader(train, local, seq_len, pad_id=pad_id), packed_val
