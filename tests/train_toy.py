"""A toy NNX LM + toy data + toy pipeline for the training-runtime tests.

Also a pipeline with its own command line, `wmtp_jax.main.cli` running this module's `run`:
`python -m tests.train_toy --config=tests/train_toy_config.py [--config.k=v ...]`.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ToyLM(nnx.Module):
    """Embedding → GELU MLP (with dropout) → vocab logits, plus a scalar `value_head`."""

    def __init__(self, vocab=16, dim=8, hidden=16, dropout=0.0, seed=0, *, rngs: nnx.Rngs):
        g = np.random.default_rng(seed)  # numpy init: no per-op compilation in tests
        init = lambda shape: jnp.asarray(g.normal(0.0, 0.5, shape), jnp.float32)
        with nnx.use_eager_sharding(False):
            self.embed = nnx.Param(init((vocab, dim)), out_sharding=("vocab", "embed"))
            self.w1 = nnx.Param(init((dim, hidden)), out_sharding=("embed", "mlp"))
            self.w2 = nnx.Param(init((hidden, vocab)), out_sharding=("mlp", "vocab"))
            self.value_head = nnx.Param(jnp.zeros((dim,)), out_sharding=("embed",))
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed[...][tokens]
        h = self.drop(jax.nn.gelu(x @ self.w1[...]))
        return h @ self.w2[...], x @ self.value_head[...]


def toy_loss(model, frozen, batch, rng, extra, nan_after=-1, rng_weights=True):
    """Next-token CE with random token weights (so RNG matters) + an EMA extra state."""
    tok = batch["input_ids"]
    logits, value = model(tok[:, :-1])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), tok[:, 1:, None], -1)[
        ..., 0
    ]
    w = (
        jax.random.bernoulli(rng, 0.8, ce.shape).astype(jnp.float32)
        if rng_weights
        else jnp.ones_like(ce)
    )
    loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0) + 0.01 * jnp.mean(value**2)
    if frozen is not None:
        loss = loss + 0.0 * jnp.sum(frozen(tok)[1])
    n = extra["n"] + 1
    if nan_after >= 0:
        loss = jnp.where(n > nan_after, jnp.nan, loss)
    ema = jnp.where(extra["n"] == 0, loss, 0.9 * extra["ema"] + 0.1 * loss)
    return loss, ({"ce": jnp.mean(ce), "ema": ema}, {"ema": ema, "n": n})


def toy_eval(model, frozen, batch, extra):
    tok = batch["input_ids"]
    logits, _ = model(tok[:, :-1])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, 1:, None], -1)[..., 0]
    return {"loss": jnp.mean(ce)}


class ToyData:
    """Deterministic per-process batches over `n_rows` random sequences; reshuffled per epoch."""

    def __init__(
        self,
        n_rows=64,
        seq=9,
        vocab=16,
        batch=4,
        seed=0,
        sleep=0.0,
        process_index=None,
        process_count=None,
        sigterm_at=-1,
    ):
        self.rows = np.random.default_rng(seed).integers(0, vocab, (n_rows, seq), dtype=np.int32)
        self.batch, self.seed, self.sleep = batch, seed, sleep
        self.pi = jax.process_index() if process_index is None else process_index
        self.pc = jax.process_count() if process_count is None else process_count
        self.epoch, self.index = 0, 0
        self.calls, self.sigterm_at = 0, sigterm_at

    def _order(self):
        return np.random.default_rng(self.seed + 1000 * self.epoch).permutation(len(self.rows))[
            self.pi :: self.pc
        ]

    def __iter__(self):
        return self

    def __next__(self):
        order = self._order()
        if self.index + self.batch > len(order):
            self.epoch, self.index = self.epoch + 1, 0
            order = self._order()
        rows = self.rows[order[self.index : self.index + self.batch]]
        self.index += self.batch
        if self.sleep:
            time.sleep(self.sleep)
        self.calls += 1
        if self.calls == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"input_ids": rows}

    def get_state(self):
        return {"epoch": self.epoch, "index": self.index}

    @staticmethod
    def check_state(s):
        if not (isinstance(s, dict) and all(type(s.get(k)) is int for k in ("epoch", "index"))):
            raise ValueError(f"toy data state {s!r} is not {{epoch: int, index: int}}")

    def set_state(self, s):
        self.epoch, self.index = int(s["epoch"]), int(s["index"])


def make_task(
    config,
    *,
    dropout=0.1,
    n_rows=64,
    sleep=0.0,
    nan_after=-1,
    groups=False,
    frozen=False,
    rng_weights=True,
    sigterm_at=-1,
):
    from wmtp_jax.train import TrainTask

    per_proc = config.training.batch_size // jax.process_count()
    model = ToyLM(dropout=dropout, seed=config.seed, rngs=nnx.Rngs(dropout=config.seed + 1))
    kw = {}
    if groups:
        kw = dict(
            param_labels=lambda p: "value_head" if p.startswith("value_head") else "lm",
            param_groups={
                "lm": {"learning_rate": config.training.learning_rate},
                "value_head": {
                    "learning_rate": 10 * config.training.learning_rate,
                    "weight_decay": 0.0,
                },
            },
        )
    return TrainTask(
        model=model,
        loss_fn=lambda m, f, b, r, e: toy_loss(m, f, b, r, e, nan_after, rng_weights),
        train_iter=ToyData(
            n_rows=n_rows, batch=per_proc, seed=config.seed, sleep=sleep, sigterm_at=sigterm_at
        ),
        frozen=ToyLM(seed=7, rngs=nnx.Rngs(7)) if frozen else None,
        extra_state={"ema": jnp.zeros((), jnp.float32), "n": jnp.zeros((), jnp.int32)},
        eval_fn=toy_eval,
        val_iter_fn=lambda: iter(
            [{"input_ids": ToyData(n_rows=8, batch=per_proc, seed=99).rows[:per_proc]}]
        ),
        **kw,
    )


# ---- as a pipeline for wmtp_jax.main (config file: tests/train_toy_config.py) ------------------


def run(config):
    from wmtp_jax.train import fit
    from wmtp_jax.train.lock import claim_output_dir

    claim_output_dir(config.output_dir)  # as pipelines.bootstrap.setup: refuse before building
    task = make_task(
        config, dropout=config.toy.dropout, sleep=config.toy.sleep, nan_after=config.toy.nan_after
    )
    return fit(config, task)


CACHE_DIR = "/tmp/wmtp_jax_test_jax_cache"


def enable_compilation_cache():
    """Persistent XLA cache: identical step programs across fits/subprocesses compile once."""
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def cache_env() -> dict:
    return {
        "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


if __name__ == "__main__":
    from wmtp_jax import main  # here: importing the tests' toy must not define the CLI flags

    main.cli(pipeline=sys.modules[__name__])
