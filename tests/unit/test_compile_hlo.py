"""wmtp_jax.compile without an accelerator: HLO FLOPs with loop trip counts, collective
accounting, topology names, architecture presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax.bench import flops
from wmtp_jax.compile import hlo, topology
from wmtp_jax.compile.aot import oom_line, per_device_bytes
from wmtp_jax.models import architectures
from wmtp_jax.models.args import ModelArgs


def test_scanned_matmuls_count_every_iteration():
    """A scan of 5 [8,16]@[16,32] matmuls: 5·2·8·16·32 FLOPs (cost_analysis counts the body
    once)."""

    def f(x, ws):
        def body(c, w):
            return c, x @ w

        return jax.lax.scan(body, 0.0, ws)[1]

    x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    ws = jax.ShapeDtypeStruct((5, 16, 32), jnp.float32)
    a = hlo.analyze(jax.jit(f).lower(x, ws).compile().as_text())
    assert a.flops == 5 * 2 * 8 * 16 * 32
    assert a.unknown_trip_counts == 0


def test_splash_kernel_flops_from_q_shape_and_causal_tiles():
    """A splash dq call on q [2, 8, 1024, 128] (block 512, n = 2 tiles a side, 3 of 4 computed
    under the causal mask): 3 matmuls × 2·B·H·S²·hd × 3/4; a 4-tile S = 2048 keeps 10 of 16.
    A custom call of another name counts 0."""
    ops = ["f32[2,512,128]", "bf16[2,8,1024,128]", "bf16[2,4,1024,128]", "bf16[2,4,1024,128]"]
    dq = hlo.Instr(
        "splash_mha_dq_no_residuals.1", "(bf16[2,8,1024,128])", "custom-call", [], "", ""
    )
    assert hlo.splash_flops(dq, ops) == 3 * 2 * 2 * 8 * 1024**2 * 128 * 3 // 4
    fwd = hlo.Instr("splash_mha_fwd.3", "bf16[1,32,2048,128]", "custom-call", [], "", "")
    assert hlo.splash_flops(fwd, ["bf16[1,32,2048,128]", "bf16[1,8,2048,128]"]) == (
        2 * 2 * 32 * 2048**2 * 128 * 10 // 16
    )
    other = hlo.Instr("my_kernel.1", "bf16[2,8,1024,128]", "custom-call", [], "", "")
    assert hlo.splash_flops(other, ops) == 0


def test_trip_count_from_condition_without_backend_hint():
    text = """
%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4,8] get-tuple-element(%p), index=1
  %w = f32[8,8] constant({...})
  %d = f32[4,8] dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %e = f32[4,8] add(%d, %d), frontend_attributes={kernel_metadata={
"a multi-line attribute":"its last line starts with a brace"
}}, metadata={op_name="m"}
  %d2 = f32[4,8] dot(%e, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[4,8]) tuple(%j, %d)
}

