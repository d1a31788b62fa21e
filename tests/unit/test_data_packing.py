"""Packing of collated batches: first-fit placement, a cut at the row end, dropped samples,
segment ids / positions / spread per-sample values, pairs, row sizing, and exact resume of a
packed loader (its state is the inner loader's)."""

import numpy as np
import pytest

from tests.fixtures.data.helpers import micro_tokenizer, synthetic_dir
from wmtp_jax.data import AlpacaCollator, DataLoader, load_samples
from wmtp_jax.data.packing import (
    PackedLoader,
    batch_shards,
    pack_batch,
    pad_fraction,
    plan,
    suggest_rows,
)


def batch_of(lengths, prompt=1, width=8):
    n = len(lengths)
    ids = np.zeros((n, width), np.int32)
    am = np.zeros((n, width), np.int32)
    for i, ln in enumerate(lengths):
        ids[i, :ln] = 10 * (i + 1) + np.arange(ln)
        am[i, :ln] = 1
    labels = np.where(am == 1, ids, -100).astype(np.int32)
    labels[:, :prompt] = -100
    return {
        "input_ids": ids,
        "attention_mask": am,
        "labels": labels,
        "is_correct": np.arange(1, n + 1, dtype=np.float32),
        "valid": np.ones(n, np.float32),
    }


