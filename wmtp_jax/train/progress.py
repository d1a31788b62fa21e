"""A tqdm progress bar over optimizer steps (process 0 only), with loss and tokens/s."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            disable=not enabled,
            file=sys.stderr,
            mininterval=0.5,
        )
        self.n = initial

    def update(self, step: int):
        self.bar.update(step - self.n)
        self.n = step

    def postfix(self, **values: float):
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def close(self):
        self.bar.close()
