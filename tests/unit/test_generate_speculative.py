"""Self-speculative MTP decoding: token-for-token equal to plain greedy; acceptance bookkeeping."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from wmtp_jax.generate import Sampler, SamplingConfig  # noqa: E402
from wmtp_jax.models import ModelArgs, MTPTransformer  # noqa: E402

ARGS = ModelArgs(
    dim=32,
    n_layers=5,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=40,
    multiple_of=8,
    n_future_tokens=4,
    max_seq_len=128,
)


def tied_heads(model):
    """All heads = head 0: drafts are right whenever greedy repeats a token (high acceptance)."""
    state = nnx.state(model.heads, nnx.Param)
    nnx.update(model.heads, jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), state))
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_speculative_greedy_equals_greedy(tied):
    model = MTPTransformer(ARGS, rngs=nnx.Rngs(3))
    if tied:
        model = tied_heads(model)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, ARGS.vocab_size, n).tolist() for n in (2, 5, 9, 4, 7)]
    cfg = SamplingConfig(max_new_tokens=13)  # not a multiple of K
    plain = Sampler(model, eos_id=1, batch_size=8, min_bucket=16)
    spec = Sampler(model, eos_id=1, batch_size=8, min_bucket=16, speculative=True)
    want = plain.sample(prompts, 1, cfg)
    got = spec.sample(prompts, 1, cfg)
    assert got == want
    st = spec.stats
    assert st["drafted"] > 0 and 0 <= st["accepted"] <= st["drafted"]
    assert st["tokens"] == plain.stats["tokens"]
    # every round emits 1 + accepted tokens per live row; rounds ≤ forwards - 2
    assert st["forwards"] <= plain.stats["forwards"] + 2
    if tied:
        assert st["accepted"] > 0 and st["forwards"] < plain.stats["forwards"]


def test_speculative_stops_at_eos_and_needs_heads():
    model = MTPTransformer(ARGS, rngs=nnx.Rngs(4))
    prompts = [[5, 6, 7], [9, 3]]
    cfg = SamplingConfig(max_new_tokens=13)  # same programs as above
    plain = Sampler(model, eos_id=1, batch_size=8, min_bucket=16).sample(prompts, 1, cfg)
    eos = plain[0][0][4]  # a token row 0 emits mid-way
    want = Sampler(model, eos_id=eos, batch_size=8, min_bucket=16).sample(prompts, 1, cfg)
    spec = Sampler(model, eos_id=eos, batch_size=8, min_bucket=16, speculative=True)
    got = spec.sample(prompts, 1, cfg)
    assert got == want and len(got[0][0]) <= 4
    traced = spec.trace_count  # 0 when the test above ran first
    assert spec.sample(prompts, 1, cfg) == want and spec.trace_count == traced
    with pytest.raises(ValueError, match="greedy only"):
        Sampler(model, eos_id=1, batch_size=2, speculative=True).sample(
            prompts, 1, SamplingConfig(temperature=0.5)
        )
    one = MTPTransformer(ARGS.replace(n_future_tokens=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_future_tokens"):
        Sampler(one, eos_id=1, speculative=True)


def test_speculative_short_budgets_and_eos_first():
    """max_new_tokens 1 runs no round (prefill + one forward), 2 runs one; an EOS as the very
    first token ends that row empty, as in plain greedy."""
    model = tied_heads(MTPTransformer(ARGS, rngs=nnx.Rngs(5)))
    prompts = [[5, 6, 7], [9, 3], [4]]
    for n, forwards in ((1, 2), (2, 3)):
        cfg = SamplingConfig(max_new_tokens=n)
        want = Sampler(model, eos_id=1, batch_size=4, min_bucket=16).sample(prompts, 1, cfg)
        spec = Sampler(model, eos_id=1, batch_size=4, min_bucket=16, speculative=True)
        assert spec.sample(prompts, 1, cfg) == want and spec.stats["forwards"] == forwards
        assert [len(r[0]) for r in want] == [n] * 3
    cfg = SamplingConfig(max_new_tokens=6)
    eos = Sampler(model, eos_id=1, batch_size=4, min_bucket=16).sample(prompts, 1, cfg)[0][0][0]
    want = Sampler(model, eos_id=eos, batch_size=4, min_bucket=16).sample(prompts, 1, cfg)
    got = Sampler(model, eos_id=eos, batch_size=4, min_bucket=16, speculative=True).sample(
        prompts, 1, cfg
    )
    assert got == want and want[0][0] == []


@pytest.mark.parametrize("tied", [False, True])
def test_speculative_honours_text_stops_like_greedy(tied):
    """A text stop completed mid-round ends the row at the completing token, as in plain greedy
    (tied heads: the stop lands inside accepted drafts)."""
    from wmtp_jax.generate import StopTexts

    model = MTPTransformer(ARGS, rngs=nnx.Rngs(6))
    if tied:
        model = tied_heads(model)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(2, ARGS.vocab_size, n).tolist() for n in (2, 5, 9, 4)]
    cfg = SamplingConfig(max_new_tokens=13)
    plain = Sampler(model, eos_id=1, batch_size=8, min_bucket=16)
    full = plain.sample(prompts, 1, cfg)
    texts = [f"<{i}>" for i in range(ARGS.vocab_size)]
    row = full[0][0]
    stops = StopTexts.build(texts, [f"{row[5]}><{row[6]}", f"<{row[9]}>"])
    want = plain.sample(prompts, 1, cfg, stops=stops)
    spec = Sampler(model, eos_id=1, batch_size=8, min_bucket=16, speculative=True)
    got = spec.sample(prompts, 1, cfg, stops=stops)
    assert got == want and len(want[0][0]) <= 7
    assert sum(len(r[0]) for r in want) < sum(len(r[0]) for r in full)
