"""cuDNN's packed layout for segment ids (`ops.attention.cudnn_segments`): per-row segment
lengths and offsets checked by hand and against the segment mask they stand for. The cuDNN call
itself needs a Hopper GPU and is not run here; on CPU `cudnn` with segment ids still refuses."""

import jax
import jax._src.cudnn.fused_attention_stablehlo as F  # the private module the cudnn path calls
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.data.packing import pack_batch
from wmtp_jax.kernels import flash_cpu
from wmtp_jax.ops import attention as A

SEG = np.asarray(
    [
        [1, 1, 1, 2, 2, 0, 0, 0],  # two packed sequences, then padding
        [1, 1, 1, 1, 1, 1, 1, 1],  # one full row
        [0, 0, 0, 0, 0, 0, 0, 0],  # an empty row
        [1, 1, 0, 0, 3, 3, 3, 4],  # padding between runs, ids not from 1
        [1, 2, 3, 4, 5, 6, 7, 7],  # more runs than M = 3
    ],
    np.int32,
)


def test_cudnn_segments_hand_values():
    seqlens, offsets, count = (np.asarray(x) for x in A.cudnn_segments(jnp.asarray(SEG), 3))
    np.testing.assert_array_equal(count, [2, 1, 0, 3, 7])
    np.testing.assert_array_equal(
        seqlens, [[3, 2, -1], [8, -1, -1], [-1, -1, -1], [2, 3, 1], [1, 1, 1]]
    )
    np.testing.assert_array_equal(
        offsets,
        [[0, 3, -1, -1], [0, -1, -1, -1], [-1, -1, -1, -1], [0, 4, 7, -1], [0, 1, 2, -1]],
    )
    assert seqlens.dtype == np.int32 and offsets.dtype == np.int32


def runs_to_ids(seqlens, offsets, s):
    """The segment ids (1, 2, ... per run, 0 elsewhere) a packed layout describes."""
    out = np.zeros((len(seqlens), s), np.int32)
    for b, (lens, offs) in enumerate(zip(seqlens, offsets)):
        for m, (n, o) in enumerate(zip(lens, offs)):
            if n >= 0:
                out[b, o : o + n] = m + 1
    return out


def test_cudnn_segments_describe_packed_rows():
    """On rows from pack_batch (a cut sample included) the runs are exactly the segments, so
    cuDNN attends within the same (query, key) pairs as the segment mask."""
    r = np.random.RandomState(0)
    lengths = r.randint(1, 40, size=24)
    s = 64
    am = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
    batch = {"input_ids": am * 5, "attention_mask": am, "labels": am * 5}
    packed, st = pack_batch(batch, rows=6, seq_len=s)
    seg = packed["segment_ids"]
    seqlens, offsets, count = (np.asarray(x) for x in A.cudnn_segments(jnp.asarray(seg), 16))
    np.testing.assert_array_equal(count, seg.max(axis=1))
    np.testing.assert_array_equal(runs_to_ids(seqlens, offsets, s), seg)
    assert st["cut_samples"] > 0 and count.max() >= 3  # crowded rows, samples cut at row ends
    vis = np.asarray(A._visible(s, jnp.asarray(runs_to_ids(seqlens, offsets, s)), True))
    np.testing.assert_array_equal(vis, np.asarray(A._visible(s, jnp.asarray(seg), True)))


def test_cudnn_with_segment_ids_refuses_on_cpu():
    q = jnp.zeros((1, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"'cudnn' needs an NVIDIA GPU with cuDNN"):
        A.attention(q, q, q, segment_ids=jnp.asarray(SEG[:1]), implementation="cudnn")
    cpu = A.resolve("auto", 2048, jnp.bfloat16, 64, segments=True, backend="cpu")
    assert cpu == ("cpu_flash" if flash_cpu.unavailable() is None else "blockwise")  # not cudnn
    assert A.cudnn_packed_unavailable() is not None  # no GPU here


def test_cudnn_packed_attention_traces(monkeypatch):
    """The call reaches jax's packed-layout entry point with arguments it accepts (int32
    `[B, M]` lengths, `[B, M + 1]` offsets, GQA heads): forward and gradient trace abstractly
    with the cuDNN version and hardware checks stubbed (lowering needs the GPU)."""
    monkeypatch.setattr(F, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(F, "check_is_flash_attention", lambda *a, **k: None)
    q = jnp.zeros((2, 64, 4, 16), jnp.bfloat16)
    kv = jnp.zeros((2, 64, 2, 16), jnp.bfloat16)
    seg = jnp.asarray([[1] * 20 + [2] * 30 + [0] * 14, [1] * 64], jnp.int32)

    def loss(q, k, v):
        return A.cudnn_packed_attention(q, k, v, seg).astype(jnp.float32).sum()

    out = jax.eval_shape(lambda *a: A.cudnn_packed_attention(*a, seg), q, kv, kv)
    assert out.shape == q.shape and out.dtype == q.dtype
    grads = jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv)
    assert [g.shape for g in grads] == [q.shape, kv.shape, kv.shape]
