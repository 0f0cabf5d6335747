"""Metrics on tiny strings and token lists: the normalisation, F1's edge cases, locality, teacher forcing."""

from __future__ import annotations

import pytest

from memtune.evaluation.metrics import (
    agreement,
    exact_match,
    normalize_answer,
    token_accuracy,
    token_agreement,
    token_f1,
)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("ZT-48213", "zt48213", True),  # punctuation removed, case folded
        ("Port Halvaren.", "port halvaren", True),
        ("The Eiffel Tower", "eiffel tower", True),  # articles dropped
        ("  1847\n", "1847", True),  # whitespace collapsed
        ("STRASSE", "Straße", True),  # case-folding, not just lowering
        ("１８４７", "1847", True),  # NFKC: full-width digits
        ("1848", "1847", False),
        ("Port Halvaren harbour", "Port Halvaren", False),
        ("theatre", "atre", False),  # articles only as whole words
    ],
)
def test_exact_match_uses_the_documented_normalisation(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


def test_normalize_answer_is_idempotent():
    once = normalize_answer("  The  Quillmere-Institute, of  CARTOGRAPHY! ")
    assert once == "quillmereinstitute of cartography"  # "-" removed, not spaced
    assert normalize_answer(once) == once


def test_token_f1_counts_overlap_of_word_bags():
    assert token_f1("Port Halvaren", "Port Halvaren") == 1.0
    # 1 common word; precision 1/2, recall 1/1 -> F1 = 2/3.
    assert token_f1("Halvaren harbour", "Halvaren") == pytest.approx(2 / 3)
    # Repeated words count once each side: "a a b" vs "a b" (articles aside) -> use non-article words.
    assert token_f1("red red blue", "red blue") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("green", "red") == 0.0


def test_token_f1_on_empty_answers():
    assert token_f1("", "") == 1.0
    assert token_f1("...", "red") == 0.0  # only punctuation: empty after normalisation
    assert token_f1("red", "") == 0.0


def test_locality_is_agreement_with_base_answers():
    assert agreement(["Paris", "eight", "Ulm"], ["paris.", "8", "Ulm"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one base answer per answer"):
        agreement(["Paris"], [])
    with pytest.raises(ValueError, match="at least one prompt"):
        agreement([], [])


def test_token_accuracy_counts_positions():
    assert token_accuracy([5, 6, 9], [5, 6, 7]) == pytest.approx(2 / 3)
    assert token_accuracy([1], [1]) == 1.0
    with pytest.raises(ValueError, match="2 predictions for 3 target tokens"):
        token_accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="empty target"):
        token_accuracy([], [])


def test_token_agreement_compares_two_models_argmax_position_by_position():
    assert token_agreement([5, 6, 9, 2], [5, 6, 7, 2]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="1 predictions for 2 reference tokens"):
        token_agreement([1], [1, 2])
    with pytest.raises(ValueError, match="empty answer"):
        token_agreement([], [])
