"""Self-attention of every forward without a KV cache (training, scoring): one interface,
several implementations.

    attention(q, k, v, causal=True, segment_ids=None, lengths=None, implementation="auto")

q `[B, S, H, hd]`, k, v `[B, S, KV, hd]` (GQA: H a multiple of KV; query head h reads KV head
h // (H/KV)) -> `[B, S, H, hd]` = softmax(q·kᵀ/√hd + mask) v, with float32 logits and softmax.

Visibility of key j to query i in row b (never a dense mask built by the caller):

* causal: j ≤ i;
* segment_ids `[B, S]` int: seg[i] == seg[j] and seg[j] ≠ 0. Id 0 is padding (never attended);
  packed sequences use ids 1, 2, ...: attention never crosses segments;
* lengths `[B]` int (right padding): j < lengths[b], i.e. positions ≥ lengths[b] get id 0.

A query with no visible key (a padding position) gets an unspecified finite output (0 in
`blockwise`, a uniform average in `xla`): callers must ignore it, as the losses do.

Implementations (`IMPLEMENTATIONS`; `runtime.attention` in the configs):

* `xla`: `jax.nn.dot_product_attention(implementation="xla")`: materialises `[B, H, S, S]`
  logits and probabilities (segment ids become an internal `[B, 1, S, S]` mask).
* `blockwise`: flash-style online softmax in plain JAX (`blockwise_attention`), with a
  recomputing custom VJP; never materialises `[S, S]` in either direction.
* `cpu_flash`: a fused C++ flash attention for XLA:CPU (`wmtp_jax.kernels.flash_cpu`, an FFI
  custom call compiled on first use): online softmax per 64×64 block pair, FlashAttention-2
  backward, masked and cross-segment block pairs skipped, float32. CPU backend only, head_dim in
  16/32/64/128/256, and a C++ compiler at first use.
* `splash`: jax's Pallas splash attention for TPU (`wmtp_jax.ops.splash`, a Mosaic
  `tpu_custom_call`): causal block skipping, segment ids, native GQA, its own flash backward;
  S padded to a multiple of 128. TPU only.
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (fused flash attention on an
  NVIDIA GPU, bfloat16 / float16; lengths use cuDNN's padding mask). Segment ids use cuDNN's
  packed (ragged) layout where jax offers it (`cudnn_packed_attention`, Hopper and newer; else
  an internal mask). Refused with a clear error elsewhere.
* `auto`: `resolve` picks by platform, dtype and shape, never a path that fails there.

The platform is `current_platform()`: the host's backend, or the compile target set with
`target_platform("tpu" | "gpu" | "cpu")` when a program is traced for an accelerator on
another host (ahead-of-time compilation). `cpu_flash` is never chosen for, nor traced into, a
non-CPU program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from wmtp_jax.kernels import flash_cpu
from wmtp_jax.ops.blockwise import BLOCK_SIZE, block_size_for, blockwise_attention
from wmtp_jax.ops.platform import current_platform, target_compute_capability, target_platform
from wmtp_jax.ops.segments import segments_of
from wmtp_jax.ops.splash import splash_attention

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "splash", "cudnn", "cpu_flash")
CUDNN_MAX_SEGMENTS = 32  # static segments per row of cudnn's packed layout (more: blockwise)
AUTO_BLOCKWISE_MIN_SEQ = {"cpu": 256, "gpu": 1024, "tpu": 1024}  # below: xla (a block or two)

_logged: set = set()


# ---- dispatch -------------------------------------------------------------------------------


def cudnn_unavailable(dtype, head_dim: int, backend: str | None = None) -> str | None:
    """Why `cudnn` cannot run here (a one-line reason), or None when it can."""
    backend = backend or current_platform()
    if backend != "gpu":
        return f"needs an NVIDIA GPU with cuDNN, the backend is {backend!r}"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"supports bfloat16/float16 only, got {jnp.dtype(dtype).name}"
    if head_dim % 8 or head_dim > 128:
        return f"needs head_dim a multiple of 8 and ≤ 128, got {head_dim}"
    try:  # version / compute capability, as jax checks them (an unsupported GPU raises)
        # a private jax module, imported here: its absence or failure means "not usable"
        from jax._src.cudnn.fused_attention_stablehlo import (
            check_compute_capability,
            check_cudnn_version,
        )

        check_cudnn_version()  # raises without jax's CUDA plugin: cuDNN attention cannot trace
        if jax.default_backend() != "gpu":
            return None  # compiling for a GPU target elsewhere: the target's compiler checks it
        if not check_compute_capability("8.0"):
            return "needs compute capability ≥ 8.0 (Ampere or newer)"
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        return f"cuDNN check failed: {e}"
    return None


def check_backend(implementation: str, backend: str | None = None) -> None:
    """Early check of a configured implementation (before any model is built): ValueError for
    an unknown name, or `cudnn` without a GPU (dtype and head_dim are checked when tracing)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; valid: {IMPLEMENTATIONS}"
        )
    backend = backend or current_platform()
    if implementation == "cudnn" and backend != "gpu":
        raise ValueError(
            f"runtime.attention='cudnn' needs an NVIDIA GPU with cuDNN, the backend "
            f"is {backend!r}; use auto, xla or blockwise"
        )
    if implementation == "splash" and backend != "tpu":
        raise ValueError(
            f"runtime.attention='splash' runs on TPU only, the backend is {backend!r}; use "
            f"auto, xla or blockwise"
        )
    if implementation == "cpu_flash" and backend != "cpu":
        raise ValueError(
            f"runtime.attention='cpu_flash' runs on the CPU backend only, the backend is "
            f"{backend!r}; use auto, xla, blockwise or cudnn"
        )


