"""Alpaca template and collators: records -> static-shape numpy batches.

Per sequence (the original's collators.py, docs/semantics.md "Data"):
  ids = [BOS] + tok(template(instruction, input) + "### Response:\n" + output)
        (+ [EOS] if append_eos)
  truncated on the right to L, right-padded with pad_id;
  attention_mask = 1 on real tokens; labels = ids (unshifted) with -100 on the first
  len_prompt = len([BOS] + tok(prompt through "### Response:\n")) positions and on padding.
With append_eos=False this is token for token the original's `tokenizer(full, max_length,
padding="max_length", truncation=True)`; with append_eos=True the EOS is a labelled target.
L = max_length, or the smallest of `buckets` holding the longest sequence of the batch.
Arrays are int32 (ids, mask, labels) and float32 (is_correct, critical).
Records with `critical_spans` (character ranges of the output; data.sources.critical_span_map)
also give `critical` [B, L]: 1.0 on the labelled tokens whose characters overlap a range. Pair
records with `correct_siblings` / `incorrect_siblings` also give `pos_value_target` /
`neg_value_target` [B, L]: per labelled token t, `spans.prefix_success` of the response through
t (the EOS: the whole response), 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from wmtp_jax.data.spans import prefix_success
from wmtp_jax.ops import IGNORE_INDEX

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n"
)
RESPONSE_HEADER = "### Response:\n"


def apply_alpaca_template(
    instruction: str, input_text: str = "", output: str = "", include_response_header: bool = True
) -> str:
    """The original's `apply_alpaca_template`, character for character."""
    input_text = input_text or ""
    if input_text.strip():
        prompt = PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    else:
        prompt = PROMPT_NO_INPUT.format(instruction=instruction)
    if include_response_header:
        return prompt + RESPONSE_HEADER + output
    return prompt.rstrip()


class _SequenceEncoder:
    def __init__(self, tokenizer, max_length: int, append_eos: bool, buckets: Sequence[int] | None):
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(
                "tokenizer needs pad and eos tokens (use data.tokenizer.load_tokenizer)"
            )
        if tokenizer.padding_side != "right":
            raise ValueError(
                f"tokenizer.padding_side must be 'right', got "
                f"{tokenizer.padding_side!r} (prompt masking assumes right padding)"
            )
        self.tok, self.max_length, self.append_eos = tokenizer, int(max_length), append_eos
        self.buckets = sorted(int(b) for b in buckets) if buckets else [self.max_length]
        if self.buckets[-1] != self.max_length or self.buckets[0] <= 0:
            raise ValueError(
                f"buckets {self.buckets} must be positive and end at max_length {self.max_length}"
            )

    def encode(
        self,
        prompts: list[str],
        outputs: list[str],
        spans: list | None = None,
        targets: list | None = None,
    ) -> dict[str, np.ndarray]:
        """[B, L] input_ids / attention_mask / labels for prompt+output pairs (+ `critical` when
        `spans`, per row a list of [start, end) character ranges of its output, is given; +
        `value_target` when `targets`, per row (is_correct, siblings), is given)."""
        fulls = [p + RESPONSE_HEADER + o for p, o in zip(prompts, outputs)]
        heads = [p + RESPONSE_HEADER for p in prompts]
        n_prompt = [len(x) for x in self.tok(heads, add_special_tokens=True)["input_ids"]]
        offsets = spans is not None or targets is not None
        enc = self.tok(fulls, add_special_tokens=True, return_offsets_mapping=offsets)
        seqs = enc["input_ids"]
        if self.append_eos:
            seqs = [list(s) + [self.tok.eos_token_id] for s in seqs]
        seqs = [s[: self.max_length] for s in seqs]
        longest = max((len(s) for s in seqs), default=1)
        length = next(b for b in self.buckets if b >= longest)
        b = len(seqs)
        ids = np.full((b, length), self.tok.pad_token_id, np.int32)
        mask = np.zeros((b, length), np.int32)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        pos = np.arange(length)[None, :]
        labels = np.where((mask == 1) & (pos >= np.asarray(n_prompt)[:, None]), ids, IGNORE_INDEX)
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels.astype(np.int32)}
        if spans is not None:
            crit = np.zeros((b, length), np.float32)
            for r, (head, row) in enumerate(zip(heads, spans)):
                off = np.asarray(enc["offset_mapping"][r], np.int64).reshape(-1, 2)[:length]
                a, e = off[:, 0] - len(head), off[:, 1] - len(head)
                hit = np.zeros(len(off), bool)
                for s0, s1 in row:
                    hit |= (a < s1) & (e > s0) & (e > a)
                crit[r, : len(off)] = hit
            out["critical"] = crit * (labels != IGNORE_INDEX)
        if targets is not None:
            tgt = np.zeros((b, length), np.float32)
            for r, (head, out_text, (correct, sib)) in enumerate(zip(heads, outputs, targets)):
                n = int(mask[r].sum())
                off = np.asarray(enc["offset_mapping"][r], np.int64).reshape(-1, 2)[:n]
                ends = np.full(n, len(out_text) + 1, np.int64)  # EOS: the whole response
                ends[: len(off)] = np.maximum(off[:, 1] - len(head), 0)
                tgt[r, :n] = prefix_success(out_text, correct, sib, ends.tolist())
            out["value_target"] = tgt * (labels != IGNORE_INDEX)
        return out


