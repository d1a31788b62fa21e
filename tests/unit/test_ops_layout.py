"""ops.layout.constrain_batch: the batch split over the mesh's batch axes, a no-op elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from wmtp_jax.ops.layout import constrain_batch
from wmtp_jax.train.mesh import make_mesh


def _spec(mesh, x):
    with jax.set_mesh(mesh):
        y = jax.jit(lambda x: constrain_batch(x) * 2)(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)  # values unchanged
    return y.sharding.spec


def test_batch_split_over_data_and_fsdp():
    x = jnp.arange(8 * 3 * 4, dtype=jnp.float32).reshape(8, 3, 4)
    assert _spec(make_mesh(2, 4, 1), x) == P(("data", "fsdp"))
    assert _spec(make_mesh(1, 8, 1), x) == P("fsdp")
    assert _spec(make_mesh(1, 4, 2), x) == P("fsdp")  # tensor keeps the hidden states whole
    # 2 rows on data 2 × fsdp 4: only data splits them (the rule splash's shard_map uses too)
    assert _spec(make_mesh(2, 4, 1), x[:2]) == P("data")


def test_no_mesh_or_batch_not_divisible_is_a_no_op():
    x = jnp.ones((6, 5))
    assert constrain_batch(x) is x  # no mesh
    with jax.set_mesh(make_mesh(1, 4, 1, devices=jax.devices()[:4])):
        assert constrain_batch(x) is x  # 6 rows do not split 4 ways
    with jax.set_mesh(make_mesh(1, 1, 1, devices=jax.devices()[:1])):  # one device
        assert constrain_batch(x) is x