def resolve(
    implementation: str,
    seq_len: int,
    dtype,
    head_dim: int,
    *,
    segments: bool = False,
    backend: str | None = None,
) -> str:
    """The implementation that runs: `implementation` itself, or `auto`'s choice.

    auto: TPU → splash (any shape: S is padded to a multiple of 128); GPU → cudnn when usable
    and there are no segment ids (cudnn's packed layout for segment ids is wired but untested
    on hardware, so `auto` does not pick it), else blockwise from S ≥ 1024, else xla; CPU →
    cpu_flash when it can run (head_dim, a compiler), else blockwise from S ≥ 256, else xla
    (`AUTO_BLOCKWISE_MIN_SEQ`). `backend`: default `current_platform()`.
    Raises ValueError for an unknown name or an unusable splash, cudnn or cpu_flash.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; valid: {IMPLEMENTATIONS}"
        )
    backend = backend or current_platform()
    if implementation == "cudnn":
        why = cudnn_unavailable(dtype, head_dim, backend)
        if why:
            raise ValueError(
                f"attention implementation 'cudnn' {why}; use auto, xla or "
                f"blockwise (runtime.attention)"
            )
        return "cudnn"
    if implementation == "cpu_flash":
        why = flash_cpu.unavailable(head_dim, backend)
        if why:
            raise ValueError(
                f"attention implementation 'cpu_flash' {why}; use auto, xla or blockwise "
                f"(runtime.attention)"
            )
        return "cpu_flash"
    if implementation == "splash" and backend != "tpu":
        raise ValueError(
            f"attention implementation 'splash' runs on TPU only, the backend is {backend!r}; "
            f"use auto, xla or blockwise (runtime.attention)"
        )
    if implementation != "auto":
        return implementation
    if backend == "tpu":
        return "splash"
    if backend == "cpu" and flash_cpu.unavailable(head_dim, backend) is None:
        return "cpu_flash"
    if backend == "gpu" and not segments and cudnn_unavailable(dtype, head_dim, backend) is None:
        return "cudnn"
    return "blockwise" if seq_len >= AUTO_BLOCKWISE_MIN_SEQ.get(backend, 1024) else "xla"


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = True,
    segment_ids: Array | None = None,
    lengths: Array | None = None,
    implementation: str = "auto",
    block_size: int | None = None,
) -> Array:
    """q `[B, S, H, hd]`, k, v `[B, S, KV, hd]` -> `[B, S, H, hd]` (see the module docstring)."""
    b, s, h, hd = q.shape
    if k.shape != v.shape or k.ndim != 4 or k.shape[:2] != (b, s) or k.shape[3] != hd:
        raise ValueError(
            f"attention: k {k.shape} and v {v.shape} must be [B, S, KV, hd] with "
            f"q {q.shape}'s B, S and hd"
        )
    if h % k.shape[2]:
        raise ValueError(f"attention: {h} query heads are not a multiple of {k.shape[2]} kv heads")
    if segment_ids is not None and segment_ids.shape != (b, s):
        raise ValueError(f"attention: segment_ids shape {segment_ids.shape}, expected {(b, s)}")
    if lengths is not None and lengths.shape != (b,):
        raise ValueError(f"attention: lengths shape {lengths.shape}, expected {(b,)}")
    platform = current_platform()
    impl = resolve(implementation, s, q.dtype, hd, segments=segment_ids is not None)
    key = (implementation, impl, platform, s, jnp.dtype(q.dtype).name)
    if key not in _logged:  # once per distinct choice, at trace time
        _logged.add(key)
        logging.info("attention: %s -> %s (platform %s, S=%d, %s)", *key[:2], platform, s, key[4])
    if impl == "cpu_flash":
        seg = segments_of(segment_ids, lengths, b, s)
        seg = jnp.ones((b, s), jnp.int32) if seg is None else seg
        return flash_cpu.flash_attention_cpu(q, k, v, seg, causal=causal, backend=platform)
    if impl == "splash":
        return splash_attention(q, k, v, segments_of(segment_ids, lengths, b, s), causal=causal)
    if impl == "blockwise":
        return blockwise_attention(
            q, k, v, causal=causal, segment_ids=segment_ids, lengths=lengths, block_size=block_size
        )
    if impl == "cudnn" and segment_ids is not None and cudnn_packed_unavailable() is None:
        seg = segments_of(segment_ids, lengths, b, s)
        return cudnn_packed_attention(q, k, v, seg, causal=causal, block_size=block_size)
    if impl == "cudnn" and segment_ids is None:
        lens = None if lengths is None else lengths.astype(jnp.int32)
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            is_causal=causal,
            query_seq_lengths=lens,
            key_value_seq_lengths=lens,
            implementation="cudnn",
        )
    seg = segments_of(segment_ids, lengths, b, s)
    mask = None
    if seg is not None:
        mask = (seg[:, None, :, None] == seg[:, None, None, :]) & (seg[:, None, None, :] != 0)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=impl)


def cudnn_segments(seg: Array, max_segments: int) -> tuple[Array, Array, Array]:
    """cuDNN's packed layout of canonical segment ids `seg` `[B, S]` (0 = padding): every run of
    one nonzero id is a sequence. Returns (seqlens `[B, M]`, offsets `[B, M + 1]`, count `[B]`)
    with M = `max_segments` (static): the m-th run of row b starts at offsets[b, m] and has
    seqlens[b, m] tokens; entries past the row's runs, and offsets' last column, are -1 (jax's
    `q_offsets` / `q_seqlen` convention). count = runs per row; runs past the M-th are left out
    (callers check count ≤ M). An id repeated after another id is a new run (packing never
    does that; the mask of the other implementations would join the two runs)."""
    b, s = seg.shape
    m = int(max_segments)
    live = seg != 0
    prev = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
    starts = live & (seg != prev)
    run = jnp.cumsum(starts, axis=1) - 1  # run index of every token (-1 before the first run)
    count = starts.sum(axis=1).astype(jnp.int32)
    rows = jnp.arange(b)[:, None]
    slot = lambda keep: jnp.where(keep & (run < m), run, m)  # column m collects the rest
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    offsets = jnp.zeros((b, m + 1), jnp.int32).at[rows, slot(starts)].set(pos)
    seqlens = jnp.zeros((b, m + 1), jnp.int32).at[rows, slot(live)].add(1)
    used = jnp.arange(m + 1)[None] < jnp.minimum(count, m)[:, None]
    offsets = jnp.where(used, offsets, -1)
    seqlens = jnp.where(used, seqlens, -1)[:, :m]
    return seqlens, offsets, count


def cudnn_packed_unavailable() -> str | None:
    """Why cuDNN's packed layout cannot be used for the target (jax's private API, Hopper and
    cuDNN ≥ 9.6), or None. Checked at trace time where `cudnn` itself is usable."""
    try:  # a private jax module (see cudnn_unavailable)
        from jax._src.cudnn.fused_attention_stablehlo import check_cudnn_version

        if check_cudnn_version() < 90600:
            return "cuDNN's packed layout needs cuDNN ≥ 9.6"
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        return f"cuDNN packed-layout check failed: {e}"
    cc = target_compute_capability()
    if cc is None:
        return "cuDNN's packed layout: the target GPU's compute capability is unknown"
    if cc < (9, 0):
        return "cuDNN's packed layout needs compute capability ≥ 9.0 (Hopper)"
    return None


def _answer_jax_cudnn_checks_for_the_target() -> None:
    """jax's cuDNN checks ask the local GPU for its compute capability. Wrap them (once, for
    the process) so that while a program is traced for a GPU target on a host without one
    (`target_platform("gpu")`, ahead-of-time compilation) they answer with the target's
    `target_compute_capability()`; everywhere else the wrappers call jax's own checks."""
    import jax._src.cudnn.fused_attention_stablehlo as F  # private, only usable with the plugin

    if getattr(F.check_compute_capability, "_wmtp_target", False):
        return
    version = lambda c: tuple(int(x) for x in c.split("."))

    def wrap(original, compare):
        def check(capability):
            cc = target_compute_capability()
            if current_platform() != "gpu" or jax.default_backend() == "gpu" or cc is None:
                return original(capability)
            return compare(cc, version(capability))

        check._wmtp_target = True
        return check

    F.check_compute_capability = wrap(F.check_compute_capability, lambda a, b: a >= b)
    F.is_cuda_compute_capability_equal = wrap(
        F.is_cuda_compute_capability_equal, lambda a, b: a == b
    )


