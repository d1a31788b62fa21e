"""MTPTransformer vs a float32 torch port of Meta's MTP model.py; heads, latents, cache, bf16."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from conversion import mapping  # noqa: E402
from tests.kv_cache import check_prefill_then_decode  # noqa: E402
from tests.torch_ref import (  # noqa: E402
    abstract_model,
    flat_paths,
    load_pure,
    meta_mtp,  # noqa: E402
    torch_state_to_pure,
)
from wmtp_jax.models import ModelArgs, MTPTransformer  # noqa: E402

TINY = dict(
    dim=32,
    n_layers=5,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=61,
    multiple_of=8,
    ffn_dim_multiplier=1.3,
    norm_eps=1e-5,
    rope_theta=500.0,
    max_seq_len=32,
)
V = TINY["vocab_size"]


def torch_and_jax(n_future: int, seed: int = 0, n_layers: int = 5, **runtime):
    """A random torch Meta model and the MTPTransformer holding the same (converted) weights."""
    tiny = dict(TINY, n_layers=n_layers)
    torch.manual_seed(seed)
    ref = meta_mtp.Transformer(meta_mtp.ModelArgs(**tiny, n_future_tokens=n_future)).eval()
    with torch.no_grad():  # non-trivial norm scales
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    args = ModelArgs(**tiny, n_future_tokens=n_future, **runtime)
    model = abstract_model(lambda: MTPTransformer(args, rngs=nnx.Rngs(1)))
    table = mapping.meta_key_table(args.n_trunk_layers, n_future)
    load_pure(
        model,
        torch_state_to_pure(
            ref.state_dict(), table, meta_rope=True, n_heads=args.n_heads, n_kv_heads=args.kv_heads
        ),
    )
    return ref, model


def tokens(b=2, s=11, seed=0):
    return np.random.default_rng(seed).integers(0, V, (b, s)).astype(np.int32)


@nnx.jit(static_argnames=("all_heads",))
def forward(model, tok, all_heads=True):
    logits, hidden = model(tok, return_all_heads=all_heads, return_hidden_states=True)
    h_trunk, lat = model.latents(tok)
    return logits, hidden, h_trunk, lat, model.project(lat)


@pytest.fixture(scope="module")
def mtp3():
    ref, model = torch_and_jax(3)
    tok = tokens()
    return ref, model, tok, forward(model, jnp.asarray(tok))


def check_against_reference(ref, tok, logits, hidden, k):
    with torch.no_grad():
        want, want_h = ref(
            torch.from_numpy(tok).long(), return_all_heads=True, return_hidden_states=True
        )
    assert logits.shape == (*tok.shape, k, V) and logits.dtype == jnp.float32
    # vs the torch reference: max |Δ| 8.3e-7 logits, 7.2e-7 hidden, XLA:CPU dot fusion off
    # and on (AVX-512 Xeon)
    for j in range(k):  # every head
        np.testing.assert_allclose(logits[:, :, j], want[:, :, j].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(hidden, want_h.numpy(), atol=1e-4, rtol=0)


def test_logits_and_hidden_match_meta_reference_3_heads(mtp3):
    ref, model, tok, (logits, hidden, *_) = mtp3
    assert model.args.hidden_dim == ref.layers[0].feed_forward.w1.out_features == 112
    check_against_reference(ref, tok, logits, hidden, 3)


def test_empty_trunk_4_heads_micro_layout():
    """n_layers = n_future = 4 (the micro layout): no trunk blocks, h_trunk = embeddings."""
    ref, model = torch_and_jax(4, seed=3, n_layers=4)
    assert model.layers is None and model.args.n_trunk_layers == 0
    tok = tokens(s=7)
    logits, hidden, h_trunk, _, _ = forward(model, jnp.asarray(tok))
    check_against_reference(ref, tok, logits, hidden, 4)
    np.testing.assert_array_equal(h_trunk, model.tok_embeddings.embedding[...][tok])


def test_param_paths_equal_meta_key_table():
    args = ModelArgs(**TINY, n_future_tokens=3)
    model = abstract_model(lambda: MTPTransformer(args, rngs=nnx.Rngs(0)))
    paths = set(flat_paths(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    assert paths == {p for _, p, _ in mapping.meta_key_table(args.n_trunk_layers, 3)}


def test_head0_only_and_latents(mtp3):
    _, model, tok, (full, _, h_trunk, lat, projected) = mtp3
    assert h_trunk.shape == (2, 11, 32) and lat.shape == (2, 11, 3, 32)
    np.testing.assert_allclose(projected, full, atol=1e-6)  # logits == output(norm(latents))
    one = forward(model, jnp.asarray(tok), all_heads=False)[0]
    assert one.shape == (2, 11, 1, V)
    np.testing.assert_allclose(one[:, :, 0], full[:, :, 0], atol=1e-6)


def test_bfloat16_compute_close_to_float32(mtp3):
    _, _, tok, (full, *_) = mtp3
    _, m16 = torch_and_jax(3, dtype="bfloat16")
    out = nnx.jit(lambda m, t: m(t))(m16, jnp.asarray(tok))
    assert out.dtype == jnp.float32 and m16.heads.attention.wq.kernel[...].dtype == jnp.float32
    err = float(jnp.max(jnp.abs(out - full)))
    assert 0 < err < 0.05 * float(jnp.max(jnp.abs(full))) + 0.05, err


def test_kv_cache_prefill_then_decode_matches_full(mtp3):
    """Rows at different positions: row 0 prefills 6 tokens, row 1 only 4 (right padding), then
    token-by-token decode; every head's logits equal the full-sequence forward."""
    _, model, tok, (full, *_) = mtp3
    model = nnx.clone(model)
    model.args = model.args.replace(remat="full")  # the cache path under remat too
    cache = model.init_cache(2, 16)
    assert cache["layers"]["k"].shape == (2, 2, 2, 16, 8)
    assert cache["heads"]["v"].shape == (3, 2, 2, 16, 8)
    step = nnx.jit(
        lambda m, t, p, c, all_heads=True: m(t, return_all_heads=all_heads, positions=p, cache=c),
        static_argnames="all_heads",
    )
    cache = check_prefill_then_decode(step, model, tok, np.array([6, 4]), full, cache)
    # a head-0-only step leaves the other heads' caches untouched
    one, cache2 = step(
        model,
        jnp.asarray((tok[:, :1] + 1) % V),
        jnp.zeros((2, 1), jnp.int32),
        cache,
        all_heads=False,
    )
    assert one.shape == (2, 1, 1, V)
    np.testing.assert_array_equal(cache2["heads"]["k"][1:], cache["heads"]["k"][1:])
    assert not np.array_equal(cache2["heads"]["k"][0], cache["heads"]["k"][0])


