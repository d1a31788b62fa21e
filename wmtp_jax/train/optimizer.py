"""AdamW with parameter groups, the original's LR schedule, and global-norm clipping with stats.

Schedule (as the original), with s = number of optimizer updates already applied (the LR of update
s+1), T = total steps, Wraw = int(T·warmup_ratio), D = T − Wraw, W = max(Wraw, 1), base = the
group's learning rate, η_min = base·min_lr_ratio:

    constant (or D ≤ 0):  lr = base                              (no warm-up, as the original)
    s < W:                lr = base·(1e-8 + (1 − 1e-8)·s/W)       (first update ≈ 0)
    cosine:               lr = η_min + (base − η_min)·(1 + cos(π·min(s−W, D)/D))/2
    linear:               lr = base·(1 + (e − 1)·min(s−W, D)/D),   e = min_lr_ratio or 1e-8 if 0

Deliberate difference: η_min is per group (the original used group 0's LR for every group).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.01
DEFAULT_GROUP = "default"
SCHEDULES = ("constant", "cosine", "linear")  # training.lr_scheduler.type


def lr_schedule(
    base_lr: float,
    total_steps: int,
    type: str = "constant",
    warmup_ratio: float = 0.05,
    min_lr_ratio: float = 0.0,
) -> Callable[[jax.Array], jax.Array]:
    """An optax schedule `count -> lr` implementing the formulas above (float32)."""
    wraw = int(total_steps * warmup_ratio)
    d = total_steps - wraw
    w = max(wraw, 1)
    if type == "constant" or d <= 0:
        return lambda count: jnp.asarray(base_lr, jnp.float32)
    if type not in SCHEDULES:
        raise ValueError(f"training.lr_scheduler.type={type!r}; one of {', '.join(SCHEDULES)}")
    eta_min = base_lr * min_lr_ratio
    end = min_lr_ratio if min_lr_ratio > 0 else 1e-8

    def schedule(count):
        s = jnp.asarray(count, jnp.float32)
        warm = base_lr * (1e-8 + (1 - 1e-8) * s / w)
        prog = jnp.clip(s - w, 0, d) / d
        if type == "cosine":
            main = eta_min + (base_lr - eta_min) * (1 + jnp.cos(math.pi * prog)) / 2
        else:
            main = base_lr * (
                (1 - prog) + end * prog
            )  # = base·(1 + (e − 1)·prog), f32-exact at prog = 1
        return jnp.where(s < w, warm, main).astype(jnp.float32)

    return schedule


def schedule_from_config(training, base_lr: float, total_steps: int):
    s = training.lr_scheduler
    return lr_schedule(base_lr, total_steps, s.type, s.warmup_ratio, s.min_lr_ratio)


def make_optimizer(
    training,
    total_steps: int,
    labels: Any = None,
    groups: Mapping[str, Mapping[str, float]] | None = None,
):
    """AdamW(β=(0.9, 0.95), eps 1e-8, decoupled weight decay) per parameter group.

    labels: a pytree (the trainable params' structure, or a callable params -> labels) of group
      names; None = one group named "default" with `training.learning_rate` and weight decay 0.01.
    groups: {name: {"learning_rate": lr, "weight_decay": wd}}; missing keys take the defaults.
    Returns (optax transform, {group: schedule}). Clipping is done by `clip_by_global_norm`
    (one global norm over all groups) before this transform.
    """
    groups = dict(groups or {DEFAULT_GROUP: {}})
    schedules, txs = {}, {}
    for name, hp in groups.items():
        lr = float(hp["learning_rate"] if "learning_rate" in hp else training.learning_rate)
        schedules[name] = schedule_from_config(training, lr, total_steps)
        txs[name] = optax.adamw(
            schedules[name],
            b1=BETAS[0],
            b2=BETAS[1],
            eps=EPS,
            weight_decay=float(hp.get("weight_decay", WEIGHT_DECAY)),
        )
    if labels is None:
        if len(txs) != 1:
            raise ValueError(f"parameter groups {sorted(txs)} need param labels")
        return next(iter(txs.values())), schedules
    return optax.multi_transform(txs, labels), schedules


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(grads, max_norm: float):
    """Scale grads so their global L2 norm is ≤ max_norm (no-op for max_norm ≤ 0).

    Returns (grads, stats) with grad_norm_pre_clip, grad_norm (post clip = min(pre, max)) and
    grad_clip_ratio = post/pre (1 when pre = 0 or no clipping).
    """
    pre = global_norm(grads)
    if max_norm <= 0:
        one = jnp.ones((), jnp.float32)
        return grads, {"grad_norm_pre_clip": pre, "grad_norm": pre, "grad_clip_ratio": one}
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(pre, 1e-30))
    grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)
    post = jnp.minimum(pre, max_norm)
    ratio = jnp.where(pre > 0, post / jnp.maximum(pre, 1e-30), 1.0)
    return grads, {"grad_norm_pre_clip": pre, "grad_norm": post, "grad_clip_ratio": ratio}
