"""The functional train state and the jitted train / eval steps (generic, no WMTP knowledge).

The model is split once: `graphdef, params, fixed, other = nnx.split(model, trainable,
nnx.Param, ...)`, where `params` are the trainable parameters (gradients + optimizer state),
`fixed` the model's frozen parameters and `other` every non-parameter variable (RNG streams,
counters). The train state is a dict pytree:

    {"step": int32[], "params", "opt_state", "other", "extra" (pipeline pytree), "rng": uint32[2]}

One train step consumes a stacked batch [GA, micro_batch, ...]: `lax.scan` over the GA
micro-batches accumulates float32 gradients, divides by GA (exactly GA micro-batches, no
partial steps), constrains the gradients to the optimizer-state sharding (a reduce-scatter
under FSDP / ZeRO-2), clips by global norm and applies AdamW. Metrics are device scalars.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.optimizer import clip_by_global_norm, make_optimizer

F32 = jnp.float32


def path_str(key_path) -> str:
    """'layers/0/attn/wq/lora_a' from a jax key path (nnx `.value` accessors dropped)."""
    parts = []
    for k in key_path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey) and k.name not in ("value", "raw_value"):
            parts.append(k.name)
    return "/".join(parts)


def label_tree(params, label_fn: Callable[[str], str]):
    return jax.tree_util.tree_map_with_path(lambda kp, _: label_fn(path_str(kp)), params)


@dataclasses.dataclass
class Compiled:
    """Everything the host loop needs: initial state, shardings and the jitted functions."""

    graphdef: Any
    state: dict
    fixed: Any
    frozen_graph: Any
    frozen_state: Any
    state_shardings: dict
    train_step: Callable  # (state, fixed, frozen_state, batch[GA, B, ...]) -> (state, metrics)
    eval_step: Callable  # (state, fixed, frozen_state, batch[B, ...]) -> metrics
    schedules: dict
    tx: optax.GradientTransformation

    def model(self, state=None) -> nnx.Module:
        s = self.state if state is None else state
        return nnx.merge(self.graphdef, s["params"], self.fixed, s["other"])


def _scalar_metrics(metrics: dict, where: str) -> dict:
    out = {}
    for k, v in metrics.items():
        v = jnp.asarray(v)
        if v.shape != ():
            raise ValueError(f"{where}: metric {k!r} must be a scalar, got shape {v.shape}")
        out[k] = v.astype(F32)
    return out


def build(task, config, mesh: Mesh, total_steps: int, *, donate: bool = True) -> Compiled:
    """Split and place the task's model(s) on `mesh`, build the optimizer and the jitted steps."""
    return _build(task, config, mesh, total_steps, donate, mesh_lib.put_global)


def build_abstract(task, config, mesh: Mesh, total_steps: int) -> Compiled:
    """`build` with nothing allocated: the task's models may be abstract (`nnx.eval_shape`), and
    every array of the returned state, frozen parameters and frozen models is a
    `jax.ShapeDtypeStruct` carrying its sharding on `mesh` (e.g. a compile-only TPU topology's),
    ready for `train_step.lower(...)` (wmtp_jax.compile)."""
    return _build(task, config, mesh, total_steps, True, mesh_lib.abstract_like)


