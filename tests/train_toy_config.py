"""Config file of the toy pipeline (tests/train_toy.py) for `python -m wmtp_jax.main`."""

import ml_collections

from wmtp_jax.configs import common


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    c = common.get_config("tests.train_toy", variant)
    c.mlflow.experiment = ""
    c.training.max_steps = 6
    c.training.batch_size = 8
    c.training.log_interval = 1
    c.training.eval_every_steps = 3
    c.checkpoint.every_steps = 2
    c.toy = ml_collections.ConfigDict({"sleep": 0.0, "nan_after": -1, "dropout": 0.1})
    return common.finalize(c)
