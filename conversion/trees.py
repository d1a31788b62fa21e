"""torch state dict <-> wmtp_jax parameter tree, one tensor at a time.

Import preallocates one stacked numpy array per parameter path (`layers/...` `[L, ...]`,
`heads/...` `[K, ...]`) and fills it slice by slice, so peak memory stays near one model copy
plus the (memory-mapped) source. Export walks one parameter path at a time and drops the stacked
array as soon as its last slice is out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np

from conversion.mapping import jax_to_torch_tensor, top_to_jax, top_to_torch, torch_to_jax_tensor
from conversion.torch_io import ConversionError, TensorSource
from wmtp_jax.models.args import ModelArgs

Table = list[tuple[str, tuple, int | None]]  # (torch key, jax path, stacked index)


def torch_shape(args: ModelArgs, path: tuple) -> tuple[int, ...]:
    """Expected PyTorch (`[out, in]`) shape of the tensor at jax `path` (block paths unstacked)."""
    d, v, f = args.dim, args.vocab_size, args.hidden_dim
    q, kv = args.n_heads * args.head_dim, args.kv_heads * args.head_dim
    top = {
        ("tok_embeddings", "embedding"): (v, d),
        ("norm", "scale"): (d,),
        ("output", "kernel"): (v, d),
    }
    if path in top:
        return top[path]
    block = {
        ("attention", "wq", "kernel"): (q, d),
        ("attention", "wk", "kernel"): (kv, d),
        ("attention", "wv", "kernel"): (kv, d),
        ("attention", "wo", "kernel"): (d, q),
        ("feed_forward", "w1", "kernel"): (f, d),
        ("feed_forward", "w3", "kernel"): (f, d),
        ("feed_forward", "w2", "kernel"): (d, f),
        ("attention_norm", "scale"): (d,),
        ("ffn_norm", "scale"): (d,),
    }
    return block[path[1:]]


def jax_shape(args: ModelArgs, path: tuple) -> tuple[int, ...]:
    s = torch_shape(args, path)
    return s[::-1] if path[-1] == "kernel" else s


def stacked_sizes(table: Table) -> dict[tuple, int | None]:
    """jax path -> leading stacked size (None for unstacked top-level tensors)."""
    sizes: dict[tuple, int | None] = {}
    for _, path, idx in table:
        sizes[path] = None if idx is None else max(sizes.get(path) or 0, idx + 1)
    return sizes


def expected_tree_shapes(args: ModelArgs, table: Table) -> dict[tuple, tuple[int, ...]]:
    return {
        p: ((n,) if n is not None else ()) + jax_shape(args, p)
        for p, n in stacked_sizes(table).items()
    }


def _to_jax(w: np.ndarray, path: tuple, idx, args: ModelArgs, meta_rope: bool) -> np.ndarray:
    if idx is None:
        return top_to_jax(w, path)
    return torch_to_jax_tensor(
        w, path[1:], meta_rope=meta_rope, n_heads=args.n_heads, n_kv_heads=args.kv_heads
    )


def _to_torch(w: np.ndarray, path: tuple, idx, args: ModelArgs, meta_rope: bool) -> np.ndarray:
    if idx is None:
        return np.array(top_to_torch(w, path))
    return np.array(
        jax_to_torch_tensor(
            w, path[1:], meta_rope=meta_rope, n_heads=args.n_heads, n_kv_heads=args.kv_heads
        )
    )


def check_keys(
    source: TensorSource,
    table: Table,
    *,
    what: str,
    ignore: Callable[[str], bool] = lambda k: False,
):
    wanted = {k for k, _, _ in table}
    missing = [k for k, _, _ in table if k not in source]
    if missing:
        raise ConversionError(
            f"{source.files}: missing tensor(s) {missing[:5]}"
            f"{f' (+{len(missing) - 5} more)' if len(missing) > 5 else ''} for {what}"
        )
    unknown = [k for k in source.keys() if k not in wanted and not ignore(k)]
    if unknown:
        raise ConversionError(
            f"{source.file(unknown[0])}: unexpected tensor(s) {unknown[:5]}"
            f"{f' (+{len(unknown) - 5} more)' if len(unknown) > 5 else ''} "
            f"(not part of {what})"
        )


def torch_to_tree(
    source: TensorSource,
    table: Table,
    args: ModelArgs,
    *,
    meta_rope: bool,
    dtype=None,
    what: str = "the model",
    ignore: Callable[[str], bool] = lambda k: False,
) -> dict:
    """Fill a nested wmtp_jax parameter dict from `source`.

    dtype: numpy dtype of the result; None keeps each path's source dtype (bit-exact).
    """
    check_keys(source, table, what=what, ignore=ignore)
    sizes = stacked_sizes(table)
    flat: dict[tuple, np.ndarray] = {}
    for key, path, idx in table:
        want = torch_shape(args, path)
        got = source.shape(key)
        if got != want:
            raise ConversionError(
                f"{source.file(key)}: tensor {key!r} has shape {got}, expected {want} "
                f"from the model config ({what})"
            )
        w = _to_jax(source.get(key), path, idx, args, meta_rope)
        if path not in flat:
            shape = ((sizes[path],) if idx is not None else ()) + w.shape
            flat[path] = np.empty(shape, dtype=np.dtype(dtype) if dtype is not None else w.dtype)
        if idx is None:
            flat[path][...] = w
        else:
            flat[path][idx] = w
    return unflatten(flat)


def tree_to_torch(
    params: dict,
    table: Table,
    args: ModelArgs,
    *,
    meta_rope: bool,
    dtype=None,
    what: str = "the model",
) -> dict[str, np.ndarray]:
    """Nested wmtp_jax parameter dict -> ordered torch-layout numpy state dict.

    Consumes `params` (its arrays are dropped path by path to bound peak memory).
    """
    flat = flatten(params)
    params.clear()
    shapes = expected_tree_shapes(args, table)
    extra = sorted("/".join(map(str, p)) for p in set(flat) - set(shapes))
    missing = sorted("/".join(p) for p in set(shapes) - set(flat))
    if extra or missing:
        raise ConversionError(
            f"parameter tree does not match {what}: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for p, want in shapes.items():
        if tuple(flat[p].shape) != want:
            raise ConversionError(
                f"parameter {'/'.join(p)} has shape {tuple(flat[p].shape)}, expected {want} "
                f"from the model config ({what})"
            )
    out: dict[str, np.ndarray | None] = {k: None for k, _, _ in table}
    by_path: dict[tuple, list] = {}
    for key, path, idx in table:
        by_path.setdefault(path, []).append((key, idx))
    for path, entries in by_path.items():
        stacked = np.asarray(flat.pop(path))
        for key, idx in entries:
            w = _to_torch(stacked if idx is None else stacked[idx], path, idx, args, meta_rope)
            out[key] = w.astype(dtype) if dtype is not None and w.dtype != dtype else w
        del stacked
    return out  # type: ignore[return-value]


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: dict[tuple, object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def dtype_from_name(name: str | None):
    """'float32' | 'bfloat16' | 'float16' | 'keep'/None -> numpy dtype or None."""
    if name in (None, "keep"):
        return None
    table = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if name not in table:
        raise ConversionError(f"unknown dtype {name!r}; choose one of {sorted(table)} or 'keep'")
    return np.dtype(table[name])


def tree_dtype(tree: dict) -> str:
    """Name of the most common floating dtype (by element count) in a parameter tree."""
    counts: dict[str, int] = {}
    for v in flatten(tree).values():
        counts[str(v.dtype)] = counts.get(str(v.dtype), 0) + int(np.prod(v.shape))
    return max(counts, key=counts.get) if counts else "float32"


def first_existing(paths: Iterable) -> object | None:
    for p in paths:
        if p.exists():
            return p
    return None
