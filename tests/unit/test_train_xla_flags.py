"""XLA:CPU flag defaults: the user's XLA_FLAGS win, unmeasured jax releases get nothing, and on
the installed jax the default reaches the compiler when set after `import jax`."""

import os
import subprocess
import sys

import jax
import pytest

from wmtp_jax.train.xla_flags import CPU_DEFAULTS, apply_cpu_defaults, with_cpu_defaults

YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_appends_the_release_defaults():
    assert with_cpu_defaults("", "0.10.2") == f"{YNN}=dot"
    assert with_cpu_defaults("--xla_cpu_ftz=true", "0.10.0") == f"--xla_cpu_ftz=true {YNN}=dot"


def test_user_flag_wins_and_is_kept_verbatim():
    user = f"--xla_dump_to=/tmp/d  {YNN}=individual_dot,reduce"
    assert with_cpu_defaults(user, "0.10.2") == f"--xla_dump_to=/tmp/d {YNN}=individual_dot,reduce"
    assert with_cpu_defaults(f"{YNN.lstrip('-')}=dot", "0.10.2") == f"{YNN.lstrip('-')}=dot"


def test_unmeasured_release_gets_nothing():
    assert with_cpu_defaults("", "0.11.0") == ""
    assert with_cpu_defaults("--xla_cpu_ftz=true", "1.0") == "--xla_cpu_ftz=true"


def test_apply_is_idempotent():
    env = {"XLA_FLAGS": "--xla_cpu_ftz=true"}
    first = apply_cpu_defaults(env)
    assert apply_cpu_defaults(env) == first == env["XLA_FLAGS"]
    assert apply_cpu_defaults({}) == with_cpu_defaults("", jax.__version__)


# compiled in a fresh process: `mode` = env (apply_cpu_defaults after import jax) or plain
_PROBE = """
import sys
import jax, jax.numpy as jnp
from wmtp_jax.train.xla_flags import apply_cpu_defaults
if sys.argv[1] == "env":
    apply_cpu_defaults()
def f(ws, x):
    w1, w2, w3 = ws
    return ((jax.nn.silu(x @ w1) * (x @ w3)) @ w2).sum()
x, w = jnp.ones((4, 64, 32)), jnp.ones((32, 96)) * 0.01
lowered = jax.jit(jax.vmap(jax.grad(f), in_axes=(None, 0))).lower((w, w.T, w), x)
opts = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
compiled = lowered.compile(compiler_options=opts if sys.argv[1] == "opts" else None)
print(compiled.as_text().split("ENTRY")[1])
"""


@pytest.mark.skipif(
    ".".join(jax.__version__.split(".")[:2]) not in CPU_DEFAULTS, reason="no defaults for this jax"
)
def test_defaults_reach_the_compiler():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}

    def program(mode):
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    via_env, via_options, plain = program("env"), program("opts"), program("plain")
    assert via_env == via_options
    assert via_env != plain
