"""Anchors: the gate's check that a prompt names the same things as the trained question it would answer.

Keys are means over a question's tokens, so "What is the employee ID of Anna Voss?" lands as close to a trained
"What is the employee ID of Anna Kerr?" as a real rewording does: the template dominates the mean. What tells them
apart are the units (see units.py) the base model could not predict: names, codes, rare terms. For each trained
question we keep its *anchors*: units whose surprisal under the base model, in the question's own chat prompt, is at
least `ANCHOR_NATS` nats, and every *hard* unit (one holding a digit: numbers, codes, versions), whatever its
surprisal. A prompt gets the same treatment at generation (its own tokens' surprisal, from the prefill).

A trained question q may answer a prompt p only if
- every hard unit of q is in p and every hard unit of p is in q (vault 7 is not vault 3; release 3.2 not 2.3), and
- the *anchor agreement* is at least `share`:

      agreement = covered / (total + foreign)
      covered   = Σ nats of q's anchors that p contains
      total     = Σ nats of q's anchors
      foreign   = Σ nats of p's anchors that q does not contain  (p's own surprisal, or, when higher, the nats the
                  unit carries as an anchor of any trained question: a colleague's name is foreign even where the
                  prompt's context makes it predictable)

A rewording keeps q's names and adds only predictable words (agreement ≈ 1). A namesake ("Anna Kerr" for "Anna
Voss") covers half of q's anchors and brings a foreign one (≈ 1/3). A question without anchors on either side agrees
fully (1.0): only the distance gate and the hard units judge it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from memtune.trainer.mome.base import LoadedModel
from memtune.trainer.mome.keys import PromptTokens, right_pad, tokenize_prompt
from memtune.trainer.mome.units import units_of

# Surprisal (nats) from which a unit counts as informative: p < 1/3000 in context.
ANCHOR_NATS = 8.0
ANCHORS_NAME = "anchors.json"
ANCHORS_FORMAT = 2


@dataclass(frozen=True)
class Evidence:
    """What the gate knows of one text (a trained question or a prompt)."""

    units: frozenset[str]
    anchors: dict[str, float]
    """Anchor units -> nats (hard units included, at least ANCHOR_NATS each)."""

    @property
    def hard(self) -> frozenset[str]:
        return frozenset(unit for unit in self.units if any(ch.isdigit() for ch in unit))

    def to_dict(self) -> dict[str, object]:
        return {"units": sorted(self.units), "anchors": self.anchors}

    @classmethod
    def from_dict(cls, data: dict) -> Evidence:
        return cls(frozenset(str(u) for u in data["units"]), {str(u): float(n) for u, n in data["anchors"].items()})


def evidence(text: str, tokens: PromptTokens | None = None, token_nats: Sequence[float] | None = None) -> Evidence:
    """Units and anchors of `text`; without surprisal (tokens/token_nats None) only hard units are anchors.

    tokens: the chat prompt's tokens holding `text` at `tokens.question_start`; token_nats: each prompt token's
    surprisal (nats, -log p(token | tokens before it); 0 for the first), aligned with `tokens.ids`."""
    found = units_of(text.strip())
    anchors: dict[str, float] = {}
    for unit in found:
        nats = 0.0
        if tokens is not None and token_nats is not None:
            begin, end = tokens.question_start + unit.start, tokens.question_start + unit.end
            nats = sum(token_nats[i] for i, (a, b) in enumerate(tokens.offsets) if a < end and b > begin)
        if unit.hard:
            nats = max(nats, ANCHOR_NATS)
        if nats >= ANCHOR_NATS:
            anchors[unit.text] = round(max(anchors.get(unit.text, 0.0), nats), 3)
    return Evidence(frozenset(unit.text for unit in found), anchors)


@dataclass
class Anchors:
    """Per trained question (slot): its evidence; and the agreement a prompt needs."""

    slots: list[Evidence]
    share: float
    """Minimum anchor agreement (the gate's `memory.anchorShare`); 0 turns the gate's evidence checks off."""
    known: dict[str, float] = field(init=False, repr=False)
    """Every trained question's anchor units -> their largest nats: what makes a prompt's unit foreign."""

    idf: dict[str, float] = field(init=False, repr=False)
    """Each unit of the trained questions -> log(1 + (N - n + 0.5) / (n + 0.5)) (BM25's idf, as Lucene computes it):
    a unit most questions share (a template word of the memory's language) weighs little."""
    rare: float = field(init=False, repr=False)
    """The idf of a unit no trained question holds."""

    def __post_init__(self) -> None:
        self.known = {}
        for slot in self.slots:
            for unit, nats in slot.anchors.items():
                self.known[unit] = max(self.known.get(unit, 0.0), nats)
        count = len(self.slots)
        df = Counter(unit for slot in self.slots for unit in slot.units)
        self.idf = {unit: math.log(1 + (count - n + 0.5) / (n + 0.5)) for unit, n in df.items()}
        self.rare = math.log(1 + (count - 0.5) / 1.5)

    def agreement(self, slot: int, prompt: Evidence) -> float:
        """covered / (total + foreign) in [0, 1], each anchor weighing nats × idf; 0 when hard units differ."""
        question = self.slots[slot]
        if question.hard != prompt.hard:
            return 0.0
        covered = sum(nats * self.idf[u] for u, nats in question.anchors.items() if u in prompt.units)
        total = sum(nats * self.idf[u] for u, nats in question.anchors.items())
        foreign = sum(
            max(prompt.anchors.get(u, 0.0), self.known.get(u, 0.0)) * self.idf.get(u, self.rare)
            for u in prompt.units
            if u not in question.units
        )
        return 1.0 if total + foreign == 0 else covered / (total + foreign)

    def to_dict(self) -> dict[str, object]:
        return {
            "format": ANCHORS_FORMAT,
            "min_nats": ANCHOR_NATS,
            "share": self.share,
            "slots": [slot.to_dict() for slot in self.slots],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Anchors:
        if data.get("format") != ANCHORS_FORMAT:
            raise ValueError(f"{ANCHORS_NAME} format {data.get('format')!r}, this memtune reads {ANCHORS_FORMAT}")
        return cls([Evidence.from_dict(slot) for slot in data["slots"]], float(data["share"]))


@torch.no_grad()
def token_surprisal(base: LoadedModel, prompts: Sequence[PromptTokens]) -> list[list[float]]:
    """Each prompt token's surprisal under the base model: nats of token t given tokens < t (0.0 for the first)."""
    ids = right_pad([p.ids for p in prompts], base.tokenizer.pad_token_id).to(base.device)  # (B, T)
    logits = base.model(input_ids=ids).logits.float()  # (B, T, V); right pads come last, so they change nothing
    nats = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
    return [[0.0, *nats[row, : len(p.ids) - 1].tolist()] for row, p in enumerate(prompts)]


def text_evidence(base: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> list[Evidence]:
    """Evidence of each text in its own chat prompt, surprisal from one base-model pass per batch."""
    result: list[Evidence] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        prompts = [tokenize_prompt(base.tokenizer, text) for text in chunk]
        for text, tokens, nats in zip(chunk, prompts, token_surprisal(base, prompts), strict=True):
            result.append(evidence(text, tokens, nats))
    return result