def test_first_fit_hand_example():
    packed, st = pack_batch(batch_of([3, 5, 2, 6]), rows=2, seq_len=8, pad_id=0)
    np.testing.assert_array_equal(
        packed["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 2], [1] * 2 + [2] * 6]
    )
    np.testing.assert_array_equal(
        packed["positions"], [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1] + list(range(6))]
    )
    np.testing.assert_array_equal(packed["input_ids"][0], [10, 11, 12, 20, 21, 22, 23, 24])
    np.testing.assert_array_equal(packed["input_ids"][1], [30, 31, 40, 41, 42, 43, 44, 45])
    np.testing.assert_array_equal(packed["labels"][1], [-100, 31, -100, 41, 42, 43, 44, 45])
    np.testing.assert_array_equal(packed["is_correct"][0], [1, 1, 1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(packed["attention_mask"], np.ones((2, 8)))
    np.testing.assert_array_equal(packed["valid"], [1, 1])
    assert st == {"samples": 4, "packed": 4, "tokens": 16, "cut_samples": 0, "cut_tokens": 0,
                  "dropped": 0, "dropped_tokens": 0}  # fmt: skip


def test_cut_at_row_end_and_drop():
    packed, st = pack_batch(batch_of([6, 6, 5]), rows=2, seq_len=8, pad_id=7)
    # the third sample fits no row: cut to the 2 free slots of row 0 (first row with most room)
    np.testing.assert_array_equal(packed["segment_ids"][0], [1] * 6 + [2, 2])
    np.testing.assert_array_equal(packed["input_ids"][0, 6:], [30, 31])
    np.testing.assert_array_equal(packed["positions"][0, 6:], [0, 1])
    np.testing.assert_array_equal(packed["input_ids"][1, 6:], [7, 7])  # pad id
    np.testing.assert_array_equal(packed["labels"][1, 6:], [-100, -100])
    assert st["cut_samples"] == 1 and st["cut_tokens"] == 3 and st["dropped"] == 0
    assert st["dropped_tokens"] == 0
    assert plan([8, 8, 3], rows=2, seq_len=8) == [(0, 0, 0, 8), (1, 1, 0, 8)]  # 3rd dropped
    _, st = pack_batch(batch_of([8, 8, 3]), rows=2, seq_len=8)
    assert st["dropped"] == 1 and st["dropped_tokens"] == 3 and st["cut_tokens"] == 0


def test_invalid_rows_are_not_packed():
    b = batch_of([3, 3, 3])
    b["valid"][1] = 0
    packed, st = pack_batch(b, rows=1, seq_len=8)
    np.testing.assert_array_equal(packed["input_ids"][0, :6], [10, 11, 12, 30, 31, 32])
    assert st["samples"] == 2 and st["tokens"] == 6


def test_pairs_share_rows_and_segment_ids():
    p, n = batch_of([3, 4, 2]), batch_of([5, 1, 3])
    b = {f"pos_{k}": p[k] for k in ("input_ids", "attention_mask", "labels")}
    b.update({f"neg_{k}": n[k] for k in ("input_ids", "attention_mask", "labels")})
    b["valid"] = np.ones(3, np.float32)
    packed, st = pack_batch(b, rows=2, seq_len=8)
    # pair 1 needs 3+4 ≤ 8 on pos and 5+1 ≤ 8 on neg: row 0; pair 2 (pos 2, neg 3) overflows neg
    np.testing.assert_array_equal(packed["pos_segment_ids"][0], [1, 1, 1, 2, 2, 2, 2, 0])
    np.testing.assert_array_equal(packed["neg_segment_ids"][0], [1, 1, 1, 1, 1, 2, 0, 0])
    np.testing.assert_array_equal(packed["pos_segment_ids"][1], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(packed["neg_segment_ids"][1], [1, 1, 1, 0, 0, 0, 0, 0])
    assert st["cut_tokens"] == 0 and st["packed"] == 3
    assert pad_fraction(packed) == pytest.approx(1 - 18 / 32)


class Batches:
    """A fixed cycle of batches with the loader's get_state / set_state."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __next__(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def test_window_metrics_count_cuts_drops_and_padding():
    # [6, 6, 5] in 2×8: 3rd cut 5 → 2 (pad 2/16); [8, 8, 3]: 3rd dropped (pad 0); [3]: pad 13/16
    ld = PackedLoader(Batches([batch_of([6, 6, 5]), batch_of([8, 8, 3]), batch_of([3])]), 2, 8)
    assert ld.window_metrics() == {}
    next(ld), next(ld)
    assert ld.window_metrics() == {
        "data/cut_samples": 1.0,
        "data/cut_tokens": 3.0,
        "data/dropped_samples": 1.0,
        "data/dropped_tokens": 3.0,
        "data/pad_fraction": pytest.approx((2 / 16 + 0) / 2),
    }
    next(ld)  # a new window
    assert ld.window_metrics()["data/pad_fraction"] == pytest.approx(13 / 16)
    assert ld.stats["cut_tokens"] == 3 and ld.stats["samples"] == 7 and ld.stats["packed"] == 6


@pytest.mark.parametrize(
    "mesh,want", [((1, -1, 1), 8), ((1, -1, 2), 4), ((-1, 1, 4), 2), ((2, 2, -1), 4)]
)
def test_batch_shards(mesh, want):
    """Packed rows are rounded to the data × fsdp devices (8 test devices) so they shard."""
    assert batch_shards(*mesh) == want


def test_suggest_rows():
    assert suggest_rows([100] * 16, 16, 2048) == 1
    assert suggest_rows([512] * 16, 16, 2048) == 5  # ceil(1.15 · 16 · 512 / 2048) = 5
    assert suggest_rows([4096] * 4, 4, 2048) == 4


@pytest.mark.parametrize("stop", [2, 5])
def test_packed_loader_resumes_exactly(stop):
    tok = micro_tokenizer()
    sampling = {"n_samples": 40, "difficulty_bins": {"all": [0, 25]}}
    sampling["difficulty_weights"] = {"all": 1.0}
    src = load_samples(synthetic_dir(), "train", sampling, seed=0)
    col = AlpacaCollator(tok, max_length=64)
    make = lambda: PackedLoader(
        DataLoader(src, col, 8, seed=1, process_index=0, process_count=1, num_threads=1),
        rows=4,
        seq_len=64,
        pad_id=tok.pad_token_id,
    )
    full = [next(ld) for ld in [make()] for _ in range(8)]
    first = make()
    for _ in range(stop):
        next(first)
    state = first.get_state()
    second = make()
    second.set_state(state)
    for want in full[stop:]:
        got = next(second)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert full[0]["segment_ids"].shape == (4, 64)
    assert first.steps_per_epoch == 5 and state["next_batch"] == stop