def cudnn_packed_attention(q, k, v, seg: Array, *, causal: bool = True, block_size=None):
    """Segment-masked attention with cuDNN's packed (ragged) layout: `cudnn_segments` turns the
    canonical ids `seg` `[B, S]` into per-row segment lengths and offsets with
    CUDNN_MAX_SEGMENTS slots (at most S); a batch with a row of more segments runs `blockwise`
    instead (`lax.cond`, never a wrong answer). GPU only; compiled ahead of time for an H100
    target in docs/performance.md, not run by the CPU tests."""
    # private jax API (no public packed-layout entry point in jax.nn); imported here because it
    # is only usable on a GPU
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_sdpa

    b, s, _, hd = q.shape
    m = max(2, min(CUDNN_MAX_SEGMENTS, s))  # jax takes the packed path only with M > 1
    seqlens, offsets, count = cudnn_segments(seg, m)

    _answer_jax_cudnn_checks_for_the_target()

    def packed():
        return cudnn_sdpa(
            q,
            k,
            v,
            q_seqlen=seqlens,
            kv_seqlen=seqlens,
            q_offsets=offsets,
            kv_offsets=offsets,
            scale=hd**-0.5,
            mask_type=MaskType.PADDING_CAUSAL if causal else MaskType.PADDING,
            qkv_layout="BTNH",
        )

    def fallback():
        return blockwise_attention(q, k, v, causal=causal, segment_ids=seg, block_size=block_size)

    return jax.lax.cond(jnp.all(count <= m), packed, fallback)


