"""`splash`: the TPU implementation of `wmtp_jax.ops.attention`, jax's Pallas splash attention
(`jax.experimental.pallas.ops.tpu.splash_attention`, a Mosaic `tpu_custom_call`).

What the wrapper adds to the kernel (which takes one row: q `[H, S, hd]`, k, v `[KV, S, hd]`):

* the batch: `vmap` over rows (one kernel launch, the row a grid axis);
* GQA: native; the multi-head kernel reads KV head h // (H/KV) for query head h, so k and v
  are never repeated;
* causal: a static `CausalMask`, whose fully masked blocks the kernel skips;
* segment ids (packing, right padding as `lengths`): the kernel's `SegmentIds`; key j is
  visible to query i iff seg[i] == seg[j]. For every query with a nonzero id that is exactly
  the visibility rule of `ops.attention` (id 0 keys are never seen by real queries). A padding
  query (id 0) sees the other padding keys instead of nothing: its output is unspecified there
  too, and it never has an empty row (it sees itself), so no NaN;
* the scale 1/√hd: applied to q in float32 before the kernel (the kernel does not scale), then
  q is cast back to its dtype (one extra bfloat16 rounding of q unless 1/√hd is a power of two,
  hd = 16, 64, 256); the kernel's logits, softmax statistics and accumulators are float32;
* S not a multiple of 128 (the kernel's lane width): zero-padded to the next multiple, the
  padded positions get segment id 0 (not visible to real queries) and are sliced off; the
  block is the largest of 512 / 256 / 128 that divides the padded length;
* matmul precision: the process default. Mosaic rejects a float32 contract precision on
  bfloat16 operands, so `jax_default_matmul_precision="highest"` (never set by this project)
  breaks bfloat16 splash; float32 inputs take it;
* head_dim: any (the kernel's blocks span the whole head dim; lane padding is Mosaic's);
* a mesh: Mosaic kernels are not partitioned by GSPMD, so under a multi-device abstract mesh
  (`jax.sharding.get_abstract_mesh()`: `jax.set_mesh`, or the train step, which traces under
  its mesh) the call is a `shard_map` with the batch over `ops.layout.batch_axes` and heads over
  `HEAD_AXIS` (each where it divides). Without a mesh the kernel runs on one device.

The backward is the kernel's own (FlashAttention-2 style dq and dkv kernels, recomputing the
probabilities from the saved log-sum-exp): no `[S, S]` array in either direction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

from wmtp_jax.ops.layout import batch_axes

Array = jax.Array

LANES = 128  # TPU lane width: the kernel's blocks are multiples of it
BLOCKS = (512, 256, 128)  # block_q = block_kv: the largest that divides the padded S
HEAD_AXIS = "tensor"  # the mesh axis of attention heads under tensor parallelism


def padded_length(s: int) -> tuple[int, int]:
    """(S rounded up to a multiple of LANES, the block size used for it)."""
    sp = -(-int(s) // LANES) * LANES
    return sp, next(blk for blk in BLOCKS if sp % blk == 0)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, seq_len: int, causal: bool, block: int, interpret: bool):
    """The splash kernel for `heads` query heads over S = `seq_len` (one row)."""
    shape = (seq_len, seq_len)
    head_mask = sa.CausalMask(shape) if causal else sa.FullMask(shape)
    sizes = sa.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    return sa.make_splash_mha(
        sa.MultiHeadMask([head_mask] * heads),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _rows(q, k, v, seg, *, causal: bool, block: int, interpret: bool):
    """q `[B, H, S, hd]` (already scaled), k, v `[B, KV, S, hd]`, seg `[B, S]` | None."""
    kernel = _kernel(q.shape[1], q.shape[2], causal, block, interpret)
    if seg is None:
        return jax.vmap(kernel)(q, k, v)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, sa.SegmentIds(s, s)))(q, k, v, seg)


def _mesh_axes(mesh, b: int, h: int, kvh: int):
    """(batch axes, head axis) of a shard_map over `mesh`: each used only where it divides."""
    batch = batch_axes(mesh, b)
    t = mesh.shape.get(HEAD_AXIS, 1)
    head = HEAD_AXIS if t > 1 and h % t == 0 and kvh % t == 0 else None
    return (batch or None), head


def splash_attention(
    q: Array,
    k: Array,
    v: Array,
    seg: Array | None = None,
    *,
    causal: bool = True,
    interpret: bool = False,
) -> Array:
    """q `[B, S, H, hd]`, k, v `[B, S, KV, hd]`, seg canonical ids `[B, S]` (0 = padding) or
    None -> `[B, S, H, hd]` (see the module docstring). `interpret`: Pallas interpret mode
    (runs on CPU, for tests)."""
    b, s, h, hd = q.shape
    kvh = k.shape[2]
    sp, block = padded_length(s)
    if sp != s:
        seg = jnp.ones((b, s), jnp.int32) if seg is None else seg
        seg = jnp.pad(seg, ((0, 0), (0, sp - s)))
        q, k, v = (jnp.pad(t, ((0, 0), (0, sp - s), (0, 0), (0, 0))) for t in (q, k, v))
    q = (q.astype(jnp.float32) * hd**-0.5).astype(q.dtype)
    args = tuple(t.transpose(0, 2, 1, 3) for t in (q, k, v))
    args += () if seg is None else (seg.astype(jnp.int32),)

    def run(q, k, v, *seg):
        seg = seg[0] if seg else None
        return _rows(q, k, v, seg, causal=causal, block=block, interpret=interpret)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        batch, head = _mesh_axes(mesh, b, h, kvh)
        spec = P(batch, head, None, None)
        specs = (spec,) * 3 + (P(batch, None),) * (len(args) - 3)
        run = jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)
    out = run(*args)
    out = out.transpose(0, 2, 1, 3)
    return out[:, :s] if sp != s else out
