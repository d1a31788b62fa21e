"""Accelerator topologies by the names their users write, and the chip table.

TPU names (compile-only devices from libtpu, `jax.experimental.topologies`; no TPU needed):

    v4-8, v4-32, v5p-64, ...     v4 / v5p: the number is TensorCores, 2 per chip (v5p-64 = 32
                                 chips); one JAX device per chip (megacore)
    v5e-16, v5litepod-16, v6e-8  v5e / v6e: the number is chips
    v5e:4x4, v6e:2x4, v5p:2x2x4, v4:2x2x1   an explicit chip grid

GPU names (compile-only devices from jax's CUDA plugin, `pip install "jax[cuda12]==<jax>"`; no
GPU needed): `h100:8` (8 GPUs on one host), `h100:8x2` (8 per host × 2 hosts), `a100-80gb:8`,
`a100-40gb:8`. XLA's GPU compiler takes the device description (`GpuTargetConfigProto`) of
the model instead of querying a GPU: `gpu_target_config`.

Chip figures (dense bf16 peak, HBM capacity and bandwidth, inter-chip bandwidth per chip) are
the vendors' published ones; `device_capacity_bytes` is what the step must fit in.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
from jax.experimental import topologies

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # short name used in messages (v5e, h100, ...)
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s per chip, all links (NVLink for GPUs)
    platform: str  # tpu | gpu
    dims: int = 2  # TPU grid rank (v4 / v5p: 3-D torus)
    gpu: tuple = ()  # GPU: (description, SMs, FPUs per SM, shared memory per SM, L2 bytes,
    # clock GHz, compute capability major) of XLA's device description


_H100 = ("NVIDIA H100 80GB HBM3", 132, 128, 233472, 52428800, 1.98, 9)
_A100_80 = ("NVIDIA A100-SXM4-80GB", 108, 64, 167936, 41943040, 1.41, 8)
_A100_40 = ("NVIDIA A100-SXM4-40GB", 108, 64, 167936, 41943040, 1.41, 8)


CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12, 1228e9, 300e9, "tpu", 3),
    "v5e": Chip("v5e", 16 * GIB, 197e12, 819e9, 200e9, "tpu", 2),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 2765e9, 600e9, "tpu", 3),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1640e9, 448e9, "tpu", 2),
    # GPU memory: the device_memory_size the CUDA driver reports (a bit under the marketed GB)
    "a100-40gb": Chip("a100-40gb", 42331013120, 312e12, 1555.2e9, 600e9, "gpu", gpu=_A100_40),
    "a100-80gb": Chip("a100-80gb", 85100068864, 312e12, 2039.04e9, 600e9, "gpu", gpu=_A100_80),
    "h100": Chip("h100", 84978434048, 989e12, 3352.32e9, 900e9, "gpu", gpu=_H100),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "a100": "a100-80gb"}
_CORES_PER_CHIP = {"v4": 2, "v5p": 2}  # the -N suffix counts TensorCores
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8)}
_GRIDS_2D.update({128: (8, 16), 256: (16, 16)})
_GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4)}
_GRIDS_3D.update({128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)})


class TopologyError(ValueError):
    """A topology name that cannot be compiled for (exit 2)."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given
    chip: Chip
    grid: tuple  # chips per axis
    devices: tuple  # compile-only jax devices

    @property
    def n_devices(self) -> int:
        return len(self.devices)


def parse(name: str) -> tuple[Chip, tuple]:
    """(chip, chip grid) of a topology name; TopologyError (one line) for anything else."""
    raw = str(name).strip().lower()
    m = re.fullmatch(r"([a-z0-9.\-]+?)(?:-(\d+)|:(\d+(?:x\d+)*))", raw)
    if not m:
        raise TopologyError(
            f"--topology={name!r}: expected e.g. v5e:2x2, v5e-16, v5p-64, v4-8, v6e-8"
        )
    gen, count, grid = m.group(1), m.group(2), m.group(3)
    gen = _ALIASES.get(gen, gen)
    chip = CHIPS.get(gen)
    if chip is not None and chip.platform == "gpu":
        dims = tuple(int(x) for x in (grid or "").split("x") if x)
        if count is not None or len(dims) not in (1, 2) or min(dims) < 1:
            raise TopologyError(
                f"--topology={name!r}: GPU targets are <gpu>:<per host>[x<hosts>], e.g. h100:8"
            )
        return chip, (dims[1] if len(dims) == 2 else 1, dims[0])  # (hosts, GPUs per host)
    if chip is None or chip.platform != "tpu":
        tpus = sorted(k for k, c in CHIPS.items() if c.platform == "tpu")
        raise TopologyError(
            f"--topology={name!r}: unknown TPU generation {m.group(1)!r}; valid: {tpus} "
            f"(GPUs: {sorted(k for k, c in CHIPS.items() if c.platform == 'gpu')}, e.g. h100:8)"
        )
    if grid is not None:
        shape = tuple(int(x) for x in grid.split("x"))
        if len(shape) != chip.dims or min(shape) < 1:
            raise TopologyError(
                f"--topology={name!r}: {gen} takes a {chip.dims}-D chip grid "
                f"({'AxBxC' if chip.dims == 3 else 'AxB'})"
            )
        return chip, shape
    n = int(count)
    cores = _CORES_PER_CHIP.get(gen, 1)
    if n % cores:
        raise TopologyError(f"--topology={name!r}: {gen}-N counts TensorCores ({cores} per chip)")
    chips = n // cores
    grids = _GRIDS_3D if chip.dims == 3 else _GRIDS_2D
    if chips not in grids:
        sizes = [c * cores for c in sorted(grids)]
        form = "AxBxC" if chip.dims == 3 else "AxB"
        raise TopologyError(
            f"--topology={name!r}: {gen}-N with N in {sizes} (or a grid {gen}:{form})"
        )
    return chip, grids[chips]


