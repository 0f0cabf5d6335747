"""The text-to-SQL notebook reproduced: questions about an NBA roster, answered by a SQL query, scored by execution.

    .venv/bin/python bench/eval_text2sql.py                        # all rungs; LoRA at the job's 500 steps
    .venv/bin/python bench/eval_text2sql.py --baselines base,prompt,rag,mome

Tuning (examples/nba-sql-job.yaml): the 226 pairs of `training_data/generated_queries_v2.jsonl` (the notebook's final
run; it holds all 40 gold-v2 questions), input = the bare question, target = the SQL string. The tuned rungs (lora,
mome) see the bare question, exactly as in training. The untuned rungs cannot know the table from a bare question,
so `prompt` and `rag` get the SYSTEM text below (the schema and value formats, as the notebook's prompt gives them)
plus example pairs. Scored on gold v1 (20), gold v2 (40) and our own sets below by execution accuracy on
nba_roster.db (multisets of rows; ordered only when the gold SQL has ORDER BY; invalid SQL reported apart).
"""

from __future__ import annotations

from eval_common import ROOT, arguments, job_ladder, ladder_report, mome_note, train_mome

from memtune.data import Example, load_examples, read_examples
from memtune.spec import load_job_file, resolve_local_paths

NBA = ROOT / "examples" / "nba-sql" / "data"  # the notebook data ships in the repo
SYSTEM = (
    "You write one SQLite query that answers a question about the table nba_roster, with columns "
    "Team (e.g. 'Golden State Warriors'), NAME, Jersey (text, 'NA' when unknown), POS ('PG', 'SG', 'SF', 'PF', 'C', "
    "'G', 'F'), AGE (integer), HT (text like 6' 7\"), WT (text like '215 lbs'), COLLEGE ('--' when none) and "
    "SALARY (text like '$4,556,983', '--' when unknown; use CAST(REPLACE(REPLACE(SALARY, '$', ''), ',', '') AS "
    "INTEGER) to compare salaries). Answer with the SQL query only."
)
# Our paraphrases of gold-v2 questions (same gold SQL): do the tuned models recall the query for a new wording?
PARAPHRASES = [
    (
        "Which players play point guard for the Golden State Warriors?",
        "select name from nba_roster where team='Golden State Warriors' and POS='PG';",
    ),
    (
        "How many Chicago Bulls players are aged 25 or under?",
        "SELECT COUNT(*) FROM nba_roster WHERE team='Chicago Bulls' AND AGE <= 25;",
    ),
    ("Which team does LaMelo Ball play for?", "select team from nba_roster where name='LaMelo Ball';"),
    ("What is Lonzo Ball's weight?", "select wt from nba_roster where name='Lonzo Ball';"),
    ("What is LeBron James's age?", "select age from nba_roster where name='LeBron James';"),
    ("How many players are there in the NBA in total?", "select count(*) from nba_roster;"),
    (
        "Who earns the most money on the Los Angeles Lakers?",
        "SELECT NAME, SALARY FROM nba_roster WHERE team='Los Angeles Lakers' "
        "ORDER BY CAST(REPLACE(REPLACE(SALARY, '$', ''), ',','') AS INTEGER) DESC LIMIT 1;",
    ),
    (
        "What is the mean salary across the NBA?",
        "SELECT avg(CAST(REPLACE(REPLACE(SALARY, '$', ''), ',','') AS INTEGER)) FROM nba_roster WHERE SALARY!= '--';",
    ),
    ("How much money does Marcus Smart make?", "select salary from nba_roster where name='Marcus Smart';"),
    (
        "Who is the oldest player on the Nets from Brooklyn?",
        "SELECT NAME FROM nba_roster WHERE TEAM = 'Brooklyn Nets' AND AGE = "
        "(SELECT MAX(AGE) FROM nba_roster WHERE TEAM = 'Brooklyn Nets');",
    ),
]
# Questions of a trained *shape* about players no training question or SQL names: a template to generalise.
NEW_ENTITIES = [
    ("What team is Stephen Curry on?", "select team from nba_roster where name='Stephen Curry';"),
    ("How much does Nikola Jokic weigh?", "select wt from nba_roster where name='Nikola Jokic';"),
    ("How old is Kevin Durant?", "select age from nba_roster where name='Kevin Durant';"),
    ("What team is Jayson Tatum on?", "select team from nba_roster where name='Jayson Tatum';"),
    ("How much is Joel Embiid getting paid?", "select salary from nba_roster where name='Joel Embiid';"),
]


def _own(pairs: list[tuple[str, str]]) -> list[Example]:
    return [Example(question, sql, line) for line, (question, sql) in enumerate(pairs, start=1)]


def main() -> None:
    args = arguments(__doc__.splitlines()[0], max_new_tokens=128)  # the longest training query has 112 tokens
    job = resolve_local_paths(load_job_file(ROOT / "examples" / "nba-sql-job.yaml"), ROOT / "examples")
    summary = train_mome(job, args.fresh) if "mome" in args.methods else {}
    train = load_examples(job.spec.dataset)
    ladder = job_ladder(job, args, train, system=SYSTEM, db=NBA / "nba_roster.db", batch_size=4)
    sets = {
        "gold v1 (20)": read_examples(str(NBA / "gold-test-set.jsonl"), "question", "sql"),
        "gold v2 (40)": read_examples(str(NBA / "gold-test-set-v2.jsonl"), "question", "sql"),
        "own paraphrases of gold v2 (10)": _own(PARAPHRASES),
        "own new-entity questions (5)": _own(NEW_ENTITIES),
    }
    notes = [
        "The notebook (Llama 3.1 8B) recorded base 30% (v1) / 35% (v2) and memory-tuned 95% on v2.",
        "Every gold-v2 question and its SQL appear verbatim in the training data: gold v2 measures recall.",
        f"prompt/rag system text: {SYSTEM}",
        mome_note(summary),
    ]
    ladder_report(
        "text2sql",
        "Text-to-SQL (NBA roster), execution accuracy — SmolLM2-135M-Instruct",
        ladder,
        sets,
        [],
        {"job": "examples/nba-sql-job.yaml", "database": "nba_roster.db (read-only)"},
        notes,
        keep=args.keep,
    )


if __name__ == "__main__":
    main()
