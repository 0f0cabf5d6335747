"""The baseline ladder: base → prompt → RAG → LoRA → MoME, on the same evaluation sets and decoding settings.

    from memtune.evaluation.ladder import Ladder, run_ladder
    ladder = Ladder(methods=("base", "rag", "mome"), base_model="smollm2-135m-instruct",
                    train=examples, mome_model="runs/facts-demo")
    scores = run_ladder(ladder, {"facts": examples}, locality_prompts=["What is the capital of France?"])

`base`, `prompt`, `rag` and `lora` answer through transformers here (causal.py: greedy, documented stop rule);
`mome` through the engine's MemoryModel (`memtune.trainer.mome.model`), which decodes the same way. Every rung runs
on `device` (auto: CUDA when there is one), the base model in the engine's dtype for that device (bfloat16 on CUDA,
float32 on the CPU); LoRA trains its adapter on the same device with float32 weights. Each method answers
every set; locality compares its answers on `locality_prompts` with the base model's (the `prompt`/`rag` rungs
see those prompts framed as they frame everything). Given the locality prompts' answers and `teacher_forced`, it
is also measured token by token: forcing those answers, the share of positions where the method's argmax is the base
model's (the knowledge-editing papers' Loc). Models are loaded once and dropped before the next rung.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memtune.data import Example
from memtune.evaluation import causal, prompts
from memtune.evaluation.lora import LoraSettings
from memtune.evaluation.metrics import agreement, mean, token_accuracy, token_agreement
from memtune.evaluation.scoring import MethodScore, score_answers

log = logging.getLogger(__name__)

METHODS = ("base", "prompt", "rag", "lora", "mome")
Answerer = Callable[[Sequence[str]], list[str]]


class TokenPredictor(Protocol):
    """Anything that can be teacher-forced: per item, (argmax tokens, gold answer tokens)."""

    def predict_tokens(self, questions: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]: ...


class LadderError(ValueError):
    """The ladder's settings cannot run: every problem, by option name, in one message."""


@dataclass(frozen=True)
class Ladder:
    methods: Sequence[str]
    base_model: str
    train: Sequence[Example] = ()
    """Training pairs: few-shot source (`prompt`), retrieval corpus (`rag`), LoRA's data (`lora`)."""
    mome_model: str | None = None
    """The tuned model for `mome`: a job output folder or a run folder."""
    lora: LoraSettings | None = None
    system: str = prompts.DEFAULT_SYSTEM
    few_shot: int = 3
    rag_k: int = 3
    max_new_tokens: int = causal.DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 8
    db: str | Path | None = None
    """SQLite database: expected outputs are gold SQL, scored by execution."""
    teacher_forced: bool = False
    """Also report teacher-forced token accuracy (the knowledge-editing papers' metric)."""
    device: str | None = None
    """Where every rung runs: None/"auto" (CUDA when there is one), "cpu", "cuda", "cuda:N"."""

    def problems(self) -> list[str]:
        found = [
            f"--baselines: unknown method {m!r} (choose from {', '.join(METHODS)})"
            for m in self.methods
            if m not in METHODS
        ]
        if not self.methods:
            found.append("--baselines: name at least one method")
        needs_train = [m for m in ("prompt", "rag", "lora") if m in self.methods]
        if needs_train and not self.train:
            found.append(f"--train (or --job): {', '.join(needs_train)} need the training pairs")
        if "mome" in self.methods and not self.mome_model:
            found.append("--model (or --job): mome needs the tuned model's output or run folder")
        if "lora" in self.methods and self.lora is None:
            found.append("--job or --lora-steps: lora needs its step count")
        if self.db is not None and not Path(self.db).is_file():
            found.append(f"--db: no SQLite file at {self.db}")
        return found


@dataclass
class _Rung:
    """One loaded method: how it answers, and optionally how it is teacher-forced and its training curve."""

    answer: Answerer
    frame: Callable[[Sequence[str]], list[str]]
    predictor: TokenPredictor | None = None
    loss_curve: list[float] | None = None


