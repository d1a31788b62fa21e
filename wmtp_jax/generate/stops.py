"""Textual stop sequences, on device and on host.

On device a row ends at the token that completes a stop string in the text decoded so far,
whatever the tokenisation around it (`StopTexts`: each token's decoded bytes, matched against the
stop bytes over the last tokens; so "\ndef " fires when BPE merges the space into "Ġfoo"). On
host `truncate_at_stops` cuts the decoded text (the authority).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


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


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """Cut `text` at the earliest occurrence of any stop string."""
    cut = min([i for i in (text.find(s) for s in stops if s) if i >= 0], default=len(text))
    return text[:cut]
