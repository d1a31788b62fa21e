"""Where an incorrect solution differs from its nearest correct one.

Ground truth for critic credit.

`mutated_span(incorrect, corrects)` -> `(start, end)`: the half-open character range of `incorrect`
covering every character that differs from the nearest correct solution (difflib ratio; ties go to
the first). A pure deletion (nothing of `incorrect` differs, text is missing) gives the one or two
characters around the gap, so the span is never empty.

`critical_spans(corrects, incorrects)` -> per correct solution, the sorted, merged character ranges
of that solution at which some mutant deviates from it (each mutant compared with its nearest
correct solution): the tokens that decide correctness, the oracle weighting's ground truth.

`prefix_success(output, siblings, ends)` -> per prefix end, the fraction of correct solutions among
the problem's solutions that share that prefix: Monte-Carlo value targets from the mutants.
"""

from __future__ import annotations

import difflib
import os
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


def merge_spans(spans) -> list[tuple[int, int]]:
    """Sorted union of half-open ranges (touching ranges merge)."""
    out: list[list[int]] = []
    for s, e in sorted((int(a), int(b)) for a, b in spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def critical_spans(
    corrects: Sequence[str], incorrects: Sequence[str]
) -> list[list[tuple[int, int]]]:
    """For each correct solution: the merged ranges of its characters that differ from the
    mutants whose nearest correct solution it is (`diff_span(correct, mutant)`; identical texts
    are skipped). A correct solution no mutant is nearest to gets no range."""
    found: list[list[tuple[int, int]]] = [[] for _ in corrects]
    for wrong in incorrects:
        i = nearest(wrong, corrects)
        if wrong != corrects[i]:
            found[i].append(diff_span(corrects[i], wrong))
    return [merge_spans(f) for f in found]


def common_prefix_length(a: str, b: str) -> int:
    """Number of leading characters `a` and `b` share."""
    return len(os.path.commonprefix([a, b]))


def prefix_success(output: str, correct: bool, siblings, ends) -> list[float]:
    """Empirical success probability of each prefix `output[:e]` for e in `ends`: among the
    solutions of the problem that start with it (`output` itself and `siblings`, pairs
    (text, is_correct), the others), the fraction that are correct. An end past the text
    (e > len(output), e.g. the EOS) is the whole solution: shared by identical siblings only."""
    lcps = [
        (len(t) + 1 if t == output else common_prefix_length(output, t), bool(c))
        for t, c in siblings
    ]
    out = []
    for e in ends:
        share = [c for n, c in lcps if n >= e]
        out.append((float(correct) + sum(share)) / (1 + len(share)))
    return out
