"""Peak-RSS measurement of the conversion CLI on a random Meta MTP / HF LLaMA checkpoint.

    python -m conversion.measure_memory --workdir /tmp/convmem [--dim 1024 --n-layers 12 ...]

Each step (`meta-to-flax`, `flax-to-meta`, `hf-to-flax`, `flax-to-hf`) runs in a fresh
subprocess that reports its own `ru_maxrss`; an import-only subprocess gives the baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conversion.mapping import hf_key_table, meta_key_table
from conversion.trees import torch_shape
from wmtp_jax.models.args import ModelArgs

_STEP = (
    "import resource, sys; from conversion.__main__ import main; rc = main(sys.argv[1:]); "
    "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
)
_BASE = (
    "import resource; import conversion.__main__, conversion.meta, conversion.hf, torch; "
    "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def _rss_mib(code: str, *argv) -> float:
    r = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True
    )
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    kib = int(next(line for line in r.stdout.splitlines() if line.startswith("MAXRSS")).split()[1])
    return kib / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--n-heads", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--n-future-tokens", type=int, default=4)
    a = p.parse_args()

    import torch  # heavy and optional (the `torch` extra)

    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "meta").mkdir(parents=True)
    params = dict(
        dim=a.dim,
        n_layers=a.n_layers,
        n_heads=a.n_heads,
        n_kv_heads=a.n_heads // 4,
        vocab_size=a.vocab_size,
        multiple_of=256,
        n_future_tokens=a.n_future_tokens,
    )
    args = ModelArgs.from_meta_params(params)
    sd = {
        k: torch.randn(torch_shape(args, path))
        for k, path, _ in meta_key_table(args.n_trunk_layers, args.n_future_tokens)
    }
    n = sum(v.numel() for v in sd.values())
    torch.save(sd, work / "meta" / "consolidated.pth")
    (work / "meta" / "params.json").write_text(json.dumps(params))
    del sd
    out = {
        "params_m": round(n / 1e6, 1),
        "float32_mib": round(4 * n / 2**20),
        "baseline_import_mib": round(_rss_mib(_BASE)),
    }
    steps = [
        ("meta-to-flax", "meta", "flax_mtp"),
        ("flax-to-meta", "flax_mtp", "meta_back"),
        ("hf-to-flax", "hf", "flax_llama"),
        ("flax-to-hf", "flax_llama", "hf_back"),
    ]
    # an HF checkpoint of the same size: trunk + heads as plain layers
    hf_args = args.replace(n_future_tokens=1)
    (work / "hf").mkdir()
    hf_cfg = hf_args.to_hf_config()
    (work / "hf" / "config.json").write_text(json.dumps(hf_cfg))
    from safetensors.torch import save_file  # imports torch

    save_file(
        {
            k: torch.randn(torch_shape(hf_args, path))
            for k, path, _ in hf_key_table(hf_args.n_layers)
        },
        str(work / "hf" / "model.safetensors"),
    )
    for cmd, src, dst in steps:
        out[f"{cmd}_peak_mib"] = round(
            _rss_mib(_STEP, cmd, "--src", work / src, "--dst", work / dst)
        )
    print(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