def _build(task, config, mesh: Mesh, total_steps: int, donate: bool, put) -> Compiled:
    """`put(tree, shardings)` places a tree: `put_global` (arrays) or `abstract_like` (specs)."""
    rules = mesh_lib.rules_for(config.runtime.sharding)
    repl = mesh_lib.replicated(mesh)
    graphdef, params, fixed, other = nnx.split(task.model, task.trainable, nnx.Param, ...)
    if not jax.tree.leaves(params):
        raise ValueError("TrainTask.trainable selects no parameter of TrainTask.model")
    if task.frozen is not None:
        frozen_graph, frozen_state = nnx.split(task.frozen)
        frozen_state = put(frozen_state, mesh_lib.tree_shardings(frozen_state, mesh, rules.params))
    else:
        frozen_graph, frozen_state = None, None

    labels = label_tree(params, task.param_labels) if task.param_labels else None
    tx, schedules = make_optimizer(config.training, total_steps, labels, task.param_groups)
    state_sh, grads_sh, fixed_sh = _shardings(params, fixed, tx, mesh, rules)
    params = put(params, state_sh["params"])
    if put is mesh_lib.abstract_like:
        opt_state = put(jax.eval_shape(tx.init, params), state_sh["opt_state"])
    else:
        opt_state = jax.jit(tx.init, out_shardings=state_sh["opt_state"])(params)
    state = {
        "step": put(np.zeros((), np.int32), repl),
        "params": params,
        "opt_state": opt_state,
        "other": put(other, repl),
        "extra": put(task.extra_state if task.extra_state is not None else {}, repl),
        "rng": put(np.asarray(jax.random.key_data(jax.random.key(int(config.seed)))), repl),
    }
    train_step = _train_step_fn(task, graphdef, frozen_graph, tx, schedules, grads_sh, config)
    eval_step = _eval_step_fn(task, graphdef, frozen_graph)
    return Compiled(
        graphdef=graphdef,
        state=state,
        fixed=put(fixed, fixed_sh),
        frozen_graph=frozen_graph,
        frozen_state=frozen_state,
        state_shardings=state_sh,
        train_step=jax.jit(
            on_mesh(train_step, mesh),
            donate_argnums=(0,) if donate else (),
            out_shardings=(state_sh, repl),
        ),
        eval_step=jax.jit(on_mesh(eval_step, mesh), out_shardings=repl) if task.eval_fn else None,
        schedules=schedules,
        tx=tx,
    )


