"""The ladder on synthetic facts: can each method recall a dozen made-up facts, and leave other answers alone?

    .venv/bin/python bench/eval_facts.py                       # all rungs, LoRA at the job's 100 steps
    .venv/bin/python bench/eval_facts.py --baselines base,rag,mome

Tuned on examples/facts.jsonl (12 fictional facts) with examples/facts-job.yaml; scored on the trained questions,
on paraphrases of them (examples/facts-paraphrases.jsonl), and for locality on examples/unrelated.jsonl.
"""

from __future__ import annotations

from eval_common import ROOT, arguments, job_ladder, ladder_report, mome_note, train_mome

from memtune.data import load_examples, read_examples
from memtune.evaluation.cli import read_prompts
from memtune.spec import load_job_file, resolve_local_paths


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    examples = ROOT / "examples"
    job = resolve_local_paths(load_job_file(examples / "facts-job.yaml"), examples)
    summary = train_mome(job, args.fresh) if "mome" in args.methods else {}
    train = load_examples(job.spec.dataset)
    ladder = job_ladder(job, args, train, teacher_forced=True)
    sets = {
        "Trained questions (facts.jsonl)": train,
        "Paraphrased questions (facts-paraphrases.jsonl)": read_examples(str(examples / "facts-paraphrases.jsonl")),
    }
    notes = [
        "Locality: share of unrelated prompts (unrelated.jsonl) answered exactly as the base model answers them.",
        "The prompt rung shows only 3 of the 12 facts; RAG retrieves the 3 nearest, so it can answer all of them.",
        mome_note(summary),
    ]
    ladder_report(
        "facts",
        "Ladder on synthetic facts (SmolLM2-135M-Instruct)",
        ladder,
        sets,
        read_prompts(examples / "unrelated.jsonl", "input"),
        {"job": "examples/facts-job.yaml"},
        notes,
        keep=args.keep,
    )


if __name__ == "__main__":
    main()
