"""`--compare-torch`: the baseline MTP train step in wmtp_jax next to the same step in PyTorch.

The torch side is the original's training step on the same model and loss: the Meta MTP
transformer (trunk blocks, K parallel head blocks, shared norm and output) with torch's fused
`scaled_dot_product_attention(is_causal=True)`, the MTP cross entropy (per head Σce·m/Σm, mean
over heads with valid tokens), `backward`, `clip_grad_norm_(1.0)` and `torch.optim.AdamW`
(betas 0.9 / 0.95, eps 1e-8, weight decay 0.01). Its weights are copied from the JAX model's
initial parameters (rotate-half RoPE on both sides), so both first-step losses are the same
number (`first_loss_jax`, `first_loss_torch`). The two steps alternate; each median counts.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from wmtp_jax.bench.train_step import TrainCase, prepare_case, synthetic_batch
from wmtp_jax.ops.attention import resolve


def _alternate(p, torch_step, warmup: int, steps: int):
    """Alternate a wmtp_jax step and a torch step `warmup + steps` times: ((wall, CPU) seconds of
    the timed jax and torch steps), the first losses, the load average before and after."""
    jw, jc, tw, tc = [], [], [], []
    load = [os.getloadavg()[0]]
    first = {}
    for i in range(warmup + steps):
        w, c = p.step()
        if i == 0:
            first["jax"] = float(jax.device_get(p.metrics["loss"]))
        w2, c2, loss = torch_step()
        if i == 0:
            first["torch"] = float(loss.detach())
        if i >= warmup:
            jw.append(w), jc.append(c), tw.append(w2), tc.append(c2)
    load.append(os.getloadavg()[0])
    return (jw, jc, tw, tc), first, load


def compare_torch(case: TrainCase, *, steps: int, warmup: int, threads: int | None = None) -> dict:
    """Alternate `warmup + steps` wmtp_jax and torch train steps → one `compare_torch` row."""
    import torch

    from wmtp_jax.bench import torch_model  # torch is optional: imported only here

    if case.pipeline != "baseline" or case.loss != "dense" or case.lora_rank or case.ga != 1:
        raise ValueError("--compare-torch runs the baseline pipeline, dense loss, no LoRA, GA 1")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    p = prepare_case(case)
    params = jax.device_get(p.state["params"].to_pure_dict())
    model = torch_model.MTP(case.policy_args(), params)
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01
    )
    batch = {
        k: torch.from_numpy(np.asarray(v)[0]).long()
        for k, v in synthetic_batch(case, case.seed).items()
    }

    def torch_step():
        w0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = torch_model.mtp_ce(
            model(batch["input_ids"]), batch["labels"], batch["attention_mask"]
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - w0, time.process_time() - c0, loss

    (jw, jc, tw, tc), first, load = _alternate(p, torch_step, warmup, steps)
    jax_ms, torch_ms = 1e3 * statistics.median(jw), 1e3 * statistics.median(tw)
    return {
        "kind": "compare_torch",
        "config": dataclasses.asdict(case),
        "attention_resolved": resolve(
            case.attention, case.seq, case.dtype, case.policy_args().head_dim
        ),
        "jax_step_ms": jax_ms,
        "torch_step_ms": torch_ms,
        "ratio_jax_over_torch": jax_ms / torch_ms,
        "jax_step_cpu_ms": 1e3 * statistics.median(jc),
        "torch_step_cpu_ms": 1e3 * statistics.median(tc),
        "jax_step_ms_all": [1e3 * x for x in jw],
        "torch_step_ms_all": [1e3 * x for x in tw],
        "first_loss_jax": first["jax"],
        "first_loss_torch": first["torch"],
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_during": load,
        "compile_total_s": p.result["compile_total_s"],
        "memory_analysis": p.result["memory_analysis"],
    }
