"""Tokenizers: any HF tokenizer dir, and a micro byte-level BPE trained on the synthetic corpus.

`load_tokenizer(dir)` matches the original's tokenizer_utils: AutoTokenizer (fast), pad = eos when
the tokenizer has none, right padding (the collators' prompt masking assumes it).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from wmtp_jax.data.records import iter_jsonl

logger = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
MICRO_VOCAB_SIZE = 512
# Micro pre-tokenization: every digit, quote and minus sign is its own piece; words (letters and
# `_`, one leading space) and runs of other punctuation are pieces; so are whitespace runs (newline
# + indentation). BPE merges only inside a piece, so a number or a quoted string reads the same in
# the instruction and in the code, which lets a small model copy held-out parameters (GPT-2's
# regex makes ` 17`, `'d` (a contraction) ... single tokens that differ by context).
MICRO_PIECES = r"""\d| ?[A-Za-z_]+| ?['"-]| ?[^\sA-Za-z_\d'"-]+|\s+"""


def load_tokenizer(path: str | os.PathLike):
    """HF tokenizer from a directory (tokenizer.json / tokenizer.model + config), right padding."""
    from transformers import AutoTokenizer  # heavy: prepare without --tokenizer never loads it

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer {path} lacks a BOS or EOS token (bos={tok.bos_token!r}, "
            f"eos={tok.eos_token!r}); the collators need both"
        )
    return tok


def train_micro_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = MICRO_VOCAB_SIZE
):
    """Byte-level BPE over `MICRO_PIECES` with ids <unk>=0, <s>=1, </s>=2, <pad>=3, saved as an
    HF tokenizer dir (decode(encode(text)) == text).

    The post-processor prepends BOS (like LLaMA's add_bos_token); no EOS is added on encode.
    Returns the tokenizer loaded back through `load_tokenizer`.
    """
    from transformers import PreTrainedTokenizerFast  # heavy: only when a tokenizer is trained

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(MICRO_PIECES), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, PAD],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        model_max_length=1 << 20,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}, indent=2
        )
    )
    return load_tokenizer(out)


def corpus_texts(processed_dir: str | os.PathLike) -> list[str]:
    """Training texts for the micro tokenizer: every split's Alpaca-templated samples."""
    # collate imports ops, i.e. jax: `python -m wmtp_jax.data.prepare` stays free of it
    from wmtp_jax.data.collate import apply_alpaca_template

    texts = []
    for split in sorted(Path(processed_dir).glob("*.jsonl")):
        if split.name.endswith("_eval.jsonl"):
            continue
        for _, r in iter_jsonl(split):
            texts.append(
                apply_alpaca_template(r["instruction"], r.get("input", ""), r.get("output", ""))
            )
    return texts


def ensure_micro_tokenizer(
    tokenizer_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    vocab_size: int = MICRO_VOCAB_SIZE,
):
    """Loads `tokenizer_dir`, training it first on `corpus_dir` (a dataset dir with processed/,
    or the processed/ dir itself) when it does not exist yet."""
    tokenizer_dir = Path(tokenizer_dir)
    if (tokenizer_dir / "tokenizer.json").exists():
        return load_tokenizer(tokenizer_dir)
    corpus = Path(corpus_dir)
    if (corpus / "processed").is_dir():
        corpus = corpus / "processed"
    texts = corpus_texts(corpus)
    if not texts:
        raise FileNotFoundError(f"no *.jsonl records under {corpus} to train the micro tokenizer")
    logger.info(
        "training micro BPE tokenizer (vocab %d) on %d texts -> %s",
        vocab_size,
        len(texts),
        tokenizer_dir,
    )
    return train_micro_tokenizer(texts, tokenizer_dir, vocab_size)


# ---- token counting for metadata -------------------------------------------------------------

_PIECES = re.compile(r"\w+|[^\w\s]|\n", re.UNICODE)
FALLBACK_METHOD = "regex_pieces"
FALLBACK_DOC = (
    r"no tokenizer: length = number of regex pieces \w+|[^\w\s]|\n (words, single "
    r"punctuation marks, newlines); roughly a BPE token count, never 0 for non-empty text"
)


class TokenCounter:
    """`counter(texts) -> [int]` token counts without special tokens (the original's SPM counts
    had no BOS/EOS). Without a tokenizer, the documented regex-piece fallback is used."""

    def __init__(self, tokenizer_dir: str | os.PathLike | None = None):
        self.tokenizer_dir = str(tokenizer_dir) if tokenizer_dir else None
        self._tok = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
        if self._tok is None:
            logger.info("token lengths use the fallback count (%s)", FALLBACK_DOC)

    @property
    def method(self) -> dict:
        if self._tok is None:
            return {"method": FALLBACK_METHOD, "description": FALLBACK_DOC}
        return {
            "method": "tokenizer",
            "tokenizer": self.tokenizer_dir,
            "description": "len(tokenizer(text, add_special_tokens=False).input_ids)",
        }

    def __call__(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        if self._tok is None:
            return [len(_PIECES.findall(t)) for t in texts]
        return [len(x) for x in self._tok(list(texts), add_special_tokens=False)["input_ids"]]
