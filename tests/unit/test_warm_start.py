"""The NTP→MTP warm start (`training.warm_start`) on a tiny random tied llama converted with
hf-to-mtp: while it lasts, head 0's logits are bit-for-bit those of the source model and heads
1..K−1 train; without it, head 0 moves from the first step. auto = on for hf-to-mtp dirs only."""

import jax
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from configs import baseline as baseline_config
from conversion.hf import hf_to_mtp
from wmtp_jax.models.load import load_trainable, trainable_filter
from wmtp_jax.models.serialization import load_params, load_policy, read_config, save_model
from wmtp_jax.pipelines import baseline, specs
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.loop import TrainTask
from wmtp_jax.train.step import build

V, S, B, K = 64, 16, 8, 3
STEPS = 3


@pytest.fixture(scope="module")
def mtp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("warm")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(d / "hf")
    hf_to_mtp(d / "hf", d / "mtp", n_future=K)
    return d / "mtp"


def _config(path, mode, steps=STEPS):
    c = baseline_config.get_config("micro")
    with c.unlocked():
        c.models.policy.path = str(path)
        c.training.update(learning_rate=1e-2, batch_size=B, max_grad_norm=1.0)
        c.training.warm_start.update(mode=mode, steps=steps)
    return c


def _train(config, n_steps=STEPS):
    """(head logits [B,S,K,V] before, after `n_steps` optimizer steps) of the policy in config."""
    mesh = mesh_lib.mesh_from_config(config)
    policy = load_trainable(
        config.models.policy.path,
        kind="mtp",
        runtime=specs.runtime(config),
        rules=mesh_lib.rules_for(config.runtime.sharding).params,
        lora=specs.lora(config),
        mesh=mesh,
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (1, B, S)).astype(np.int32)
    labels = np.where(np.arange(S) < 4, -100, ids).astype(np.int32)  # prompt tokens masked
    batch = {"input_ids": ids, "labels": labels, "attention_mask": np.ones_like(ids)}
    task = TrainTask(
        model=policy,
        loss_fn=baseline.loss_fn,
        train_iter=iter(()),
        trainable=trainable_filter(config.training.use_lora),
        **baseline.policy_task_kwargs(config),
    )
    c = build(task, config, mesh, total_steps=10)
    logits = lambda state: np.asarray(c.model(state)(jax.numpy.asarray(ids[0])))
    before = logits(c.state)
    state, sb = c.state, mesh_lib.shard_batch(batch, mesh, stacked=True)
    for _ in range(n_steps):
        state, metrics = c.train_step(state, c.fixed, c.frozen_state, sb)
    assert {f"ce_head_{k}" for k in range(K)} <= set(metrics)
    return before, logits(state)


def test_auto_is_on_for_hf_to_mtp_only(mtp_dir, tmp_path):
    assert "hf_to_mtp" in read_config(mtp_dir)["source"]
    assert baseline.warm_start_steps(_config(mtp_dir, "auto")) == STEPS
    assert baseline.warm_start_steps(_config(mtp_dir, "off")) == 0
    # the same weights without the hf-to-mtp record (e.g. a Meta MTP checkpoint): trained heads
    save_model(
        tmp_path / "meta",
        load_params(mtp_dir)[1],
        kind="mtp",
        args=load_policy(mtp_dir).args,
        source={"format": "meta"},
    )
    assert baseline.warm_start_steps(_config(tmp_path / "meta", "auto")) == 0
    assert baseline.warm_start_steps(_config(tmp_path / "meta", "on")) == STEPS


def test_warm_start_keeps_head0_while_extra_heads_train(mtp_dir):
    before, after = _train(_config(mtp_dir, "auto"))
    np.testing.assert_array_equal(after[:, :, 0], before[:, :, 0])  # bit for bit
    for k in range(1, K):
        assert np.abs(after[:, :, k] - before[:, :, k]).max() > 1e-3


def test_without_warm_start_head0_changes(mtp_dir):
    before, after = _train(_config(mtp_dir, "off"))
    assert np.abs(after[:, :, 0] - before[:, :, 0]).max() > 1e-3
    for k in range(1, K):
        assert np.abs(after[:, :, k] - before[:, :, k]).max() > 1e-3


def test_head0_trains_after_the_warm_start(mtp_dir):
    before, after = _train(_config(mtp_dir, "on", steps=1), n_steps=2)
    assert np.abs(after[:, :, 0] - before[:, :, 0]).max() > 1e-3
