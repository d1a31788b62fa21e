"""CLI: python -m conversion {meta-to-flax,hf-to-flax,flax-to-meta,flax-to-hf} --src DIR --dst DIR

Exit status 0 on success, 1 with a one-line `conversion error: ...` on bad input; the
destination is written atomically and never left half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conversion", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["meta-to-flax", "hf-to-flax", "flax-to-meta", "flax-to-hf"])
    p.add_argument("--src", required=True, help="source directory")
    p.add_argument("--dst", required=True, help="destination directory (must not exist unless --force)")
    p.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16", "float16"],
                   help="stored dtype of the output (default: keep the source dtype)")
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.add_argument("--max-shard-mb", type=int, default=5120,
                   help="flax-to-hf: split model.safetensors into shards above this size")
    a = p.parse_args(argv)

    from conversion.hf import flax_to_hf, hf_to_flax
    from conversion.meta import flax_to_meta, meta_to_flax
    from conversion.torch_io import ConversionError

    fn = {"meta-to-flax": meta_to_flax, "hf-to-flax": hf_to_flax,
          "flax-to-meta": flax_to_meta, "flax-to-hf": flax_to_hf}[a.command]
    kw = {"max_shard_bytes": a.max_shard_mb * 2**20} if a.command == "flax-to-hf" else {}
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
