"""The gate: which trained question, if any, may answer a prompt. Where memory learns what it was not taught.

Routing hands the gate the prompt's nearest trained questions by key distance (the index's top candidates). Keys
are means over tokens, so near candidates include questions with another answer: the same attribute of a
colleague ("employee ID of Anna Kerr" for "... Anna Voss"), another attribute of the same entity ("office of Anna
Voss"), another number ("vault 3" for "vault 7"). The gate decides with three checks, all from the training data:

1. Entity (anchors.py): the candidate's hard units (numbers, codes) equal the prompt's, and the anchor agreement
   (the candidate's surprising units present in the prompt, against the prompt's surprising units it lacks) is at
   least `share`. Of the candidates that pass, the one whose units best explain the prompt is chosen: highest
   agreement plus relation similarity (below), then the nearest key.
2. Relation: every trained question has a *template*, its units minus its anchors and numbers ("what is the
   employee id of"); the prompt's template drops its own anchors and the chosen question's. Similarity is the
   idf-weighted Jaccard index of two templates (idf over the trained templates, so "what" or "the" weigh little;
   units sharing a stem of at least 4 characters match, "weigh" ~ "weight"). If another candidate's template
   explains the prompt's better than the chosen question's, and that template is not the chosen one's (similarity
   below `SAME_RELATION`), the prompt asks another trained relation about the chosen entity, one memory was never
   taught: the gate closes. This is the case keys and anchors cannot see: "Which office is Anna Voss in?" against
   trained "What is the employee ID of Anna Voss?" and "Which office is Bert Kerr in?".
3. Distance: the chosen question's key must lie within the calibrated threshold (calibrate.py); a chosen question
   with anchors, all present in the prompt, gets the looser anchored threshold.

When the gate closes, no expert runs: the answer is the base model's, bit for bit. The cost of its caution is
recall on rewordings that use another trained question's template ("How much does the lamp cost?" when "How much
does X weigh?" is trained and the lamp's price is asked as "What is the price of the lamp?"): those are gated.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from memtune.trainer.mome.anchors import Anchors, Evidence

# Two templates this similar ask the same relation (idf-weighted Jaccard in [0, 1]).
SAME_RELATION = 0.5
# Shortest shared prefix by which two different units still count as one word ("weigh" / "weight").
STEM = 4


@dataclass(frozen=True)
class Decision:
    slot: int
    """The chosen trained question, or -1 when the gate is closed."""
    reason: str
    """"open", "far" (beyond the distance threshold), "entity" (no candidate names the prompt's things), or
    "relation" (the prompt asks another trained relation of the chosen entity)."""


def _stem_match(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return len(short) >= STEM and long.startswith(short) and len(short) >= 0.75 * len(long)


class Gate:
    """Per trained question: its evidence and template; decides for one prompt at a time (see module docstring)."""

    def __init__(self, anchors: Anchors, threshold: float, anchored_threshold: float | None):
        self.anchors = anchors
        self.threshold = threshold
        self.anchored_threshold = anchored_threshold
        self.templates = [self._template(slot, set()) for slot in anchors.slots]
        df = Counter(unit for template in set(self.templates) for unit in template)
        count = len(set(self.templates))
        self._idf = {unit: math.log((1 + count) / (1 + n)) + 1.0 for unit, n in df.items()}
        self._unseen_idf = math.log(1 + count) + 1.0

    @staticmethod
    def _template(seen: Evidence, drop: set[str]) -> frozenset[str]:
        return frozenset(seen.units - seen.hard - set(seen.anchors) - drop)

    def _weight(self, unit: str) -> float:
        return self._idf.get(unit, self._unseen_idf)

    def similarity(self, a: frozenset[str], b: frozenset[str]) -> float:
        """idf-weighted Jaccard index of two templates, units matched by stem; 1.0 for two empty templates."""
        matched_a = {u for u in a if any(_stem_match(u, v) for v in b)}
        matched_b = {v for v in b if any(_stem_match(u, v) for u in a)}
        shared = sum(self._weight(u) for u in matched_a)
        union = shared + sum(self._weight(u) for u in a - matched_a) + sum(self._weight(v) for v in b - matched_b)
        return 1.0 if union == 0 else shared / union

    def decide(self, slots: Sequence[int], distances: Sequence[float], prompt: Evidence) -> Decision:
        """slots / distances: candidate trained questions and their squared key distances (any order)."""
        candidates = [(int(s), float(d)) for s, d in zip(slots, distances, strict=True) if s >= 0 and math.isfinite(d)]
        if not candidates:
            return Decision(-1, "entity")
        agreement = {slot: self.anchors.agreement(slot, prompt) for slot, _ in candidates}
        share = self.anchors.share
        allowed = [
            (slot, d)
            for slot, d in candidates
            if (agreement[slot] >= share if share > 0 else self.anchors.slots[slot].hard == prompt.hard)
        ]
        if not allowed:
            return Decision(-1, "entity")
        own = set(prompt.anchors)

        def relation(slot: int, drop: set[str]) -> float:
            return self.similarity(self._template(prompt, drop), self.templates[slot])

        def fit(candidate: tuple[int, float]) -> tuple[float, float]:
            slot, d = candidate
            return agreement[slot] + relation(slot, own | set(self.anchors.slots[slot].anchors)), -d

        chosen, distance = max(allowed, key=fit)
        drop = own | set(self.anchors.slots[chosen].anchors)
        best = relation(chosen, drop)
        for slot, _ in candidates:
            if (
                slot != chosen
                and self.templates[slot] != self.templates[chosen]
                and relation(slot, drop) > best
                and self.similarity(self.templates[slot], self.templates[chosen]) < SAME_RELATION
            ):
                return Decision(-1, "relation")
        anchored = self.anchored_threshold is not None and bool(self.anchors.slots[chosen].anchors)
        limit = max(self.threshold, self.anchored_threshold) if anchored else self.threshold
        return Decision(chosen, "open") if distance <= limit else Decision(-1, "far")
