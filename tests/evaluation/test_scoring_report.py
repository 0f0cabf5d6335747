"""Scoring answers into table rows, and the report folder, with hand-written answers (no model)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from memtune.data import Example
from memtune.evaluation.prompts import few_shot_questions, framed_question, retrieved_questions
from memtune.evaluation.report import markdown_table, write_report
from memtune.evaluation.scoring import MethodScore, score_answers
from memtune.evaluation.sql import GoldQueryError

FACTS = [
    Example("What year was the Brennock Accord signed?", "1847", 1),
    Example("Where is the Quillmere Institute?", "Port Halvaren", 2),
]


def test_score_answers_exact_and_f1():
    items = score_answers(FACTS, ["1847.", "Halvaren"])
    assert [item.exact for item in items] == [True, False]
    assert items[1].f1 == pytest.approx(2 / 3)
    row = MethodScore("mome", items, locality=0.75).summary()
    assert row["exact_match"] == 0.5
    assert row["execution_accuracy"] is None and row["locality"] == 0.75
    with pytest.raises(ValueError, match="1 answers for 2 questions"):
        score_answers(FACTS, ["1847"])


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (name TEXT, age INT)")
        setup.executemany("INSERT INTO t VALUES (?, ?)", [("Ann", 24), ("Bo", 31)])
    setup.close()
    return path


def test_sql_items_are_scored_by_execution_and_invalid_apart(db):
    gold = [
        Example("Who is older than 30?", "SELECT name FROM t WHERE age > 30", 1),
        Example("How many?", "SELECT count(*) FROM t", 2),
        Example("Names?", "SELECT name FROM t", 3),
    ]
    answers = ["select name from t where age >= 31", "SELECT count(name) FROM t WHERE age > 99", "SELECT nme FROM t"]
    score = MethodScore("base", score_answers(gold, answers, db))
    assert [item.execution for item in score.items] == ["correct", "wrong", "invalid"]
    assert score.execution_accuracy == pytest.approx(1 / 3)
    assert score.invalid_sql == pytest.approx(1 / 3)
    assert "no such column: nme" in score.items[2].sql_error


def test_broken_gold_query_names_its_line(db):
    with pytest.raises(GoldQueryError, match="line 7: gold query fails"):
        score_answers([Example("q", "SELECT * FROM missing", 7)], ["SELECT 1"], db)


def test_report_folder_has_table_plots_and_every_answer(tmp_path, db):
    gold = [Example("Names?", "SELECT name FROM t", 4)]
    scores = [
        MethodScore("base", score_answers(gold, ["SELECT nme\nFROM `t`"], db), locality=1.0, seconds=3.0),
        MethodScore(
            "mome",
            score_answers(gold, ["SELECT name FROM t"], db),
            locality=0.5,
            loss_curve=[2.0, 0.5, 0.01],
            seconds=9.0,
        ),
    ]
    path = write_report(tmp_path / "out", "Ladder", {"gold v2": scores}, {"max_new_tokens": 128}, notes=["a note"])
    text = path.read_text()
    assert "| base | 0.0% | 100.0% |" in text  # execution accuracy, then invalid SQL share
    assert "| mome | 100.0% | 0.0% |" in text
    assert "line 4: `Names?` → `SELECT nme FROM 't'`" in text and "invalid SQL: no such column: nme" in text
    assert "- max_new_tokens: 128" in text and "- a note" in text
    assert "## gold v2" in text and "![gold v2](accuracy-gold-v2.png)" in text
    for name in ("accuracy-gold-v2.png", "loss.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["sets"]["gold v2"][1]["items"][0]["answer"] == "SELECT name FROM t"
    reread = [MethodScore.from_dict(record) for record in results["sets"]["gold v2"]]
    assert reread == scores


def test_table_leaves_out_columns_no_method_has():
    table = markdown_table([MethodScore("base", score_answers(FACTS, ["1847", "x"]))])
    assert "Execution" not in table and "Locality" not in table
    assert "| base | 50.0% |" in table


def test_prompt_and_rag_frame_the_question():
    assert framed_question("Q?", "", []) == "Q: Q?\nA:"
    shot = few_shot_questions(["Who?"], FACTS, "Be brief.", few_shot=1)[0]
    assert shot == "Be brief.\n\nExamples:\nQ: What year was the Brennock Accord signed?\nA: 1847\n\nQ: Who?\nA:"
    rag = retrieved_questions(["Who?"], [[FACTS[1], FACTS[0]]], "")[0]
    assert rag.index("Quillmere") > rag.index("Brennock")  # nearest pair sits right before the question
    with pytest.raises(ValueError, match="1 retrieval results for 2 questions"):
        retrieved_questions(["a", "b"], [[FACTS[0]]], "")
