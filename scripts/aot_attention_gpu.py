"""Compile `wmtp_jax.ops.attention` (forward + backward, bf16, GQA) for NVIDIA GPUs on a host
without one, and print what each path lowers to (docs/performance.md, "Attention compiled
ahead of time").

Needs jax's CUDA plugin and cuDNN next to the installed jax, in a separate environment:

    python3 -m venv /tmp/gpuvenv
    /tmp/gpuvenv/bin/pip install "jax==0.10.2" "jax-cuda12-plugin==0.10.2" \
        "jax-cuda12-pjrt==0.10.2" "nvidia-cudnn-cu12>=9.8,<10" nvidia-cuda-runtime-cu12 \
        nvidia-cuda-nvrtc-cu12 absl-py
    JAX_PLATFORMS=cpu PYTHONPATH=. /tmp/gpuvenv/bin/python scripts/aot_attention_gpu.py h100 8

The devices are compile-only (`jax.experimental.topologies`, the plugin's `topology` and
`target_config` options): XLA compiles for the GPU described in the target config instead of
querying one.
"""

from __future__ import annotations

import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax.ops import attention as A

# (name, compute capability major, SMs, shared memory per SM, FP32 lanes per SM, HBM bytes/s,
#  L2 bytes, clock GHz, HBM bytes, opt-in shared memory per block): vendor data sheets
GPUS = {
    "h100": ("NVIDIA H100 80GB HBM3", 9, 132, 233472, 128, 3.35e12, 50 << 20, 1.98, 80e9, 232448),
    "a100": ("NVIDIA A100-SXM4-80GB", 8, 108, 167936, 64, 2.04e12, 40 << 20, 1.41, 80e9, 166912),
}


def target_config(gpu: str) -> str:
    """A GpuTargetConfigProto (text format) with the fields XLA's GPU compiler reads."""
    name, major, sms, smem_sm, fpus, bw, l2, ghz, hbm, optin = GPUS[gpu]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_sm}
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: {fpus}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(bw)}
  l2_cache_size: {l2}
  clock_rate_ghz: {ghz}
  device_memory_size: {int(hbm)}
  shared_memory_per_block_optin: {optin}
  cuda_compute_capability {{ major: {major} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{name}"
"""


def main(gpu: str = "h100", n: int = 8) -> None:
    topo = topologies.get_topology_desc(
        platform="cuda", topology=f"1x1x{n}", target_config=target_config(gpu)
    )
    dev = topo.devices[0]
    print(f"{n} × {dev.device_kind}, compute capability {dev.compute_capability}")
    mesh = Mesh(np.asarray(topo.devices).reshape(1, n, 1), ("data", "fsdp", "tensor"))
    sh = NamedSharding(mesh, P("fsdp"))  # the batch over the devices
    b, s, h, kv, hd = n, 1024, 8, 2, 128
    args = [
        jax.ShapeDtypeStruct((b, s, h, hd), jnp.bfloat16, sharding=sh),
        jax.ShapeDtypeStruct((b, s, kv, hd), jnp.bfloat16, sharding=sh),
        jax.ShapeDtypeStruct((b, s, kv, hd), jnp.bfloat16, sharding=sh),
        jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=sh),
    ]
    cases = [
        ("auto, causal", "auto", {}),
        ("auto, right padding as lengths", "auto", {"lengths": True}),
        ("auto, segment ids", "auto", {"segment_ids": True}),
        ("cudnn, segment ids", "cudnn", {"segment_ids": True}),
    ]
    for name, impl, kw in cases:

        def loss(q, k, v, ids, impl=impl, kw=kw):
            extra = {key: ids[:, 0] if key == "lengths" else ids for key in kw}
            out = A.attention(q, k, v, implementation=impl, **extra)
            return jnp.sum(out.astype(jnp.float32) ** 2)

        t0 = time.perf_counter()
        with A.target_platform("gpu"), jax.set_mesh(mesh):
            hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile().as_text()
        calls = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
        shapes = re.findall(r"\b(?:f32|bf16|pred)\[([0-9,]+)\]", hlo)
        square = sum(x.split(",")[-2:] == [str(s)] * 2 for x in shapes)
        gathers = len(re.findall(r"all-gather-start\(|all-gather\(", hlo))
        print(
            f"{name:32s} {time.perf_counter() - t0:5.1f} s  custom calls {calls or '-'}  "
            f"[S,S] arrays {square}  all-gathers {gathers}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "h100", int(sys.argv[2]) if len(sys.argv) > 2 else 8)
