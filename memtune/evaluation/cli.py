"""`memtune eval` and `memtune sweep`, registered on the main CLI by `register_commands(app)`.

    memtune eval --job examples/facts-job.yaml --data examples/facts.jsonl --data examples/facts-paraphrases.jsonl \\
        --locality examples/unrelated.jsonl --report-dir reports/facts
    memtune eval --job examples/nba-sql-job.yaml --data examples/nba-sql/data/gold-test-set-v2.jsonl \\
        --input-key question --output-key sql --db examples/nba-sql/data/nba_roster.db \\
        --baselines base,prompt,rag,mome --report-dir reports/nba
    memtune sweep examples/facts-job.yaml --rates 9e-5,3e-4,9e-4 --steps 60 --report-dir reports/sweep

Model code is imported inside the commands, so `memtune --help` stays fast.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from memtune import data, storage
from memtune.evaluation.prompts import DEFAULT_SYSTEM
from memtune.evaluation.scoring import MethodScore
from memtune.evaluation.sweep import DEFAULT_RATES
from memtune.failures import fail
from memtune.manifest import IntegrityError
from memtune.spec import DEFAULT_BASE_MODEL, MemoryTuningJob, ModelError, SpecError, load_job_file, resolve_local_paths

console = Console(stderr=True)
_USER_ERRORS = (
    SpecError,
    ModelError,
    storage.StorageError,
    data.DatasetError,
    IntegrityError,
    FileNotFoundError,
    ValueError,
)
_DEFAULT_LADDER = "base,prompt,rag,lora,mome"


def read_prompts(path: Path, key: str) -> list[str]:
    """Questions from a JSONL file (other fields ignored); every bad line named in one `DatasetError`."""
    return [record[key] for record in data.read_question_records(path, key)]


def _load_job(job_file: Path | None) -> MemoryTuningJob | None:
    return resolve_local_paths(load_job_file(job_file), job_file.parent) if job_file else None


def _print_tables(sections: dict[str, list[MethodScore]]) -> None:
    from memtune.evaluation.report import COLUMNS  # matplotlib: only once there is something to report

    for name, scores in sections.items():
        keys = [k for k in COLUMNS if any(s.summary().get(k) is not None for s in scores)]
        table = Table(title=name)
        for column in ["method", *(COLUMNS[k] for k in keys)]:
            table.add_column(column)
        for score in scores:
            summary = score.summary()
            table.add_row(score.method, *(f"{100 * summary[k]:.1f}%" if summary[k] is not None else "–" for k in keys))
        Console().print(table)


def evaluate(
    report_dir: Annotated[Path, typer.Option(help="Folder for report.md, PNGs and results.json.")],
    data_files: Annotated[
        list[Path], typer.Option("--data", help="Evaluation JSONL (repeatable; each is one table).", exists=True)
    ],
    job_file: Annotated[
        Path | None,
        typer.Option(
            "--job",
            help="Manifest: base model, training data, LoRA steps, and the MoME model (its output).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Tuned MoME model: job output or run folder (overrides --job).")
    ] = None,
    base_model: Annotated[str | None, typer.Option(help="Base model alias or folder (default: the job's).")] = None,
    train: Annotated[Path | None, typer.Option(help="Training JSONL when there is no --job.", exists=True)] = None,
    input_key: Annotated[str, typer.Option(help="Field of --data/--train records holding the question.")] = "input",
    output_key: Annotated[str, typer.Option(help="Field of --data/--train records holding the answer.")] = "output",
    db: Annotated[Path | None, typer.Option(help="SQLite database: answers are SQL, scored by execution.")] = None,
    baselines: Annotated[str, typer.Option(help="Comma-separated rungs of the ladder.")] = _DEFAULT_LADDER,
    locality: Annotated[
        Path | None,
        typer.Option(
            help="JSONL of prompts outside the tuned facts (field --input-key; with --output-key answers on every "
            "line, --teacher-forced also scores locality token by token).",
            exists=True,
        ),
    ] = None,
    system: Annotated[str, typer.Option(help="System text of the prompt and rag rungs.")] = DEFAULT_SYSTEM,
    few_shot: Annotated[int, typer.Option(min=0, max=64, help="Training pairs shown by the prompt rung.")] = 3,
    rag_k: Annotated[int, typer.Option(min=1, max=64, help="Pairs retrieved by the rag rung.")] = 3,
    lora_steps: Annotated[int | None, typer.Option(min=1, help="LoRA steps (default: the job's max_steps).")] = None,
    lora_lr: Annotated[float | None, typer.Option(help="LoRA learning rate (default: 1e-3).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096, help="Greedy decoding budget.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, max=512)] = 8,
    teacher_forced: Annotated[bool, typer.Option(help="Also score teacher-forced token accuracy.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when there is one), cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Score the baseline ladder (base, prompt, RAG, LoRA, MoME) on JSONL sets; print tables and write a report.

    Greedy decoding: no sampling, at most --max-new-tokens new tokens, stopping at end-of-turn."""
    try:
        from memtune.evaluation.ladder import Ladder, run_ladder
        from memtune.evaluation.lora import DEFAULT_LORA_LR, LoraSettings
        from memtune.evaluation.report import write_report

        job = _load_job(job_file)
        if job is not None:
            train_examples = data.load_examples(job.spec.dataset, job.spec.finetuneArgs.max_finetuning_examples)
        else:
            train_examples = data.read_examples(str(train), input_key, output_key) if train else []
        lora = None
        if job is not None:
            lora = LoraSettings.matching(job.spec, lora_lr)
            lora = lora if lora_steps is None else replace(lora, steps=lora_steps)
        elif lora_steps is not None:
            lora = LoraSettings(steps=lora_steps, learning_rate=lora_lr or DEFAULT_LORA_LR, batch_size=16)
        ladder = Ladder(
            methods=[m.strip() for m in baselines.split(",") if m.strip()],
            base_model=base_model or (job.spec.baseModel if job else DEFAULT_BASE_MODEL),
            train=train_examples,
            mome_model=model or (job.spec.output.uri if job else None),
            lora=lora,
            system=system,
            few_shot=few_shot,
            rag_k=rag_k,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            db=db,
            teacher_forced=teacher_forced,
            device=device,
        )
        sets = {path.name: data.read_examples(str(path), input_key, output_key) for path in data_files}
        records = data.read_question_records(locality, input_key) if locality else []
        prompts = [record[input_key] for record in records]
        # With answers (field --output-key on every line), --teacher-forced also scores locality token by token.
        answers = [str(r[output_key]) for r in records] if all(output_key in r for r in records) else []
        sections = run_ladder(ladder, sets, prompts, locality_answers=answers)
    except _USER_ERRORS as error:
        raise fail(error) from None
    _print_tables(sections)
    settings = {
        "base model": ladder.base_model,
        "MoME model": ladder.mome_model,
        "training pairs": len(ladder.train),
        "decoding": f"greedy, at most {max_new_tokens} new tokens, stop at end-of-turn",
        "prompt rung": f"{few_shot} first training pairs; system text: {system!r}",
        "rag rung": f"top {rag_k} training pairs by cosine similarity of input embeddings",
        "lora rung": ladder.lora,
        "locality prompts": len(prompts),
    }
    path = write_report(report_dir, "Baseline ladder", sections, settings)
    console.print(f"report: {path}")


