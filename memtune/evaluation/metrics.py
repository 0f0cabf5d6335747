"""Answer metrics on strings and token ids: exact match, token F1, locality, teacher-forced token accuracy.

Normalisation (the SQuAD convention, used by exact match, F1 and locality alike):

1. Unicode NFKC, then case-folding ("Straße" == "STRASSE");
2. every punctuation character (Unicode category P*) removed, so "ZT-48213" == "zt48213" and a trailing "." is ignored;
3. the English articles "a", "an", "the" dropped as whole words;
4. runs of whitespace collapsed to one space, ends stripped.

Everything here is pure Python, so the metrics are tested on tiny inputs with no model at all.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The documented normalisation above; comparing normalised strings is exact match."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of precision and recall over the bags of normalised words (SQuAD F1).

    Two empty answers agree (1.0); one empty answer against a non-empty one scores 0.
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def agreement(answers: Sequence[str], base_answers: Sequence[str]) -> float:
    """Locality: the share of prompts on which a model still gives the base model's answer (after normalisation)."""
    if len(answers) != len(base_answers):
        raise ValueError(f"locality needs one base answer per answer, got {len(base_answers)} for {len(answers)}")
    if not answers:
        raise ValueError("locality needs at least one prompt")
    return sum(exact_match(a, b) for a, b in zip(answers, base_answers, strict=True)) / len(answers)


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Teacher-forced token accuracy of one answer: the share of target positions whose argmax token is right.

    `predicted[i]` is the model's argmax given the prompt and the *gold* tokens `target[:i]` (not its own
    earlier guesses), which is what the knowledge-editing papers (ROME, MEMIT, WISE) report as Rel/Gen/Loc.
    """
    return _share_of_equal_positions(predicted, target, "target tokens", "token accuracy of an empty target")


def token_agreement(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Teacher-forced locality of one answer: the share of positions where a model's argmax is the base model's.

    Both are argmax tokens over the same forced answer, so this needs no gold answer to be right, only the same one.
    """
    return _share_of_equal_positions(predicted, reference, "reference tokens", "token agreement over an empty answer")


def _share_of_equal_positions(predicted: Sequence[int], other: Sequence[int], noun: str, empty: str) -> float:
    if len(predicted) != len(other):
        raise ValueError(f"{len(predicted)} predictions for {len(other)} {noun}")
    if not other:
        raise ValueError(f"{empty} is undefined")
    return sum(p == o for p, o in zip(predicted, other, strict=True)) / len(other)


def mean(values: Sequence[float]) -> float:
    """Average of a non-empty list; the error names the emptiness instead of dividing by zero."""
    if not values:
        raise ValueError("cannot average an empty list of scores")
    return sum(values) / len(values)
