"""Pipeline loss functions: hand-checked pieces, no gradient into frozen models, and every
pipeline's loss falling when the generic train step overfits one fixed batch (tiny models)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmtp_jax import ops, weighting
from wmtp_jax.configs import common as common_cfg
from wmtp_jax.models import ModelArgs
from wmtp_jax.models.mtp import MTPTransformer
from wmtp_jax.pipelines import baseline, critic, ref_tuning, rho1, verifiable
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.loop import TrainTask
from wmtp_jax.train.step import build

V, S, B = 48, 12, 4
ARGS = ModelArgs(
    dim=32, n_layers=3, n_heads=2, vocab_size=V, multiple_of=16, n_future_tokens=2, max_seq_len=S
)  # 1 trunk block + 2 head blocks


class ToyCritic(nnx.Module):
    """values = sigmoid(embedding · w) [B,S,1]; has a `value_head` like the real critic."""

    def __init__(self, rngs):
        self.emb = nnx.Param(jax.random.normal(rngs.params(), (V, 8)))
        self.value_head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, ids, attention_mask=None):
        return jax.nn.sigmoid(self.value_head(self.emb[...][ids]))


class ToyLM(nnx.Module):
    """An embedding + linear NTP model `[B,S,V]` (stands in for the HF-layout llama)."""

    def __init__(self, rngs):
        self.emb = nnx.Embed(V, 16, rngs=rngs)
        self.out = nnx.Linear(16, V, rngs=rngs)

    def __call__(self, ids, attention_mask=None, *, segment_ids=None, positions=None):
        return self.out(self.emb(ids))


def pointwise_batch(seed=0):
    r = np.random.RandomState(seed)
    ids = r.randint(4, V, size=(B, S)).astype(np.int32)
    am = np.ones((B, S), np.int32)
    am[1, 9:] = 0
    labels = np.where(am == 1, ids, -100).astype(np.int32)
    labels[:, :3] = -100  # prompt
    return {
        "input_ids": ids,
        "attention_mask": am,
        "labels": labels,
        "is_correct": np.ones((B,), np.float32),
        "valid": np.ones((B,), np.float32),
    }


def pairwise_batch():
    p, n = pointwise_batch(1), pointwise_batch(2)
    out = {f"pos_{k}": v for k, v in p.items() if k not in ("is_correct", "valid")}
    out.update({f"neg_{k}": v for k, v in n.items() if k not in ("is_correct", "valid")})
    out["valid"] = np.ones((B,), np.float32)
    return out


def config(lr=3e-2):
    c = common_cfg.get_config("test", "micro")
    c.training.learning_rate = lr
    c.training.lr_scheduler.type = "constant"
    c.runtime.sharding = "NO_SHARD"
    return c


def overfit(task, batch, steps=8, lr=3e-2, ga=1):
    c = config(lr)
    c.training.gradient_accumulation_steps = ga
    mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    comp = build(task, c, mesh, steps)
    stacked = mesh_lib.shard_batch({k: np.stack([v] * ga) for k, v in batch.items()}, mesh, True)
    state, losses = comp.state, []
    for _ in range(steps):
        state, m = comp.train_step(state, comp.fixed, comp.frozen_state, stacked)
        losses.append(float(m["loss"]))
    assert all(np.isfinite(losses)), losses
    return losses, state, comp


def policy():
    return MTPTransformer(ARGS, rngs=nnx.Rngs(0))


WC = weighting.WeightingConfig(beta=1.0, min_weight=0.1, max_weight=3.0)


# ---- verifiable ------------------------------------------------------------------------------


def test_ema_fold_over_micro_batches_equals_update_on_whole_effective_batch():
    r = np.random.RandomState(0)
    a1, a2 = r.randn(2, 7).astype(np.float32), 3 + r.randn(2, 7).astype(np.float32)
    m1, m2 = (r.rand(2, 7) > 0.3).astype(np.float32), (r.rand(2, 7) > 0.3).astype(np.float32)
    extra = weighting.init_extra(0.1, 2)
    e1 = weighting.advance_extra(extra, a1, m1, ga=2)
    np.testing.assert_array_equal(e1["ema"].mean, 0.0)  # no update mid-step
    e2 = weighting.advance_extra(e1, a2, m2, ga=2)
    want = ops.td_ema_update(
        ops.td_ema_init(0.1, 2), np.concatenate([a1, a2]), np.concatenate([m1, m2])
    )
    np.testing.assert_allclose(e2["ema"].mean, want.mean, rtol=1e-5)
    np.testing.assert_allclose(e2["ema"].std, want.std, rtol=1e-5)
    assert int(e2["ema"].step_count) == 1 and int(e2["micro"]) == 0
    np.testing.assert_array_equal(e2["acc"]["n"], 0.0)


def test_token_weights_batch_formula_and_ema_stats():
    values = jnp.asarray([[0.5, 0.6, 0.4, 0.9, 0.9]], jnp.float32)
    mask = jnp.asarray([[0, 1, 1, 1, 0]], jnp.float32)
    wc = WC._replace(advantage="td")
    w, adv, (mu, sd) = weighting.token_weights(values, jnp.ones((1,)), mask, wc, None)
    # td: δ_t = v_t − v_{t−1}, terminal (t=3) R − v_3 = 0.1
    np.testing.assert_allclose(adv[0], [0, 0.1, -0.2, 0.1, 0], atol=1e-6)
    a = np.array([0.1, -0.2, 0.1])
    want = np.clip(np.exp((a - a.mean()) / (a.std(ddof=1) + 1e-8)), 0.1, 3.0)
    np.testing.assert_allclose(w[0, 1:4], want, rtol=1e-5)
    assert float(w[0, 0]) == 0 and float(w[0, 4]) == 0
    ema = ops.td_ema_init()._replace(mean=jnp.float32(0.1), std=jnp.float32(0.5))
    w2, _, (mu2, sd2) = weighting.token_weights(values, jnp.ones((1,)), mask, wc, ema)
    np.testing.assert_allclose(w2[0, 1:4], np.clip(np.exp((a - 0.1) / 0.5), 0.1, 3.0), rtol=1e-5)
    assert float(mu2) == pytest.approx(0.1) and float(sd2) == pytest.approx(0.5)


def test_batch_weights_equal_build_weights_with_the_batch_moments():
    """The one batch whitening (verifiable validation and the critic-credit study): μ, σ are the
    masked mean and unbiased std, and the weights are those of build_weights given them."""
    r = np.random.RandomState(3)
    adv = r.randn(3, 6).astype(np.float32)
    mask = (r.rand(3, 6) > 0.3).astype(np.float32)
    w, (mu, sd) = weighting.batch_weights(adv, mask, WC)
    a = adv[mask > 0].astype(np.float64)
    assert float(mu) == pytest.approx(a.mean(), rel=1e-5)
    assert float(sd) == pytest.approx(a.std(ddof=1), rel=1e-5)
    want = ops.build_weights(adv, mask, 1.0, 0.1, 3.0, mu, sd)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(want))


def test_verifiable_critic_gets_no_gradient_and_weights_vary():
    pol, crit = policy(), ToyCritic(nnx.Rngs(1))
    batch = {k: jnp.asarray(v) for k, v in pointwise_batch().items()}
    extra = weighting.init_extra(0.1, 2)
    gd, cstate = nnx.split(crit, nnx.Param)

    def loss_of_critic(cs):
        c = nnx.merge(gd, cs)
        return verifiable.loss_fn(pol, c, batch, None, extra, wc=WC, ga=1)

    g, (metrics, new_extra) = jax.jit(jax.grad(loss_of_critic, has_aux=True))(cstate)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))
    assert float(metrics["weight/std"]) > 1e-3  # weights are not all equal
    assert int(new_extra["ema"].step_count) == 1


def test_verifiable_controls_keep_the_mean_weight_and_move_the_weights():
    """random_weights (permute) and oracle: the same mean weight over the valid tokens as the
    method's weights in that batch, other placement, another loss; the EMA is the method's."""
    pol, crit = policy(), ToyCritic(nnx.Rngs(1))
    batch = {k: jnp.asarray(v) for k, v in pointwise_batch().items()}
    batch["critical"] = jnp.zeros((B, S), jnp.float32).at[:, 5:7].set(1.0)
    extra = weighting.init_extra(0.1, 2)
    key = jax.random.key(0)
    run = lambda control: verifiable.loss_fn(
        pol, crit, batch, key, extra, wc=WC, ga=1, control=control
    )
    base, (mb, eb) = run(("none", 1.0))
    for control in (("permute", 1.0), ("oracle", 4.0)):
        loss, (m, e) = run(control)
        assert float(m["weight/mean"]) == pytest.approx(float(mb["weight/mean"]), rel=1e-5)
        assert abs(float(loss) - float(base)) > 1e-4
        np.testing.assert_array_equal(e["ema"].mean, eb["ema"].mean)
    assert float(run(("oracle", 4.0))[1][0]["weight/max"]) == pytest.approx(
        4 * float(run(("oracle", 4.0))[1][0]["weight/min"]), rel=1e-5
    )


def test_verifiable_loss_falls_overfitting_with_ema_over_accumulation():
    wc = WC._replace(advantage="gae", whitening="ema")
    task = TrainTask(
        model=policy(),
        frozen=ToyCritic(nnx.Rngs(1)),
        train_iter=iter(()),
        loss_fn=lambda *a: verifiable.loss_fn(*a, wc=wc, ga=2),
        extra_state=weighting.init_extra(0.1, 2),
    )
    losses, state, _ = overfit(task, pointwise_batch(), ga=2)
    assert losses[-1] < 0.6 * losses[0], losses
    assert int(state["extra"]["ema"].step_count) == len(losses)


def test_verifiable_use_negatives_stacks_pairs():
    ids, am, labels, rewards = verifiable.rows(
        {k: jnp.asarray(v) for k, v in pairwise_batch().items()}
    )
    assert ids.shape == (2 * B, S)
    np.testing.assert_array_equal(rewards, [1] * B + [0] * B)


# ---- the other pipelines ----------------------------------------------------------------------


def test_baseline_chunked_loss_equals_dense():
    pol = policy()
    batch = {k: jnp.asarray(v) for k, v in pointwise_batch().items()}
    f = nnx.jit(
        lambda p, cs: baseline.loss_fn(p, None, batch, None, {}, chunk_size=cs)[0], static_argnums=1
    )
    np.testing.assert_allclose(f(pol, 16), f(pol, 0), rtol=1e-5)


def test_baseline_ntp_trains_head_0_only():
    """loss_heads = 1 (the ntp control): the loss is head 0's CE of the full MTP loss, dense and
    chunked, and heads 1..K-1 get no gradient."""
    pol = policy()
    batch = {k: jnp.asarray(v) for k, v in pointwise_batch().items()}
    full = baseline.loss_fn(pol, None, batch, None, {})[1][0]
    for cs in (0, 16):
        got = nnx.jit(
            lambda p, cs=cs: baseline.loss_fn(p, None, batch, None, {}, chunk_size=cs, n_future=1)
        )(pol)
        np.testing.assert_allclose(got[0], full["ce_head_0"], rtol=1e-5)
        assert list(got[1][0]) == ["ce_head_0"]
    grads = nnx.grad(lambda p: baseline.loss_fn(p, None, batch, None, {}, n_future=1)[0])(pol)
    heads = nnx.to_pure_dict(nnx.state(grads, nnx.Param))["heads"]
    per_head = jax.tree.map(lambda g: jnp.abs(g).reshape(g.shape[0], -1).sum(1), heads)
    norms = sum(jax.tree.leaves(per_head))
    assert float(norms[0]) > 0 and float(jnp.abs(norms[1:]).sum()) == 0.0


def test_baseline_loss_falls_overfitting():
    task = TrainTask(model=policy(), train_iter=iter(()), loss_fn=baseline.loss_fn)
    losses, _, _ = overfit(task, pointwise_batch())
    assert losses[-1] < 0.5 * losses[0], losses


def test_rho1_selection_from_one_forward_and_loss_falls():
    pol, ref = policy(), ToyLM(nnx.Rngs(2))
    batch = {k: jnp.asarray(v) for k, v in pointwise_batch().items()}
    out, w, stats, m = nnx.jit(
        lambda p, r: rho1.selective_loss(p, r, batch, k_percent=0.5, mode="signed")
    )(pol, ref)
    assert w.shape == (B, S, ARGS.n_future_tokens)
    assert 0.45 <= float(stats["selection_ratio"]) <= 0.7
    # the weighted CE is Σ(ce·sel)/#valid per head: at most the unweighted CE
    assert float(out["weighted_ce_loss"]) < float(out["unweighted_ce_loss"])
    task = TrainTask(
        model=policy(),
        frozen=ref,
        train_iter=iter(()),
        loss_fn=lambda *a: rho1.loss_fn(*a, k_percent=0.6, mode="signed"),
    )
    losses, _, _ = overfit(task, pointwise_batch())
    assert losses[-1] < 0.6 * losses[0], losses


def test_ref_tuning_ntp_loss_falls():
    task = TrainTask(model=ToyLM(nnx.Rngs(3)), train_iter=iter(()), loss_fn=ref_tuning.loss_fn)
    losses, _, _ = overfit(task, pointwise_batch(), lr=1e-1)
    assert losses[-1] < 0.5 * losses[0], losses


def test_critic_pairwise_loss_values_and_training():
    vl = critic.ValueLossConfig(type="pairwise_ranking")
    v = jnp.full((B, S), 0.5)
    m = jnp.ones((B, S))
    batch = {k: jnp.asarray(x) for k, x in pairwise_batch().items()}
    assert float(critic.value_loss(v, v, m, m, batch, vl, 1.0)) == pytest.approx(np.log(2), 1e-6)
    batch["valid"] = jnp.asarray([1, 1, 0, 0], jnp.float32)  # padding rows do not count
    v_pos = v.at[:2].add(1.0)
    want = -np.log(1 / (1 + np.exp(-1.0)))
    assert float(critic.value_loss(v_pos, v, m, m, batch, vl, 1.0)) == pytest.approx(want, 1e-5)
    for loss_type in ("pairwise_ranking", "lambda_return", "first_divergence", "prefix_mc"):
        vl = critic.ValueLossConfig(
            type=loss_type, loss_fn="mse", schedule=("linear", 1.0, 0.95, 2, 4)
        )
        task = TrainTask(
            model=ToyCritic(nnx.Rngs(4)),
            train_iter=iter(()),
            loss_fn=lambda *a, vl=vl: critic.loss_fn(*a, vl=vl, ga=1),
            extra_state={"micro_batches": jnp.zeros((), jnp.int32)},
            trainable=nnx.Param,
        )
        pb = pairwise_batch()
        pb["pos_value_target"] = np.full((B, S), 0.5, np.float32)
        pb["pos_value_target"][:, 6:] = 1.0
        pb["neg_value_target"] = np.full((B, S), 0.5, np.float32)
        pb["neg_value_target"][:, 6:] = 0.0
        losses, state, _ = overfit(task, pb, lr=1e-1)
        assert losses[-1] < 0.85 * losses[0], (loss_type, losses)
        assert int(state["extra"]["micro_batches"]) == len(losses)


def test_critic_lambda_schedule_follows_step():
    vl = critic.ValueLossConfig(type="lambda_return", schedule=("linear", 1.0, 0.9, 2, 4))
    crit = ToyCritic(nnx.Rngs(5))
    batch = {k: jnp.asarray(x) for k, x in pairwise_batch().items()}
    lams = [
        float(
            critic.loss_fn(
                crit, None, batch, None, {"micro_batches": jnp.int32(s * 2)}, vl=vl, ga=2
            )[1][0]["lambda"]
        )
        for s in (0, 2, 4, 6, 9)
    ]
    np.testing.assert_allclose(lams, [1.0, 1.0, 0.95, 0.9, 0.9], atol=1e-6)
