"""Model hyper-parameters: Meta `params.json` fields plus the JAX runtime knobs."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from wmtp_jax.ops.attention import IMPLEMENTATIONS

# Fields of Meta's ModelArgs (params.json). `max_batch_size` is accepted and ignored.
META_FIELDS = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "multiple_of",
    "ffn_dim_multiplier",
    "norm_eps",
    "rope_theta",
    "n_future_tokens",
    "max_seq_len",
)


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """Transformer shape (Meta params.json vocabulary) + runtime settings.

    `ffn_hidden_dim` overrides the Meta formula (HF checkpoints carry `intermediate_size`);
    `attn_head_dim` overrides `dim // n_heads` (HF `head_dim`). `tie_embeddings`: the output
    projection is `tok_embeddings.embedding.T` (one parameter; HF `tie_word_embeddings`).
    `rope_scaling`: None or the HF rope parameters of a `llama3` | `linear` | `dynamic` RoPE
    (stored as sorted (key, value) pairs so ModelArgs stays hashable; see `layers.rope_inv_freq`).
    `dtype` is the compute dtype, `param_dtype` the storage dtype of the weights.
    `remat` is a policy name: none | full | dots | dots_no_batch (see wmtp_jax.models.layers).
    `attention` is the training / prefill attention: auto | xla | blockwise | splash | cudnn
    (see wmtp_jax.ops.attention). `unroll_heads`: the MTP head blocks as an unrolled loop instead
    of one vmap (same numbers; the benchmark's before/after of vmapped heads).
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_future_tokens: int = 1
    max_seq_len: int = 2048
    ffn_hidden_dim: int | None = None
    attn_head_dim: int | None = None
    tie_embeddings: bool = False
    rope_scaling: tuple | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention: str = "auto"
    unroll_heads: bool = False

    def __post_init__(self):
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attention implementation {self.attention!r}; valid: {IMPLEMENTATIONS}"
            )
        if isinstance(self.rope_scaling, dict) or isinstance(self.rope_scaling, list):
            items = (
                self.rope_scaling.items()
                if isinstance(self.rope_scaling, dict)
                else map(tuple, self.rope_scaling)
            )
            object.__setattr__(self, "rope_scaling", tuple(sorted(items)) or None)
        if self.rope_scaling is not None:
            check_rope_scaling(dict(self.rope_scaling))
        if self.attn_head_dim is None and self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.n_future_tokens < 1 or self.n_future_tokens > self.n_layers:
            raise ValueError(
                f"n_future_tokens={self.n_future_tokens} must be in [1, n_layers={self.n_layers}]"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.dim // self.n_heads

    @property
    def rope(self) -> dict | None:
        """The rope scaling parameters as a dict (None = plain RoPE)."""
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: Meta's
        multiple_of * ceil(int(mult * int(2 * 4 * dim / 3)) / multiple_of)."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def n_trunk_layers(self) -> int:
        """Meta MTP layout: `layers` holds n_layers - n_future + 1 blocks; the last one is
        head 0."""
        return self.n_layers - self.n_future_tokens

    def replace(self, **kw) -> ModelArgs:
        return dataclasses.replace(self, **kw)

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field except `attention` and `unroll_heads`: choices of how this machine runs
        the model (a model dir written on a GPU with `cudnn` loads as `auto` on a CPU)."""
        d = dataclasses.asdict(self)
        d.pop("attention")
        d.pop("unroll_heads")
        d["rope_scaling"] = self.rope
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> ModelArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"max_batch_size"})
        if unknown:
            raise ValueError(f"{source}: unknown model field(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_meta_params(
        cls, params: dict[str, Any], *, source: str = "params.json", **runtime
    ) -> ModelArgs:
        """From Meta's params.json (only META_FIELDS + max_batch_size allowed)."""
        unknown = sorted(set(params) - set(META_FIELDS) - {"max_batch_size"})
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {unknown}; Meta ModelArgs fields: {list(META_FIELDS)}"
            )
        missing = [k for k in ("dim", "n_layers", "n_heads", "vocab_size") if k not in params]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {missing}")
        return cls(**{k: v for k, v in params.items() if k in META_FIELDS}, **runtime)

    def to_meta_params(self) -> dict[str, Any]:
        """Meta params.json; an HF `intermediate_size` F outside Meta's formula is written as
        multiple_of = F, ffn_dim_multiplier = F / int(8·dim/3) (the formula then gives F)."""
        d = {k: getattr(self, k) for k in META_FIELDS}
        f = self.ffn_hidden_dim
        if f is not None and self.replace(ffn_hidden_dim=None).hidden_dim != f:
            d["multiple_of"] = self.ffn_hidden_dim
            d["ffn_dim_multiplier"] = self.ffn_hidden_dim / int(2 * (4 * self.dim) / 3)
        if d["ffn_dim_multiplier"] is None:
            d.pop("ffn_dim_multiplier")
        return d

    @classmethod
    def from_hf_config(
        cls, cfg: dict[str, Any], *, source: str = "config.json", **runtime
    ) -> ModelArgs:
        """From a transformers LlamaConfig dict (hidden_size, num_hidden_layers, ...).

        Accepts both rope spellings (`rope_theta` + `rope_scaling`, or transformers ≥ 5's
        `rope_parameters`), `head_dim` and `rms_norm_eps`; refuses by name what the model would
        otherwise silently compute differently (bias tensors, an unknown rope type, ...)."""
        model_type = cfg.get("model_type", "llama")
        if model_type not in HF_MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported "
                f"(LLaMA family: {list(HF_MODEL_TYPES)})"
            )
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise ValueError(f"{source}: {key}=true is not supported (bias tensors)")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: hidden_act {act!r} is not supported (SwiGLU with silu)")
        if cfg.get("sliding_window") and cfg.get("use_sliding_window", True):
            raise ValueError(
                f"{source}: sliding_window={cfg['sliding_window']} is not supported "
                f"(full causal attention only)"
            )
        if cfg.get("pretraining_tp", 1) not in (1, None):
            raise ValueError(f"{source}: pretraining_tp={cfg['pretraining_tp']} is not supported")
        theta, scaling = hf_rope(cfg, source)
        try:
            n_heads = cfg["num_attention_heads"]
            head_dim = cfg.get("head_dim")
            return cls(
                dim=cfg["hidden_size"],
                n_layers=cfg["num_hidden_layers"],
                n_heads=n_heads,
                n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
                vocab_size=cfg["vocab_size"],
                norm_eps=cfg.get("rms_norm_eps", 1e-6),
                rope_theta=theta,
                rope_scaling=scaling,
                max_seq_len=cfg.get("max_position_embeddings", 2048),
                ffn_hidden_dim=cfg["intermediate_size"],
                attn_head_dim=(
                    head_dim if head_dim and head_dim * n_heads != cfg["hidden_size"] else None
                ),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                n_future_tokens=cfg.get("n_future_tokens", 1),
                **runtime,
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing key {e.args[0]!r}") from None

    def to_hf_config(self) -> dict[str, Any]:
        """transformers LlamaConfig fields (both rope spellings: `rope_theta` + `rope_scaling` and
        `rope_parameters`, so any transformers version reads the same RoPE)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta, **(self.rope or {})}
        out = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_seq_len,
            "intermediate_size": self.hidden_dim,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float32",
        }
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def num_params(self, *, mtp: bool = True, lm_head: bool = True) -> int:
        """Analytic parameter count (no LoRA)."""
        d, f, hd = self.dim, self.hidden_dim, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.kv_heads * hd * 2
        block = attn + 3 * d * f + 2 * d
        n_blocks = self.n_layers
        emb = self.vocab_size * d
        return emb + n_blocks * block + d + (emb if lm_head and not self.tie_embeddings else 0)


HF_MODEL_TYPES = ("llama", "mistral")  # Mistral: LLaMA's block when without a sliding window
ROPE_TYPES = {  # rope type -> required parameters (besides rope_theta)
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_rope_scaling(d: dict, source: str = "rope_scaling") -> None:
    """A supported rope type with its parameters, else ValueError naming what is wrong."""
    kind = d.get("rope_type")
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"{source}: rope type {kind!r} is not supported (supported: default, "
            f"{', '.join(ROPE_TYPES)})"
        )
    missing = [k for k in ROPE_TYPES[kind] if d.get(k) is None]
    if missing:
        raise ValueError(f"{source}: rope type {kind!r} needs {missing}")
    extra = float(d.get("partial_rotary_factor", 1.0) or 1.0)
    if extra != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor={extra} is not supported")


def hf_rope(cfg: dict[str, Any], source: str = "config.json") -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None) from either spelling: `rope_theta` + `rope_scaling`
    (`type` or `rope_type`) or `rope_parameters` {rope_type, rope_theta, ...}."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    kinds = [
        k
        for k in (d.get("rope_type", d.get("type")) for d in (params, scaling))
        if k not in (None, "default")
    ]
    if len(set(kinds)) > 1:
        raise ValueError(f"{source}: rope_parameters and rope_scaling disagree ({kinds})")
    merged = {**params, **scaling}
    theta = float(cfg.get("rope_theta") or merged.get("rope_theta") or 10000.0)
    kind = kinds[0] if kinds else "default"
    if kind in (None, "default"):
        return theta, None
    keep = {k: v for k, v in merged.items() if k not in ("rope_theta", "type", "rope_type")}
    out = {"rope_type": kind, **keep}
    where = "rope_parameters" if params else "rope_scaling"
    check_rope_scaling(out, f"{source} {where}")
    return theta, out


def round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)
