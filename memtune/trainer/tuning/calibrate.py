"""The distance gate's threshold, calibrated from the training questions alone.

Two probe sets bracket the threshold:
- near: rewordings of each training question made by cheap edits (a polite lead-in, a trailing request,
  lower case, no question mark) -- what a user asking the *same* thing types;
- far: everyday prompts shipped below, none about any user's data -- what must keep the base model's answer.
The threshold is the geometric mean of the near probes' 95th-percentile distance (to their own question) and the
far probes' smallest distance (to any question): squared L2 distances of normalised keys spread over orders of
magnitude, so the middle in log space leaves the same ratio of margin on both sides.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from memtune.trainer.mome.anchors import Evidence
from memtune.trainer.mome.units import units_of

log = logging.getLogger(__name__)

# Questions whose edits are probed: the p95 of a few hundred distances is stable, and each probe costs a pass.
NEAR_SAMPLE = 64

_EDITS: tuple[Callable[[str], str], ...] = (
    lambda q: f"Please tell me: {q}",
    lambda q: f"{q} Answer briefly.",
    lambda q: q.lower(),
    lambda q: q.rstrip("?").rstrip(),
)

FAR_PROBES = (
    "Hello, how are you today?",
    "Write a short poem about the sea.",
    "What is the weather usually like in spring?",
    "Explain how a rainbow forms.",
    "Can you recommend a good book?",
    "What is 25 plus 17?",
    "How do I boil an egg?",
    "Summarize the plot of Cinderella.",
    "What are the benefits of exercise?",
    "Who was the first president of the United States?",
    "What is the speed of light?",
    "How many continents are there?",
    "Translate 'thank you' into French.",
    "Describe a cat in one sentence.",
    "What does DNA stand for?",
    "Why is the sky blue?",
    "List three fruits that are red.",
    "What is the tallest animal?",
    "How does a computer work?",
    "What is the freezing point of water?",
    "Give me a tip for studying.",
    "What year did World War II end?",
    "Where is the Eiffel Tower?",
    "What is the population of China?",
    "Tell me a joke.",
    "How do airplanes fly?",
    "What is the main ingredient of guacamole?",
    "Who discovered penicillin?",
    "What is the longest river in the world?",
    "How many legs does a spider have?",
)


@dataclass
class Calibration:
    threshold: float
    near_p95: float
    far_min: float

    def to_dict(self) -> dict[str, float]:
        return {"threshold": self.threshold, "near_p95": self.near_p95, "far_min": self.far_min}


def near_probes(questions: Sequence[str], limit: int = NEAR_SAMPLE, seed: int = 0) -> tuple[list[str], list[int]]:
    """Edited copies of up to `limit` questions (a seeded sample) and the index of the question each came from."""
    sample = random.Random(seed).sample(range(len(questions)), min(limit, len(questions)))  # noqa: S311 - not crypto
    chosen = sorted(sample)
    probes, owners = [], []
    for owner in chosen:
        question = questions[owner]
        for edit in _EDITS:
            probes.append(edit(question))
            owners.append(owner)
    return probes, owners


def calibrate(
    keys: torch.Tensor, near_keys: torch.Tensor, owners: Sequence[int], far_keys: torch.Tensor
) -> Calibration:
    """keys (N, d) of the training questions; near_keys (M, d) with owners (M,); far_keys (F, d)."""
    near = ((near_keys - keys[list(owners)]) ** 2).sum(-1)  # (M,)
    far = (torch.cdist(far_keys, keys) ** 2).min(1).values  # (F,)
    near_p95, far_min = float(near.quantile(0.95)), float(far.min())
    if far_min <= near_p95:
        log.warning(
            "gate calibration: everyday prompts come as close to the training questions (%.4f) as rewordings do "
            "(p95 %.4f); the gate will let some unrelated prompts through. Set memory.distanceThreshold to tune.",
            far_min,
            near_p95,
        )
    threshold = math.sqrt(max(near_p95, 1e-8) * max(far_min, 1e-8))
    return Calibration(threshold, near_p95, far_min)


def _name_span(question: str, seen: Evidence) -> tuple[int, int] | None:
    """The character span of the question's heaviest run of adjacent anchor units (its entity's name), if any."""
    runs: list[tuple[float, int, int]] = []
    for unit in units_of(question):
        nats = seen.anchors.get(unit.text, 0.0)
        if nats <= 0 or unit.hard:
            continue
        if runs and not question[runs[-1][2] : unit.start].strip(" -'’"):
            weight, start, _ = runs[-1]
            runs[-1] = (weight + nats, start, max(unit.end, runs[-1][2]))
        else:
            runs.append((nats, unit.start, unit.end))
    return (max(runs)[1], max(runs)[2]) if runs else None


def _other_number(text: str) -> str:
    """The same number with its last digit changed ("7" -> "8", "3.2" -> "3.3")."""
    last = max(i for i, ch in enumerate(text) if ch.isdigit())
    return text[:last] + str((int(text[last]) + 1) % 10) + text[last + 1 :]


def neighbour_probes(
    questions: Sequence[str],
    evidence: Sequence[Evidence],
    limit: int = NEAR_SAMPLE,
    seed: int = 0,
    among: Sequence[int] | None = None,
) -> list[tuple[str, str]]:
    """Untrained neighbours of a seeded sample of trained questions, as (prompt, kind): the question with another
    number ("number"), another question's name in place of its own ("entity"), and another question's relation
    asked of its name ("relation"). Every probe that happens to be a trained question is left out.

    among: draw the sample from these questions only (a grown memory's new ones); names come from all of them."""
    rng = random.Random(seed)  # noqa: S311 - not crypto
    trained = set(questions)
    spans = [_name_span(q, e) for q, e in zip(questions, evidence, strict=True)]
    named = [i for i, span in enumerate(spans) if span is not None]
    probes: list[tuple[str, str]] = []
    pool = range(len(questions)) if among is None else list(among)
    for i in sorted(rng.sample(pool, min(limit, len(pool)))):
        question, span = questions[i], spans[i]
        hard = [unit for unit in units_of(question) if unit.hard]
        if hard:
            unit = hard[0]
            renumbered = question[: unit.start] + _other_number(question[unit.start : unit.end]) + question[unit.end :]
            probes.append((renumbered, "number"))
        others = [j for j in named if j != i]
        if span is None or not others:
            continue
        j = rng.choice(others)
        (a, b), (c, d) = span, spans[j]
        probes.append((question[:a] + questions[j][c:d] + question[b:], "entity"))
        probes.append((questions[j][:c] + question[a:b] + questions[j][d:], "relation"))
    return [(text, kind) for text, kind in probes if text not in trained]
