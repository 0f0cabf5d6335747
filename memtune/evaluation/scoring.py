"""Score one method's answers on an evaluation set: per item, then the summary row of the report's table.

Torch-free: answers are plain strings here, so scoring is tested without any model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memtune.data import Example
from memtune.evaluation import sql
from memtune.evaluation.metrics import exact_match, mean, token_f1


@dataclass(frozen=True)
class ItemScore:
    line: int
    """Line of the item in the evaluation file."""
    question: str
    expected: str
    answer: str
    exact: bool
    f1: float
    execution: sql.Verdict | None = None
    """SQL sets only: correct, wrong or invalid."""
    sql_error: str | None = None


@dataclass
class MethodScore:
    """One row of the ladder table."""

    method: str
    items: list[ItemScore]
    locality: float | None = None
    """Agreement with the base model's answers on prompts outside the tuned facts."""
    token_accuracy: float | None = None
    """Teacher-forced token accuracy, where the method can be teacher-forced."""
    locality_tf: float | None = None
    """Teacher-forced locality: share of the unrelated answers' tokens where the argmax is the base model's."""
    loss_curve: list[float] | None = None
    """Training loss per optimizer step (tuned methods)."""
    seconds: float = 0.0
    """Wall time from loading the method (training included) until this set was answered."""

    @property
    def exact_match(self) -> float:
        return mean([float(item.exact) for item in self.items])

    @property
    def f1(self) -> float:
        return mean([item.f1 for item in self.items])

    @property
    def execution_accuracy(self) -> float | None:
        if not self.items or self.items[0].execution is None:
            return None
        return mean([float(item.execution == "correct") for item in self.items])

    @property
    def invalid_sql(self) -> float | None:
        if not self.items or self.items[0].execution is None:
            return None
        return mean([float(item.execution == "invalid") for item in self.items])

    def summary(self) -> dict[str, float | None]:
        """The table row: every metric this method has, as a share in [0, 1] (None: not applicable)."""
        return {
            "exact_match": self.exact_match,
            "f1": self.f1,
            "execution_accuracy": self.execution_accuracy,
            "invalid_sql": self.invalid_sql,
            "locality": self.locality,
            "locality_tf": self.locality_tf,
            "token_accuracy": self.token_accuracy,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "summary": self.summary(),
            "seconds": self.seconds,
            "loss_curve": self.loss_curve,
            "items": [asdict(item) for item in self.items],
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> MethodScore:
        """Inverse of to_dict (results.json), so a long benchmark can be resumed one method at a time."""
        summary = record["summary"]
        return cls(
            method=record["method"],
            items=[ItemScore(**item) for item in record["items"]],
            locality=summary["locality"],
            token_accuracy=summary["token_accuracy"],
            locality_tf=summary.get("locality_tf"),  # absent from results written before it existed
            loss_curve=record["loss_curve"],
            seconds=record["seconds"],
        )


def score_answers(examples: Sequence[Example], answers: Sequence[str], db: str | Path | None = None) -> list[ItemScore]:
    """Exact match and F1 for every item; with `db`, the expected outputs are gold SQL scored by execution."""
    if len(examples) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(examples)} questions")
    with contextlib.ExitStack() as stack:
        connection = None
        if db is not None:
            connection = sql.connect_read_only(db)
            stack.callback(connection.close)
        scores = []
        for example, answer in zip(examples, answers, strict=True):
            outcome = None
            if connection is not None:
                try:
                    outcome = sql.score_query(connection, answer, example.output)
                except sql.GoldQueryError as error:
                    raise sql.GoldQueryError(f"line {example.line}: {error}") from None
            scores.append(
                ItemScore(
                    line=example.line,
                    question=example.input,
                    expected=example.output,
                    answer=answer,
                    exact=exact_match(answer, example.output),
                    f1=token_f1(answer, example.output),
                    execution=outcome.verdict if outcome else None,
                    sql_error=outcome.error if outcome else None,
                )
            )
    return scores
