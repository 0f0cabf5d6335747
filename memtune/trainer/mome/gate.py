"""The gate: which trained question, if any, may answer a prompt. Where memory learns what it was not taught.

Routing hands the gate the prompt's nearest trained questions by key distance (the index's top candidates). Keys
are means over tokens, so near candidates include questions with another answer: the same attribute of a
colleague ("employee ID of Anna Kerr" for "... Anna Voss"), another attribute of the same entity ("office of Anna
Voss"), another number ("vault 3" for "vault 7"). The gate opens for a candidate only if the prompt names that
question's things, asks that question's relation, and sits close enough to it:

1. Entity (anchors.py): the candidate's hard units (numbers, codes) equal the prompt's, and its anchor agreement
   reaches `share`. Of the candidates that pass, the one that best *fits* the prompt is chosen (ties: the nearer
   key), where fit is the cosine of the idf-weighted unit sets (units.py) of prompt and question:
       w(u) = log(1 + (N − n_u + 0.5) / (n_u + 0.5))          (BM25's idf over the N trained questions, as Lucene)
       fit(p, x) = Σ_{u shared} w(u) / sqrt(Σ_{u ∈ p} w(u) · Σ_{u ∈ x} w(u))
   Units rare in the memory weigh most (names, relation words such as "employee" or "office"), glue that most
   questions hold ("what", "the") almost nothing; units sharing a stem of at least 4 characters count as shared
   ("weigh" / "weight"); a prompt unit no trained question holds weighs as a unit seen once.
2. Relation: set aside the chosen question's anchors found in the prompt (the entity as named) and compare what is
   left. If any other candidate fits those remaining words better than the chosen question does, the prompt asks
   that candidate's relation of the chosen entity: a combination memory was never taught ("Which office is Dora
   Lind in?" when Dora Lind's manager and other people's offices are trained). The gate closes.
3. Distance: the chosen question's key must lie within the calibrated threshold (calibrate.py); a chosen question
   with anchors, all present in the prompt, gets the looser anchored threshold.

When the gate closes, no expert runs: the answer is the base model's, bit for bit. The price of caution is recall
on rewordings that borrow another trained question's template ("How much does the lamp cost?" when "How much does
X weigh?" is trained and the lamp's price is trained as "What is the price of the lamp?"): they are gated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from memtune.trainer.mome.anchors import Anchors, Evidence

# Shortest shared prefix by which two different units still count as one word ("weigh" / "weight").
STEM = 4
# How closely another question must word the prompt's relation to gate a trained entity's lone fact (cosine).
STRICT = 0.999


@dataclass(frozen=True)
class Decision:
    slot: int
    """The chosen trained question, or -1 when the gate is closed."""
    reason: str
    """"open"; "far" (beyond the distance threshold); "entity" (no candidate names the prompt's things);
    "relation" (the prompt asks another trained question's relation of the chosen entity)."""


def _stem_match(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return len(short) >= STEM and long.startswith(short) and len(short) >= 0.75 * len(long)


class Gate:
    """Per trained question: its evidence; decides for one prompt at a time (see the module docstring)."""

    def __init__(self, anchors: Anchors, threshold: float, anchored_threshold: float | None):
        self.anchors = anchors
        self.threshold = threshold
        self.anchored_threshold = anchored_threshold
        self._idf, self._rare = anchors.idf, anchors.rare  # BM25 idf over the trained questions (anchors.py)
        self._norms = [math.sqrt(sum(self._idf[u] for u in slot.units)) for slot in anchors.slots]
        self._holding: dict[str, list[int]] = {}  # anchor unit -> the trained questions holding it
        for index, slot in enumerate(anchors.slots):
            for unit in slot.anchors:
                self._holding.setdefault(unit, []).append(index)

    def fit(self, prompt: Evidence, slot: int, without: frozenset[str] = frozenset()) -> float:
        """Cosine of the idf-weighted unit sets of the prompt and trained question `slot` (units matched by stem),
        leaving out the units in `without` on both sides."""
        units = self.anchors.slots[slot].units - without
        shared = 0.0
        prompt_weight = 0.0
        for unit in prompt.units - without:
            match = unit if unit in units else next((u for u in units if _stem_match(u, unit)), None)
            weight = self._idf.get(match or unit, self._rare)
            prompt_weight += weight
            shared += weight if match is not None else 0.0
        norm = math.sqrt(prompt_weight * sum(self._idf[u] for u in units))
        return shared / norm if norm > 0 else 0.0

    def decide(self, slots: Sequence[int], distances: Sequence[float], prompt: Evidence) -> Decision:
        """slots / distances: candidate trained questions and their squared key distances (any order)."""
        candidates = [(int(s), float(d)) for s, d in zip(slots, distances, strict=True) if s >= 0 and math.isfinite(d)]
        same = [(slot, d) for slot, d in candidates if self._names_match(slot, prompt)]  # the prompt's entity
        if not same:
            return Decision(-1, "entity")
        chosen, distance = max(same, key=lambda c: (self.fit(prompt, c[0]), -c[1]))
        # The relation: compare the words left once the chosen question's names in the prompt are set aside.
        entity = frozenset(self.anchors.slots[chosen].anchors) & prompt.units
        asked = self.fit(prompt, chosen, entity)
        # An entity with several trained questions: any candidate whose words fit better asks another of them. A lone
        # fact: only another question's exact wording, names aside, since free-form facts word one relation many ways.
        others = [slot for slot, _ in candidates if slot != chosen]
        if self._facts_about(entity, prompt) > 1:
            asked_elsewhere = any(self.fit(prompt, slot, entity) > asked for slot in others)
        else:
            asked_elsewhere = any(
                (fit := self._relation_fit(prompt, slot, entity)) > asked and fit >= STRICT for slot in others
            )
        if asked_elsewhere:
            return Decision(-1, "relation")
        anchored = self.anchored_threshold is not None and bool(self.anchors.slots[chosen].anchors)
        limit = max(self.threshold, self.anchored_threshold) if anchored else self.threshold
        return Decision(chosen, "open") if distance <= limit else Decision(-1, "far")

    def _relation_fit(self, prompt: Evidence, slot: int, entity: frozenset[str]) -> float:
        """How well another question's relation explains the prompt's words besides the entity: its own names (the
        anchors the prompt lacks) are set aside too."""
        names = frozenset(self.anchors.slots[slot].anchors) - prompt.units
        return self.fit(prompt, slot, entity | names)

    def _facts_about(self, entity: frozenset[str], prompt: Evidence) -> int:
        """How many trained questions name the prompt's entity: those holding its rarest unit (a name, not a relation
        word many questions share: the count stays small at any memory size) that pass the entity check."""
        holders = min((self._holding.get(unit, []) for unit in entity), key=len, default=[])
        return sum(1 for slot in holders if self._names_match(slot, prompt))

    def _names_match(self, slot: int, prompt: Evidence) -> bool:
        if self.anchors.share <= 0:  # agreement off: numbers and codes still decide
            return self.anchors.slots[slot].hard == prompt.hard
        return self.anchors.agreement(slot, prompt) >= self.anchors.share
