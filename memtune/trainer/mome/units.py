"""Matching units of a text in any script: what the gate compares between a prompt and a trained question.

    units_of("请问维尔莫拉玻璃厂是谁创立的？")   # bigrams: 请问, 问维, 维尔, ... (no spaces to split on)
    units_of("What is the code of vault 7?")      # words: what, is, the, code, of, vault; and the number 7

A text is cut into runs of letters, marks and digits; anything else separates runs. Then
- scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan, Hangul, whose
  particles attach to words) give overlapping character bigrams, so "请问X" still holds every unit of "X";
- every other run is one word; combining marks stay inside their word (Thai vowel signs, Devanagari virama);
- digit runs joined by `.`, `,`, `:` or `/` stay one number ("3.2", "1,000"), and any unit holding a digit is
  *hard*: the gate requires hard units to match exactly in both directions (vault 7 is not vault 3).
Unit texts are NFKC-normalised and case-folded, with every decimal digit written in ASCII ("٣" -> "3"), so
"ZORVATH" matches "Zorvath" and full-width digits match ASCII ones. Spans index the original text, so surprisal
computed on its tokens can be summed per unit.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Unicode character-name prefixes of scripts that do not separate words by spaces.
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN", "HANGUL")
_NUMBER_JOINERS = ".,:/"


@dataclass(frozen=True)
class Unit:
    text: str
    """Normalised form (NFKC, case-folded, ASCII digits): what is compared."""
    start: int
    end: int
    """Character span in the original text."""

    @property
    def hard(self) -> bool:
        """Holds a digit: numbers, codes, versions must match exactly."""
        return any(ch.isdigit() for ch in self.text)


def _kind(ch: str) -> str | None:
    """'d' decimal digit, 'u' letter of an unspaced script, 'w' other letter, 'm' combining mark, None separator."""
    category = unicodedata.category(ch)
    if category == "Nd":
        return "d"
    if category.startswith("M"):
        return "m"
    if category.startswith("L") or category == "No":
        return "u" if unicodedata.name(ch, "").startswith(_UNSPACED) else "w"
    return None


def normalise(text: str) -> str:
    """NFKC, case-folded, decimal digits of any script written as ASCII digits."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(str(unicodedata.decimal(ch)) if unicodedata.category(ch) == "Nd" else ch for ch in text)


def _runs(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of maximal runs: 'u' runs of unspaced letters, 'w' runs of words (letters and digits)."""
    runs: list[tuple[str, int, int]] = []
    i = 0
    while i < len(text):
        kind = _kind(text[i])
        if kind is None or kind == "m":  # a mark with nothing to attach to is punctuation here
            i += 1
            continue
        run_kind = "u" if kind == "u" else "w"
        j = i + 1
        while j < len(text):
            next_kind = _kind(text[j])
            if next_kind == "m" or (next_kind is not None and ("u" if next_kind == "u" else "w") == run_kind):
                j += 1
            elif (
                run_kind == "w"
                and text[j] in _NUMBER_JOINERS
                and text[j - 1].isdigit()
                and j + 1 < len(text)
                and text[j + 1].isdigit()
            ):
                j += 1  # "3.2", "1,000": one number
            else:
                break
        runs.append((run_kind, i, j))
        i = j
    return runs


def units_of(text: str) -> list[Unit]:
    """The text's units in order (see the module docstring); bigrams of unspaced runs overlap."""
    units: list[Unit] = []
    for kind, start, end in _runs(text):
        if kind == "w" or end - start == 1:
            units.append(Unit(normalise(text[start:end]), start, end))
        else:
            units.extend(Unit(normalise(text[i : i + 2]), i, i + 2) for i in range(start, end - 1))
    return units


def unit_set(text: str) -> frozenset[str]:
    return frozenset(unit.text for unit in units_of(text))
