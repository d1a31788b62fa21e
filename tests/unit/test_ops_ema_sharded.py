"""TD-stats EMA on a batch sharded over a 4-device fake CPU mesh == single device.

tests/conftest.py provides 8 fake CPU devices; when fewer are visible (XLA_FLAGS preset by the
caller) the same check runs in a subprocess with 4 forced devices.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax.ops import build_weights, compute_gae_advantage, td_ema_init, td_ema_update


def check_sharded_equals_single_device():
    rng = np.random.default_rng(0)
    v = rng.uniform(size=(8, 16)).astype(np.float32)
    m = (rng.uniform(size=(8, 16)) > 0.3).astype(np.float32)
    m[3] = 0  # an empty row on one shard

    def step(state, values, mask):
        a = compute_gae_advantage(values, jnp.ones(values.shape[0]), mask)
        mean, std = state.mean, state.std
        return td_ema_update(state, a, mask), build_weights(
            a, mask, external_mean=mean, external_std=std
        )

    ref_state, ref_w = td_ema_init(), None
    for _ in range(3):
        ref_state, ref_w = jax.jit(step)(ref_state, v, m)

    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    shard = NamedSharding(mesh, P("data"))
    vs, ms = jax.device_put(v, shard), jax.device_put(m, shard)
    assert len(vs.sharding.device_set) == 4
    state = jax.device_put(td_ema_init(), NamedSharding(mesh, P()))
    for _ in range(3):
        state, w = jax.jit(step)(state, vs, ms)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w), np.asarray(ref_w), rtol=1e-6)
    # population statistics over the *global* batch
    a = np.asarray(jax.jit(compute_gae_advantage)(v, jnp.ones(8), m))[m > 0]
    first = td_ema_update(
        td_ema_init(), jax.device_put(a[None], NamedSharding(mesh, P())), np.ones((1, a.size))
    )
    np.testing.assert_allclose(
        [float(first.mean), float(first.std)], [a.mean(), a.std()], rtol=1e-5
    )


def test_ema_sharded_equals_single_device():
    if len(jax.devices()) >= 4:
        check_sharded_equals_single_device()
        return
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    code = (
        "from tests.unit.test_ops_ema_sharded import check_sharded_equals_single_device as c; c()"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True, timeout=300)
