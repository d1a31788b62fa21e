"""Benchmark the REAL jitted train step of a pipeline (`wmtp_jax.train.step.build`).

The pipeline's own config (`configs/<pipeline>.py`, micro variant, values overridden) and its
own `build(config, mesh, ...)` → TrainTask, given random-init models of any shape instead of
model dirs and no data loaders (no storage needed); then `step.build` → the jitted (donated)
train step the loop runs. A synthetic batch of the collators' layout `[GA, B, S]` is fed.

Measured: lower + compile seconds, `memory_analysis()` of the compiled step, the median of
`steps` timed steps after `warmup` (each `block_until_ready`), device peak memory where the
backend reports it, tokens/s and MFU (see flops.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import statistics
import time

import jax
import numpy as np
from flax import nnx

from wmtp_jax.bench import flops as flops_lib
from wmtp_jax.configs.common import validate_config
from wmtp_jax.data.loaders import Loaders
from wmtp_jax.models.args import ModelArgs
from wmtp_jax.models.load import build_sharded, lora_config
from wmtp_jax.models.mtp import MTPTransformer
from wmtp_jax.models.value import ValueModel
from wmtp_jax.ops import IGNORE_INDEX
from wmtp_jax.ops.attention import resolve
from wmtp_jax.pipelines import baseline, critic, verifiable
from wmtp_jax.train import mesh as mesh_lib
from wmtp_jax.train.step import build

PIPELINES = ("baseline", "critic", "verifiable")


@dataclasses.dataclass(frozen=True)
class TrainCase:
    """One benchmark configuration (every field is recorded in the JSON line)."""

    pipeline: str = "baseline"
    dim: int = 256
    n_layers: int = 6  # Meta layout: trunk = n_layers − n_future blocks, + n_future head blocks
    n_heads: int = 4
    n_kv_heads: int = 0  # 0 = n_heads
    n_future: int = 4
    vocab: int = 1024
    ffn_hidden: int = 0  # 0 = Meta formula with multiple_of
    multiple_of: int = 64
    critic_dim: int = 0  # 0 = dim
    critic_layers: int = 0  # 0 = max(1, n_layers // 2) (the micro critic: 3 blocks for 6)
    critic_heads: int = 0  # 0 = n_heads
    critic_ffn_hidden: int = 0
    batch: int = 4  # global micro-batch (pairs for the critic pipeline)
    seq: int = 128
    ga: int = 1
    dtype: str = "float32"
    remat: str = "none"
    sharding: str = "FULL_SHARD"
    mesh: tuple = (1, -1, 1)
    lora_rank: int = 0
    loss: str = "dense"  # dense | chunked (policy pipelines)
    chunk_size: int = 1024
    donate: bool = True
    heads: str = "vmap"  # vmap | loop: the MTP head blocks as one vmap, or an unrolled loop
    # (ModelArgs.unroll_heads)
    attention: str = "auto"  # runtime.attention: auto | xla | blockwise | splash | cudnn
    seed: int = 0

    def policy_args(self) -> ModelArgs:
        return ModelArgs(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads or None,
            vocab_size=self.vocab,
            multiple_of=self.multiple_of,
            n_future_tokens=self.n_future,
            ffn_hidden_dim=self.ffn_hidden or None,
            max_seq_len=max(self.seq, 16),
            dtype=self.dtype,
            param_dtype="float32",
            remat=self.remat,
            attention=self.attention,
            unroll_heads=self.heads == "loop",
        )

    def critic_args(self, remat: str | None = None) -> ModelArgs:
        """The critic backbone (llama layout).

        `remat` overrides (the frozen critic runs without).
        """
        heads = self.critic_heads or self.n_heads
        return ModelArgs(
            dim=self.critic_dim or self.dim,
            n_layers=self.critic_layers or max(1, self.n_layers // 2),
            n_heads=heads,
            n_kv_heads=None,
            vocab_size=self.vocab,
            multiple_of=self.multiple_of,
            n_future_tokens=1,
            ffn_hidden_dim=self.critic_ffn_hidden or None,
            max_seq_len=max(self.seq, 16),
            dtype=self.dtype,
            param_dtype="float32",
            remat=self.remat if remat is None else remat,
            attention=self.attention,
        )

    def tokens_per_step(self) -> int:
        return self.ga * self.batch * self.seq * (2 if self.pipeline == "critic" else 1)


def make_config(case: TrainCase):
    """The pipeline's own micro config with the case's values written in (locked keys only)."""
    if case.pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {case.pipeline!r}; valid: {PIPELINES}")
    c = importlib.import_module(f"wmtp_jax.configs.{case.pipeline}").get_config("micro")
    t = c.training
    t.batch_size, t.gradient_accumulation_steps, t.max_steps = case.batch, case.ga, 1000
    c.seed = case.seed
    c.runtime.sharding, c.runtime.dtype, c.runtime.remat = case.sharding, case.dtype, case.remat
    c.runtime.attention = case.attention
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in case.mesh)
    c.dataset.max_length = case.seq
    t.use_lora = case.lora_rank > 0
    if case.lora_rank:
        t.lora.rank, t.lora.alpha, t.lora.dropout = case.lora_rank, 2.0 * case.lora_rank, 0.0
    if case.pipeline == "critic":
        t.backbone_frozen = False  # without LoRA: full fine-tuning (what the FLOPs count)
        t.value_head.dropout = 0.0
    else:
        if case.loss not in ("dense", "chunked"):
            raise ValueError(f"--loss {case.loss!r}; valid: dense, chunked")
        t.loss_chunk_size = case.chunk_size if case.loss == "chunked" else 0
    if case.heads not in ("vmap", "loop"):
        raise ValueError(f"heads={case.heads!r}; valid: vmap, loop")
    validate_config(c)
    return c


NO_DATA = Loaders(tokenizer=None, train=iter(()), val_iter_fn=None)


def make_task(case: TrainCase, config, mesh):
    """The pipeline's `build(config, mesh, ...)` TrainTask on random-init models of the case's
    shapes, created directly in their sharded layout (no storage, no data loaders)."""
    rules = mesh_lib.rules_for(config.runtime.sharding).params
    seed = int(config.seed)
    if case.pipeline == "critic":
        model = critic.random_critic(config, mesh, case.critic_args())
        return critic.build(config, mesh, model=model, data=NO_DATA)
    args, lora = case.policy_args(), lora_config(config)
    policy = build_sharded(
        lambda: MTPTransformer(args, rngs=nnx.Rngs(seed), lora=lora), mesh, rules
    )
    if case.pipeline == "baseline":
        return baseline.build(config, mesh, policy=policy, data=NO_DATA)
    # as load_frozen: inference in the run dtype (params too, e.g. bf16 for `:7b`), remat off
    cargs = case.critic_args(remat="none").replace(param_dtype=case.dtype)
    frozen = build_sharded(
        lambda: ValueModel(cargs, rngs=nnx.Rngs(seed + 1), head_type="mlp"), mesh, rules
    )
    frozen.eval()
    return verifiable.build(config, mesh, policy=policy, critic=frozen, data=NO_DATA)


def synthetic_batch(case: TrainCase, seed: int = 0) -> dict:
    """A stacked `[GA, B, S]` batch in the collators' layout: full attention masks, the first
    quarter of every row a prompt (labels −100), pairs for the critic pipeline."""
    rng = np.random.default_rng(seed)
    shape = (case.ga, case.batch, case.seq)

    def rows():
        ids = rng.integers(0, case.vocab, size=shape, dtype=np.int32)
        labels = ids.copy()
        labels[..., : case.seq // 4] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": np.ones(shape, np.int32), "labels": labels}

    if case.pipeline == "critic":
        return {f"{side}_{k}": v for side in ("pos", "neg") for k, v in rows().items()}
    b = rows()
    if case.pipeline == "verifiable":
        b["is_correct"] = np.ones(shape[:2], np.float32)
    return b


def memory_analysis(compiled) -> dict:
    """Compiled-program sizes (bytes).

    `estimate` = arguments + outputs − aliased (donated) + temp.
    """
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")
    }
    out["estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def device_peak_bytes() -> int | None:
    """Max `peak_bytes_in_use` over local devices (process lifetime), None where unsupported."""
    peaks = []
    for d in jax.local_devices():
        try:
            s = d.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            s = None
        if s and "peak_bytes_in_use" in s:
            peaks.append(int(s["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


@dataclasses.dataclass
class Prepared:
    """A built and compiled case, ready to time (`step()` advances the donated state)."""

    case: TrainCase
    compiled: object
    state: dict
    fixed: object
    frozen: object
    batch: dict
    result: dict
    metrics: object = None

    def step(self) -> tuple[float, float]:
        """One train step, blocked until done → (wall seconds, process CPU seconds)."""
        w0, c0 = time.perf_counter(), time.process_time()
        self.state, self.metrics = self.compiled(self.state, self.fixed, self.frozen, self.batch)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - w0, time.process_time() - c0


def prepare_case(case: TrainCase) -> Prepared:
    """Build the pipeline's task and train step, lower and compile it (timed)."""
    config = make_config(case)
    mesh = mesh_lib.mesh_from_config(config)
    mesh_lib.check_batch_size(case.batch, mesh)
    t0 = time.perf_counter()
    task = make_task(case, config, mesh)
    c = build(task, config, mesh, total_steps=1000, donate=case.donate)
    setup_s = time.perf_counter() - t0
    batch = mesh_lib.shard_batch(synthetic_batch(case, case.seed), mesh, stacked=True)
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = c.train_step.lower(c.state, c.fixed, c.frozen_state, batch)
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    n_dev = int(np.prod(list(mesh.shape.values())))
    per_tok = flops_lib.train_flops_per_token(
        case.pipeline,
        case.critic_args() if case.pipeline == "critic" else case.policy_args(),
        case.seq,
        lora_rank=case.lora_rank,
        critic_args=case.critic_args() if case.pipeline == "verifiable" else None,
    )
    count = lambda tree: sum(int(np.size(x)) for x in jax.tree.leaves(tree)) if tree else 0
    args = case.critic_args() if case.pipeline == "critic" else case.policy_args()
    res = {
        "kind": "train",
        "config": dataclasses.asdict(case),
        "attention_resolved": resolve(case.attention, case.seq, case.dtype, args.head_dim),
        "mesh_shape": dict(mesh.shape),
        "n_devices": n_dev,
        "params": {
            "trainable": count(c.state["params"]),
            "frozen_in_model": count(c.fixed),
            "frozen_models": count(c.frozen_state),
        },
        "flops_per_token": per_tok,
        "tokens_per_step": case.tokens_per_step(),
        "step_flops": per_tok["total"] * case.tokens_per_step(),
        "setup_s": setup_s,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "compile_total_s": t2 - t0,
        "lower_cpu_s": c1 - c0,
        "compile_cpu_s": c2 - c1,
        "memory_analysis": memory_analysis(compiled),
    }
    return Prepared(case, compiled, c.state, c.fixed, c.frozen_state, batch, res)


