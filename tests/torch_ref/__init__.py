"""PyTorch reference implementations (float32) used by the parity tests, plus torch→JAX helpers."""

from __future__ import annotations

import jax
import numpy as np

from conversion import mapping


def torch_state_to_pure(
    state_dict, table, *, meta_rope: bool, n_heads: int, n_kv_heads: int
) -> dict:
    """A torch state dict → nested pure dict in the wmtp_jax layout (stacked per-layer tensors).

    `table` yields (torch key, jax path, index or None) (`mapping.meta_key_table` / `hf_key_table`).
    """
    flat: dict[tuple, object] = {}
    stacks: dict[tuple, dict[int, np.ndarray]] = {}
    for key, path, idx in table:
        if key not in state_dict:
            raise KeyError(f"torch state dict lacks {key!r}")
        w = state_dict[key].detach().cpu().float().numpy()
        if idx is None:
            flat[path] = mapping.top_to_jax(w, path)
        else:
            stacks.setdefault(path, {})[idx] = mapping.torch_to_jax_tensor(
                w, path[1:], meta_rope=meta_rope, n_heads=n_heads, n_kv_heads=n_kv_heads
            )
    for path, items in stacks.items():
        flat[path] = np.stack([items[i] for i in range(len(items))])
    nested: dict = {}
    for path, w in flat.items():
        d = nested
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = w
    return nested


def flat_paths(tree: dict, prefix=()) -> dict[tuple, object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat_paths(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def load_pure(model, pure: dict) -> None:
    """Set every Param of `model` from a nested pure dict; the key sets must match exactly."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    have = {tuple(str(p) for p in k): v for k, v in flat_paths(nnx.to_pure_dict(state)).items()}
    want = flat_paths(pure)
    if set(have) != set(want):
        raise KeyError(
            f"param paths differ: model-only {sorted(set(have) - set(want))}, "
            f"given-only {sorted(set(want) - set(have))}"
        )
    for k, v in want.items():
        if tuple(have[k].shape) != tuple(v.shape):
            raise ValueError(f"{'/'.join(k)}: model shape {have[k].shape} vs given {v.shape}")
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    nnx.update(model, state)


def abstract_model(make):
    """`nnx.eval_shape(make)`: a model skeleton without random init (fill it with `load_pure`)."""
    from flax import nnx

    return nnx.eval_shape(make)


def fill_random(model, seed: int = 0, scale: float = 0.2) -> None:
    """Fill every Param of a (possibly abstract) model from numpy: norm scales 1 + N(0, 0.1),
    `lora_b` zeros (as at init), everything else N(0, scale). No jitted random init to compile."""
    from flax import nnx

    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)

    def one(path, leaf):
        name = str(path[-1].key)
        if name == "lora_b":
            return np.zeros(leaf.shape, np.float32)
        if name == "scale":
            return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

    values = jax.tree_util.tree_map_with_path(lambda p, x: jax.numpy.asarray(one(p, x)), pure)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(model, state)


def fill_deterministic(model):
    """Overwrite every Param with cheap traceable values (0.2·sin of a per-param ramp; norm scales
    near 1; LoRA B non-zero). Inside a jitted constructor this makes the random init dead code,
    so XLA compiles in a fraction of the time. Returns the model."""
    import jax.numpy as jnp
    from flax import nnx

    for i, (path, var) in enumerate(nnx.iter_graph(model)):
        if not isinstance(var, nnx.Param):
            continue
        ramp = jnp.arange(int(np.prod(var.shape)), dtype=jnp.float32).reshape(var.shape)
        v = jnp.sin(0.37 * ramp * (1 + 0.1 * (i % 7)) + i)
        var.set_value((1.0 + 0.1 * v if path[-1] == "scale" else 0.2 * v).astype(var.dtype))
    return model
