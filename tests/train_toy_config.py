"""Config file of the toy pipeline:
`python -m tests.train_toy --config=tests/train_toy_config.py`."""

import ml_collections

from wmtp_jax.configs import common


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("train_toy", variant)
    c.mlflow.experiment = ""
    c.training.max_steps = 6
    c.training.batch_size = 8
    c.training.log_interval = 1
    c.training.eval_every_steps = 3
    c.checkpoint.every_steps = 2
    c.toy = ml_collections.ConfigDict({"sleep": 0.0, "nan_after": -1, "dropout": 0.1})
    return common.finalize(c)


def config_in(output_dir, **overrides) -> ml_collections.ConfigDict:
    """The toy config writing to `output_dir`, with dotted-key overrides
    (`config_in(d, **{"training.max_steps": 4})`)."""
    c = get_config()
    with c.unlocked():
        c.output_dir = str(output_dir)
        for key, value in overrides.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c
