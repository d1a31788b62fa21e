"""Lower and compile a pipeline's train step and its decoding path for a topology.

train: `train.step.build_abstract` of the pipeline's abstract task (compile/task.py) on a
("data", "fsdp", "tensor") mesh over the topology's devices, lowered with a `[GA, B, S]` batch
of ShapeDtypeStructs split over (data, fsdp), exactly the jitted step `fit` runs (donated
state, the strategy's shardings).

decode: the trained model in the compute dtype (LoRA merged, the strategy's parameter
shardings), `prefill` of `[B, L]` prompts into a `[.., B, KV, T, hd]` KV cache, and one cached
decode step of `[B]` tokens (what `generate.decode_loop` runs per token).

Every trace runs under `kernels.platform.target_platform(<the topology's platform>)`, so
`runtime.attention=auto` resolves for the accelerator (never the CPU custom-call kernel).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax.compile import task as task_lib
from wmtp_jax.compile.topology import Topology
from wmtp_jax.generate.decode import model_forward
from wmtp_jax.kernels.platform import target_platform
from wmtp_jax.models import serialization
from wmtp_jax.ops.attention import resolve
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.step import build_abstract, on_mesh


class DoesNotFit(Exception):
    """The step needs more memory per device than the chip has (exit 3, one line)."""


@dataclasses.dataclass
class Program:
    """One compiled program and what is known about it before compiling."""

    name: str
    compiled: object
    argument_bytes: int  # per device, from the abstract inputs' shardings
    lower_s: float
    compile_s: float


def _itemsize(dtype) -> int:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # typed PRNG key: its raw key data
        return 4 * math.prod(jax.random.key_data(jax.random.key(0, impl=dtype._impl)).shape)
    return np.dtype(dtype).itemsize


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        sh = getattr(x, "sharding", None)
        shape = sh.shard_shape(x.shape) if sh is not None else x.shape
        total += math.prod(shape) * _itemsize(x.dtype)
    return total


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def human(n: float, unit: str = "B") -> str:
    """1.2 GiB / 3.4 MiB / 512 B (bytes), or 1.23 TFLOP / 4.56 GFLOP (unit="FLOP")."""
    if unit == "B":
        for div, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if n >= div:
                return f"{n / div:.1f} {name}"
        return f"{int(n)} B"
    for div, name in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if n >= div:
            return f"{n / div:.2f} {name}{unit}"
    return f"{n:.0f} {unit}"


def refuse_if_too_big(need: int, topo: Topology, what: str) -> None:
    cap = topo.chip.hbm_bytes
    if need > cap:
        raise DoesNotFit(
            f"needs {gib(need)} per device ({what}), {topo.chip.name} has {cap / 2**30:g} GiB"
        )


def _compile(name: str, jitted, args: tuple, topo: Topology) -> Program:
    """Lower (under the target platform) and compile; a compile that runs out of HBM is
    reported as DoesNotFit."""
    arg_bytes = per_device_bytes(args)
    t0 = time.perf_counter()
    with target_platform(topo.chip.platform):
        lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA raises a generic error for out-of-memory
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            raise DoesNotFit(oom_line(str(e), arg_bytes, topo)) from None
        raise
    return Program(name, compiled, arg_bytes, t1 - t0, time.perf_counter() - t1)


def oom_line(text: str, arg_bytes: int, topo: Topology) -> str:
    """One line from XLA's out-of-memory compile error: arguments + the temporaries it names
    against the chip (the error's own first line when it names no figure)."""
    cap = f"{topo.chip.name} has {topo.chip.hbm_bytes / 2**30:g} GiB"
    m = re.search(r"temporaries \(([\d.]+)([GM])\)", text)
    if m:
        temp = float(m.group(1)) * (2**30 if m.group(2) == "G" else 2**20)
        return (
            f"needs {gib(arg_bytes + temp)} per device ({gib(arg_bytes)} arguments + "
            f"{gib(temp)} temporaries), {cap}"
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    return f"does not fit: {first[:300]}; {cap}"


def config_mesh(config, topo: Topology):
    m = config.mesh
    return mesh_lib.make_mesh(m.data, m.fsdp, m.tensor, devices=topo.devices)


def train_program(config, topo: Topology, mesh, task) -> tuple[Program, dict]:
    """The compiled train step, and {"batch_shape", "attention"}."""
    with target_platform(topo.chip.platform):
        c = build_abstract(task, config, mesh, total_steps=1000)
    batch = task_lib.batch_spec(config, mesh, mesh_lib.batch_sharding(mesh, stacked=True))
    args = (c.state, c.fixed, c.frozen_state, batch)
    refuse_if_too_big(per_device_bytes(args), topo, "train step arguments alone")
    prog = _compile("train", c.train_step, args, topo)
    shape = next(iter(batch.values())).shape
    return prog, {"batch_shape": list(shape)}


def _inference_model(args, kind: str, dtype: str):
    """The abstract trained model as evaluation runs it: LoRA merged, params in `dtype`."""
    cfg = {"kind": "mtp" if kind == "mtp" else "llama", "lm_head": True, "lora": None}
    args = args.replace(dtype=dtype, param_dtype=dtype, remat="none")
    return nnx.eval_shape(serialization.model_factory(cfg, args)), args


def decode_programs(
    config, topo: Topology, mesh, info: dict, batch: int, prompt_len: int, cache_len: int
) -> tuple[Program, Program, dict]:
    """(prefill, decode step, {"batch", "prompt_len", "cache_len"}) of the trained model."""
    role = next(v for v in info.values() if v["trained"])
    model, args = _inference_model(role["args"], role["kind"], str(config.runtime.dtype))
    rules = mesh_lib.rules_for(config.runtime.sharding).params
    graphdef, state = nnx.split(model)
    state = mesh_lib.abstract_like(state, mesh_lib.tree_shardings(state, mesh, rules))
    rows = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
    dp = mesh_lib.data_parallel_size(mesh)
    if batch % dp:
        rows = mesh_lib.replicated(mesh)

    def prefill(state, prompts):
        m = nnx.merge(graphdef, state)
        cache = m.init_cache(prompts.shape[0], cache_len)
        pos = jax.numpy.broadcast_to(jax.numpy.arange(prompts.shape[1]), prompts.shape)
        return model_forward(m, prompts, pos, cache, all_heads=False)[1]

    def step(state, cache, tok, pos):
        m = nnx.merge(graphdef, state)
        logits, cache = model_forward(m, tok[:, None], pos[:, None], cache, all_heads=False)
        return jax.numpy.argmax(logits[:, 0, 0], axis=-1).astype(np.int32), cache

    prompts = jax.ShapeDtypeStruct((batch, prompt_len), np.int32, sharding=rows)
    pre = _compile("prefill", jax.jit(on_mesh(prefill, mesh)), (state, prompts), topo)
    cache_sh = pre.compiled.output_shardings
    with target_platform(topo.chip.platform):
        cache_shape = jax.eval_shape(on_mesh(prefill, mesh), state, prompts)
    cache = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), cache_shape, cache_sh
    )
    tok = jax.ShapeDtypeStruct((batch,), np.int32, sharding=rows)
    step = jax.jit(on_mesh(step, mesh), donate_argnums=(1,))
    dec = _compile("decode", step, (state, cache, tok, tok), topo)
    return pre, dec, {"batch": batch, "prompt_len": prompt_len, "cache_len": cache_len}


def attention_choice(config, info: dict, platform: str) -> str:
    """What `runtime.attention` resolves to on the target for the trained model's shape."""
    args = next(v for v in info.values() if v["trained"])["args"]
    seq = int(config.dataset.max_length)
    return resolve(str(config.runtime.attention), seq, args.dtype, args.head_dim, backend=platform)
