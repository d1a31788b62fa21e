"""The MTP transformer in torch with wmtp_jax's parameters (`--compare-torch`): the same blocks
(RMSNorm, rotate-half RoPE, GQA SDPA attention, SwiGLU), Linear kernels `[in, out]` transposed
into torch's `[out, in]`. torch is an optional dependency: only `bench.torch_step` imports this,
when the comparison runs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))  # a writable copy


def _linear(w) -> nn.Linear:
    lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
    lin.weight = nn.Parameter(_tensor(w).T.contiguous())
    return lin


def _rope(x, cos, sin):  # x [B, S, N, hd], rotate-half as wmtp_jax.models.rope.apply_rope
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, :, None] + torch.cat([-x2, x1], dim=-1) * sin[:, :, None]


class RMSNorm(nn.Module):
    def __init__(self, w, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(_tensor(w)), eps

    def forward(self, x):
        x32 = x.float()
        norm = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return norm.type_as(x) * self.weight


class Block(nn.Module):
    """Block `i` of a stacked wmtp_jax block tree `p`."""

    def __init__(self, args, p, i: int):
        super().__init__()
        self.h, self.kvh, self.hd = args.n_heads, args.kv_heads, args.head_dim
        a, f = p["attention"], p["feed_forward"]
        self.attention_norm = RMSNorm(p["attention_norm"]["scale"][i], args.norm_eps)
        self.ffn_norm = RMSNorm(p["ffn_norm"]["scale"][i], args.norm_eps)
        self.wq, self.wk, self.wv, self.wo = (
            _linear(a[n]["kernel"][i]) for n in ("wq", "wk", "wv", "wo")
        )
        self.w1, self.w2, self.w3 = (_linear(f[n]["kernel"][i]) for n in ("w1", "w2", "w3"))

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        h, kvh, hd = self.h, self.kvh, self.hd
        y = self.attention_norm(x)
        q = _rope(self.wq(y).view(b, s, h, hd), cos, sin).transpose(1, 2)
        k = _rope(self.wk(y).view(b, s, kvh, hd), cos, sin).transpose(1, 2)
        v = self.wv(y).view(b, s, kvh, hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kvh != h)
        x = x + self.wo(o.transpose(1, 2).reshape(b, s, h * hd))
        y = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(y)) * self.w3(y))


class MTP(nn.Module):
    """Trunk blocks → K head blocks (each on the trunk output) → shared norm and output."""

    def __init__(self, args, params: dict):
        super().__init__()
        hd = args.head_dim
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.tok_embeddings.weight = nn.Parameter(_tensor(params["tok_embeddings"]["embedding"]))
        trunk = params.get("layers")
        n_trunk = 0 if trunk is None else len(trunk["attention_norm"]["scale"])
        self.layers = nn.ModuleList(Block(args, trunk, i) for i in range(n_trunk))
        self.heads = nn.ModuleList(
            Block(args, params["heads"], i) for i in range(args.n_future_tokens)
        )
        self.norm = RMSNorm(params["norm"]["scale"], args.norm_eps)
        self.output = _linear(params["output"]["kernel"])
        self.inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2).float() / hd))

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


def mtp_ce(logits, labels, attention_mask):
    """MTP CE as `wmtp_jax.ops.compute_mtp_ce_loss`'s unweighted loss (no host sync)."""
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
