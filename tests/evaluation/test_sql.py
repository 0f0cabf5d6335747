"""SQL execution accuracy on a four-row database: multisets, ORDER BY, invalid SQL, runaway queries."""

from __future__ import annotations

import sqlite3

import pytest

from memtune.evaluation.sql import (
    GoldQueryError,
    SqlError,
    connect_read_only,
    extract_sql,
    run_query,
    same_result,
    score_query,
)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "roster.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE roster (team TEXT, name TEXT, age INTEGER, salary TEXT)")
        setup.executemany(
            "INSERT INTO roster VALUES (?, ?, ?, ?)",
            [
                ("Bulls", "Ann", 24, "$1,000"),
                ("Bulls", "Bo", 31, "$3,000"),
                ("Suns", "Cy", 24, "$2,000"),
                ("Suns", "Di", 28, "--"),
            ],
        )
    setup.close()
    connection = connect_read_only(path)
    yield connection
    connection.close()


def test_same_rows_in_another_order_match_without_order_by(db):
    gold = "SELECT name FROM roster WHERE age < 30"
    assert score_query(db, "SELECT name FROM roster WHERE age < 30 ORDER BY name DESC", gold).verdict == "correct"


def test_order_matters_when_gold_has_order_by(db):
    gold = "SELECT name FROM roster ORDER BY age DESC, name"
    assert score_query(db, "select name from roster order by age desc, name", gold).verdict == "correct"
    assert score_query(db, "SELECT name FROM roster ORDER BY age, name", gold).verdict == "wrong"


def test_duplicates_count_as_a_multiset(db):
    gold = "SELECT age FROM roster WHERE team = 'Bulls' OR name = 'Cy'"  # 24, 31, 24
    assert score_query(db, "SELECT DISTINCT age FROM roster WHERE age < 32 AND age != 28", gold).verdict == "wrong"
    assert score_query(db, "SELECT age FROM roster WHERE name IN ('Ann', 'Bo', 'Cy')", gold).verdict == "correct"


def test_extra_column_is_wrong(db):
    gold = "SELECT name FROM roster WHERE team = 'Suns'"
    assert score_query(db, "SELECT name, age FROM roster WHERE team = 'Suns'", gold).verdict == "wrong"


def test_floats_agree_after_rounding(db):
    gold = "SELECT AVG(age) FROM roster"
    assert score_query(db, "SELECT SUM(age) * 1.0 / COUNT(*) FROM roster", gold).verdict == "correct"
    assert same_result([(1 / 3,)], [(0.3333334,)], ordered=False)


@pytest.mark.parametrize(
    ("predicted", "reason"),
    [
        ("SELEC name FROM roster", "syntax error"),
        ("SELECT height FROM roster", "no such column"),
        ("SELECT name FROM roster; SELECT age FROM roster", "one statement"),
        ("DELETE FROM roster", "not authorized"),
        ("ATTACH DATABASE 'other.db' AS other", "not authorized"),
        ("PRAGMA table_info(roster)", "not authorized"),
        ("  ", "empty query"),  # an empty answer runs nothing: invalid, not an empty result
    ],
)
def test_invalid_sql_is_wrong_and_reported_apart(db, predicted, reason):
    outcome = score_query(db, predicted, "SELECT name FROM roster")
    assert outcome.verdict == "invalid"
    assert reason in outcome.error


def test_runaway_query_is_stopped_by_the_time_limit(db):
    runaway = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    outcome = score_query(db, runaway, "SELECT 1", time_limit_s=0.2)
    assert outcome == outcome.__class__("invalid", "stopped after the 0.2 s time limit")
    # The connection is usable again afterwards: the handler is removed.
    assert run_query(db, "SELECT count(*) FROM roster") == [(4,)]


def test_row_limit(db):
    with pytest.raises(SqlError, match="more than 3 rows"):
        run_query(db, "SELECT * FROM roster", row_limit=3)


def test_failing_gold_query_is_not_the_models_fault(db):
    with pytest.raises(GoldQueryError, match="no such table"):
        score_query(db, "SELECT 1", "SELECT * FROM players")


def test_extract_sql_from_fenced_answer():
    assert extract_sql("Here it is:\n```sql\nSELECT 1;\n```\nDone.") == "SELECT 1;"
    assert extract_sql("  select name from roster \n") == "select name from roster"


def test_missing_database_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.db"):
        connect_read_only(tmp_path / "nope.db")