def get(name: str) -> Topology:
    """The compile-only devices of a TPU topology (needs libtpu: the `dev` extra's jax[tpu])."""
    chip, grid = parse(name)
    if chip.platform == "gpu":
        return _gpu(name, chip, grid)
    # compile-only use: several processes may load libtpu at once (tests, parallel compiles)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    per_host = tuple(min(g, 2) for g in grid[:2]) + (1,)
    config = "megacore" if chip.name == "v4" else "default"
    try:
        desc = topologies.get_topology_desc(
            platform="tpu",
            topology_name=f"{chip.name}:{'x'.join(map(str, grid))}",
            chip_config_name=config,
            chips_per_host_bounds=per_host,
            num_slices=1,
        )
    except Exception as e:  # noqa: BLE001 - libtpu missing or the shape refused
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TopologyError(f"--topology={name!r}: {msg}") from None
    return Topology(name=name, chip=chip, grid=grid, devices=tuple(desc.devices))


def gpu_target_config(chip: Chip) -> str:
    """XLA's GpuTargetConfigProto (text format) of a GPU model: what the compiler would read from
    the device (limits common to sm_80 / sm_90; figures per model from `Chip.gpu`)."""
    desc, sms, fpus, smem, l2, clock, major = chip.gpu
    return (
        "gpu_device_info {\n"
        "  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152\n"
        f"  shared_memory_per_core: {smem} threads_per_core_limit: 2048 core_count: {sms}\n"
        f"  fpus_per_core: {fpus} block_dim_limit_x: 2147483647 block_dim_limit_y: 65535\n"
        f"  block_dim_limit_z: 65535 memory_bandwidth: {int(chip.hbm_bandwidth)}\n"
        f"  l2_cache_size: {l2} clock_rate_ghz: {clock} device_memory_size: {chip.hbm_bytes}\n"
        f"  shared_memory_per_block_optin: {smem - 1024}\n"
        f"  cuda_compute_capability {{ major: {major} }}\n"
        "  registers_per_core_limit: 65536 registers_per_block_limit: 65536\n"
        "}\n"
        'platform_name: "CUDA"\n'
        f'device_description_str: "{desc}"\n'
    )


def _gpu(name: str, chip: Chip, grid: tuple) -> Topology:
    hosts, per_host = grid
    try:
        desc = topologies.get_topology_desc(
            platform="cuda",
            topology_name=name,
            target_config=gpu_target_config(chip),
            topology=f"1x{hosts}x{per_host}",
        )
    except Exception as e:  # noqa: BLE001 - no CUDA plugin, or the description refused
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TopologyError(
            f"--topology={name!r}: {msg} (GPU targets need jax's CUDA plugin: pip install "
            f'"jax[cuda12]=={jax.__version__}", see docs/scaling.md)'
        ) from None
    return Topology(name=name, chip=chip, grid=grid, devices=tuple(desc.devices))


def describe(topo: Topology) -> str:
    c = topo.chip
    if c.platform == "gpu":
        return (
            f"{topo.name}: {topo.n_devices} × {c.gpu[0]} ({topo.grid[0]} host(s) × "
            f"{topo.grid[1]}), {c.hbm_bytes / GIB:.1f} GiB, {c.peak_flops / 1e12:.0f} TFLOP/s "
            f"bf16, {c.hbm_bandwidth / 1e9:.0f} GB/s per GPU"
        )
    return (
        f"{topo.name}: {topo.n_devices} × TPU {c.name} ({'x'.join(map(str, topo.grid))}), "
        f"{c.hbm_bytes / GIB:.0f} GiB HBM, {c.peak_flops / 1e12:.0f} TFLOP/s bf16, "
        f"{c.hbm_bandwidth / 1e9:.0f} GB/s per chip"
    )
