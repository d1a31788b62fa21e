"""Lazy, tensor-by-tensor reading and writing of PyTorch checkpoints as numpy arrays.

Sources never materialise a whole state dict: `.pth` / `.bin` files are opened with
`torch.load(mmap=True)`, safetensors through `safe_open`, and a tensor is read only when `get`
asks for it. bfloat16 crosses the torch/numpy border bit-exactly through `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open


class ConversionError(ValueError):
    """Bad conversion input; the message names the file and the tensor."""


def _torch():
    try:
        import torch  # heavy and optional (the `torch` extra)
    except ImportError as e:  # pragma: no cover - torch is an optional dependency
        raise ConversionError(
            "torch is required for conversion: pip install 'wmtp_jax[torch]'"
        ) from e
    return torch


def to_numpy(t) -> np.ndarray:
    """torch tensor -> numpy (no copy where possible; bfloat16 via its bit pattern)."""
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def to_torch(a: np.ndarray):
    """numpy -> torch (shares memory for contiguous arrays; bfloat16 via its bit pattern)."""
    torch = _torch()
    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


class TensorSource:
    """name -> (file, shape, lazy getter) over one or many checkpoint files."""

    def __init__(self):
        self._entries: dict[str, tuple[str, tuple[int, ...], Callable[[], np.ndarray]]] = {}

    def _add(self, key: str, file: str, shape, getter: Callable[[], np.ndarray]):
        if key in self._entries:
            raise ConversionError(f"{file}: tensor {key!r} also present in {self._entries[key][0]}")
        self._entries[key] = (file, tuple(int(s) for s in shape), getter)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def file(self, key: str) -> str:
        return self._entries[key][0]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def get(self, key: str) -> np.ndarray:
        return self._entries[key][2]()

    @property
    def files(self) -> str:
        return ", ".join(sorted({f for f, _, _ in self._entries.values()}))

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def from_files(cls, files: Iterable[Path]) -> TensorSource:
        """Union of the tensors in `.safetensors` / `.pth` / `.bin` files.

        Duplicate names -> error.
        """
        src = cls()
        for f in files:
            if f.suffix == ".safetensors":
                src._add_safetensors(f)
            else:
                src._add_torch(f)
        return src

    def _add_safetensors(self, f: Path):
        try:
            h = safe_open(str(f), framework="pt")
        except Exception as e:
            raise ConversionError(f"{f}: cannot read safetensors file ({e})") from None
        for k in h.keys():
            self._add(
                k, str(f), h.get_slice(k).get_shape(), lambda h=h, k=k: to_numpy(h.get_tensor(k))
            )

    def _add_torch(self, f: Path):
        sd = load_torch_state_dict(f)
        for k, t in sd.items():
            self._add(k, str(f), t.shape, lambda t=t: to_numpy(t))

    @classmethod
    def from_meta_shards(
        cls, files: list[Path], split_dim: Callable[[str], int | None]
    ) -> TensorSource:
        """Meta model-parallel shards `consolidated.NN.pth`: concatenate each tensor along
        `split_dim(key)` (None = replicated, taken from shard 0)."""
        shards = [load_torch_state_dict(f) for f in files]
        src = cls()
        names = ", ".join(f.name for f in files)
        for i, sd in enumerate(shards[1:], 1):
            if set(sd) != set(shards[0]):
                diff = sorted(set(sd) ^ set(shards[0]))[:5]
                raise ConversionError(f"{files[i]}: keys differ from {files[0].name}: {diff}")
        for k, t0 in shards[0].items():
            d = split_dim(k)
            shape = list(t0.shape)
            if d is not None:
                for i, sd in enumerate(shards[1:], 1):
                    other = list(sd[k].shape)
                    if other[:d] + other[d + 1 :] != shape[:d] + shape[d + 1 :]:
                        raise ConversionError(
                            f"{files[i]}: tensor {k!r} shard shape {tuple(other)} does not match "
                            f"{files[0].name} shape {tuple(t0.shape)} outside dim {d}"
                        )
                shape[d] = sum(sd[k].shape[d] for sd in shards)

            def get(k=k, d=d):
                if d is None:
                    return to_numpy(shards[0][k])
                return np.concatenate([to_numpy(sd[k]) for sd in shards], axis=d)

            src._add(k, names, shape, get)
        return src


def load_torch_state_dict(f: Path) -> dict:
    """torch.load a flat name -> tensor dict, memory-mapped (tensors are read on access)."""
    torch = _torch()
    try:
        sd = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:
        raise ConversionError(
            f"{f}: cannot load torch checkpoint ({type(e).__name__}: {e})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ConversionError(
            f"{f}: expected a state dict (name -> tensor), got {type(sd).__name__}"
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{f}: entries that are not tensors: {bad[:5]}")
    return sd


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: invalid JSON (line {e.lineno}: {e.msg})") from None


def save_torch(state: dict[str, np.ndarray], path: Path):
    """torch.save a name -> tensor dict (dtypes kept; tensors share memory with the arrays)."""
    _torch().save({k: to_torch(v) for k, v in state.items()}, str(path))


def save_safetensors_sharded(
    state: dict[str, np.ndarray],
    directory: Path,
    *,
    max_shard_bytes: int,
    metadata: dict | None = None,
) -> list[str]:
    """HF layout: `model.safetensors`, or `model-0000i-of-0000n.safetensors` + index.

    (The sharded form above a size.)
    """
    from safetensors.torch import save_file  # imports torch (optional, heavy)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in state.items():
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        save_file(
            {k: to_torch(v) for k, v in shards[0].items()},
            str(directory / "model.safetensors"),
            meta,
        )
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: to_torch(v) for k, v in shard.items()}, str(directory / name), meta)
        names.append(name)
        weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in state.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return names
