"""LR schedule vs the original's formulas, clipping stats, AdamW groups."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from wmtp_jax.train.optimizer import clip_by_global_norm, lr_schedule, make_optimizer


def ref_lr(s, base, total, kind, warmup_ratio, min_ratio):
    """The original's SequentialLR(LinearLR(1e-8), Cosine/Linear) value after s scheduler steps."""
    wraw = int(total * warmup_ratio)
    d, w = total - wraw, max(wraw, 1)
    if kind == "constant" or d <= 0:
        return base
    if s < w:
        return base * (1e-8 + (1 - 1e-8) * s / w)
    if kind == "cosine":
        eta = base * min_ratio
        return eta + (base - eta) * (1 + math.cos(math.pi * (s - w) / d)) / 2
    e = min_ratio if min_ratio > 0 else 1e-8
    return base * (1 + (e - 1) * min(s - w, d) / d)


@pytest.mark.parametrize(
    "kind,total,warm,minr",
    [
        ("cosine", 100, 0.05, 0.1),
        ("cosine", 1000, 0.03, 0.005),
        ("linear", 50, 0.1, 0.0),
        ("linear", 40, 0.0, 0.5),
        ("constant", 100, 0.05, 0.1),
        ("cosine", 10, 0.01, 0.0),
    ],
)
def test_schedule_matches_reference_formulas(kind, total, warm, minr):
    sched = lr_schedule(3e-4, total, kind, warm, minr)
    for s in sorted(
        {0, 1, 2, int(total * warm), int(total * warm) + 1, total // 2, total - 1, total}
    ):
        np.testing.assert_allclose(
            float(sched(s)),
            ref_lr(s, 3e-4, total, kind, warm, minr),
            rtol=2e-6,
            atol=1e-12,
            err_msg=f"step {s}",
        )


def test_schedule_hand_values():
    # total 100, warmup int(5) steps, cosine to 0.1·base: hand-computed points.
    sched = lr_schedule(1.0, 100, "cosine", 0.05, 0.1)
    assert float(sched(0)) == pytest.approx(1e-8)
    assert float(sched(1)) == pytest.approx(0.2, rel=1e-6)
    assert float(sched(5)) == pytest.approx(1.0)
    # s = 5 + 95/2: cos(π/2) = 0 → 0.1 + 0.9/2
    assert float(lr_schedule(1.0, 100, "cosine", 0.05, 0.1)(52.5)) == pytest.approx(0.55, rel=1e-6)
    assert float(sched(100)) == pytest.approx(0.1, rel=1e-6)
    # warmup_ratio 0 still gives W = max(0, 1) = 1 (first step ≈ 0), D = 100: 2·(1 − 0.5·49/100)
    assert float(lr_schedule(2.0, 100, "linear", 0.0, 0.5)(0)) == pytest.approx(2e-8)
    assert float(lr_schedule(2.0, 100, "linear", 0.0, 0.5)(50)) == pytest.approx(1.51, rel=1e-6)


def test_clip_stats():
    g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # norm 5
    clipped, st = clip_by_global_norm(g, 1.0)
    assert float(st["grad_norm_pre_clip"]) == pytest.approx(5.0)
    assert float(st["grad_norm"]) == pytest.approx(1.0)
    assert float(st["grad_clip_ratio"]) == pytest.approx(0.2)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    _, st = clip_by_global_norm(g, 10.0)
    assert (float(st["grad_norm"]), float(st["grad_clip_ratio"])) == pytest.approx((5.0, 1.0))
    kept, st = clip_by_global_norm(g, 0.0)  # ≤ 0: no clipping, norm still reported
    assert float(st["grad_norm_pre_clip"]) == pytest.approx(5.0) and kept is g
    _, st = clip_by_global_norm({"a": jnp.zeros(3)}, 1.0)
    assert float(st["grad_clip_ratio"]) == 1.0


def _training(lr=0.1, kind="constant"):
    return ml_collections.ConfigDict(
        {
            "learning_rate": lr,
            "lr_scheduler": {"type": kind, "warmup_ratio": 0.0, "min_lr_ratio": 0.0},
        }
    )


def test_adamw_matches_torch_formula():
    # one AdamW step: p ← p − lr·(m̂/(√v̂+eps) + wd·p); first step m̂/√v̂ = sign(g).
    tx, _ = make_optimizer(_training(0.1), 10)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, -0.25])}
    up, _ = tx.update(g, tx.init(p), p)
    new = optax.apply_updates(p, up)
    want = np.array([1.0, -2.0]) - 0.1 * (
        np.sign([0.5, -0.25]) * (1 - 1e-8 / np.array([0.5, 0.25])) + 0.01 * np.array([1.0, -2.0])
    )
    np.testing.assert_allclose(new["w"], want, rtol=1e-6)


def test_param_groups_have_their_own_lr_and_decay():
    labels = {"lora": "lora", "head": "value_head"}
    tx, scheds = make_optimizer(
        _training(0.1),
        10,
        labels,
        {
            "lora": {"learning_rate": 0.1},
            "value_head": {"learning_rate": 0.01, "weight_decay": 0.0},
        },
    )
    assert set(scheds) == {"lora", "value_head"}
    p = {"lora": jnp.ones(2), "head": jnp.ones(2)}
    g = jax.tree.map(jnp.ones_like, p)
    up, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(up["lora"], -0.1 * (1 + 0.01) * np.ones(2), rtol=1e-5)
    np.testing.assert_allclose(up["head"], -0.01 * np.ones(2), rtol=1e-5)
