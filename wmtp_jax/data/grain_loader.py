"""Checkpointable, per-process-sharded batch loader on grain's MapDataset.

Global-batch semantics: for epoch e the N source indices are permuted by grain's index shuffle
with seed `seed + e` (a fresh, reproducible order each epoch; `shuffle=False` keeps 0..N-1) and cut
into global batches of G = `global_batch_size` (the last partial batch dropped for training, padded
for a finite pass). Process p of P yields rows [p*G/P, (p+1)*G/P) of every global batch, collated:
`[G/P, L]` arrays plus `valid` `[G/P]` float32 (0 on padded rows, whose `*labels` are all -100).
Each process reads only its own records. Concatenating all processes' batches gives the
single-process batch, so the data order does not depend on the process count.

`get_state()` is a JSON-serialisable dict (the next global-batch index plus a fingerprint of the
configuration); `set_state(state)` resumes at exactly that batch, across epoch boundaries too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from wmtp_jax.data.collate import IGNORE_INDEX


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


class DataLoader:
    """`for batch in loader` yields this process's slice of each global batch (dict of numpy).

    Args:
      source: random-access sequence of records (`len`, `[i]`), e.g. `sources.SampledSource`.
      collate_fn: `records -> dict[str, np.ndarray]` (AlpacaCollator / PairwiseCollator).
      global_batch_size: G, rows per step summed over processes; must divide by process_count.
      seed: shuffle seed. shuffle: permute each epoch. num_epochs: None = endless (training),
        an int = that many passes (validation: 1).
      drop_remainder: drop the last partial global batch of each epoch (default: True when
        endless); otherwise it is padded to G with `valid = 0` rows.
      process_index / process_count: default jax.process_index() / jax.process_count().
      prefetch: batches prepared ahead by `num_threads` reader threads.
    """

    def __init__(
        self,
        source: Sequence,
        collate_fn: Callable[[list], dict],
        global_batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        drop_remainder: bool | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 4,
        num_threads: int = 2,
    ):
        self.source, self.collate_fn = source, collate_fn
        self.global_batch_size, self.seed, self.shuffle = int(global_batch_size), int(seed), shuffle
        self.num_epochs = num_epochs
        self.drop_remainder = (num_epochs is None) if drop_remainder is None else drop_remainder
        self.process_index, self.process_count = _process_info(process_index, process_count)
        if self.global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by "
                f"process_count {self.process_count}"
            )
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} not in [0, {self.process_count})")
        self.local_batch_size = self.global_batch_size // self.process_count
        n = len(source)
        if n == 0 or (self.drop_remainder and n < self.global_batch_size):
            raise ValueError(
                f"source has {n} records, fewer than one global batch of {self.global_batch_size}"
            )
        self.steps_per_epoch = (
            n // self.global_batch_size if self.drop_remainder else -(-n // self.global_batch_size)
        )
        self._prefetch, self._threads = int(prefetch), int(num_threads)
        self._iter = iter(self._build())

    def _build(self) -> grain.IterDataset:
        ds = grain.MapDataset.range(len(self.source))
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed)
        ds = ds.batch(self.global_batch_size, drop_remainder=self.drop_remainder)
        ds = ds.repeat(self.num_epochs)  # reseeds the shuffle per epoch: seed + epoch
        ds = ds.map(self._load_local)
        opts = grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=self._prefetch)
        return ds.to_iter_dataset(opts)

    def _load_local(self, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.full(self.global_batch_size, -1, np.int64)
        idx[: len(global_indices)] = global_indices
        lo = self.process_index * self.local_batch_size
        local = idx[lo : lo + self.local_batch_size]
        valid = local >= 0
        fill = int(global_indices[0])  # padded rows repeat a real record, then get masked
        records = [self.source[int(i) if i >= 0 else fill] for i in local]
        batch = dict(self.collate_fn(records))
        for k, v in batch.items():
            if k.endswith("labels"):
                batch[k] = np.where(valid[:, None], v, IGNORE_INDEX).astype(v.dtype)
        batch["valid"] = valid.astype(np.float32)
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def __len__(self) -> int:
        """Batches in the whole run (sys.maxsize when endless)."""
        return sys.maxsize if self.num_epochs is None else self.steps_per_epoch * self.num_epochs

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "num_records": len(self.source),
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder,
        }

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: {"next_batch", "epoch", "step_in_epoch", **fingerprint}."""
        nxt = int(self._iter.get_state()["next_index"])
        return {
            "next_batch": nxt,
            "epoch": nxt // self.steps_per_epoch,
            "step_in_epoch": nxt % self.steps_per_epoch,
            **self._fingerprint(),
        }

    @staticmethod
    def check_state(state: Any) -> None:
        """ValueError unless `state` is a well-formed `get_state()` (types, and a position that
        agrees with its own record count and batch size); whether it fits this loader is
        `set_state`'s check."""
        if not isinstance(state, Mapping):
            raise ValueError(f"loader state is {type(state).__name__}, not an object")
        want = {"next_batch": int, "epoch": int, "step_in_epoch": int, "num_records": int}
        want |= {"global_batch_size": int, "seed": int, "shuffle": bool, "drop_remainder": bool}
        for k, t in want.items():
            v = state.get(k)
            if type(v) is not t or (t is int and v < 0 and k != "seed"):  # a bool is no int here
                kind = "a bool" if t is bool else "an int" if k == "seed" else "a non-negative int"
                raise ValueError(f"loader state {k}={v!r} is not {kind}")
        n, b, nxt = state["num_records"], state["global_batch_size"], state["next_batch"]
        steps = (n // b if state["drop_remainder"] else -(-n // b)) if b else 0
        if not steps or (state["epoch"], state["step_in_epoch"]) != divmod(nxt, steps):
            raise ValueError(
                f"loader state is inconsistent: next_batch={nxt} is not epoch={state['epoch']} "
                f"× {steps} batches ({n} records / {b}) + step_in_epoch={state['step_in_epoch']}"
            )

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resumes at `state["next_batch"]`; the data configuration must match the saved one."""
        self.check_state(state)
        mine = self._fingerprint()
        diff = {k: (state.get(k), v) for k, v in mine.items() if k in state and state[k] != v}
        if diff:
            raise ValueError(f"loader state does not match this loader (saved, current): {diff}")
        self._iter.set_state({"next_index": int(state["next_batch"])})
