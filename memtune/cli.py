"""`memtune`: tune models from a MemoryTuningJob manifest and answer from memory.

    memtune run examples/facts-job.yaml          # tune locally, print a summary
    memtune generate --model runs/facts --prompt "What is the serial number of the Zorvath-7 telescope?"
    memtune serve --model runs/facts --port 8000   # OpenAI-compatible HTTP server (the `serve` extra)
    memtune forget --model runs/facts --input-file q.jsonl   # a new run without those questions
    memtune upload facts.jsonl                   # store a dataset by content, print its id
    memtune push-model ./my-model s3://bucket/models/my-model   # for `baseModel: s3://bucket/models/my-model`
    memtune crd                                  # the CustomResourceDefinition generated from memtune/spec.py

Engine commands import torch lazily, so `--help`, `crd`, `upload` and the cluster commands stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from memtune import data, storage
from memtune.failures import console, fail
from memtune.manifest import IntegrityError
from memtune.spec import ModelError, SpecError, load_job_file, resolve_local_paths

app = typer.Typer(
    help="Memory Tuning (Mixture of Memory Experts) for open LLMs, locally or on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
USER_ERRORS = (SpecError, ModelError, storage.StorageError, data.DatasetError, IntegrityError, FileNotFoundError)


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="MemoryTuningJob manifest (YAML).", exists=True, dir_okay=False)],
    use_cached_model: Annotated[
        bool, typer.Option("--use-cached-model/--no-cache", help="Reuse a finished run with the same inputs.")
    ] = True,
    compare_base: Annotated[
        bool, typer.Option("--compare-base", help="Afterwards, print each question with base and tuned answers.")
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto (CUDA when torch sees a GPU), cpu, cuda, cuda:N, mps.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="The base model's precision: auto (bfloat16 on CUDA, float32 on the CPU), ...")
    ] = None,
) -> None:
    """Run a MemoryTuningJob on this machine (relative paths resolve against the manifest's folder)."""
    try:
        job = resolve_local_paths(load_job_file(job_file), job_file.parent)
        from memtune.trainer.tuning.job import run_job

        summary = run_job(job, use_cached_model=use_cached_model, device=device, dtype=dtype)
    except USER_ERRORS as error:
        raise fail(error) from None
    table = Table(title=f"MemoryTuningJob {job.metadata.name}", show_header=False)
    for key, value in summary.to_dict().items():
        if key == "schedule":
            value = ", ".join(f"{name} {number:.3g}" for name, number in value.items())
        if key != "unlearned":
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    if summary.unlearned_count:
        console.print(Panel(summary.unlearned_message(), title="NOT LEARNED", border_style="bold red"), highlight=False)
    if compare_base:
        _compare_with_base(str(summary.run_dir), data.load_examples(job.spec.dataset), device, dtype)


# The base model's column shows how it answers, not all it says: it gets this many tokens and the table this many
# characters of them (a cut answer ends in "…").
BASE_PREVIEW_TOKENS = 24
BASE_PREVIEW_CHARS = 80


def _preview(text: str, cut: bool) -> str:
    text = " ".join(text.split())
    if len(text) > BASE_PREVIEW_CHARS:
        return text[: BASE_PREVIEW_CHARS - 1].rstrip() + "…"
    return text + " …" if cut else text


def _compare_with_base(
    run_dir: str, examples: list[data.Example], device: str | None = None, dtype: str | None = None
) -> None:
    from memtune.trainer.mome.model import MemoryModel

    questions = [example.input for example in examples]
    with MemoryModel.load(run_dir, device, dtype) as model:
        tuned = model.generate(questions)
        # The run's own (verified) base weights without memory: the base model, bit for bit, without loading it again.
        base = MemoryModel(model.base).generate(questions, max_new_tokens=BASE_PREVIEW_TOKENS)
    table = Table(title="Base model vs memory-tuned model", show_lines=True)
    for column in ("question", "expected", f"base answer (first {BASE_PREVIEW_TOKENS} tokens)", "tuned answer"):
        table.add_column(column, overflow="fold")
    for example, before, after in zip(examples, base, tuned, strict=True):
        mark = "[green]✓[/]" if after.output.strip() == example.output.strip() else "[red]✗[/]"
        cut = before.finish_reason == "length"
        table.add_row(example.input, example.output, _preview(before.output, cut), f"{mark} {after.output}")
    Console().print(table)


@app.command()
def generate(
    model: Annotated[
        str, typer.Option(help="Job output folder, run folder, or base model alias/folder.")
    ] = "smollm2-135m-instruct",
    prompt: Annotated[list[str] | None, typer.Option(help="Question to answer (repeatable).")] = None,
    input_file: Annotated[Path | None, typer.Option(help="JSONL of objects holding the question.")] = None,
    output_file: Annotated[Path | None, typer.Option(help="Where --input-file answers go (JSONL, same order).")] = None,
    input_key: Annotated[str, typer.Option(help="Field of --input-file objects holding the question.")] = "input",
    max_new_tokens: Annotated[
        int | None,
        typer.Option(min=1, max=32768, help="Default: the run's longest trained answer + 16 (at least 128)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=512)] = 8,
    device: Annotated[str, typer.Option(help="auto (CUDA when there is one), cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16.")
    ] = "auto",
) -> None:
    """Answer questions greedily, routed through the model's memory experts.

    With --input-file, each output line is its input object with `output`, `finish_reason` ("stop", or "length" when
    cut at --max-new-tokens), `completion_tokens` and `route` ({experts, distance, gated}) added, so you can see
    which memory answered."""
    if bool(prompt) == (input_file is not None):
        raise fail(ValueError("give --prompt (one or more) or --input-file, not both"))
    try:
        if input_file:
            records = data.read_question_records(input_file, input_key)
        else:
            records = [{input_key: text} for text in prompt or []]
        from memtune.trainer.mome.model import MemoryModel

        with MemoryModel.load(model, device, dtype) as engine:
            limit = max_new_tokens or engine.default_max_new_tokens
            answers = engine.generate(
                [record[input_key] for record in records], max_new_tokens=limit, batch_size=batch_size
            )
    except (*USER_ERRORS, ValueError) as error:
        raise fail(error) from None
    lines = [
        json.dumps(
            {
                **record,
                "output": a.output,
                "finish_reason": a.finish_reason,
                "completion_tokens": a.completion_tokens,
                "route": a.route,
            },
            ensure_ascii=False,
        )
        for record, a in zip(records, answers, strict=True)
    ]
    cut = [number for number, a in enumerate(answers, 1) if a.finish_reason == "length"]
    if cut:
        which = "answer" if len(cut) == 1 else "answers"
        console.print(
            f"note: {len(cut)} {which} ({', '.join(map(str, cut[:10]))}{', …' * (len(cut) > 10)}) stopped at the "
            f"limit of {limit} new tokens (finish_reason: length), not at end-of-turn: raise --max-new-tokens for "
            "the rest",
            highlight=False,
        )
    if output_file:
        output_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        console.print(f"wrote {len(lines)} answers to {output_file}")
    elif input_file:
        print("\n".join(lines))
    else:
        for answer in answers:
            print(answer.output)


@app.command()
def forget(
    model: Annotated[str, typer.Option(help="The memory: a run folder, or a job output (its newest run); or s3://.")],
    input_file: Annotated[
        Path, typer.Option(help="JSONL of objects holding the questions to forget.", exists=True, dir_okay=False)
    ],
    input_key: Annotated[str, typer.Option(help="Field of --input-file objects holding the question.")] = "input",
    output: Annotated[
        str | None, typer.Option(help="Job output for the new run (default: the one the memory's job wrote to).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto (CUDA when there is one), cpu, cuda, cuda:N.")] = None,
) -> None:
    """Forget questions: commit a new run of the memory without their experts, keys and index entries, so the base
    model answers them again. Nothing is trained; the other questions' experts are copied byte for byte.
    Prints the new run's location last."""
    try:
        records = data.read_question_records(input_file, input_key)
        text = input_file.read_text(encoding="utf-8")
        # read_question_records skips blank lines (JSON whitespace only): number the records by their file lines
        lines = [n for n, raw in enumerate(text.removeprefix("\ufeff").split("\n"), 1) if raw.strip(" \t\r")]
        from memtune.trainer.tuning.incremental import forget_job
        from memtune.trainer.tuning.job import run_job

        job = forget_job(model, [(line, r[input_key]) for line, r in zip(lines, records, strict=True)], output)
        summary = run_job(job, show_progress=False, device=device)
    except USER_ERRORS as error:
        raise fail(error) from None
    console.print(f"forgot {len(records)} question(s): {summary.run_dir}", highlight=False)
    print(summary.run_dir)


@app.command()
def upload(
    dataset: Annotated[str, typer.Argument(help="JSONL or JSON-array file (path, file:// or s3://).")],
    input_key: Annotated[str, typer.Option(help="Field holding the question.")] = "input",
    output_key: Annotated[str, typer.Option(help="Field holding the answer.")] = "output",
    store: Annotated[
        str | None, typer.Option(help="Dataset store root (default ~/.cache/memtune, or s3://...).")
    ] = None,
) -> None:
    """Validate a dataset and store it by content; prints its id for `dataset: {id: ...}`."""
    try:
        examples = data.read_examples(dataset, input_key, output_key)
        stored = data.store_dataset(examples, store)
    except USER_ERRORS as error:
        raise fail(error) from None
    said = {
        "written": "stored",
        "present": "already stored",
        "repaired": "stored (the copy there was corrupt and has been replaced)",
    }
    console.print(f"{len(examples)} records {said[stored.state]} at {stored.uri}", highlight=False)
    print(stored.id)


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Job output (its newest committed run), run folder, s3:// or base model.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option(help="The `model` clients pass (default: the job output's folder name).")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=512, help="Most sequences decoded together.")] = 16,
    batch_window_ms: Annotated[
        float, typer.Option(min=0, max=1000, help="How long an idle server waits for more requests to batch.")
    ] = 10.0,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")] = 1024,
    default_max_tokens: Annotated[
        int,
        typer.Option(min=1, help="max_tokens when a request gives none (at least the run's longest answer + 16)."),
    ] = 128,
    reload_interval: Annotated[
        float, typer.Option(min=0, help="Seconds between checks for a newer run (0: POST /admin/reload only).")
    ] = 0.0,
    device: Annotated[str, typer.Option(help="auto (CUDA when there is one), cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16.")
    ] = "auto",
) -> None:
    """Serve a model over HTTP in the OpenAI wire format (/v1/chat/completions, /v1/completions, /v1/models),
    with /healthz, /readyz, /metrics and POST /admin/reload. Set MEMTUNE_API_KEY to require a bearer key.

    Exits 1 when the model cannot be verified or loaded, 75 when storage failed in a way a retry may fix."""
    try:
        from memtune.serving.cli import run_server
    except ModuleNotFoundError as error:
        message = f"memtune serve needs the `serve` extra (pip install 'memtune[serve]'): {error}"
        raise fail(ValueError(message)) from None
    try:
        code = run_server(
            model,
            host=host,
            port=port,
            name=served_model_name,
            max_batch=max_batch,
            batch_window_s=batch_window_ms / 1000,
            max_tokens_limit=max_tokens_limit,
            default_max_tokens=default_max_tokens,
            reload_interval_s=reload_interval,
            device=device,
            dtype=dtype,
        )
    except USER_ERRORS as error:
        raise fail(error) from None
    raise typer.Exit(code=code)


@app.command("push-model")
def push_model(
    model: Annotated[str, typer.Argument(help="Base model alias or local Hugging Face folder.")],
    uri: Annotated[str, typer.Argument(help="Where it goes: s3://bucket/models/name (or a new local folder).")],
) -> None:
    """Publish a base model for `baseModel: s3://...`: files first, a manifest of their sha256 last.

    Trainer pods and `memtune generate` fetch it once and verify every checksum before loading it."""
    try:
        from memtune.trainer.mome.base import publish_model

        manifest = publish_model(model, uri)
    except USER_ERRORS as error:
        raise fail(error) from None
    console.print(f"published {len(manifest['files'])} files (model sha256 {manifest['model']['sha256'][:12]}…)")
    print(uri)


@app.command()
def train(
    spec: Annotated[Path, typer.Option(help="MemoryTuningJob manifest (YAML).", exists=True, dir_okay=False)],
) -> None:
    """Run one rank of a job as a trainer pod does (under torchrun for several ranks); exit 1 = permanent failure."""
    from memtune.trainer.tuning import pod

    raise typer.Exit(code=pod.main(["--spec", str(spec)]))


@app.command()
def crd() -> None:
    """Print the MemoryTuningJob CustomResourceDefinition generated from memtune/spec.py."""
    from memtune.crd import crd_yaml

    print(crd_yaml(), end="")


def _register_optional_commands() -> None:
    from memtune.evaluation.cli import register_commands as register_evaluation

    register_evaluation(app)
    try:
        from memtune.cluster import register_commands
    except ModuleNotFoundError as error:
        if error.name != "kubernetes":
            raise
        return  # installed without the `operator` extra: no cluster commands
    register_commands(app)


_register_optional_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
