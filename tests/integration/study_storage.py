"""A tiny storage/ for the pipeline and study tests: a 40-problem synthetic dataset, the micro BPE
tokenizer and tiny random models at the micro default paths (the runs then only train and
evaluate)."""

from pathlib import Path


def make_tiny_storage(w: Path) -> Path:
    from flax import nnx

    from wmtp_jax.configs import parts
    from wmtp_jax.data import ensure_micro_tokenizer, ensure_synthetic
    from wmtp_jax.models import ModelArgs, serialization
    from wmtp_jax.models.llama import Llama
    from wmtp_jax.models.mtp import MTPTransformer

    ensure_synthetic(w / parts.MICRO_DATASET, seed=0, n_problems=40)
    tok = ensure_micro_tokenizer(
        w / parts.MICRO_TOKENIZER, w / parts.MICRO_DATASET, vocab_size=1024
    )
    files = sorted((w / parts.MICRO_TOKENIZER).iterdir())
    args = ModelArgs(
        dim=32,
        n_layers=3,
        n_heads=2,
        vocab_size=len(tok),
        multiple_of=16,
        n_future_tokens=2,
        max_seq_len=128,
    )
    serialization.save_model(
        w / parts.MICRO_POLICY,
        MTPTransformer(args, rngs=nnx.Rngs(0)),
        kind="mtp",
        args=args,
        tokenizer=files,
    )
    largs = args.replace(n_layers=2, n_future_tokens=1)
    serialization.save_model(
        w / parts.MICRO_LLAMA,
        Llama(largs, rngs=nnx.Rngs(1)),
        kind="llama",
        args=largs,
        tokenizer=files,
    )
    return w


if __name__ == "__main__":
    import sys

    make_tiny_storage(Path(sys.argv[1]))