class _CausalPredictor:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model, self.tokenizer = model, tokenizer

    def predict_tokens(self, questions: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        return causal.teacher_forced_predictions(self.model, self.tokenizer, questions, answers)


def _bare(questions: Sequence[str]) -> list[str]:
    return list(questions)


def _load_rung(method: str, ladder: Ladder) -> _Rung:
    """Load what `method` needs on `ladder.device` (models are imported here, lazily, so scoring stays torch-free)."""
    from memtune.trainer.mome.devices import resolve_device

    device = resolve_device(ladder.device)
    if method == "mome":
        from memtune.evaluation.mome import read_loss_curve
        from memtune.trainer.mome.artifacts import resolve_run
        from memtune.trainer.mome.model import MemoryModel

        assert ladder.mome_model is not None  # Ladder.problems() checked it
        if resolve_run(ladder.mome_model) is None:
            raise LadderError(f"--model: {ladder.mome_model} holds no run: train it first (memtune run JOB)")
        model = MemoryModel.load(ladder.mome_model, device)
        assert model.run is not None  # a run folder was found above

        def answer(questions: Sequence[str]) -> list[str]:
            out = model.generate(list(questions), max_new_tokens=ladder.max_new_tokens, batch_size=ladder.batch_size)
            return [a.output.strip() for a in out]

        predictor = model if ladder.teacher_forced else None
        return _Rung(answer, _bare, predictor, read_loss_curve(model.run.folder))
    if method == "lora":
        from memtune.evaluation.lora import train_lora

        assert ladder.lora is not None  # Ladder.problems() checked it
        result = train_lora(ladder.base_model, ladder.train, ladder.lora, device=device)
        return _Rung(lambda q: result.answer(q, max_new_tokens=ladder.max_new_tokens), _bare, result, result.losses)
    from memtune.trainer.mome.base import load_base_model
    from memtune.trainer.mome.devices import resolve_dtype

    base = load_base_model(ladder.base_model, dtype=resolve_dtype(None, device))
    base.model.to(device)

    def greedy(questions: Sequence[str]) -> list[str]:
        return causal.greedy_answers(
            base.model, base.tokenizer, questions, max_new_tokens=ladder.max_new_tokens, batch_size=ladder.batch_size
        )

    predictor = _CausalPredictor(base.model, base.tokenizer)
    if method == "base":
        return _Rung(greedy, _bare, predictor)
    if method == "prompt":
        return _Rung(
            greedy, lambda q: prompts.few_shot_questions(q, ladder.train, ladder.system, ladder.few_shot), predictor
        )
    from memtune.evaluation.retrieval import HiddenStateEmbedder, Retriever, load_minilm, minilm_available

    embedder = load_minilm() if minilm_available() else HiddenStateEmbedder("base-model", base.model, base.tokenizer)
    log.info("rag: embeddings from %s", embedder.name)
    retriever = Retriever(ladder.train, embedder)
    return _Rung(
        greedy, lambda q: prompts.retrieved_questions(q, retriever.nearest(q, ladder.rag_k), ladder.system), predictor
    )


def _teacher_forced(rung: _Rung, examples: Sequence[Example]) -> float | None:
    if rung.predictor is None:
        return None
    questions = rung.frame([e.input for e in examples])
    pairs = rung.predictor.predict_tokens(questions, [e.output for e in examples])
    return mean([token_accuracy(predicted, target) for predicted, target in pairs])


def _argmax_tokens(rung: _Rung, prompts: Sequence[str], answers: Sequence[str]) -> list[list[int]]:
    assert rung.predictor is not None  # callers check
    return [predicted for predicted, _ in rung.predictor.predict_tokens(rung.frame(prompts), answers)]


def run_ladder(
    ladder: Ladder,
    sets: Mapping[str, Sequence[Example]],
    locality_prompts: Sequence[str] = (),
    on_method: Callable[[dict[str, list[MethodScore]]], None] | None = None,
    locality_answers: Sequence[str] = (),
) -> dict[str, list[MethodScore]]:
    """Every method on every named set; returns the scores per set, methods in ladder order.

    `on_method` sees the scores so far after each method (long CPU runs write a partial report with it).
    `locality_answers` (one per locality prompt) adds teacher-forced locality when the ladder is teacher-forced.
    """
    problems = ladder.problems() + [f"--data: evaluation set {name!r} is empty" for name, s in sets.items() if not s]
    if locality_answers and len(locality_answers) != len(locality_prompts):
        problems.append(f"--locality: {len(locality_answers)} answers for {len(locality_prompts)} prompts")
    if problems:
        raise LadderError("cannot run the ladder:\n" + "\n".join(f"  - {p}" for p in problems))
    results: dict[str, list[MethodScore]] = {name: [] for name in sets}
    base_locality: list[str] | None = None
    base_tokens: list[list[int]] | None = None
    forced_locality = ladder.teacher_forced and bool(locality_answers)
    order = sorted(ladder.methods, key=METHODS.index)
    from memtune.trainer.mome.devices import resolve_device

    # resolved once (a CPU-only machine is reported once, not per rung); every rung then loads on that device
    ladder = replace(ladder, device=str(resolve_device(ladder.device)))
    if locality_prompts and "base" not in order:
        order = ["base", *order]  # locality is measured against the base model's answers
    for method in order:
        log.info("ladder: %s", method)
        started = time.monotonic()
        rung = _load_rung(method, ladder)
        locality = None
        if locality_prompts:
            answers = rung.answer(rung.frame(locality_prompts))
            if method == "base":
                base_locality = answers
            assert base_locality is not None  # base runs first
            locality = agreement(answers, base_locality)
        locality_tf = None
        if forced_locality and rung.predictor is not None:
            tokens = _argmax_tokens(rung, locality_prompts, locality_answers)
            base_tokens = tokens if method == "base" else base_tokens
            assert base_tokens is not None  # base runs first and can always be teacher-forced
            locality_tf = mean([token_agreement(t, b) for t, b in zip(tokens, base_tokens, strict=True)])
        for name, examples in sets.items() if method in ladder.methods else ():
            answers = rung.answer(rung.frame([e.input for e in examples]))
            tf = _teacher_forced(rung, examples) if ladder.teacher_forced else None
            items = score_answers(examples, answers, ladder.db)
            results[name].append(
                MethodScore(
                    method,
                    items,
                    locality=locality,
                    locality_tf=locality_tf,
                    token_accuracy=tf,
                    loss_curve=rung.loss_curve,
                    seconds=time.monotonic() - started,
                )
            )
        del rung
        gc.collect()  # one model in memory at a time
        if on_method is not None and method in ladder.methods:
            on_method(results)
    return results