def sweep(
    job_file: Annotated[Path, typer.Argument(help="MemoryTuningJob manifest to sweep.", exists=True, dir_okay=False)],
    report_dir: Annotated[Path, typer.Option(help="Folder for report.md, loss.png and trials.json.")],
    rates: Annotated[str, typer.Option(help="Comma-separated learning rates.")] = DEFAULT_RATES,
    steps: Annotated[int | None, typer.Option(min=1, help="Steps per trial (default: min(job's, 100)).")] = None,
    max_examples: Annotated[int | None, typer.Option(min=1, help="Train each trial on the first N pairs.")] = None,
) -> None:
    """Run one short job per learning rate on a subset; report the loss curves and the best rate."""
    try:
        from memtune.evaluation.sweep import parse_rates, run_sweep, write_sweep_report

        job = _load_job(job_file)
        assert job is not None  # job_file is a required argument
        trials = run_sweep(
            job,
            parse_rates(rates),
            steps or min(job.spec.finetuneArgs.max_steps, 100),
            max_examples,
            report_dir / "runs",
        )
        path = write_sweep_report(trials, report_dir, job.metadata.name)
    except _USER_ERRORS as error:
        raise fail(error) from None
    console.print(path.read_text(encoding="utf-8"), highlight=False)


def register_commands(app: typer.Typer) -> None:
    """Add `eval` and `sweep` to the main CLI (memtune/cli.py calls this)."""
    app.command(name="eval")(evaluate)
    app.command(name="sweep")(sweep)
