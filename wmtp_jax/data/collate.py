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
Arrays are int32 (ids, mask, labels) and float32 (is_correct).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

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

    def encode(self, prompts: list[str], outputs: list[str]) -> dict[str, np.ndarray]:
        """[B, L] input_ids / attention_mask / labels for prompt+output pairs."""
        fulls = [p + RESPONSE_HEADER + o for p, o in zip(prompts, outputs)]
        heads = [p + RESPONSE_HEADER for p in prompts]
        n_prompt = [len(x) for x in self.tok(heads, add_special_tokens=True)["input_ids"]]
        seqs = self.tok(fulls, add_special_tokens=True)["input_ids"]
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
        return {"input_ids": ids, "attention_mask": mask, "labels": labels.astype(np.int32)}


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
        out = self.enc.encode([_prompt(r) for r in records], [r["output"] for r in records])
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
        both = self.enc.encode(
            prompts * 2,
            [r["correct_output"] for r in records] + [r["incorrect_output"] for r in records],
        )
        b = len(records)
        out = {}
        for side, sl in (("pos", slice(0, b)), ("neg", slice(b, 2 * b))):
            for k, v in both.items():
                out[f"{side}_{k}"] = v[sl]
        return out
