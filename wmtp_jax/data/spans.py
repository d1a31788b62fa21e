"""Where an incorrect solution differs from its nearest correct one.

Ground truth for critic credit.

`mutated_span(incorrect, corrects)` -> `(start, end)`: the half-open character range of `incorrect`
covering every character that differs from the nearest correct solution (difflib ratio; ties go to
the first). A pure deletion (nothing of `incorrect` differs, text is missing) gives the one or two
characters around the gap, so the span is never empty.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def nearest(text: str, candidates: Sequence[str]) -> int:
    """Index of the candidate most similar to `text` (difflib.SequenceMatcher.ratio; first wins)."""
    if not candidates:
        raise ValueError("nearest: no candidates")
    ratios = [difflib.SequenceMatcher(None, text, c, autojunk=False).ratio() for c in candidates]
    return max(range(len(ratios)), key=lambda i: (ratios[i], -i))


def diff_span(incorrect: str, correct: str) -> tuple[int, int]:
    """Half-open character range of `incorrect` that differs from `correct`."""
    ops = [
        op
        for op in difflib.SequenceMatcher(None, incorrect, correct, autojunk=False).get_opcodes()
        if op[0] != "equal"
    ]
    if not ops:
        raise ValueError("diff_span: the two texts are identical")
    start, end = min(op[1] for op in ops), max(op[2] for op in ops)
    if start == end:  # pure deletion: mark the characters on both sides of the gap
        start, end = max(0, start - 1), min(len(incorrect), end + 1)
    return start, end


def mutated_span(incorrect: str, corrects: Sequence[str]) -> tuple[int, int]:
    """Span of `incorrect` that differs from its nearest correct solution."""
    return diff_span(incorrect, corrects[nearest(incorrect, corrects)])
