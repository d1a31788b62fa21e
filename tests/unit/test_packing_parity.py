"""Packing acceptance: for each pointwise pipeline (baseline, verifiable, rho1, ref_tuning) the
loss and the gradients on a packed batch equal those on the unpacked batch of the same samples
(within 1e-5), with real tiny models (attention, RoPE positions, MTP heads). The batch has a
sample cut at a row end and samples with short prompts, so an MTP head near a segment end would
see a labelled token of the next sequence if targets crossed segments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmtp_jax import weighting
from wmtp_jax.data.packing import pack_batch
from wmtp_jax.models import ModelArgs
from wmtp_jax.models.llama import Llama
from wmtp_jax.models.mtp import MTPTransformer
from wmtp_jax.models.value import ValueModel
from wmtp_jax.pipelines import baseline, ref_tuning, rho1, verifiable

V, S, ROWS = 40, 32, 2
LENGTHS = [9, 14, 5, 20, 7, 12]  # first-fit into 2×32: the last sample is cut to 5 tokens
PROMPTS = [1, 3, 0, 2, 1, 2]  # labelled tokens right after a segment start
CUT = {5: 5}


def args(impl="xla", k=3, layers=4):
    return ModelArgs(
        dim=32,
        n_layers=layers,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=V,
        multiple_of=16,
        n_future_tokens=k,
        max_seq_len=S,
        attention=impl,
    )


def batches():
    """(unpacked batch [N, S] with the cut sample truncated as packing cuts it, packed batch)."""
    r = np.random.RandomState(0)
    n = len(LENGTHS)
    ids = np.zeros((n, S), np.int32)
    am = np.zeros((n, S), np.int32)
    for i, length in enumerate(LENGTHS):
        ids[i, :length] = r.randint(1, V, size=length)
        am[i, :length] = 1
    pos = np.arange(S)[None]
    labels = np.where((am == 1) & (pos >= np.asarray(PROMPTS)[:, None]), ids, -100)
    full = {
        "input_ids": ids,
        "attention_mask": am,
        "labels": labels.astype(np.int32),
        "is_correct": np.asarray([1, 0, 1, 1, 0, 1], np.float32),
        "valid": np.ones((n,), np.float32),
    }
    packed, stats = pack_batch(full, ROWS, S)
    assert stats["cut_tokens"] == LENGTHS[5] - CUT[5] and stats["dropped"] == 0
    ref = {k: v.copy() for k, v in full.items()}
    for i, keep in CUT.items():
        ref["attention_mask"][i, keep:] = 0
        ref["labels"][i, keep:] = -100
        ref["input_ids"][i, keep:] = 0
    return ref, packed


def jbatch(b):
    return {k: jnp.asarray(v) for k, v in b.items()}


def randomize(model, seed):
    """Non-trivial weights everywhere (the value head starts at zero)."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(tree, new))
    return model


def loss_and_grads(loss_fn, model, frozen, batch, extra=None):
    @nnx.jit
    def run(m, fr, b, ex):
        f = lambda mm: loss_fn(mm, fr, b, jax.random.PRNGKey(0), ex)[0]
        return nnx.value_and_grad(f)(m)

    loss, g = run(model, frozen, batch, extra)
    return float(loss), jax.tree.leaves(nnx.state(g))


def assert_parity(loss_fn, model, frozen=None, extra=None):
    ref, packed = batches()
    l_ref, g_ref = loss_and_grads(loss_fn, model, frozen, jbatch(ref), extra)
    l_pk, g_pk = loss_and_grads(loss_fn, model, frozen, jbatch(packed), extra)
    assert np.isfinite(l_ref) and l_ref > 0
    np.testing.assert_allclose(l_pk, l_ref, rtol=0, atol=1e-5)
    assert len(g_ref) == len(g_pk)
    for a, b in zip(g_ref, g_pk):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)
    return l_ref


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_baseline_packed_equals_unpacked(impl):
    policy = randomize(MTPTransformer(args(impl), rngs=nnx.Rngs(0)), 1)
    assert_parity(baseline.loss_fn, policy)


