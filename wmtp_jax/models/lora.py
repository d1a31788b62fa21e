"""LoRA: config, trainable-parameter filters, LoRA-only state and merging.

`y = x W + (alpha / rank) · dropout(x) A B`, A `[in, r]` ~ U(±1/√in), B `[r, out]` = 0 (so a
fresh LoRA model computes exactly the base model). The factors live on the targeted
`primitives.Linear` modules as `nnx.LoRAParam` (`.../wq/lora_a`, `.../wq/lora_b`), in every block of
both families (MTP trunk + all heads, LLaMA layers), so base-weight paths are unchanged.

Build a LoRA model from base weights:
    model = MTPTransformer(args, rngs=nnx.Rngs(0), lora=LoRAConfig(rank=8))
    nnx.update(model, nnx.state(base_model, nnx.Param))   # base kernels; LoRA A/B keep their init
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .primitives import Linear

# LoRA target names: Meta vocabulary is canonical, HF names are aliases.
HF_TO_META_TARGET = {
    "q_proj": "wq",
    "k_proj": "wk",
    "v_proj": "wv",
    "o_proj": "wo",
    "gate_proj": "w1",
    "down_proj": "w2",
    "up_proj": "w3",
}
META_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def canonical_lora_targets(targets) -> tuple[str, ...]:
    """Map HF / Meta target names to the Meta vocabulary (`q_proj` -> `wq`).

    Unknown names -> ValueError.
    """
    out = []
    for t in targets:
        c = HF_TO_META_TARGET.get(t, t)
        if c not in META_TARGETS:
            raise ValueError(
                f"unknown LoRA target {t!r}; valid: {list(META_TARGETS)} "
                f"or {list(HF_TO_META_TARGET)}"
            )
        if c not in out:
            out.append(c)
    return tuple(out)


# HF PEFT spellings accepted by LoRAConfig.from_dict.
_ALIASES = {
    "r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "targets",
}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank, alpha (scale = alpha / rank), dropout on the LoRA input, target linears.

    targets use the Meta names wq wk wv wo w1 w2 w3; HF names (q_proj, ..., gate_proj, up_proj,
    down_proj) are canonicalised (`canonical_lora_targets`).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo")

    def __post_init__(self):
        if isinstance(self.targets, str):
            raise ValueError(
                f"LoRA targets must be a list of names, got the string {self.targets!r}"
            )
        object.__setattr__(self, "targets", canonical_lora_targets(self.targets))
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA targets are empty")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "lora config") -> LoRAConfig:
        """From {rank, alpha, dropout, targets} (or PEFT's r, lora_alpha, lora_dropout,
        target_modules); unknown keys are an error naming `source`."""
        out = {}
        for k, v in dict(d).items():
            name = _ALIASES.get(k, k)
            if name not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(
                    f"{source}: unknown LoRA key {k!r}; valid: rank, alpha, dropout, "
                    f"targets (or r, lora_alpha, lora_dropout, target_modules)"
                )
            out[name] = tuple(v) if name == "targets" else v
        return cls(**out)


def trainable_filter(model_kind: str | None = None, *, include_heads: bool | None = None):
    """nnx filter of the trainable params of a LoRA model: every `nnx.LoRAParam`, plus the critic's
    `value_head` params when `include_heads` (default: True iff model_kind == "critic").

    model_kind: None | "policy" | "llama" | "critic".
    """
    kinds = (None, "policy", "llama", "critic")
    if model_kind not in kinds:
        raise ValueError(f"unknown model_kind {model_kind!r}; valid: {kinds}")
    if include_heads is None:
        include_heads = model_kind == "critic"
    if include_heads:
        return nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("value_head")))
    return nnx.LoRAParam


def lora_state(model: nnx.Module) -> nnx.State:
    """The LoRA factors only (`.../lora_a`, `.../lora_b`)."""
    return nnx.state(model, nnx.LoRAParam)


def _lora_linears(model: nnx.Module):
    for _, m in nnx.iter_modules(model):
        if isinstance(m, Linear) and m.lora_rank:
            yield m


@jax.jit
def _merged_kernels(ws, as_, bs, scales):
    """W + scale · A B for lists of (stacked) kernels, in one compiled call."""
    out = []
    for w, a, b, s in zip(ws, as_, bs, scales):
        delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))
        out.append((w.astype(jnp.float32) + s * delta).astype(w.dtype))
    return out


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` without LoRA: every targeted kernel W ← W + (alpha/r) · A B.

    Stacked modules merge per layer/head (`[..., in, r] @ [..., r, out]`). The input model is
    not modified; the result has exactly the base parameter tree (`lora` attribute None).
    """
    model = nnx.clone(model)
    lins = list(_lora_linears(model))
    merged = _merged_kernels(
        [m.kernel[...] for m in lins],
        [m.lora_a[...] for m in lins],
        [m.lora_b[...] for m in lins],
        [jnp.float32(m.lora_scale) for m in lins],
    )
    for lin, w in zip(lins, merged):
        lin.kernel.set_value(w)  # a new array: the input model may share numpy buffers
        del lin.lora_a, lin.lora_b, lin.lora_dropout
        lin.lora_rank, lin.lora_scale = 0, 0.0
    for _, m in nnx.iter_modules(model):
        if getattr(m, "lora", None) is not None:
            m.lora = None
    return model
