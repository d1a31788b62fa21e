import pytest

from wmtp_jax.data.spans import diff_span, mutated_span, nearest


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
