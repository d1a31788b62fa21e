"""The typed arguments of the data and model layers, built once from a run's config.

`data/` and `models/` never read the config tree: a pipeline builds `DataSpec`, `Runtime` and
`LoRAConfig` here and passes them on.
"""

from __future__ import annotations

from wmtp_jax.data.loaders import DataSpec, Sampling, tokenizer_dir
from wmtp_jax.data.packing import batch_shards
from wmtp_jax.models.load import Runtime
from wmtp_jax.models.lora import HF_TO_META_TARGET, LoRAConfig


def data_spec(config) -> DataSpec:
    """dataset.*, data_sampling.*, data.*, training.batch_size, seed and the mesh axes."""
    s, d, m = config.data_sampling, config.data, config.mesh
    return DataSpec(
        path=str(config.dataset.path),
        train_split=str(config.dataset.train),
        validation_split=str(config.dataset.validation),
        max_length=int(config.dataset.max_length),
        batch_size=int(config.training.batch_size),
        seed=int(config.seed),
        sampling=Sampling(
            seed=int(s.seed),
            n_samples=int(s.n_samples),
            val_n_samples=int(s.val_n_samples),
            use_pairwise=bool(s.use_pairwise),
            max_pairs_per_problem=s.max_pairs_per_problem or None,
            difficulty_bins={k: tuple(v) for k, v in s.difficulty_bins.items()},
            difficulty_weights=dict(s.difficulty_weights),
            use_length_balanced=bool(s.use_length_balanced),
            length_bins=tuple(s.length_bins),
        ),
        append_eos=bool(d.append_eos),
        num_threads=int(d.num_threads),
        packing=bool(d.packing),
        pack_rows=int(d.pack_rows),
        batch_shards=batch_shards(m.data, m.fsdp, m.tensor),
    )


def runtime(config) -> Runtime:
    """runtime.{dtype, remat, attention}."""
    r = config.runtime
    return Runtime(dtype=str(r.dtype), remat=str(r.remat), attention=str(r.attention))


def lora(config, *, hf_names: bool = False) -> LoRAConfig | None:
    """LoRAConfig from training.lora when training.use_lora, else None (HF names mapped to the
    model's)."""
    if not config.training.use_lora:
        return None
    lo = config.training.lora
    targets = tuple(HF_TO_META_TARGET.get(t, t) if hf_names else t for t in lo.target_modules)
    return LoRAConfig(
        rank=int(lo.rank), alpha=float(lo.alpha), dropout=float(lo.dropout), targets=targets
    )


def tokenizer(entry) -> str:
    """The tokenizer dir of a `models.<role>` entry (its tokenizer_path, else <path>/tokenizer)."""
    return tokenizer_dir(str(entry.path), str(entry.get("tokenizer_path", "")))
