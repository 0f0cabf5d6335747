"""SQL execution accuracy: run the predicted and the gold query on SQLite and compare what they return.

Rules (those of the text-to-SQL notebook, without its LLM judge):
- the database is opened read-only and only reads are authorised (no ATTACH, PRAGMA or writes), one statement
  per query;
- results are compared as multisets of rows (duplicates count), and in order only when the gold query has an
  ORDER BY — then the order is part of the answer ("top 5 by salary");
- columns are compared positionally; floats are rounded to 6 decimals so `AVG()` computed two ways still agrees;
- a predicted query that fails (syntax error, unknown column, several statements, over the time or row limit)
  counts as wrong and is reported apart as *invalid*;
- a runaway query (e.g. a cross join) is stopped by an SQLite progress handler once it passes `time_limit_s`.

A gold query that fails is not the model's fault: `GoldQueryError` is raised instead of scoring it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_ROW_LIMIT = 100_000
# SQLite calls the progress handler every this many virtual-machine instructions (cheap, ~microseconds apart).
_PROGRESS_EVERY = 10_000
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_FENCE = re.compile(r"```(?:sql|sqlite)?\s*(.*?)```", re.IGNORECASE | re.DOTALL)

Verdict = Literal["correct", "wrong", "invalid"]


class SqlError(RuntimeError):
    """A query could not be run to completion (the message says why)."""


class GoldQueryError(ValueError):
    """The reference query itself fails: the evaluation set is broken, not the model."""


@dataclass(frozen=True)
class SqlOutcome:
    verdict: Verdict
    error: str | None = None
    """Why the predicted query is invalid (None unless verdict is "invalid")."""


def extract_sql(answer: str) -> str:
    """The query inside a model's answer: the first ```sql fenced block if any, else the whole text, stripped."""
    fenced = _FENCE.search(answer)
    return (fenced.group(1) if fenced else answer).strip()


# Model output is untrusted: beyond the read-only file, only reading is authorised (no ATTACH, PRAGMA, writes).
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _authorise(action: int, *details: str | None) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def connect_read_only(db_path: str | Path) -> sqlite3.Connection:
    """Open the database read-only, with an authoriser that refuses anything but reading."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"SQLite database not found: {path}")
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    connection.set_authorizer(_authorise)
    return connection


def run_query(
    connection: sqlite3.Connection,
    query: str,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    row_limit: int = DEFAULT_ROW_LIMIT,
) -> list[tuple[Any, ...]]:
    """All rows of one statement, or `SqlError` when it fails, runs past `time_limit_s` or returns too many rows."""
    deadline = time.monotonic() + time_limit_s
    # A non-zero return from the handler makes SQLite abort the statement with "interrupted".
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY)
    try:
        cursor = connection.execute(query)
        rows = cursor.fetchmany(row_limit + 1)
    except sqlite3.OperationalError as error:
        if "interrupted" in str(error):
            raise SqlError(f"stopped after the {time_limit_s:g} s time limit") from None
        raise SqlError(str(error)) from None
    except (sqlite3.Error, sqlite3.Warning) as error:  # Warning: "You can only execute one statement at a time."
        raise SqlError(str(error)) from None
    finally:
        connection.set_progress_handler(None, 0)
    if len(rows) > row_limit:
        raise SqlError(f"returned more than {row_limit} rows")
    return rows


def _canonical(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def same_result(predicted: list[tuple[Any, ...]], gold: list[tuple[Any, ...]], *, ordered: bool) -> bool:
    """Rows equal as lists (ordered) or as multisets (unordered), after rounding floats."""
    left = [tuple(_canonical(v) for v in row) for row in predicted]
    right = [tuple(_canonical(v) for v in row) for row in gold]
    return left == right if ordered else Counter(left) == Counter(right)


def is_ordered(gold_query: str) -> bool:
    """Whether the row order is part of the answer: the gold query sorts its result."""
    return bool(_ORDER_BY.search(gold_query))


def score_query(
    connection: sqlite3.Connection,
    predicted: str,
    gold: str,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> SqlOutcome:
    """Execution accuracy of one predicted query against its gold query."""
    try:
        expected = run_query(connection, gold, time_limit_s=time_limit_s)
    except SqlError as error:
        raise GoldQueryError(f"gold query fails ({error}): {gold}") from None
    query = extract_sql(predicted)
    if not query:
        return SqlOutcome("invalid", "empty query")
    try:
        actual = run_query(connection, query, time_limit_s=time_limit_s)
    except SqlError as error:
        return SqlOutcome("invalid", str(error))
    return SqlOutcome("correct" if same_result(actual, expected, ordered=is_ordered(gold)) else "wrong")
