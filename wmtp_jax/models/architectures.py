"""Named architecture presets: model shapes without a checkpoint.

What `python -m wmtp_jax.compile` builds when a config's model dir is absent (nothing is read
or downloaded; the weights are abstract). Figures are those of the public configs: the Meta MTP
`params.json` of `7B_1T_4`, and the Hugging Face `config.json` of the others (read through
`ModelArgs.from_hf_config`, so a preset is exactly what `hf-to-flax` of that checkpoint gives).

`model_dir_args(path)` maps a configured model path to its preset by name
(`storage/models/meta-llama-mtp` → `meta-mtp-7b-1t-4`, `ref-sheared-llama-2.7b` →
`sheared-llama-2.7b`, ...).
"""

from __future__ import annotations

from pathlib import Path

from wmtp_jax.models.args import ModelArgs

# Meta MTP 7B_1T_4 params.json: LLaMA-2 7B shape, 4 future-token heads (28 trunk + 4 head blocks)
META_MTP_7B = {
    "dim": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "vocab_size": 32000,
    "multiple_of": 256,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "n_future_tokens": 4,
    "max_seq_len": 4096,
}


def _hf(hidden, inter, layers, heads, kv, vocab, theta, max_pos, tied, **extra) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "rope_theta": theta,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": tied,
        "rms_norm_eps": extra.pop("rms_norm_eps", 1e-5),
        **extra,
    }


_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}

HF_CONFIGS = {
    "sheared-llama-2.7b": _hf(2560, 6912, 32, 20, 20, 32000, 10000.0, 4096, False),
    "llama-3.2-1b": _hf(
        2048, 8192, 16, 32, 8, 128256, 500000.0, 131072, True, rope_scaling=_LLAMA3_ROPE
    ),
    "llama-3.2-3b": _hf(
        3072, 8192, 28, 24, 8, 128256, 500000.0, 131072, True, rope_scaling=_LLAMA3_ROPE
    ),
    "smollm2-135m": _hf(576, 1536, 30, 9, 3, 49152, 100000.0, 8192, True),
    "smollm2-360m": _hf(960, 2560, 32, 15, 5, 49152, 100000.0, 8192, True),
    "smollm2-1.7b": _hf(2048, 8192, 24, 32, 32, 49152, 130000.0, 8192, True),
}

PRESETS = ("meta-mtp-7b-1t-4", *HF_CONFIGS)

# configured model dir names (configs/parts.py) → preset
_DIR_PRESETS = {
    "meta-llama-mtp": "meta-mtp-7b-1t-4",
    "ref-sheared-llama-2.7b": "sheared-llama-2.7b",
    "critic-7b": "sheared-llama-2.7b",  # the critic pipeline's 7b output: a Sheared-LLaMA critic
    "ref_tuning-7b": "sheared-llama-2.7b",
    "smollm2-135m": "smollm2-135m",
    "smollm2-135m-mtp": "smollm2-135m",
}


def preset_args(name: str, **overrides) -> ModelArgs:
    """The ModelArgs of preset `name` (one of PRESETS), `overrides` written in (e.g.
    n_future_tokens=2, dtype="bfloat16"). ValueError naming the valid presets otherwise."""
    key = name.lower()
    if key == "meta-mtp-7b-1t-4":
        return ModelArgs(**{**META_MTP_7B, **overrides})
    if key not in HF_CONFIGS:
        raise ValueError(f"unknown architecture preset {name!r}; valid: {', '.join(PRESETS)}")
    args = ModelArgs.from_hf_config(HF_CONFIGS[key], source=f"preset {key}")
    return args.replace(**overrides) if overrides else args


def preset_for_path(path: str) -> str | None:
    """The preset a configured model path stands for (by its directory names), or None."""
    for part in reversed(Path(str(path)).parts):
        if part in _DIR_PRESETS:
            return _DIR_PRESETS[part]
    return None