def on_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` traced with `mesh` as the abstract mesh: kernels that GSPMD cannot partition (the
    TPU splash attention, `wmtp_jax.ops.splash`) find it and run under a `shard_map`."""

    @functools.wraps(fn)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return traced


def _shardings(params, fixed, tx, mesh: Mesh, rules):
    """(train-state shardings, gradient shardings, frozen-parameter shardings) per strategy."""
    repl = mesh_lib.replicated(mesh)
    state_sh = {
        "step": repl,
        "params": mesh_lib.tree_shardings(params, mesh, rules.params),
        "opt_state": mesh_lib.tree_shardings(
            jax.eval_shape(tx.init, params), mesh, rules.opt_state
        ),
        "other": repl,
        "extra": repl,
        "rng": repl,
    }
    grads_sh = mesh_lib.tree_shardings(params, mesh, rules.opt_state)
    return state_sh, grads_sh, mesh_lib.tree_shardings(fixed, mesh, rules.params)


def _merge_frozen(frozen_graph, frozen_state):
    """The frozen model in eval mode (None without one)."""
    if frozen_graph is None:
        return None
    frozen = nnx.merge(frozen_graph, frozen_state, copy=True)
    frozen.eval()
    return frozen


def warm_start_multipliers(params, mask_fn: Callable[[str, tuple], Any]):
    """The warm-start mask: per trainable leaf `mask_fn(path, shape)`, a float32 multiplier
    broadcastable to the leaf (0 = frozen during the warm start; m > 0 = trained, its AdamW
    update times m, i.e. at learning rate × m)."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, p: jnp.asarray(mask_fn(path_str(kp), tuple(p.shape)), F32), params
    )


def _masked(tree, mask, on):
    """`tree` times `mask` while `on` (a traced bool), else `tree` (dtypes kept)."""
    return jax.tree.map(lambda x, m: jnp.where(on, x * m, x).astype(x.dtype), tree, mask)


def _train_step_fn(task, graphdef, frozen_graph, tx, schedules, grads_sh, config) -> Callable:
    """(state, fixed, frozen_state, batch[GA, B, ...]) -> (state, metrics), to be jitted.

    Warm start (`task.warm_start_steps` > 0): for optimizer steps 1..N the gradients (before
    clipping, so the frozen part neither fills Adam's moments nor the global norm) and the
    updates (after AdamW, so weight decay does not move it either) are multiplied by
    `task.warm_start_mask` (the gradients by 1 where it is > 0): a parameter with multiplier 0
    is bit-for-bit unchanged."""
    ga = int(config.training.gradient_accumulation_steps)
    max_norm = float(config.training.max_grad_norm)
    n_warm = int(task.warm_start_steps or 0)

    def train_step(state, fixed, frozen_state, batch):
        rng, step_rng = jax.random.split(state["rng"])
        micro_rngs = jax.random.split(step_rng, ga)
        frozen = _merge_frozen(frozen_graph, frozen_state)
        gsum, other, extra, losses, metrics = _accumulate(
            task, graphdef, state, fixed, frozen, batch, micro_rngs
        )
        grads = jax.tree.map(lambda g, p: (g / ga).astype(p.dtype), gsum, state["params"])
        grads = jax.lax.with_sharding_constraint(grads, grads_sh)
        if n_warm > 0:
            warm = state["step"] < n_warm
            mask = warm_start_multipliers(grads, task.warm_start_mask)
            grads = _masked(grads, jax.tree.map(lambda m: (m > 0).astype(F32), mask), warm)
        grads, clip = clip_by_global_norm(grads, max_norm)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        if n_warm > 0:
            updates = _masked(updates, mask, warm)
        params = optax.apply_updates(state["params"], updates)
        out = {k: jnp.mean(v) for k, v in metrics.items()}
        out.update(loss=jnp.mean(losses), **clip)
        for name, sched in schedules.items():
            out[f"lr/{name}"] = sched(state["step"])
        new_state = {
            "step": state["step"] + 1,
            "params": params,
            "opt_state": opt_state,
            "other": other,
            "extra": extra,
            "rng": rng,
        }
        return new_state, out

    return train_step


def _accumulate(task, graphdef, state, fixed, frozen, batch, micro_rngs):
    """`lax.scan` over the GA micro-batches: (float32 gradient sum, other, extra, losses[GA],
    metrics {name: [GA]}); `other` / `extra` carried from one micro-batch to the next."""

    def micro(carry, xs):
        gsum, other, extra = carry
        mb, r = xs

        def loss_of(p):
            model = nnx.merge(graphdef, p, fixed, other, copy=True)
            loss, (metrics, new_extra) = task.loss_fn(model, frozen, mb, r, extra)
            new_other = nnx.split(model, task.trainable, nnx.Param, ...)[3]
            return jnp.asarray(loss, F32), (metrics, new_extra, new_other)

        (loss, (metrics, extra, other)), g = jax.value_and_grad(loss_of, has_aux=True)(
            state["params"]
        )
        gsum = jax.tree.map(lambda a, b: a + b.astype(F32), gsum, g)
        return (gsum, other, extra), (loss, _scalar_metrics(metrics, "loss_fn"))

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, F32), state["params"])
    (gsum, other, extra), (losses, metrics) = jax.lax.scan(
        micro, (zeros, state["other"], state["extra"]), (batch, micro_rngs)
    )
    return gsum, other, extra, losses, metrics


def _eval_step_fn(task, graphdef, frozen_graph) -> Callable:
    """(state, fixed, frozen_state, batch[B, ...]) -> metrics, to be jitted."""

    def eval_step(state, fixed, frozen_state, batch):
        model = nnx.merge(graphdef, state["params"], fixed, state["other"], copy=True)
        model.eval()
        metrics = task.eval_fn(
            model, _merge_frozen(frozen_graph, frozen_state), batch, state["extra"]
        )
        return _scalar_metrics(metrics, "eval_fn")

    return eval_step