def reference_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = True,
    segment_ids: Array | None = None,
    lengths: Array | None = None,
) -> Array:
    """The dense definition (float32 `[B, H, S, S]` softmax; rows with no visible key → 0).

    For tests and documentation: what every implementation computes on visible rows."""
    b, s, h, hd = q.shape
    g = h // k.shape[2]
    kk, vv = (jnp.repeat(t.astype(jnp.float32), g, axis=2) for t in (k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), kk) * hd**-0.5
    vis = _visible(s, segments_of(segment_ids, lengths, b, s), causal)
    logits = jnp.where(vis[:, None], logits, -jnp.inf)
    m = jnp.max(logits, -1, keepdims=True)
    p = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
    p = p / jnp.maximum(p.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return jnp.einsum("bhqk,bkhd->bqhd", p, vv).astype(q.dtype)


def _visible(s: int, seg: Array | None, causal: bool) -> Array:
    """bool `[B or 1, S, S]`: key j visible to query i (canonical segment ids `seg`)."""
    pos = jnp.arange(s)
    vis = ((pos[None, :] <= pos[:, None]) if causal else jnp.ones((s, s), bool))[None]
    if seg is not None:
        vis = vis & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    return vis


__all__ = [
    "BLOCK_SIZE",
    "IMPLEMENTATIONS",
    "attention",
    "block_size_for",
    "check_backend",
    "blockwise_attention",
    "current_platform",
    "cudnn_unavailable",
    "reference_attention",
    "resolve",
    "segments_of",
    "splash_attention",
    "target_compute_capability",
    "target_platform",
]
