"""CLI: python -m conversion {meta-to-flax,hf-to-flax,hf-to-mtp,flax-to-meta,flax-to-hf} --src --dst

    python -m conversion hf-to-mtp --src HF_DIR_OR_GGUF --dst DIR --n-future 4 \
        [--head-init copy|random]

Exit status 0 on success, 1 with a one-line `conversion error: ...` on bad input; the
destination is written atomically and never left half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from conversion.hf import flax_to_hf, hf_to_flax, hf_to_mtp
from conversion.meta import flax_to_meta, meta_to_flax
from conversion.torch_io import ConversionError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conversion", description=__doc__.splitlines()[0])
    p.add_argument(
        "command", choices=["meta-to-flax", "hf-to-flax", "hf-to-mtp", "flax-to-meta", "flax-to-hf"]
    )
    p.add_argument("--src", required=True, help="source directory")
    p.add_argument(
        "--dst", required=True, help="destination directory (must not exist unless --force)"
    )
    p.add_argument(
        "--dtype",
        default="keep",
        choices=["keep", "float32", "bfloat16", "float16"],
        help="stored dtype of the output (default: keep the source dtype)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.add_argument(
        "--max-shard-mb",
        type=int,
        default=5120,
        help="flax-to-hf: split model.safetensors into shards above this size",
    )
    p.add_argument(
        "--n-future",
        type=int,
        default=None,
        help="hf-to-mtp: heads K (trunk = first L-1 layers, head 0 = layer L-1)",
    )
    p.add_argument(
        "--head-init",
        default="copy",
        choices=["copy", "random"],
        help="hf-to-mtp: heads 1..K-1 copy head 0 (default) or are freshly initialised",
    )
    p.add_argument("--seed", type=int, default=0, help="hf-to-mtp --head-init random: init seed")
    a = p.parse_args(argv)

    fn = {
        "meta-to-flax": meta_to_flax,
        "hf-to-flax": hf_to_flax,
        "hf-to-mtp": hf_to_mtp,
        "flax-to-meta": flax_to_meta,
        "flax-to-hf": flax_to_hf,
    }[a.command]
    kw = {"max_shard_bytes": a.max_shard_mb * 2**20} if a.command == "flax-to-hf" else {}
    if a.command == "hf-to-mtp":
        if a.n_future is None:
            p.error("hf-to-mtp needs --n-future K")
        kw = {"n_future": a.n_future, "head_init": a.head_init, "seed": a.seed}
    t0 = time.perf_counter()
    try:
        summary = fn(a.src, a.dst, dtype=a.dtype, force=a.force, **kw)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"conversion error: {e}", file=sys.stderr)
        return 1
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps({"command": a.command, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
