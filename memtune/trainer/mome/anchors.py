"""Anchor words: the second check of the gate, on the words that make a trained question *that* question.

Keys are means over a question's tokens, so "How tall is Mount Everest?" lands as close to a trained
"How tall is Mount Lumothzan?" as a real rewording does: the template words dominate the mean. What tells them apart
is the word the base model could not predict. For each trained question we keep its *anchors*: the words whose
surprisal under the base model, in the question's own chat prompt, is at least `ANCHOR_NATS` (names, codes, rare
terms; never "what", "is", "born"). A trained question may answer a prompt only when the prompt contains at least
`share` of its anchors, weighted by surprisal. Matching is on lower-cased words, so a lower-case or re-punctuated
prompt still matches; a rewording that renames the entity does not (see the README's gate section).

Measured on the default model (threshold 8 nats, share 0.5): 200 synthetic paraphrases all kept their anchors and
every unrelated prompt near the facts' domain lost them; on ZsRE, 97.7% of rephrases kept them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from memtune.trainer.mome.base import LoadedModel
from memtune.trainer.mome.keys import PromptTokens, right_pad, tokenize_prompt

# Surprisal (nats) from which a word counts as informative: p < 1/3000 in context.
ANCHOR_NATS = 8.0
ANCHORS_NAME = "anchors.json"
_WORD = re.compile(r"[^\W_]+")


def words_of(text: str) -> set[str]:
    """Lower-cased words (letters and digits of any script) of a text."""
    return {match.group().lower() for match in _WORD.finditer(text)}


@dataclass
class Anchors:
    """Per trained question (slot): its anchor words and their surprisal."""

    slots: list[dict[str, float]]
    share: float
    """Minimum surprisal-weighted share of a question's anchors a prompt must contain; 0 turns the check off."""
    _has_anchors: torch.Tensor = field(init=False, repr=False)
    """(N,) bool, built once: the router asks on every prefill."""

    def __post_init__(self) -> None:
        self._has_anchors = torch.tensor([bool(slot) for slot in self.slots], dtype=torch.bool)

    def allows(self, slots: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """slots (B, k) int64 -> (B, k) bool: may slot answer that row's prompt?"""
        allowed = torch.ones(slots.shape, dtype=torch.bool)
        if self.share <= 0:
            return allowed
        for row, prompt in enumerate(prompts):
            present = words_of(prompt)
            for column, slot in enumerate(slots[row].tolist()):
                anchors = self.slots[slot]
                total = sum(anchors.values())
                if total > 0:
                    found = sum(nats for word, nats in anchors.items() if word in present)
                    allowed[row, column] = found >= self.share * total
        return allowed

    def anchored(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (B, k) int64 -> (B, k) bool: does the slot's question have anchor words (and the check run)?"""
        if self.share <= 0:
            return torch.zeros(slots.shape, dtype=torch.bool)
        return self._has_anchors[slots]

    def to_dict(self) -> dict[str, object]:
        return {"min_nats": ANCHOR_NATS, "share": self.share, "slots": self.slots}

    @classmethod
    def from_dict(cls, data: dict) -> Anchors:
        return cls([{str(w): float(n) for w, n in slot.items()} for slot in data["slots"]], float(data["share"]))


@torch.no_grad()
def question_anchors(base: LoadedModel, questions: Sequence[str], batch_size: int = 16) -> list[dict[str, float]]:
    """Each question's words with surprisal >= ANCHOR_NATS: {word: nats}, a word's nats summed over its tokens."""
    result: list[dict[str, float]] = []
    for start in range(0, len(questions), batch_size):
        chunk = list(questions[start : start + batch_size])
        prompts = [tokenize_prompt(base.tokenizer, q) for q in chunk]
        ids = right_pad([p.ids for p in prompts], base.tokenizer.pad_token_id)  # (B, T)
        logits = base.model(input_ids=ids).logits.float()  # (B, T, V); right pads come last, so they change nothing
        # surprisal of token t given tokens < t: (B, T-1)
        nats = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        for row, (question, tokens) in enumerate(zip(chunk, prompts, strict=True)):
            result.append(_word_surprisal(question, tokens, [0.0, *nats[row].tolist()]))
    return result


def _word_surprisal(question: str, tokens: PromptTokens, token_nats: list[float]) -> dict[str, float]:
    """Sum token surprisal over each word's character span in the chat prompt; keep the informative words."""
    words: dict[str, float] = {}
    for match in _WORD.finditer(question.strip()):
        begin, end = tokens.question_start + match.start(), tokens.question_start + match.end()
        nats = sum(token_nats[i] for i, (a, b) in enumerate(tokens.offsets) if a < end and b > begin)
        word = match.group().lower()
        words[word] = max(words.get(word, 0.0), nats)
    return {word: round(nats, 3) for word, nats in words.items() if nats >= ANCHOR_NATS}