def test_baseline_chunked_packed_equals_unpacked():
    policy = randomize(MTPTransformer(args(), rngs=nnx.Rngs(0)), 1)
    fn = lambda *a: baseline.loss_fn(*a, chunk_size=16)
    assert_parity(fn, policy)


def test_crossing_targets_would_change_the_loss():
    """Hostile check: without segment ids in the loss, the packed loss differs (the test above
    would catch a head predicting the next sequence's tokens)."""
    policy = randomize(MTPTransformer(args(), rngs=nnx.Rngs(0)), 1)
    ref, packed = batches()
    p = jbatch(packed)
    ok = baseline.loss_fn(policy, None, p, None, None)[0]
    logits = policy(p["input_ids"], segment_ids=p["segment_ids"], positions=p["positions"])
    from wmtp_jax import ops

    crossing = ops.compute_mtp_ce_loss(logits, p["labels"], p["attention_mask"])
    assert abs(float(crossing["unweighted_ce_loss"]) - float(ok)) > 1e-3


@pytest.mark.parametrize("advantage,whitening", [("gae", "ema"), ("td", "batch")])
def test_verifiable_packed_equals_unpacked(advantage, whitening):
    policy = randomize(MTPTransformer(args(), rngs=nnx.Rngs(0)), 1)
    critic = ValueModel(args(k=1, layers=2), rngs=nnx.Rngs(2), head_type="linear")
    critic = randomize(critic, 3)
    wc = weighting.WeightingConfig(advantage=advantage, whitening=whitening, lam=0.9, beta=0.5)
    extra = weighting.init_extra(0.9, 0)
    extra["ema"] = extra["ema"]._replace(
        mean=jnp.float32(0.05), std=jnp.float32(0.2), step_count=jnp.int32(3)
    )
    fn = lambda *a: verifiable.loss_fn(*a, wc=wc, ga=1)
    assert_parity(fn, policy, critic, extra)
    # the advantages feeding the EMA are the same numbers on the same (valid) tokens
    ref, packed = batches()
    outs = []
    for b in (jbatch(ref), jbatch(packed)):
        _, (metrics, new) = fn(policy, critic, b, None, extra)
        outs.append((metrics, new))
    for k in ("td/mean", "td/std", "weight/mean", "weight/std", "value/mean", "value/mse"):
        np.testing.assert_allclose(outs[1][0][k], outs[0][0][k], atol=1e-5)
    np.testing.assert_allclose(outs[1][1]["ema"].mean, outs[0][1]["ema"].mean, atol=1e-6)


def test_rho1_packed_equals_unpacked():
    policy = randomize(MTPTransformer(args(), rngs=nnx.Rngs(0)), 1)
    ref = randomize(Llama(args(k=1, layers=2), rngs=nnx.Rngs(4)), 5)
    fn = lambda *a: rho1.loss_fn(*a, k_percent=0.5, mode="signed")
    assert_parity(fn, policy, ref)


def test_ref_tuning_packed_equals_unpacked():
    model = randomize(Llama(args(k=1, layers=2), rngs=nnx.Rngs(6)), 7)
    assert_parity(ref_tuning.loss_fn, model)


PAIR_LENGTHS = [(9, 11), (14, 6), (5, 8), (12, 10), (10, 30)]  # the last neg side is cut to 22
PAIR_PROMPTS = [1, 0, 2, 1, 0]  # labelled tokens at or right after a segment start


def pair_batches():
    """(unpacked pairwise batch, packed pairs) of the same pairs; 2 packed rows of 32."""
    r = np.random.RandomState(1)
    n = len(PAIR_LENGTHS)
    full = {"valid": np.ones((n,), np.float32)}
    for side, j in (("pos", 0), ("neg", 1)):
        ids = np.zeros((n, S), np.int32)
        am = np.zeros((n, S), np.int32)
        for i, lens in enumerate(PAIR_LENGTHS):
            ids[i, : lens[j]] = r.randint(1, V, size=lens[j])
            am[i, : lens[j]] = 1
        start = np.asarray(PAIR_PROMPTS)[:, None]
        labels = np.where((am == 1) & (np.arange(S)[None] >= start), ids, -100).astype(np.int32)
        full.update({f"{side}_input_ids": ids, f"{side}_attention_mask": am})
        full[f"{side}_labels"] = labels
    packed, stats = pack_batch(full, ROWS, S)
    assert stats["cut_tokens"] == 8 and stats["dropped"] == 0
    ref = {k: v.copy() for k, v in full.items()}
    ref["neg_attention_mask"][4, 22:] = 0
    ref["neg_labels"][4, 22:] = -100
    ref["neg_input_ids"][4, 22:] = 0
    return ref, packed


