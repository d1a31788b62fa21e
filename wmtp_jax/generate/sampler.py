"""KV-cache sampler: one jitted program per (batch, prompt bucket, max_new_tokens) that prefills a
static preallocated cache and decodes in a `lax.while_loop` (no per-token host sync, early exit
when every row is finished).

Layout: prompts are right-padded to a bucket length `L` (a power of two ≥ `min_bucket`) and
every row keeps its own absolute positions; cache slot t holds position t. The prefill writes
slots 0..L-1 (the pad slots hold garbage that no query can see: a key is visible iff its slot ≤
the query position, and decode step t overwrites slot t before any query reaches it). The prefill
logits are discarded (XLA drops the vocab projection); the first decode step re-feeds the last
prompt token at position n_b − 1, so row b's first sample comes from exactly its own prompt.

Sampling (per row, float32 logits): greedy = argmax; otherwise logits / T, then top-k, then
nucleus top-p as the original (HF) does: keep the sorted tokens whose preceding cumulative
mass is ≤ top_p (the token crossing the threshold and the top-1 are always kept; ties with the
last kept logit are kept too).

Stops: EOS (and any extra end ids, mapped to EOS) on device; textual stop sequences both on
device and on host. On device a row ends at the token that completes a stop string in the text
decoded so far, whatever the tokenisation around it (`StopTexts`: each token's decoded bytes,
matched against the stop bytes over the last tokens; so "\ndef " fires when BPE merges the space
into "Ġfoo"). On host `truncate_at_stops` cuts the decoded text (the authority).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Sequence
from functools import cached_property, partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

Array = jax.Array
NO_TOKEN = -2  # lead slots of the output buffer (before the first generated token)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be ≥ 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"top_k={self.top_k} must be ≥ 0 and max_new_tokens={self.max_new_tokens} ≥ 1"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# ---- pure sampling functions ----------------------------------------------------------------


def filter_logits(
    logits: Array, temperature, top_p, *, top_k: int = 0, use_top_p: bool = True
) -> Array:
    """logits `[..., V]` -> float32 logits / T with tokens outside top-k ∩ nucleus set to -inf."""
    x = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    neg = jnp.finfo(jnp.float32).min
    if top_k:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, neg, x)
    if use_top_p:
        srt = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        keep = (before <= top_p).at[..., 0].set(True)
        # smallest kept logit = threshold (kept tokens are a prefix of the sorted order)
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < thresh, neg, x)
    return x


def sample_tokens(
    keys: Array,
    step,
    logits: Array,
    temperature,
    top_p,
    *,
    greedy: bool,
    top_k: int = 0,
    use_top_p: bool = True,
) -> Array:
    """keys `[B, 2]` (one PRNG key per row), logits `[B, V]` -> token ids `[B]` int32.

    Row b draws with `fold_in(keys[b], step)`, so a sample does not depend on its batch mates.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
    draw = lambda k, l: jax.random.categorical(jax.random.fold_in(k, step), l)
    return jax.vmap(draw)(keys, x).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class StopTexts:
    """Device tables for text stops.

    token_bytes `[V, W]` int16: the UTF-8 bytes each token adds to the decoded text (-1 padded;
    a token longer than W keeps its first and last S−1 bytes around a -2 separator, which matches
    nothing), inner `[V]` bool: the token's own text contains a stop, stops `[N, S]` int16: stop
    bytes right-aligned, -1 padded. A row stops at the token whose bytes complete a stop.
    """

    token_bytes: np.ndarray
    inner: np.ndarray
    stops: np.ndarray

    @classmethod
    def build(cls, token_texts: Sequence[str], stops: Sequence[str]) -> StopTexts:
        """token_texts[i]: the text token i adds when decoded after others (see `token_texts`)."""
        raw = [s.encode("utf-8") for s in stops if s]
        if not raw:
            return NO_STOPS
        s_max = max(map(len, raw))
        enc = [t.encode("utf-8") for t in token_texts]
        keep = 2 * (s_max - 1) + 1
        width = max(1, min(max(map(len, enc), default=1), keep))
        tb = np.full((len(enc), width), -1, np.int16)
        for i, b in enumerate(enc):
            row = np.frombuffer(b, np.uint8).astype(np.int16)
            if len(row) > width:
                row = np.concatenate([row[: s_max - 1], [-2], row[len(row) - (s_max - 1) :]])
            tb[i, : len(row)] = row
        inner = np.array([any(r in b for r in raw) for b in enc], bool)
        st = np.full((len(raw), s_max), -1, np.int16)
        for i, r in enumerate(raw):
            st[i, s_max - len(r) :] = np.frombuffer(r, np.uint8)
        return cls(tb, inner, st)

    @cached_property
    def arrays(self) -> tuple:
        """The three tables as device arrays (transferred once; concrete even if first asked
        for inside a trace)."""
        with jax.ensure_compile_time_eval():
            return tuple(jnp.asarray(a) for a in (self.token_bytes, self.inner, self.stops))


