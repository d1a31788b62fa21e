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


def torch_mtp(args, params: dict):
    """A torch MTP transformer with `params` (wmtp_jax pure dict, Linear kernels `[in, out]`)."""
    import torch  # optional dependency, only for this comparison
    import torch.nn.functional as F
    from torch import nn

    d, h, kvh, hd = args.dim, args.n_heads, args.kv_heads, args.head_dim
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy

    class RMSNorm(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.weight = nn.Parameter(t(w))

        def forward(self, x):
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + args.norm_eps)).type_as(
                x
            ) * self.weight

    def linear(w):
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
        lin.weight = nn.Parameter(t(w).T.contiguous())
        return lin

    def rope(x, cos, sin):  # x [B, S, N, hd], rotate-half as wmtp_jax.models.rope.apply_rope
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos[:, :, None] + torch.cat([-x2, x1], dim=-1) * sin[:, :, None]

    class Block(nn.Module):
        def __init__(self, p, i):
            super().__init__()
            a, f = p["attention"], p["feed_forward"]
            self.attention_norm = RMSNorm(p["attention_norm"]["scale"][i])
            self.ffn_norm = RMSNorm(p["ffn_norm"]["scale"][i])
            self.wq, self.wk, self.wv, self.wo = (
                linear(a[n]["kernel"][i]) for n in ("wq", "wk", "wv", "wo")
            )
            self.w1, self.w2, self.w3 = (linear(f[n]["kernel"][i]) for n in ("w1", "w2", "w3"))

        def forward(self, x, cos, sin):
            b, s, _ = x.shape
            y = self.attention_norm(x)
            q = rope(self.wq(y).view(b, s, h, hd), cos, sin).transpose(1, 2)
            k = rope(self.wk(y).view(b, s, kvh, hd), cos, sin).transpose(1, 2)
            v = self.wv(y).view(b, s, kvh, hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kvh != h)
            x = x + self.wo(o.transpose(1, 2).reshape(b, s, h * hd))
            y = self.ffn_norm(x)
            return x + self.w2(F.silu(self.w1(y)) * self.w3(y))

    class MTP(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_embeddings = nn.Embedding(args.vocab_size, d)
            self.tok_embeddings.weight = nn.Parameter(t(params["tok_embeddings"]["embedding"]))
            trunk = params.get("layers")
            n_trunk = 0 if trunk is None else len(trunk["attention_norm"]["scale"])
            self.layers = nn.ModuleList(Block(trunk, i) for i in range(n_trunk))
            self.heads = nn.ModuleList(
                Block(params["heads"], i) for i in range(args.n_future_tokens)
            )
            self.norm = RMSNorm(params["norm"]["scale"])
            self.output = linear(params["output"]["kernel"])
            inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
            self.inv = inv

        def forward(self, tokens):  # → logits [B, S, K, V] float32
            s = tokens.shape[1]
            ang = torch.arange(s).float()[:, None] * self.inv[None]
            ang = torch.cat([ang, ang], dim=-1)[None]
            cos, sin = ang.cos(), ang.sin()
            x = self.tok_embeddings(tokens)
            for blk in self.layers:
                x = blk(x, cos, sin)
            lat = torch.stack([hb(x, cos, sin) for hb in self.heads], dim=2)
            return self.output(self.norm(lat)).float()

    return MTP()


def torch_mtp_ce(logits, labels, attention_mask):
    """MTP CE as `wmtp_jax.ops.compute_mtp_ce_loss`'s unweighted loss (no host sync)."""
    import torch
    import torch.nn.functional as F

    b, s, k_all, v = logits.shape
    valid = ((labels != -100) & (attention_mask > 0)).float()
    heads, counted = [], []
    for k in range(1, k_all + 1):
        tgt, m = labels[:, k:], valid[:, k:]
        ce = F.cross_entropy(
            logits[:, : s - k, k - 1].reshape(-1, v), tgt.clamp_min(0).reshape(-1), reduction="none"
        )
        n = m.sum()
        heads.append((ce * m.reshape(-1)).sum() / n.clamp_min(1.0))
        counted.append((n > 0).float())
    heads, counted = torch.stack(heads), torch.stack(counted)
    return (heads * counted).sum() / counted.sum().clamp_min(1.0)


def compare_torch(case: TrainCase, *, steps: int, warmup: int, threads: int | None = None) -> dict:
    """Alternate `warmup + steps` wmtp_jax and torch train steps → one `compare_torch` row."""
    import torch

    if case.pipeline != "baseline" or case.loss != "dense" or case.lora_rank or case.ga != 1:
        raise ValueError("--compare-torch runs the baseline pipeline, dense loss, no LoRA, GA 1")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    p = prepare_case(case)
    params = jax.device_get(p.state["params"].to_pure_dict())
    model = torch_mtp(case.policy_args(), params)
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
        loss = torch_mtp_ce(model(batch["input_ids"]), batch["labels"], batch["attention_mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - w0, time.process_time() - c0, loss

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
