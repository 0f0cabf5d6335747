"""The question texts of the untuned rungs of the ladder: `base`, `prompt` (system text + few-shot) and `rag`.

Every rung talks to the same chat template (`memtune.trainer.mome.base.chat_prompt`): what differs is only the text of
the single user turn. `prompt` and `rag` put their instructions and example pairs in front of the question:

    {system}

    Examples:
    Q: {example input}
    A: {example output}
    ...

    Q: {question}
    A:

`prompt` uses the first `few_shot` training pairs (a fixed, reproducible choice); `rag` the `k` training pairs whose
inputs are nearest to the question (see retrieval.py). The tuned rungs (`lora`, `mome`) get the bare question,
exactly as they saw it in training.
"""

from __future__ import annotations

from collections.abc import Sequence

from memtune.data import Example

DEFAULT_SYSTEM = "Answer the question with the answer only: no explanation, no full sentence."


def framed_question(question: str, system: str, examples: Sequence[Example]) -> str:
    """One user turn: system text, then the example pairs, then the question waiting for its answer."""
    parts = [system.strip()] if system.strip() else []
    if examples:
        parts.append("Examples:\n" + "\n\n".join(f"Q: {e.input}\nA: {e.output}" for e in examples))
    parts.append(f"Q: {question}\nA:")
    return "\n\n".join(parts)


def few_shot_questions(questions: Sequence[str], train: Sequence[Example], system: str, few_shot: int) -> list[str]:
    """The `prompt` rung: the same first `few_shot` training pairs in front of every question."""
    shots = list(train[:few_shot])
    return [framed_question(question, system, shots) for question in questions]


def retrieved_questions(questions: Sequence[str], neighbours: Sequence[Sequence[Example]], system: str) -> list[str]:
    """The `rag` rung: each question with its own retrieved pairs, nearest last (closest to the question)."""
    if len(questions) != len(neighbours):
        raise ValueError(f"{len(neighbours)} retrieval results for {len(questions)} questions")
    return [framed_question(q, system, list(reversed(found))) for q, found in zip(questions, neighbours, strict=True)]