%cond (q: (s32[], f32[4,8])) -> pred[] {
  %q = (s32[], f32[4,8]) parameter(0)
  %k = s32[] get-tuple-element(%q), index=0
  %n = s32[] constant(7)
  ROOT %lt = pred[] compare(%k, %n), direction=LT
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8] parameter(0)
  %z = s32[] constant(0)
  %init = (s32[], f32[4,8]) tuple(%z, %a)
  %w = (s32[], f32[4,8]) while(%init), condition=%cond, body=%body
  %g = f32[4,8] get-tuple-element(%w), index=1
  ROOT %ar = f32[4,8] all-reduce(%g), replica_groups={{0,1}}, to_apply=%cond
}
"""
    a = hlo.analyze(text)
    assert a.flops == 7 * 2 * (2 * 4 * 8 * 8)
    assert a.collectives == [{"kind": "all-reduce", "count": 1, "bytes": 4 * 8 * 4}]


def test_tpu_batched_matmul_convolution_counts_real_taps_only():
    """TPU writes a batch dim as a dilated window (size=N stride=N-1 lhs_dilate=N): each output
    position meets one real input element, so the FLOPs are those of N matmuls."""
    ins = hlo.Instr(
        "c",
        "f32[4,16,32]",
        "convolution",
        ["l", "r"],
        "",
        ", window={size=4 stride=3 lhs_dilate=4}, dim_labels=0bf_0io->0bf",
    )
    assert hlo.conv_flops(ins, "f32[4,16,8]", "f32[4,8,32]") == 4 * 2 * 16 * 8 * 32
    plain = hlo.Instr("c", "f32[16,32]", "convolution", ["l", "r"], "", ", dim_labels=bf_io->bf")
    assert hlo.conv_flops(plain, "f32[16,8]", "f32[8,32]") == 2 * 16 * 8 * 32


@pytest.mark.parametrize(
    "name,chip,grid",
    [
        ("v5e:2x2", "v5e", (2, 2)),
        ("v5e-16", "v5e", (4, 4)),
        ("v5litepod-256", "v5e", (16, 16)),
        ("v5p-64", "v5p", (2, 4, 4)),
        ("v4-8", "v4", (2, 2, 1)),
        ("v6e-8", "v6e", (2, 4)),
        ("v5p:2x2x4", "v5p", (2, 2, 4)),
    ],
)
def test_topology_names(name, chip, grid):
    c, g = topology.parse(name)
    assert (c.name, g) == (chip, grid)


@pytest.mark.parametrize("name", ["v7-8", "v5p-6", "v5e:2x2x2", "h100", "v4:2x2", ""])
def test_bad_topology_names_raise_one_line(name):
    with pytest.raises(topology.TopologyError) as e:
        topology.parse(name)
    assert "\n" not in str(e.value)


def test_presets_match_published_sizes():
    """Parameter counts of the public models (embeddings + blocks + untied head)."""

    def n_params(a):
        emb = a.vocab_size * a.dim * (1 if a.tie_embeddings else 2)
        return emb + a.n_layers * flops.block_params(a)

    assert n_params(architectures.preset_args("sheared-llama-2.7b")) == pytest.approx(
        2.7e9, rel=0.02
    )
    assert n_params(architectures.preset_args("llama-3.2-1b")) == pytest.approx(1.24e9, rel=0.01)
    assert n_params(architectures.preset_args("smollm2-135m")) == pytest.approx(1.35e8, rel=0.01)
    mtp = architectures.preset_args("meta-mtp-7b-1t-4")
    assert (mtp.n_trunk_layers, mtp.n_future_tokens, mtp.hidden_dim) == (28, 4, 11008)
    assert architectures.preset_args("meta-mtp-7b-1t-4", n_future_tokens=2).n_trunk_layers == 30
    assert architectures.preset_for_path("storage/models/meta-llama-mtp") == "meta-mtp-7b-1t-4"
    assert architectures.preset_for_path("x/critic/critic-7b/final_model") == "sheared-llama-2.7b"
    with pytest.raises(ValueError, match="valid:"):
        architectures.preset_args("gpt-5")


def test_per_device_bytes_of_sharded_specs():
    mesh = jax.make_mesh((jax.device_count(),), ("x",))
    n = jax.device_count()
    spec = jax.ShapeDtypeStruct((8 * n, 4), np.float32, sharding=NamedSharding(mesh, P("x")))
    rep = jax.ShapeDtypeStruct((3,), np.int32, sharding=NamedSharding(mesh, P()))
    assert per_device_bytes({"a": spec, "b": rep}) == 8 * 4 * 4 + 3 * 4


def test_xla_out_of_memory_error_becomes_one_line():
    topo = topology.Topology("v6e-8", topology.CHIPS["v6e"], (2, 4), ())
    err = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (34.72G) exceeds available HBM (31.25G).\nmore"
    )
    line = oom_line(err, 5 * 2**30, topo)
    assert (
        line
        == "needs 39.7 GiB per device (5.0 GiB arguments + 34.7 GiB temporaries), v6e has 32 GiB"
    )


def test_analytic_flops_of_rho1_and_ref_tuning():
    """ref_tuning (full fine-tuning of a llama): 6·(n_layers·N_block + D·V) + 6·S·H·hd·L;
    rho1 = baseline + the frozen reference forward 2·N_llama + 2·S·H·hd·L."""
    llama = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=100, multiple_of=16)
    mtp = llama.replace(n_layers=3, n_future_tokens=2)
    s = 32
    n_llama = 2 * flops.block_params(llama) + 64 * 100
    attn = 6 * s * 64
    assert flops.train_flops_per_token("ref_tuning", llama, s)["total"] == 6 * n_llama + 2 * attn
    base = flops.train_flops_per_token("baseline", mtp, s)["total"]
    rho1 = flops.train_flops_per_token("rho1", mtp, s, critic_args=llama)["total"]
    assert rho1 - base == 2 * n_llama + 2 * (2 * s * 64)
    d = flops.decode_flops(mtp, batch=2, prompt_len=8, cache_len=16)
    n_head0 = 2 * flops.block_params(mtp) + 64 * 100  # 1 trunk + head 0, output projection
    assert d["step"] == 2 * (2 * n_head0 + 2 * 4 * 16 * 64)
