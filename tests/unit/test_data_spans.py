import pytest

from wmtp_jax.data.spans import (
    critical_spans,
    diff_span,
    merge_spans,
    mutated_span,
    nearest,
    prefix_success,
)


def test_replacement_span():
    correct = "    return x + 5"
    wrong = "    return x - 5"
    assert diff_span(wrong, correct) == (13, 14)
    assert wrong[13:14] == "-"


def test_insertion_and_deletion():
    correct = "return a[i]"
    assert diff_span("return a[i + 1]", correct) == (10, 14)  # " + 1" inserted
    assert diff_span("return a[]", correct) == (8, 10)  # "i" deleted: chars around the gap


def test_nearest_correct_is_used():
    corrects = ["y = 3 * x\n    return y + 4", "return 3 * x + 4"]
    wrong = "return 3 * x - 4"
    assert nearest(wrong, corrects) == 1
    assert mutated_span(wrong, corrects) == (13, 14)


def test_identical_is_an_error():
    with pytest.raises(ValueError, match="identical"):
        diff_span("abc", "abc")
    with pytest.raises(ValueError, match="no candidates"):
        nearest("abc", [])


def test_critical_spans_on_the_correct_solution():
    corrects = ["return 3 * x + 4", "y = 3 * x\n    return y + 4"]
    # mutant 0 and 1 are nearest to correct 0 (two places), mutant 2 to correct 1
    wrong = ["return 3 * x - 4", "return 2 * x + 4", "y = 3 * x\n    return y + 5"]
    got = critical_spans(corrects, wrong)
    assert got == [[(7, 8), (13, 14)], [(25, 26)]]
    assert corrects[0][7:8] == "3" and corrects[0][13:14] == "+" and corrects[1][25:26] == "4"
    assert merge_spans([(5, 7), (1, 2), (6, 9), (2, 3)]) == [(1, 3), (5, 9)]
    assert critical_spans(["abc"], []) == [[]]


def test_prefix_success_counts_the_solutions_sharing_each_prefix():
    corr = "return x + 5"
    sib = [("return x + 5", True), ("return x - 5", False), ("return y", False), ("ret", True)]
    # ends: "r" (all 5 share: 3 correct), "return x" (self, its twin, the mutant: 2 of 3),
    # "return x +" (self and twin), the EOS (past the text: identical twin only)
    got = prefix_success(corr, True, sib, [1, 8, 10, 13])
    assert got == [3 / 5, 2 / 3, 1.0, 1.0]
    wrong = prefix_success("return x - 5", False, [("return x + 5", True)], [9, 10, 13])
    assert wrong == [0.5, 0.0, 0.0]
