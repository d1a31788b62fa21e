"""wmtp_jax.ops.platform / ops.attention: `target_platform` makes the attention dispatch choose
for the compile target (not the CPU host), per thread; the CPU custom call is never chosen for,
or traced into, an accelerator program."""

import threading

import jax
import jax.numpy as jnp
import pytest

from tests.unit.attention_data import qkv
from wmtp_jax.kernels import flash_cpu
from wmtp_jax.ops import attention as A


def test_default_is_the_host_backend_and_contexts_nest_and_restore():
    assert A.current_platform() == jax.default_backend() == "cpu"
    with A.target_platform("tpu"):
        assert A.current_platform() == "tpu"
        with A.target_platform("cuda"):
            assert A.current_platform() == "gpu"
        assert A.current_platform() == "tpu"
    assert A.current_platform() == "cpu"
    with pytest.raises(ValueError, match="unknown platform 'metal'"):
        with A.target_platform("metal"):
            pass


def test_the_target_is_per_thread():
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other():
        inside.wait()
        seen["other"] = A.current_platform()  # main thread is inside target_platform("tpu")
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with A.target_platform("tpu"):
        inside.set()
        release.wait()
        seen["main"] = A.current_platform()
    t.join()
    assert seen == {"other": "cpu", "main": "tpu"}


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_cpu_flash_is_never_chosen_or_traced_for_an_accelerator(target):
    q, k, v = qkv(1, 16, 2, 1, 64)
    with A.target_platform(target):
        for s in (16, 4096):
            assert A.resolve("auto", s, jnp.bfloat16, 64) != "cpu_flash"
        with pytest.raises(
            ValueError, match=f"'cpu_flash' runs on the CPU backend only, the backend is '{target}'"
        ):
            A.check_backend("cpu_flash")
        with pytest.raises(ValueError, match=f"the backend is '{target}'"):
            jax.jit(lambda q, k, v: A.attention(q, k, v, implementation="cpu_flash")).trace(q, k, v)
        with pytest.raises(ValueError, match=f"the backend is '{target}'"):
            flash_cpu.flash_attention_cpu(q, k, v, jnp.ones((1, 16), jnp.int32))
    assert A.check_backend("cpu_flash") is None  # the host itself is unchanged


def test_gpu_target_compute_capability_answers_jax_cudnn_checks_only_inside_the_target():
    import jax._src.cudnn.fused_attention_stablehlo as F  # the private module cudnn calls

    assert A.target_compute_capability() is None  # CPU host, no target
    with A.target_platform("gpu"):
        assert A.target_compute_capability() is None  # no mesh, no explicit capability
    A._answer_jax_cudnn_checks_for_the_target()
    A._answer_jax_cudnn_checks_for_the_target()  # idempotent
    assert F.check_compute_capability("9.0") is False  # jax's own answer on this host
    with A.target_platform("cuda", compute_capability="9.0"):
        assert A.target_compute_capability() == (9, 0)
        assert F.check_compute_capability("9.0") and F.check_compute_capability("8.0")
        assert not F.check_compute_capability("10.0")
        assert F.is_cuda_compute_capability_equal("9.0")
        with A.target_platform("tpu"):
            assert F.check_compute_capability("9.0") is False
    with A.target_platform("gpu", compute_capability="8.0"):
        assert not F.check_compute_capability("9.0")
    assert F.check_compute_capability("9.0") is False