def _prompt(rec: Mapping) -> str:
    """Template up to (not including) the response header; `template(...)[:-len(header)]`."""
    return apply_alpaca_template(rec["instruction"], rec.get("input") or "", "")[
        : -len(RESPONSE_HEADER)
    ]


class AlpacaCollator:
    """records `{instruction, input, output, is_correct?}` -> {input_ids, attention_mask, labels
    [B, L] int32, is_correct [B] float32 (1.0 when the field is absent)}."""

    def __init__(
        self,
        tokenizer,
        max_length: int = 2048,
        append_eos: bool = True,
        buckets: Sequence[int] | None = None,
    ):
        self.enc = _SequenceEncoder(tokenizer, max_length, append_eos, buckets)

    def __call__(self, records: Sequence[Mapping]) -> dict[str, np.ndarray]:
        spans = [r.get("critical_spans") for r in records]
        has = [x is not None for x in spans]
        if any(has) and not all(has):
            raise ValueError("collate: some records have critical_spans and others not")
        out = self.enc.encode(
            [_prompt(r) for r in records],
            [r["output"] for r in records],
            spans if all(has) else None,
        )
        out["is_correct"] = np.asarray(
            [1.0 if r.get("is_correct", True) else 0.0 for r in records], np.float32
        )
        return out


class PairwiseCollator:
    """pair records `{instruction, input, correct_output, incorrect_output}` -> pos_input_ids,
    pos_attention_mask, pos_labels, neg_input_ids, neg_attention_mask, neg_labels, each [B, L].
    With buckets, pos and neg share one L (the bucket of the longer side)."""

    def __init__(
        self,
        tokenizer,
        max_length: int = 2048,
        append_eos: bool = True,
        buckets: Sequence[int] | None = None,
    ):
        self.enc = _SequenceEncoder(tokenizer, max_length, append_eos, buckets)

    def __call__(self, records: Sequence[Mapping]) -> dict[str, np.ndarray]:
        prompts = [_prompt(r) for r in records]
        targets = None
        if all("correct_siblings" in r for r in records):
            targets = [(True, r["correct_siblings"]) for r in records] + [
                (False, r["incorrect_siblings"]) for r in records
            ]
        both = self.enc.encode(
            prompts * 2,
            [r["correct_output"] for r in records] + [r["incorrect_output"] for r in records],
            targets=targets,
        )
        b = len(records)
        out = {}
        for side, sl in (("pos", slice(0, b)), ("neg", slice(b, 2 * b))):
            for k, v in both.items():
                out[f"{side}_{k}"] = v[sl]
        return out
