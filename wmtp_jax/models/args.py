"""Model hyper-parameters: Meta `params.json` fields plus the JAX runtime knobs."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

from wmtp_jax.ops.attention import IMPLEMENTATIONS

# Fields of Meta's ModelArgs (params.json). `max_batch_size` is accepted and ignored.
META_FIELDS = (
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
    "ffn_dim_multiplier", "norm_eps", "rope_theta", "n_future_tokens", "max_seq_len",
)


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """Transformer shape (Meta params.json vocabulary) + runtime settings.

    `ffn_hidden_dim` overrides the Meta formula (HF checkpoints carry `intermediate_size`).
    `dtype` is the compute dtype, `param_dtype` the storage dtype of the weights.
    `remat` is a policy name: none | full | dots | dots_no_batch (see wmtp_jax.models.layers).
    `attention` is the training / prefill attention: auto | xla | blockwise | cudnn
    (see wmtp_jax.ops.attention).
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_future_tokens: int = 1
    max_seq_len: int = 2048
    ffn_hidden_dim: Optional[int] = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"unknown attention implementation {self.attention!r}; valid: "
                             f"{IMPLEMENTATIONS}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.n_future_tokens < 1 or self.n_future_tokens > self.n_layers:
            raise ValueError(
                f"n_future_tokens={self.n_future_tokens} must be in [1, n_layers={self.n_layers}]")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: Meta's multiple_of * ceil(int(mult * int(2 * 4 * dim / 3)) / multiple_of)."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def n_trunk_layers(self) -> int:
        """Meta MTP layout: `layers` holds n_layers - n_future + 1 blocks; the last one is head 0."""
        return self.n_layers - self.n_future_tokens

    def replace(self, **kw) -> "ModelArgs":
        return dataclasses.replace(self, **kw)

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field except `attention`: a choice of the machine that runs the model (a model
        dir written on a GPU with `cudnn` loads as `auto` on a CPU), not of the model."""
        d = dataclasses.asdict(self)
        d.pop("attention")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "ModelArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"max_batch_size"})
        if unknown:
            raise ValueError(f"{source}: unknown model field(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_meta_params(cls, params: dict[str, Any], *, source: str = "params.json", **runtime) -> "ModelArgs":
        """From Meta's params.json (only META_FIELDS + max_batch_size allowed)."""
        unknown = sorted(set(params) - set(META_FIELDS) - {"max_batch_size"})
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; Meta ModelArgs fields: {list(META_FIELDS)}")
        missing = [k for k in ("dim", "n_layers", "n_heads", "vocab_size") if k not in params]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {missing}")
        return cls(**{k: v for k, v in params.items() if k in META_FIELDS}, **runtime)

    def to_meta_params(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in META_FIELDS}
        if d["ffn_dim_multiplier"] is None:
            d.pop("ffn_dim_multiplier")
        return d

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], *, source: str = "config.json", **runtime) -> "ModelArgs":
        """From a transformers LlamaConfig dict (hidden_size, num_hidden_layers, ...)."""
        try:
            return cls(
                dim=cfg["hidden_size"],
                n_layers=cfg["num_hidden_layers"],
                n_heads=cfg["num_attention_heads"],
                n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                vocab_size=cfg["vocab_size"],
                norm_eps=cfg.get("rms_norm_eps", 1e-6),
                rope_theta=cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
                max_seq_len=cfg.get("max_position_embeddings", 2048),
                ffn_hidden_dim=cfg["intermediate_size"],
                n_future_tokens=cfg.get("n_future_tokens", 1),
                **runtime,
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing key {e.args[0]!r}") from None

    def to_hf_config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.dim, "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads, "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab_size, "rms_norm_eps": self.norm_eps, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_seq_len, "intermediate_size": self.hidden_dim,
            "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
            "mlp_bias": False, "torch_dtype": "float32",
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def num_params(self, *, mtp: bool = True, lm_head: bool = True) -> int:
        """Analytic parameter count (no LoRA)."""
        d, f, hd = self.dim, self.hidden_dim, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.kv_heads * hd * 2
        block = attn + 3 * d * f + 2 * d
        n_blocks = self.n_layers
        emb = self.vocab_size * d
        return emb + n_blocks * block + d + (emb if lm_head else 0)


def round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)