NO_STOPS = StopTexts(
    np.full((1, 1), -1, np.int16), np.zeros((1,), bool), np.full((1, 1), -1, np.int16)
)


def token_texts(tokenizer, vocab_size: int) -> list[str]:
    """Text each id adds to a decoded sequence: decode([a, i]) minus decode([a]) for a plain
    anchor token a (keeps SentencePiece's leading space, byte-fallback and byte-level bytes);
    special tokens add "" (decoded with skip_special_tokens); ids beyond the tokenizer add ""."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
    kw = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    base = tokenizer.decode(anchor, **kw)
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([anchor + [i] for i in range(n)], **kw)
    out = [t[len(base) :] if t.startswith(base) else t for t in texts]
    return out + [""] * (vocab_size - n)


def stop_hit(out: Array, end: Array, tables: tuple) -> Array:
    """out `[B, T]` token ids (negative = no token), end `[B]` index of each row's newest token ->
    `[B]` bool: the text of the tokens up to `end` ends, within the newest token's bytes, with a
    stop (or the newest token contains one)."""
    token_bytes, inner, stops = tables
    v, w = token_bytes.shape
    s = stops.shape[1]
    b = out.shape[0]
    n_tok = s + 1  # ≥ 1 byte each: covers any stop
    idx = end[:, None] - jnp.arange(n_tok - 1, -1, -1)[None]
    ids = jnp.take_along_axis(out, jnp.maximum(idx, 0), axis=1)
    ok_id = (idx >= 0) & (ids >= 0) & (ids < v)
    safe = jnp.clip(ids, 0, v - 1)
    by = jnp.where(ok_id[..., None], token_bytes[safe], -1)  # [B, n_tok, W]
    flat = by.reshape(b, n_tok * w)
    length = n_tok * w
    valid = flat != -1
    from_end = jnp.cumsum(valid[:, ::-1], axis=1)[:, ::-1] - 1
    dest = jnp.where(valid, length - 1 - from_end, length)  # right-aligned, pads dropped
    stream = (
        jnp.full((b, length), -1, flat.dtype)
        .at[jnp.arange(b)[:, None], dest]
        .set(flat, mode="drop")
    )
    n_new = jnp.sum(by[:, -1] != -1, axis=-1)  # newest token's bytes
    e = jnp.arange(w)
    win = stream[:, length - s - e[:, None] + jnp.arange(s)[None]]  # [B, W, S] ending at -e
    eq = (win[:, None] == stops[None, :, None]) | (stops[None, :, None] < 0)
    real = jnp.any(stops >= 0, axis=-1)[None, :, None]
    hit = jnp.all(eq, axis=-1) & real & (e[None, None] < n_new[:, None, None])
    return jnp.any(hit, axis=(1, 2)) | (ok_id[:, -1] & inner[safe[:, -1]])


def bucket_length(n: int, min_bucket: int = 16) -> int:
    """Smallest power of two ≥ max(n, min_bucket): prompt lengths compile once per bucket."""
    return max(min_bucket, 1 << max(0, int(n) - 1).bit_length())


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """Cut `text` at the earliest occurrence of any stop string."""
    cut = min([i for i in (text.find(s) for s in stops if s) if i >= 0], default=len(text))
    return text[:cut]


# ---- model adapter --------------------------------------------------------------------------


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def model_forward(model, tokens: Array, positions: Array, cache, *, all_heads: bool):
    """One cached forward of an MTPTransformer or Llama -> (logits `[B, S, K, V]` f32, cache)."""
    kw = dict(positions=positions, cache=cache)
    if _accepts(type(model).__call__, "return_all_heads"):
        kw["return_all_heads"] = all_heads
    elif all_heads:
        raise ValueError(f"{type(model).__name__} has no MTP heads (return_all_heads)")
    out = model(tokens, **kw)
    logits, cache = out[0], out[-1]
    if logits.ndim == 3:  # Llama: [B, S, V]
        logits = logits[:, :, None]
    return logits.astype(jnp.float32), cache


def n_heads_of(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "n_future_tokens", 1) or 1)


# ---- the jitted decode program --------------------------------------------------------------


def decode_loop(
    model,
    prompts: Array,
    prompt_lens: Array,
    keys: Array,
    live: Array,
    temperature,
    top_p,
    stops: tuple,
    end_ids: Array,
    *,
    max_new_tokens: int,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
    eos_id,
    cache_dtype=None,
):
    """prompts `[B, L]` right-padded, prompt_lens `[B]` ≥ 1, keys `[B, 2]`, live `[B]` bool,
    stops: `StopTexts.arrays()`, end_ids `[E]` further end-of-sequence ids (emitted as EOS) ->
    (tokens `[B, max_new_tokens]` with EOS after each row's end, number of decode steps)."""
    b, l = prompts.shape
    cache = model.init_cache(b, l + max_new_tokens, cache_dtype)
    pos0 = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    _, cache = model_forward(model, prompts, pos0, cache, all_heads=False)
    last = prompt_lens.astype(jnp.int32) - 1
    tok = jnp.take_along_axis(prompts, last[:, None], axis=1)[:, 0].astype(jnp.int32)
    lead = stops[2].shape[1] + 1  # window of the text-stop check
    out = jnp.full((b, lead + max_new_tokens), NO_TOKEN, jnp.int32)

    def cond(s):
        i, _, _, _, _, done = s
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(s):
        i, cache, tok, pos, out, done = s
        logits, cache = model_forward(model, tok[:, None], pos[:, None], cache, all_heads=False)
        nxt = sample_tokens(
            keys,
            i,
            logits[:, 0, 0],
            temperature,
            top_p,
            greedy=greedy,
            top_k=top_k,
            use_top_p=use_top_p,
        )
        nxt = jnp.where(done | jnp.isin(nxt, end_ids), eos_id, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, lead + i))
        hit = stop_hit(out, jnp.full((b,), lead + i), stops)
        done = done | (nxt == eos_id) | hit
        return i + 1, cache, nxt, pos + 1, out, done

    init = (jnp.int32(0), cache, tok, last, out, ~live)
    steps, _, _, _, out, _ = jax.lax.while_loop(cond, body, init)
    out = out[:, lead:]
    filled = jnp.arange(max_new_tokens)[None] < steps
    return jnp.where(filled, out, eos_id), steps