def finish(
    p: Prepared, walls: list, cpus: list, load: list, peak_tflops: float | None = None
) -> dict:
    """The result dict of timed steps: medians, tokens/s, MFU, device peak memory."""
    res, case = dict(p.result), p.case
    step_s = statistics.median(walls)
    dev = jax.local_devices()[0]
    peak = flops_lib.peak_flops_per_device(dev.device_kind, dev.platform, peak_tflops)
    res.update(
        step_time_s=step_s,
        step_times_s=walls,
        step_cpu_s=statistics.median(cpus),
        tokens_per_s=case.tokens_per_step() / step_s,
        achieved_tflops=res["step_flops"] / step_s / 1e12,
        peak_tflops_per_device=None if peak is None else peak / 1e12,
        mfu=flops_lib.mfu(res["step_flops"], step_s, peak, res["n_devices"]),
        device_peak_bytes=device_peak_bytes(),
        loadavg_during=load,
        final_loss=float(jax.device_get(p.metrics["loss"])),
    )
    return res


def run_case(
    case: TrainCase,
    *,
    steps: int = 5,
    warmup: int = 2,
    compile_only: bool = False,
    peak_tflops: float | None = None,
) -> dict:
    """Build, compile and time one configuration → the result dict (no machine info)."""
    p = prepare_case(case)
    if compile_only:
        return {
            **p.result,
            "step_time_s": None,
            "tokens_per_s": None,
            "mfu": None,
            "device_peak_bytes": None,
        }
    return time_interleaved([p], steps=steps, warmup=warmup, peak_tflops=peak_tflops)[0]


def time_interleaved(
    prepared: list, *, steps: int, warmup: int, peak_tflops: float | None = None
) -> list[dict]:
    """Warm up every case, then run the timed steps round-robin (case 1, 2, ..., 1, 2, ...), so
    a load change on a shared host hits every case alike; one result per case."""
    for p in prepared:
        for _ in range(warmup):
            p.step()
    walls, cpus = [[] for _ in prepared], [[] for _ in prepared]
    load = [os.getloadavg()[0]]
    for _ in range(steps):
        for i, p in enumerate(prepared):
            w, c = p.step()
            walls[i].append(w)
            cpus[i].append(c)
    load.append(os.getloadavg()[0])
    return [finish(p, w, c, load, peak_tflops) for p, w, c in zip(prepared, walls, cpus)]
