"""The real jitted train steps (baseline, critic, verifiable; `train.step.build`, as the loop runs
them) never touch the host: no callback primitive anywhere in their jaxpr, and two steps run
under `jax.transfer_guard("disallow")` (metrics stay on device until the loop's log interval)."""

import jax
import pytest

from wmtp_jax.bench.train_step import TrainCase, make_config, make_task, synthetic_batch
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.step import build

TINY = dict(
    dim=32,
    n_layers=3,
    n_heads=2,
    n_future=2,
    vocab=64,
    multiple_of=16,
    batch=8,
    seq=16,
    mesh=(1, -1, 1),
)  # FSDP over every (fake) device


def _primitives(jaxpr, out: set) -> set:
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    _primitives(sub, out)
    return out


@pytest.mark.parametrize(
    "pipeline,loss", [("baseline", "chunked"), ("critic", "dense"), ("verifiable", "dense")]
)
def test_train_step_has_no_host_sync(pipeline, loss):
    case = TrainCase(pipeline=pipeline, loss=loss, chunk_size=8, **TINY)
    config = make_config(case)
    mesh = mesh_lib.mesh_from_config(config)
    c = build(make_task(case, config, mesh), config, mesh, total_steps=10)
    batch = mesh_lib.shard_batch(synthetic_batch(case), mesh, stacked=True)
    jaxpr = jax.make_jaxpr(c.train_step.__wrapped__)(c.state, c.fixed, c.frozen_state, batch)
    prims = _primitives(jaxpr.jaxpr, set())
    assert "scan" in prims  # the walk reached the nested jaxprs (scanned layers)
    host = {q for q in prims if "callback" in q or "print" in q or q in ("infeed", "outfeed")}
    assert not host, sorted(prims)  # pure_callback, io_callback, debug_callback, debug_print, ...
    state = c.state
    with jax.transfer_guard("disallow"):
        for _ in range(2):
            state, metrics = c.train_step(state, c.fixed, c.frozen_state, batch)
    assert float(metrics["loss"]) > 0 and int(state["step"]) == 2