_TRACES = [0]  # incremented at trace time: one per compiled decode program


@partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "max_new_tokens",
        "greedy",
        "top_k",
        "use_top_p",
        "n_heads",
        "speculative",
        "cache_dtype",
    ),
)
def _program(
    state,
    prompts,
    prompt_lens,
    keys,
    live,
    temperature,
    top_p,
    stops,
    end_ids,
    eos_id,
    *,
    graphdef,
    max_new_tokens,
    greedy,
    top_k,
    use_top_p,
    n_heads,
    speculative,
    cache_dtype,
):
    """The whole generation of one batch; compiled once per (model graph, batch, bucket, config,
    stop-table shapes) and shared by every Sampler of the same model graph."""
    _TRACES[0] += 1
    model = nnx.merge(graphdef, state)
    if speculative:
        from .speculative import speculative_loop

        return speculative_loop(
            model,
            prompts,
            prompt_lens,
            live,
            n_heads=n_heads,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            stops=stops,
            end_ids=end_ids,
            cache_dtype=cache_dtype,
        )
    out, steps = decode_loop(
        model,
        prompts,
        prompt_lens,
        keys,
        live,
        temperature,
        top_p,
        stops,
        end_ids,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        top_k=top_k,
        use_top_p=use_top_p,
        eos_id=eos_id,
        cache_dtype=cache_dtype,
    )
    return out, dict(forwards=steps + 1)


# ---- host driver ----------------------------------------------------------------------------