@pytest.mark.parametrize("kind", ["pairwise_ranking", "lambda_return"])
def test_critic_packed_pairs_equal_unpacked(kind):
    from wmtp_jax.pipelines import critic

    model = randomize(ValueModel(args(k=1, layers=2), rngs=nnx.Rngs(8), head_type="linear"), 9)
    vl = critic.ValueLossConfig(type=kind, schedule=("constant", 0.8, 0.8, 0, 1))
    fn = lambda *a: critic.loss_fn(*a, vl=vl, ga=1)
    extra = {"micro_batches": jnp.zeros((), jnp.int32)}
    ref, packed = pair_batches()
    l_ref, g_ref = loss_and_grads(fn, model, None, jbatch(ref), extra)
    l_pk, g_pk = loss_and_grads(fn, model, None, jbatch(packed), extra)
    np.testing.assert_allclose(l_pk, l_ref, rtol=0, atol=1e-5)
    for a, b in zip(g_ref, g_pk):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)
    m_ref = critic.eval_fn(model, None, jbatch(ref), extra, vl=vl)
    m_pk = critic.eval_fn(model, None, jbatch(packed), extra, vl=vl)
    for k in ("loss", "pairwise_accuracy", "margin", "mean_pos", "mean_neg"):
        np.testing.assert_allclose(m_pk[k], m_ref[k], atol=1e-5)


@pytest.mark.parametrize("advantage,whitening", [("gae", "ema"), ("td", "batch")])
def test_verifiable_negatives_packed_pairs_equal_unpacked(advantage, whitening):
    """data.use_negatives: pairwise batches (correct side reward 1, incorrect 0) packed pairwise;
    the neg side of the last pair is cut at the row end and every sequence has a labelled token
    within 2 of its start, so a head crossing a segment end would change the loss."""
    policy = randomize(MTPTransformer(args(), rngs=nnx.Rngs(0)), 1)
    critic = randomize(ValueModel(args(k=1, layers=2), rngs=nnx.Rngs(2), head_type="linear"), 3)
    wc = weighting.WeightingConfig(advantage=advantage, whitening=whitening, lam=0.9, beta=0.5)
    extra = weighting.init_extra(0.9, 0)
    extra["ema"] = extra["ema"]._replace(
        mean=jnp.float32(0.05), std=jnp.float32(0.2), step_count=jnp.int32(3)
    )
    fn = lambda *a: verifiable.loss_fn(*a, wc=wc, ga=1)
    ref, packed = pair_batches()
    assert packed["pos_input_ids"].shape == (ROWS, S) and ref["pos_input_ids"].shape[0] == 5
    l_ref, g_ref = loss_and_grads(fn, policy, critic, jbatch(ref), extra)
    l_pk, g_pk = loss_and_grads(fn, policy, critic, jbatch(packed), extra)
    assert np.isfinite(l_ref) and l_ref > 0
    np.testing.assert_allclose(l_pk, l_ref, rtol=0, atol=1e-5)
    assert len(g_ref) == len(g_pk)
    for a, b in zip(g_ref, g_pk):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)
    outs = [fn(policy, critic, jbatch(b), None, extra)[1] for b in (ref, packed)]
    for k in ("td/mean", "td/std", "weight/mean", "weight/std", "value/mse", "value/return_mean"):
        np.testing.assert_allclose(outs[1][0][k], outs[0][0][k], atol=1e-5)
    np.testing.assert_allclose(outs[1][1]["ema"].mean, outs[0][1]["ema"].mean, atol=1e-6)
    ev = [verifiable.eval_fn(policy, critic, jbatch(b), extra, wc=wc) for b in (ref, packed)]
    for k in ("weighted_ce_loss", "unweighted_ce_loss"):
        np.testing.assert_allclose(ev[1][k], ev[0][k], atol=1e-5)
