"""Loader: per-epoch shuffles, resume from state (mid-epoch and across epochs), process slices,
finite padded passes, with real collated batches."""

import json

import numpy as np
import pytest

from tests.fixtures.data.helpers import micro_tokenizer, synthetic_dir
from wmtp_jax.data import AlpacaCollator, DataLoader, load_samples

N = 10


def ids_collate(records):
    return {"x": np.asarray(records, np.int32)}


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_epochs_are_permutations_with_fresh_shuffles():
    ld = DataLoader(list(range(N)), ids_collate, 5, seed=3, process_index=0, process_count=1)
    assert ld.steps_per_epoch == 2
    epochs = [np.concatenate([b["x"] for b in take(ld, 2)]) for _ in range(3)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(N))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    again = DataLoader(list(range(N)), ids_collate, 5, seed=3, process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in take(again, 2)]), epochs[0])


@pytest.mark.parametrize("stop", [1, 3, 4])  # mid-epoch, mid-epoch 2, epoch boundary
def test_resume_equals_uninterrupted_run(stop):
    make = lambda: DataLoader(
        list(range(7)), ids_collate, 3, seed=11, process_index=0, process_count=1
    )
    full = [b["x"].tolist() for b in take(make(), 8)]
    first = make()
    head = [b["x"].tolist() for b in take(first, stop)]
    state = json.loads(json.dumps(first.get_state()))  # what the checkpoint stores
    assert state["next_batch"] == stop and state["epoch"] == stop // 2
    resumed = make()
    resumed.set_state(state)
    assert head + [b["x"].tolist() for b in take(resumed, 8 - stop)] == full
    other = DataLoader(list(range(7)), ids_collate, 3, seed=12, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_a_malformed_or_inconsistent_state_is_refused_naming_the_field():
    ld = DataLoader(list(range(7)), ids_collate, 3, seed=11, process_index=0, process_count=1)
    take(ld, 4)
    state = json.loads(json.dumps(ld.get_state()))
    assert state["epoch"] == 2  # 7 records / 3 = 2 batches per epoch
    DataLoader.check_state(state)
    for bad, match in [
        ({"next_batch": "4"}, r"next_batch='4' is not a non-negative int"),
        ({"next_batch": -1}, r"next_batch=-1 is not a non-negative int"),
        ({"shuffle": 1}, r"shuffle=1 is not a bool"),
        ({"num_records": 70}, r"next_batch=4 is not epoch=2 × 23 batches \(70 records / 3\)"),
        ({"step_in_epoch": 1}, r"inconsistent"),
        ({"global_batch_size": 0}, r"inconsistent"),
    ]:
        with pytest.raises(ValueError, match=match):
            ld.set_state({**state, **bad})
    with pytest.raises(ValueError, match="list, not an object"):
        DataLoader.check_state([4])


def test_process_slices_concatenate_to_global_batch():
    single = DataLoader(
        list(range(N * 2)), ids_collate, 8, seed=2, process_index=0, process_count=1
    )
    parts = [
        DataLoader(list(range(N * 2)), ids_collate, 8, seed=2, process_index=p, process_count=2)
        for p in range(2)
    ]
    for _ in range(5):
        g = next(single)["x"]
        local = [next(p)["x"] for p in parts]
        assert all(x.shape == (4,) for x in local)
        np.testing.assert_array_equal(np.concatenate(local), g)
    with pytest.raises(ValueError, match="divisible"):
        DataLoader(list(range(N)), ids_collate, 5, process_index=0, process_count=2)


def test_finite_pass_pads_and_masks_last_batch():
    seen, valid = [], []
    for p in range(2):
        ld = DataLoader(
            list(range(N)),
            ids_collate,
            4,
            shuffle=False,
            num_epochs=1,
            process_index=p,
            process_count=2,
        )
        assert len(ld) == 3
        for b in ld:
            seen += b["x"][b["valid"] == 1].tolist()
            valid.append(b["valid"].tolist())
    assert sorted(seen) == list(range(N))
    assert valid[2] == [1.0, 1.0] and valid[5] == [0.0, 0.0]  # rows 10, 11 of the last batch


def test_real_batches_from_synthetic_split():
    tok = micro_tokenizer()
    src = load_samples(
        synthetic_dir(),
        "train",
        {"n_samples": 24, "difficulty_bins": {"all": [1, 3]}, "difficulty_weights": {"all": 1.0}},
        seed=0,
    )
    ld = DataLoader(src, AlpacaCollator(tok, 256), 8, seed=0, process_index=0, process_count=1)
    b = next(ld)
    assert (
        b["input_ids"].shape == b["labels"].shape == (8, 256) and b["input_ids"].dtype == np.int32
    )
    assert (b["input_ids"][:, 0] == tok.bos_token_id).all() and (b["is_correct"] == 1).all()
    # every row ends its labels with EOS (outputs are short, nothing truncated)
    last = b["attention_mask"].sum(1) - 1
    assert (b["labels"][np.arange(8), last] == tok.eos_token_id).all()
    val = DataLoader(
        src,
        AlpacaCollator(tok, 256),
        16,
        shuffle=False,
        num_epochs=1,
        process_index=0,
        process_count=1,
    )
    batches = list(val)
    assert len(batches) == 2 and batches[1]["valid"].sum() == 8
    assert (batches[1]["labels"][8:] == -100).all()