def test_gradients_through_scan_and_head_vmap_agree_across_remat_policies(mtp3):
    _, model, tok, _ = mtp3
    graphdef, params = nnx.split(model, nnx.Param)

    def grads(policy):
        m = nnx.merge(graphdef, params)
        m.args = m.args.replace(remat=policy)
        gd, _ = nnx.split(m, nnx.Param)

        def loss(p):
            logits = nnx.merge(gd, p)(jnp.asarray(tok))
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

        return jax.jit(jax.grad(loss))(params)

    g0, g1 = grads("none"), grads("dots_no_batch")
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(jnp.abs(g0["layers"]["attention"]["wq"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(g0["heads"]["feed_forward"]["w2"]["kernel"][...][2]).max()) > 0


def test_unrolled_head_loop_equals_vmapped_heads(mtp3):
    """The benchmark's `--heads loop` (the before of vmapped heads) computes the same logits and
    the same gradients as the model's one-vmap heads."""
    ref, model, tok, (logits, *_) = mtp3
    loss = lambda m: jnp.mean(m(jnp.asarray(tok)) ** 2)
    g_vmap = nnx.grad(loss)(model)
    unrolled = nnx.clone(model)  # the same parameters, heads as an unrolled loop
    unrolled.args = model.args.replace(unroll_heads=True)
    looped = nnx.jit(lambda m, t: m(t))(unrolled, jnp.asarray(tok))
    g_loop = nnx.grad(loss)(unrolled)
    np.testing.assert_allclose(looped, logits, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_loop), jax.tree.leaves(g_vmap)):
        np.testing.assert_allclose(a, b, atol=1e-6)