class Sampler:
    """Batched generation from token ids with a fixed batch size and bucketed prompt lengths.

    `sample(prompt_ids, n_samples, config)` returns, per prompt, `n_samples` token-id lists cut
    before the first EOS. `trace_count` counts compilations of the decode program (tests);
    `stats` accumulates generated tokens, decode seconds, forward calls and (speculative)
    drafted / accepted tokens.
    """

    def __init__(
        self,
        model,
        *,
        eos_id: int,
        batch_size: int = 8,
        min_bucket: int = 16,
        pad_id: int = 0,
        cache_dtype=None,
        speculative: bool = False,
        end_ids: Sequence[int] = (),
    ):
        model = nnx.view(model, deterministic=True, raise_if_not_found=False)
        self.graphdef, self.state = nnx.split(model)
        self.eos_id, self.pad_id, self.batch_size = int(eos_id), int(pad_id), int(batch_size)
        # further end-of-turn ids (e.g. generation_config's eos list): emitted as eos_id
        self.end_ids = np.array(
            sorted({int(i) for i in end_ids} - {self.eos_id}) or [self.eos_id], np.int32
        )
        self.min_bucket, self.cache_dtype = int(min_bucket), cache_dtype
        self.n_heads = n_heads_of(model)
        self.vocab_size = int(model.args.vocab_size)
        if speculative and self.n_heads < 2:
            raise ValueError(
                f"speculative decoding needs n_future_tokens ≥ 2, model has {self.n_heads}"
            )
        self.speculative = speculative
        self.trace_count = 0  # decode programs this sampler caused to be traced (compiled)
        self.stats: dict[str, float] = {}
        self.reset_stats()

    def reset_stats(self):
        self.stats = dict(tokens=0, seconds=0.0, forwards=0, drafted=0, accepted=0, calls=0)

    def generate_batch(
        self,
        prompts: np.ndarray,
        prompt_lens: np.ndarray,
        keys,
        live,
        config: SamplingConfig,
        stops: StopTexts | None = None,
    ):
        """One compiled call on a full batch `[batch_size, L]` -> tokens `[B, max_new]` (numpy)."""
        if self.speculative and not config.greedy:
            raise ValueError("speculative decoding is greedy only (set temperature=0)")
        t0, traces = time.perf_counter(), _TRACES[0]
        out, aux = _program(
            self.state,
            jnp.asarray(prompts, jnp.int32),
            jnp.asarray(prompt_lens, jnp.int32),
            keys,
            jnp.asarray(live),
            jnp.float32(config.temperature or 1.0),
            jnp.float32(config.top_p),
            (stops or NO_STOPS).arrays,
            jnp.asarray(self.end_ids),
            jnp.int32(self.eos_id),
            graphdef=self.graphdef,
            max_new_tokens=config.max_new_tokens,
            greedy=config.greedy,
            top_k=config.top_k,
            use_top_p=config.top_p < 1.0,
            n_heads=self.n_heads,
            speculative=self.speculative,
            cache_dtype=self.cache_dtype,
        )
        out = np.asarray(out)
        self.trace_count += _TRACES[0] - traces
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["calls"] += 1
        for k, v in aux.items():
            self.stats[k] = self.stats.get(k, 0) + int(v)
        return out

    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n_samples: int,
        config: SamplingConfig,
        *,
        seed: int = 0,
        stops: StopTexts | None = None,
        progress: str = "",
    ) -> list[list[list[int]]]:
        """Per prompt, `n_samples` completions (token ids before the first EOS).

        Greedy decoding generates one row per prompt and repeats it. Rows are sorted by prompt
        length, so a batch mixes few buckets; row (p, s) samples with key fold_in(fold_in(seed,
        p), s), independent of the batch it lands in. `progress`: a progress bar's label over the
        generated rows (process 0; "" = none).
        """
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty (needs at least BOS)")
        n_rows = 1 if config.greedy else n_samples
        rows = sorted(((len(p), i, s) for i, p in enumerate(prompt_ids) for s in range(n_rows)))
        base = jax.random.PRNGKey(seed)
        row_keys = jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))
        results: list[list[list[int]]] = [[None] * n_rows for _ in prompt_ids]
        bs = self.batch_size
        bar = tqdm(
            total=len(rows),
            desc=progress,
            unit="row",
            dynamic_ncols=True,
            disable=not progress or jax.process_index() != 0,
        )
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            n_live = len(chunk)
            chunk = chunk + [chunk[-1]] * (bs - n_live)  # pad the batch with a dead copy
            length = bucket_length(max(r[0] for r in chunk), self.min_bucket)
            prompts = np.full((bs, length), self.pad_id, np.int32)
            for j, (n, i, _) in enumerate(chunk):
                prompts[j, :n] = prompt_ids[i]
            lens = np.array([r[0] for r in chunk], np.int32)
            keys = row_keys(jnp.array([r[1] for r in chunk]), jnp.array([r[2] for r in chunk]))
            live = np.arange(bs) < n_live
            out = self.generate_batch(prompts, lens, keys, live, config, stops)
            for j, (_, i, s) in enumerate(chunk[:n_live]):
                row = out[j].tolist()
                row = row[: row.index(self.eos_id)] if self.eos_id in row else row
                results[i][s] = row
                self.stats["tokens"] += len(row)
            bar.update(n_live)
        bar.close()
        return [r * n_samples if config.greedy else r for r in results]
