"""What an optimized HLO module does per device: matmul FLOPs, collectives, HBM traffic.

`compiled.cost_analysis()` counts a `while` body once, so a scanned layer stack (nnx.scan) or
the gradient-accumulation scan is undercounted by its trip count. Here the module text
(`compiled.as_text()`) is walked from ENTRY with a multiplier per computation: a fusion or call
inherits its caller's, a while body gets its caller's × the trip count (the backend's
`known_trip_count`, else the bound of the condition's `i < N` compare, counting from 0).

* FLOPs: 2·MACs of every `dot` and `convolution` (TPU writes matmuls as convolutions, batch
  dimensions as dilated windows; only the taps that land on real input elements count).
  Elementwise work is not counted: these are matmul FLOPs, comparable with the analytic model.
  The Pallas splash attention kernels (TPU `tpu_custom_call`s named `splash_m?a_{fwd,dq,dkv}`)
  are opaque to the HLO; their matmul FLOPs are computed from the q `[B, H, S, hd]` operand:
  2·B·H·S²·hd per matmul (fwd 2 matmuls, dq 3, dkv 4: the kernels recompute the
  probabilities) × the share of (block × block) tiles the causal mask leaves, (n+1)/(2n) for
  n = S / block (the causal mask is the only one the project gives the kernel; a full mask
  would be undercounted 2n/(n+1)×). Other custom-call kernels are counted as `kernel_calls`.
* Collectives: all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute (sync or
  async), by kind, with executions and bytes (the larger of the operand and the result buffer).
* HBM bytes: operands + results of every top-level instruction outside fusions (fusion
  boundaries are where XLA reads and writes HBM); an estimate for the roofline.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

from wmtp_jax.ops.splash import padded_length

DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s4": 1,
    "u4": 1,
}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_NO_TRAFFIC = {
    "parameter",
    "get-tuple-element",
    "tuple",
    "constant",
    "bitcast",
    "while",
    "call",
    "conditional",
    "after-all",
    "partition-id",
    "replica-id",
    "iota",
    "opt-barrier",
}

_COMP_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_PARAM = re.compile(r"([\w.\-]+):\s*((?:\([^)]*\))|(?:[a-z0-9]+\[[0-9,]*\]))")


@dataclasses.dataclass
class Instr:
    name: str
    type: str
    op: str
    operands: list  # operand names
    args: str  # the text inside the parentheses (a constant's value)
    attrs: str  # the text after them


@dataclasses.dataclass
class Module:
    computations: dict  # name -> [Instr]
    types: dict  # name -> {value name: type text}
    entry: str


def arrays(type_text: str) -> list[tuple[str, tuple]]:
    """(dtype, dims) of every array in a type (a tuple type gives several)."""
    out = []
    for dt, dims in _ARRAY.findall(type_text):
        if dt in DTYPE_BYTES:
            out.append((dt, tuple(int(d) for d in dims.split(",") if d)))
    return out


def nbytes(type_text: str) -> int:
    return sum(DTYPE_BYTES[dt] * math.prod(dims) for dt, dims in arrays(type_text))


def largest(type_text: str) -> int:
    return max((DTYPE_BYTES[dt] * math.prod(d) for dt, d in arrays(type_text)), default=0)


def _split_operands(text: str) -> tuple[list, str, str]:
    """(operand names, raw operand text, attribute text) of `a, b), attrs...`."""
    depth, i = 1, 0
    while i < len(text) and depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    inner, attrs = text[: i - 1], text[i:]
    names = re.findall(r"%([\w.\-]+)", inner)
    return names, inner, attrs


def parse(text: str) -> Module:
    comps, types, entry, cur = {}, {}, None, None
    for line in text.splitlines():
        if cur is None:
            m = _COMP_HEAD.match(line)
            if m:
                cur = m.group(2)
                comps[cur], types[cur] = [], {}
                for pname, ptype in _PARAM.findall(m.group(3)):
                    types[cur][pname] = ptype
                if m.group(1):
                    entry = cur
            continue
        if line.rstrip() == "}":  # not "}}, metadata=..." of a multi-line attribute
            cur = None
            continue
        m = _INSTR.match(line)
        if m:
            name, typ, op, rest = m.groups()
            operands, args, attrs = _split_operands(rest)
            comps[cur].append(Instr(name, typ, op, operands, args, attrs))
            types[cur][name] = typ
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return Module(comps, types, entry)


def _called(attrs: str, key: str) -> list[str]:
    m = re.search(key + r"=\{([^}]*)\}", attrs)
    if m:
        return re.findall(r"%?([\w.\-]+)", m.group(1))
    m = re.search(key + r"=%?([\w.\-]+)", attrs)
    return [m.group(1)] if m else []


def trip_count(mod: Module, instr: Instr) -> int | None:
    """Iterations of a while: the backend's known_trip_count, else N of the condition's
    `i < N` (or `N > i`) compare against a constant."""
    m = re.search(r'known_trip_count[^0-9]*"?n"?\s*:\s*"?(\d+)', instr.attrs)
    if m:
        return int(m.group(1))
    cond = _called(instr.attrs, "condition")
    if not cond or cond[0] not in mod.computations:
        return None
    body = mod.computations[cond[0]]
    consts = {
        i.name: int(i.args) for i in body if i.op == "constant" and re.fullmatch(r"-?\d+", i.args)
    }
    for ins in body:
        if ins.op == "compare" and len(ins.operands) == 2:
            a, b = ins.operands
            if "direction=LT" in ins.attrs and b in consts:
                return consts[b]
            if "direction=GT" in ins.attrs and a in consts:
                return consts[a]
    return None


def multipliers(mod: Module) -> tuple[dict, int]:
    """({computation: executions per step}, number of whiles with an unknown trip count)."""
    mult: dict = defaultdict(int)
    unknown = 0
    order = [(mod.entry, 1)]
    while order:
        comp, k = order.pop()
        mult[comp] += k
        for ins in mod.computations.get(comp, []):
            if ins.op == "while":
                n = trip_count(mod, ins)
                if n is None:
                    unknown += 1
                    n = 1
                order += [(c, k * n) for c in _called(ins.attrs, "body")]
                order += [(c, k * (n + 1)) for c in _called(ins.attrs, "condition")]
                continue
            keys = ["calls", "branch_computations", "true_computation", "false_computation"]
            if ins.op in ("call", "async-start"):  # a call's body (to_apply elsewhere: reducers)
                keys.append("to_apply")
            for key in keys:
                order += [(c, k) for c in _called(ins.attrs, key) if c in mod.computations]
    return dict(mult), unknown


def _window_taps(
    size: int, in_size: int, out_size: int, stride: int, pad_lo: int, lhs_d: int, rhs_d: int
) -> int:
    """Σ over output positions of the kernel taps that hit a real (non-pad, non-hole) input."""
    o = np.arange(out_size)[:, None]
    k = np.arange(size)[None, :]
    p = o * stride + k * rhs_d - pad_lo
    ok = (p >= 0) & (p <= (in_size - 1) * lhs_d) & (p % lhs_d == 0)
    return int(ok.sum())


def _window(attrs: str, n: int) -> dict:
    m = re.search(r"window=\{([^}]*)\}", attrs)
    w = {
        "size": [1] * n,
        "stride": [1] * n,
        "pad": [(0, 0)] * n,
        "lhs_dilate": [1] * n,
        "rhs_dilate": [1] * n,
    }
    if not m:
        return w
    for part in m.group(1).split():
        key, _, val = part.partition("=")
        if key == "pad":
            w["pad"] = [tuple(int(x) for x in v.split("_")) for v in val.split("x")]
        elif key in w:
            w[key] = [int(v) for v in val.split("x")]
    return w


def conv_flops(ins: Instr, lhs_type: str, rhs_type: str) -> int:
    """2 × output batch × output features × kernel input features × valid taps."""
    m = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", ins.attrs)
    if not m:
        return 0
    lhs_l, rhs_l, out_l = m.groups()
    lhs, rhs, out = arrays(lhs_type)[0][1], arrays(rhs_type)[0][1], arrays(ins.type)[0][1]
    spatial = sorted(c for c in out_l if c.isdigit())
    w = _window(ins.attrs, len(spatial))
    taps = 1
    for j, d in enumerate(spatial):
        taps *= _window_taps(
            size=rhs[rhs_l.index(d)],
            in_size=lhs[lhs_l.index(d)],
            out_size=out[out_l.index(d)],
            stride=w["stride"][j],
            pad_lo=w["pad"][j][0],
            lhs_d=w["lhs_dilate"][j],
            rhs_d=w["rhs_dilate"][j],
        )
    return 2 * out[out_l.index("b")] * out[out_l.index("f")] * rhs[rhs_l.index("i")] * taps


def dot_flops(ins: Instr, lhs_type: str) -> int:
    m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
    lhs = arrays(lhs_type)[0][1]
    contract = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i) if m else 1
    return 2 * math.prod(arrays(ins.type)[0][1]) * contract


SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}  # per (query head, q block, kv block)
_SPLASH = re.compile(r"splash_m[hq]a_(fwd|dq|dkv)")


def splash_flops(ins: Instr, operand_types: list[str]) -> int:
    """Matmul FLOPs of one splash kernel call (see the module docstring); 0 if not splash."""
    m = _SPLASH.match(ins.name)
    if not m:
        return 0
    quads = [d for t in operand_types for _, d in arrays(t) if len(d) == 4]
    if not quads:
        return 0
    b, h, s, hd = max(quads, key=lambda d: (d[1], math.prod(d)))  # q (or dO): the most heads
    n = s // padded_length(s)[1]  # the wrapper's block for this (already padded) S
    return SPLASH_MATMULS[m.group(1)] * 2 * b * h * s * s * hd * (n + 1) // (2 * n)


def _collective_kind(op: str) -> str | None:
    base = op[: -len("-start")] if op.endswith("-start") else op
    return base if base in COLLECTIVES else None


@dataclasses.dataclass
class Analysis:
    flops: int  # matmul FLOPs per device per step
    collectives: list  # [{"kind", "count", "bytes"}]
    hbm_bytes: int
    unknown_trip_counts: int
    kernel_calls: int = 0  # executions of Pallas / Mosaic kernels (tpu_custom_call)
    kernel_flops: int = 0  # of those, the splash kernels' matmul FLOPs (included in `flops`)

    @property
    def collective_bytes(self) -> int:
        return sum(c["bytes"] for c in self.collectives)


def analyze(text: str) -> Analysis:
    mod = parse(text)
    mult, unknown = multipliers(mod)
    fused = {
        c
        for comp in mod.computations.values()
        for i in comp
        if i.op == "fusion"
        for c in _called(i.attrs, "calls")
    }
    flops, hbm, kernels, kflops = 0, 0, 0, 0
    coll = defaultdict(lambda: [0, 0])
    for comp, k in mult.items():
        types = mod.types[comp]
        for ins in mod.computations.get(comp, []):
            ty = lambda n: types.get(n, "")
            if ins.op == "convolution" and len(ins.operands) >= 2:
                flops += k * conv_flops(ins, ty(ins.operands[0]), ty(ins.operands[1]))
            elif ins.op == "dot" and ins.operands:
                flops += k * dot_flops(ins, ty(ins.operands[0]))
            if ins.op == "custom-call" and 'custom_call_target="tpu_custom_call"' in ins.attrs:
                kernels += k
                kflops += k * splash_flops(ins, [ty(o) for o in ins.operands])
            kind = _collective_kind(ins.op)
            if kind:
                size = max(sum(nbytes(ty(o)) for o in ins.operands), largest(ins.type))
                coll[kind][0] += k
                coll[kind][1] += k * size
            if comp not in fused and ins.op not in _NO_TRAFFIC and not ins.op.endswith("-done"):
                hbm += k * (nbytes(ins.type) + sum(nbytes(ty(o)) for o in ins.operands))
    collectives = [{"kind": kd, "count": c, "bytes": b} for kd, (c, b) in sorted(coll.items())]
    return Analysis(flops + kflops, collectives, hbm, unknown, kernels, kflops)
