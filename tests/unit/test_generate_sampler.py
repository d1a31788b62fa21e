"""KV-cache sampler: filtering distributions, stop handling, cache-vs-recompute greedy, buckets."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from wmtp_jax.generate import (
    Sampler,
    SamplingConfig,
    StopTexts,
    bucket_length,  # noqa: E402
    filter_logits,
    sample_tokens,
    stop_hit,
    truncate_at_stops,
)
from wmtp_jax.models import ModelArgs, MTPTransformer  # noqa: E402

ARGS = ModelArgs(
    dim=32,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=50,
    multiple_of=8,
    n_future_tokens=3,
    max_seq_len=128,
)
EOS = 0


# ---- pure filtering / sampling --------------------------------------------------------------


def kept(logits, **kw):
    x = filter_logits(
        jnp.asarray(logits, jnp.float32), kw.pop("temperature", 1.0), kw.pop("top_p", 1.0), **kw
    )
    return np.asarray(x > jnp.finfo(jnp.float32).min / 2)


def test_top_p_keeps_the_token_crossing_the_threshold():
    logits = np.log(np.array([[0.05, 0.5, 0.15, 0.3]]))
    # sorted probs .5 .3 .15 .05, mass before each: 0 .5 .8 .95
    assert kept(logits, top_p=0.6).tolist() == [[False, True, False, True]]
    assert kept(logits, top_p=0.5).tolist() == [[False, True, False, True]]  # HF: cum > p
    assert kept(logits, top_p=0.49).tolist() == [[False, True, False, False]]
    assert kept(logits, top_p=0.85).tolist() == [[False, True, True, True]]
    assert kept(logits, top_p=1e-9).tolist() == [[False, True, False, False]]  # always top-1
    assert kept(logits, top_p=1.0, use_top_p=False).all()


def test_top_k_and_temperature():
    logits = np.array([[1.0, 4.0, 3.0, 2.0]])
    assert kept(logits, top_k=2, use_top_p=False).tolist() == [[False, True, True, False]]
    assert kept(logits, top_k=1, use_top_p=False).tolist() == [[False, True, False, False]]
    x = filter_logits(jnp.asarray(logits), 0.5, 1.0, use_top_p=False)
    np.testing.assert_allclose(np.asarray(x), logits / 0.5)
    # temperature applies before top-p: T=0.25 sharpens p(1) to e^4/(e^4+e^0+..) > 0.9
    assert kept(logits, temperature=0.25, top_p=0.9).tolist() == [[False, True, False, False]]
    assert kept(logits, temperature=1.0, top_p=0.9).tolist() == [[False, True, True, True]]


def test_sampled_tokens_stay_in_the_nucleus_with_the_right_frequencies():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    n = 4000
    logits = jnp.asarray(np.tile(np.log(probs), (n, 1)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    draw = jax.jit(lambda k, l: sample_tokens(k, 3, l, 1.0, 0.6, greedy=False))
    toks = np.asarray(draw(keys, logits))
    freq = np.bincount(toks, minlength=4) / n
    assert freq[0] == 0 and freq[2] == 0
    np.testing.assert_allclose(freq[[1, 3]], [0.5 / 0.8, 0.3 / 0.8], atol=0.03)
    top1 = np.asarray(
        jax.jit(lambda k, l: sample_tokens(k, 0, l, 1.0, 1.0, greedy=False, top_k=1))(
            keys[:50], logits[:50]
        )
    )
    assert (top1 == 1).all()
    greedy = np.asarray(sample_tokens(keys[:5], 0, logits[:5], 1.0, 1.0, greedy=True))
    assert (greedy == 1).all()


def stop_rows(texts, stops, rows, vocab=None):
    """stop_hit at every position of each row (ids index `texts`)."""
    table = StopTexts.build(texts, stops)
    width = max(map(len, rows))
    lead = table.stops.shape[1] + 1
    out = np.full((len(rows), lead + width), -2, np.int32)
    for i, r in enumerate(rows):
        out[i, lead : lead + len(r)] = r
    f = jax.jit(lambda o, e: stop_hit(o, e, table.arrays))
    return [
        [bool(f(jnp.asarray(out), jnp.full((len(rows),), lead + t))[i]) for t in range(len(r))]
        for i, r in enumerate(rows)
    ]


def test_text_stops_fire_whatever_the_tokenisation():
    # a BPE-like vocabulary: the stop "\ndef " is never one token sequence of its own
    texts = ["\n", "def", " foo", "def ", "x", "\nd", "ef", " ", "a\ndef b", "", "\n\n"]
    rows = [
        [4, 0, 1, 2],  # "x" "\n" "def" " foo"   -> fires at " foo" (merged space)
        [4, 0, 3],  # "\ndef " exactly         -> fires at "def "
        [5, 6, 7],  # "\nd" "ef" " "           -> fires at " "
        [8],  # inside one token         -> fires at once
        [4, 9, 0, 9, 1, 4],  # empty (special) tokens between: "\ndefx" no space -> never
        [10, 3],
    ]  # "\n\n" "def "          -> fires at "def "
    got = stop_rows(texts, ["\ndef ", "\nclass"], rows)
    assert got == [
        [False, False, False, True],
        [False, False, True],
        [False, False, True],
        [True],
        [False] * 6,
        [False, True],
    ]
    # long tokens keep their first/last S-1 bytes: a stop inside or across them still fires
    long = ["y" * 40, "z" * 30 + "\nde", "f " + "w" * 30]
    assert stop_rows(long, ["\ndef "], [[0, 1, 2]]) == [[False, False, True]]
    assert StopTexts.build(long, ["\ndef "]).token_bytes.shape == (3, 9)  # 2·(5−1)+1
    # no stops: never fires
    assert stop_rows(texts, [], [[8, 3]]) == [[False, False]]
    assert truncate_at_stops("x = 1\ndef f():\n\nclass", ["\nclass", "\ndef"]) == "x = 1"
    assert truncate_at_stops("abc", ["\n#"]) == "abc"
    assert [bucket_length(n, 8) for n in (1, 8, 9, 16, 17, 100)] == [8, 8, 16, 16, 32, 128]
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


# ---- the sampler on a random tiny MTP policy ------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return MTPTransformer(ARGS, rngs=nnx.Rngs(0))


def recompute_greedy(model, prompts, n_new):
    """Reference: argmax of a full no-cache forward over the whole sequence at every step."""
    width = max(map(len, prompts)) + n_new
    fwd = jax.jit(lambda t: model(t, return_all_heads=False)[:, :, 0])
    seqs = [list(p) for p in prompts]
    done = [False] * len(seqs)
    for _ in range(n_new):
        batch = np.array([s + [EOS] * (width - len(s)) for s in seqs], np.int32)
        logits = np.asarray(fwd(jnp.asarray(batch)))
        for i, s in enumerate(seqs):
            if not done[i]:
                t = int(np.argmax(logits[i, len(s) - 1]))
                done[i] = t == EOS
                if not done[i]:
                    s.append(t)
    return [s[len(p) :] for s, p in zip(seqs, prompts)]


def test_cache_greedy_equals_recompute_greedy_and_compiles_once_per_bucket(model):
    rng = np.random.default_rng(0)
    lengths = [1, 3, 5, 8, 2, 7, 11, 14, 9, 16, 6]  # buckets 8 and 16
    prompts = [rng.integers(1, ARGS.vocab_size, n).tolist() for n in lengths]
    sampler = Sampler(model, eos_id=EOS, batch_size=4, min_bucket=8)
    cfg = SamplingConfig(max_new_tokens=10)
    got = sampler.sample(prompts, 2, cfg)
    want = recompute_greedy(model, prompts, 10)
    assert [g[0] for g in got] == want and all(g[0] == g[1] for g in got)
    assert sampler.trace_count == 2
    more = [rng.integers(1, ARGS.vocab_size, n).tolist() for n in (4, 10, 13, 15, 3)]
    again = Sampler(model, eos_id=EOS + 1, batch_size=4, min_bucket=8)  # eos is not static
    again.sample(more, 1, cfg)
    assert again.trace_count == 0  # same buckets: no new trace
    assert sampler.stats["tokens"] == sum(len(r[0]) for r in got)  # greedy: one row per prompt


def test_on_device_text_stops_end_rows_at_the_completing_token(model):
    rng = np.random.default_rng(1)
    prompts = [rng.integers(1, ARGS.vocab_size, n).tolist() for n in (3, 6, 5)]
    sampler = Sampler(model, eos_id=EOS, batch_size=4, min_bucket=8)
    cfg = SamplingConfig(max_new_tokens=10)
    full = [g[0] for g in sampler.sample(prompts, 1, cfg)]
    texts = [f"<{i}>" for i in range(ARGS.vocab_size)]  # token i decodes to "<i>"
    a, b = full[0][3:5]  # a pair the first row emits
    stops = StopTexts.build(texts, [f"{a}><{b}"])  # spans the two tokens' texts
    got = [g[0] for g in sampler.sample(prompts, 1, cfg, stops=stops)]
    for f, g in zip(full, got):
        ends = [i + 2 for i in range(len(f) - 1) if f[i : i + 2] == [a, b]]
        assert g == f[: ends[0]] if ends else g == f
    assert len(got[0]) <= 5
    # an extra end id (e.g. an end-of-turn token) ends the row like EOS
    ender = Sampler(model, eos_id=EOS, batch_size=4, min_bucket=8, end_ids=[full[1][2]])
    assert ender.sample(prompts, 1, cfg)[1][0] == full[1][: full[1].index(full[1][2])]


def test_sampling_is_reproducible_and_independent_of_batching(model):
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, ARGS.vocab_size, n).tolist() for n in (4, 6)]
    cfg = SamplingConfig(temperature=1.0, top_p=0.9, top_k=20, max_new_tokens=8)
    a = Sampler(model, eos_id=EOS, batch_size=4, min_bucket=8).sample(prompts, 3, cfg, seed=5)
    b = Sampler(model, eos_id=EOS, batch_size=8, min_bucket=8).sample(prompts, 3, cfg, seed=5)
    assert a == b
    assert len({tuple(s) for s in a[0]}) > 1  # the 3 samples differ
    one = SamplingConfig(temperature=0.7, top_k=1, max_new_tokens=10)
    s = Sampler(model, eos_id=EOS, batch_size=4, min_bucket=8)
    assert s.sample(prompts, 2, one, seed=3) == s.sample(
        prompts, 2, SamplingConfig(max_new_tokens=10)
    )


def test_llama_cache_greedy_equals_recompute():
    from wmtp_jax.models.llama import Llama

    llama = Llama(ARGS.replace(n_future_tokens=1, n_layers=2), rngs=nnx.Rngs(2))
    prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12]]
    got = Sampler(llama, eos_id=EOS, batch_size=2, min_bucket=8).sample(
        prompts, 1, SamplingConfig(max_new_tokens=6)
    )
    fwd = jax.jit(lambda t: llama(t))
    for p, g in zip(prompts, got):
        seq = list(p)
        for _ in range(6):
            row = np.zeros((1, 16), np.int32)  # fixed shape: one compile
            row[0, : len(seq)] = seq
            t = int(np.argmax(np.asarray(fwd(jnp.asarray(row)))[0, len(seq) - 1]))
            if t == EOS:
                break
            seq.append(t)
        assert g[0] == seq[len(p) :]
    with pytest.raises(ValueError, match="n_future_tokens"):
        Sampler(llama, eos_id=EOS, speculative=True)
