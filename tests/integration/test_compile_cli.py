"""`python -m wmtp_jax.compile` end to end for a TPU v5e:2x2 topology on this CPU host (libtpu
from the dev extra's jax[tpu] gives compile-only devices): the micro steps compile with memory,
FLOPs and collectives; FSDP shards what DDP replicates; a 7B step that cannot fit is refused in
one line before compiling; a bad topology is a config error."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("libtpu")

from wmtp_jax.compile.__main__ import run  # noqa: E402
from wmtp_jax.configs import baseline  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOISE = ("WARNING", "E0000", "I0000", "TPU_", "===", "learning/", "Failed to find host bounds")


def _run(args, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    p = subprocess.run(
        [sys.executable, "-m", "wmtp_jax.compile", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    err = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(NOISE)]
    return p, err


def test_micro_verifiable_compiles_for_v5e(tmp_path):
    out = tmp_path / "r.json"
    p, err = _run(["--config=configs/verifiable.py", "--topology=v5e:2x2", f"--out={out}"])
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(out.read_text())
    assert r["topology"] == {"name": "v5e:2x2", "chip": "v5e", "grid": [2, 2], "devices": 4}
    assert r["settings"]["attention"] == "splash"  # the Pallas TPU kernel, never cpu_flash
    assert set(r["models"]) == {"policy", "critic"}
    for sec in (r["train"], r["decode"], r["decode"]["prefill"]):
        m = sec["memory"]
        assert m["per_device_bytes"] > 0 and m["argument"] > 0
        assert m["device_capacity_bytes"] == 16 * 2**30
        assert sec["fits"] is True
        assert sec["flops"]["compiled"] > 0 and sec["flops"]["analytic"] > 0
        assert sec["estimate"]["step_s"] > 0 and 0 < sec["estimate"]["mfu"] <= 1
        assert all({"kind", "count", "bytes"} <= set(c) for c in sec["collectives"])
    # float32, no remat: the compiled matmul FLOPs (the splash kernels' from their shapes) are
    # the analytic model's within the kernels' backward recomputation (1.01× at the time of
    # writing; the count is structural, not rounding-dependent)
    f = r["train"]["flops"]
    assert f["kernel_calls"] > 0 and 0 < f["kernel_flops"] < f["compiled"]
    assert 0.9 < f["ratio"] < 1.15
    assert "[train] per device on v5e:2x2" in p.stdout


def _collectives(tmp_path, sharding, topo):
    c = baseline.get_config("micro")
    c.runtime.sharding = sharding
    out = tmp_path / f"{sharding}.json"
    assert run(c, topo, out=str(out), decode=False) == 0
    r = json.loads(out.read_text())["train"]
    return {x["kind"] for x in r["collectives"]}, r["memory"]["argument"]


def test_full_shard_gathers_where_no_shard_only_all_reduces(tmp_path):
    """FSDP on v5e:2x2: parameters all-gathered for use, AdamW state sharded (4× smaller
    arguments); DDP: one all-reduce family only. (At micro shapes XLA's TPU partitioner reduces
    the FSDP gradients with all-reduces on activation-sized buffers rather than reduce-scatters;
    see docs/scaling.md.)"""
    fsdp, fsdp_args = _collectives(tmp_path, "FULL_SHARD", "v5e:2x2")
    ddp, ddp_args = _collectives(tmp_path, "NO_SHARD", "v5e:2x2")
    assert "all-gather" in fsdp
    assert ddp == {"all-reduce"}
    assert fsdp_args < 0.4 * ddp_args


@pytest.mark.skipif(
    importlib.util.find_spec("jax_cuda12_plugin") is None, reason="jax's CUDA plugin"
)
def test_full_shard_on_h100_gathers_and_reduce_scatters(tmp_path):
    fsdp, _ = _collectives(tmp_path, "FULL_SHARD", "h100:4")
    assert {"all-gather", "reduce-scatter"} <= fsdp


def test_oversized_step_refused_in_one_line():
    """7B policy, every array replicated (NO_SHARD) on 16 GiB v5e chips: refused from the
    arguments' size, before compiling."""
    p, err = _run(
        [
            "--config=configs/baseline.py:7b",
            "--topology=v5e:2x2",
            "--config.runtime.sharding=NO_SHARD",
            "--config.training.use_lora=False",
        ],
        timeout=300,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    assert len(err) == 1 and err[0].startswith("needs ") and "v5e has 16 GiB" in err[0], err


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--topology=v9-8"], "unknown TPU generation"),
        (["--topology=v5e:3x3"], "--topology='v5e:3x3'"),
        ([], "--topology is required"),
        (["--topology=v5e:2x2", "--policy_preset=gpt-5"], "unknown architecture preset"),
    ],
)
def test_bad_topology_or_config_exits_2(args, msg):
    p, err = _run(["--config=configs/baseline.py", *args], timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], err
