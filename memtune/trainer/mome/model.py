"""MemoryModel: a frozen causal LM and, optionally, a trained memory, as the one object that generates, scores and
routes. It owns the device, the dtype, the expert hooks, the router (built once, with the gate calibrated at
training) and the expert tensors' names; training, generation, evaluation and serving all go through it.

    from memtune.trainer.mome.model import MemoryModel
    model = MemoryModel.load("runs/facts")                 # job output (latest run), run folder, s3://..., base model
    model = MemoryModel.load("runs/facts", device="cpu", dtype="bfloat16")
    [answer] = model.generate(["Where was Lumdor Pragridor born?"])
    answer.output, answer.finish_reason, answer.completion_tokens   # "Katevsha", "stop", 6
    answer.route                                                     # {"experts": [17], "distance": 0.0, ...}

Devices (`load`, devices.py): CUDA whenever torch sees a GPU, with the base model in bfloat16 (float16 where bf16 is
missing); otherwise the CPU in float32, said in a warning at load. Model, KV cache, keys and routed experts live on
that one device. Two things stay on the host by design: the router (faiss-cpu searches host memory; a batch sends it
(B, d) float32 keys and gets (B, k) experts and weights back) and the lazy bank's shards (memory-mapped; only routed
experts are copied to the device, where an LRU keeps the hot ones; bank.py).

Generation, per batch of B prompts, left-padded to T tokens. Experts act only at the last prompt token and on
generated tokens (experts.py), so the prompt's first T-1 positions are pure base model:
    1. prefill  the base model's decoder over ids[:, :T-1], KV cache kept, experts off. Captured on the way: the key
                layer's input -> keys (B, d) = mean over each question's tokens (keys.pool_keys).
    2. route    router(keys, prompts) -> experts, weights (B, k) (router.py, the gate in gate.py); a gated row
                weighs 0 (its output is the base model's, bit for bit).
    3. decode   experts armed; transformers' generate continues from the last prompt token with that cache.
The split costs no extra pass: the last prompt token runs once, as the first decoding step.

API (stable: the OpenAI-compatible server builds on it)
    MemoryModel.load(model_ref, device=None, dtype=None, *, lazy=True) -> MemoryModel
        model_ref: a run folder, a job output folder (its latest committed run), either as s3://..., or a base model
        alias/folder (no memory). device: None/"auto", "cpu", "cuda", "cuda:N", "mps"; dtype: None/"auto",
        "float32", "bfloat16", "float16". Checksums are verified before any file is deserialised.
        Errors: SpecError (device/dtype this machine cannot run), ModelError (no such base model),
        IntegrityError (a damaged or uncommitted run, a run of another base model), StorageError (s3).
    generate(prompts: list[str], *, max_new_tokens=None, batch_size=8, min_new_tokens=0, logits_processor=None)
        -> list[Answer]
        Greedy answers in prompt order; logits_processor (a LogitsProcessorList, e.g. constrained.SchemaConstraint)
        goes to transformers' generate and steers the decoded tokens only, not routing.
        max_new_tokens None: `default_max_new_tokens` (the run's longest trained answer plus a margin, at least 128;
        128 for a bare base model). Each Answer carries output (str, stripped),
        finish_reason ("stop": end-of-turn; "length": cut at max_new_tokens), completion_tokens (generated tokens,
        end-of-turn included), prompt_tokens (chat prompt tokens) and route (None for a bare base model).
        Errors (ValueError, before any model work): a prompt that is empty or longer than the model's context with
        max_new_tokens added; max_new_tokens < 1. Calls are serialised by a lock (one batch runs at a time).
    generate_batch(prompts, questions, *, max_new_tokens, on_route=None, logits_processor=None,
                   stopping_criteria=None) -> (B, T + n) token ids
        One batch exactly as `generate` runs it, for callers that steer decoding themselves (the server: per-row
        sampling, stop strings, streaming). prompts: chat-prompt tokens (keys.tokenize_prompt, or a multi-turn
        prompt marked the same way); questions: the text each row routes by. on_route(routes) runs once, after
        routing and before the first decoded token, with Routing.describe per row (all None for a bare base model).
        logits_processor / stopping_criteria go to transformers' generate (greedy: a processor that leaves a row
        one finite logit picks that row's token; a criterion returns a (B,) bool of finished rows).
    score(questions, answers, *, end_of_turn=False, batch_size=8) -> list[Scored]
        Teacher-forced: per item, the argmax token and the surprisal (nats) of each gold answer token given the
        prompt and the gold prefix, experts exactly where generation applies them.
    predict_tokens(questions, answers) -> [(argmax tokens, gold tokens)]: evaluation's TokenPredictor.
    training_route(questions) -> Route: (N, k) experts and weights of the trained questions routed by their own
        keys, as generation routes them (what training fits). `hooks`: the expert hooks training drives.
    close(): detach the hooks and release the bank's files (also on leaving a `with` block).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList

from memtune.manifest import IntegrityError
from memtune.trainer.mome.artifacts import RunInfo, load_memory, read_run, resolve_run
from memtune.trainer.mome.bank import EXPERT_TENSORS
from memtune.trainer.mome.base import LoadedModel, folder_sha256, load_base_model
from memtune.trainer.mome.devices import EXPERT_DTYPE, resolve_device, resolve_dtype
from memtune.trainer.mome.experts import ExpertHooks, Route
from memtune.trainer.mome.keys import PromptTokens, answer_tokens, capture_layer_inputs, pool_keys, tokenize_prompt
from memtune.trainer.mome.memory import Memory
from memtune.trainer.mome.router import Routing

log = logging.getLogger(__name__)

# A bare base model's answer budget (and the floor for a run's), as `memtune generate` always had.
DEFAULT_MAX_NEW_TOKENS = 128
# Room above the longest trained answer: a paraphrased question may be answered with a few more tokens.
ANSWER_MARGIN = 16

FinishReason = Literal["stop", "length"]


@dataclass
class Answer:
    output: str
    """The generated text, special tokens dropped, surrounding whitespace stripped."""
    route: dict[str, object] | None
    """{"experts": [...], "distance": float, "gated": bool}; None for a bare base model."""
    finish_reason: FinishReason
    """"stop": the model ended its turn; "length": cut at max_new_tokens (OpenAI's meaning)."""
    completion_tokens: int
    """Tokens generated, the end-of-turn token included."""
    prompt_tokens: int
    """Tokens of the chat prompt."""


@dataclass
class Scored:
    """One teacher-forced item."""

    predicted: list[int]
    """(A,) the argmax token at each answer position, given the prompt and the gold prefix."""
    target: list[int]
    """(A,) the gold answer tokens."""
    nats: list[float]
    """(A,) -log p(gold token | prompt, gold prefix)."""
    route: dict[str, object] | None


@dataclass
class _Batch:
    """B prompts, left-padded so every prompt ends in column T-1."""

    prompts: list[str]
    tokens: list[PromptTokens]
    ids: torch.Tensor
    """(B, T) int64 on the device."""
    attention: torch.Tensor
    """(B, T) int64, 0 on padding."""
    positions: torch.Tensor
    """(B, T) int64 position of each token in its own prompt (1 on padding, as transformers' generate has it)."""
    question: torch.Tensor
    """(B, T) bool: the tokens that spell the question (the routing key's positions)."""


@dataclass
class _Prefill:
    cache: DynamicCache
    """K/V of the first T-1 columns."""
    keys: torch.Tensor
    """(B, d) float32 on the host: routing keys."""


class MemoryModel:
    """A frozen causal LM plus an optional memory; see the module docstring for the API."""

    def __init__(self, base: LoadedModel, memory: Memory | None = None, run: RunInfo | None = None):
        """Wrap `base` as it is (device and dtype untouched: `load` chooses them) and attach `memory`'s hooks."""
        self.base = base
        self.memory = memory
        self.run = run
        self.router = memory.router() if memory is not None else None
        self._hooks = ExpertHooks(base.model, memory.layout.expert_layers) if memory is not None else None
        self._lock = threading.Lock()
        config = base.model.config
        self._context = getattr(config, "max_position_embeddings", None)

    @classmethod
    def load(
        cls,
        model_ref: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        lazy: bool = True,
    ) -> MemoryModel:
        """Checksums first (run files, then the base model's weights), deserialisation after; see the docstring."""
        where = resolve_device(device)
        precision = resolve_dtype(dtype, where)
        run_folder = resolve_run(model_ref)
        if run_folder is None:
            base = load_base_model(model_ref, dtype=precision)
            base.model.to(where)
            log.info("%s on %s in %s (no memory)", model_ref, where, precision)
            return cls(base)
        run = read_run(run_folder)
        base = load_base_model(run.base_model, dtype=precision)
        actual = folder_sha256(base.path)
        if actual != base.sha256:
            raise IntegrityError(f"{base.path}: base model files changed since conversion (sha256 {actual[:12]}…)")
        memory = load_memory(run, actual, lazy=lazy)
        base.model.to(where)
        log.info("%s on %s in %s, %d experts (%s)", run_folder, where, precision, memory.num_experts, "lazy" * lazy)
        return cls(base, memory, run)

    # --- what the object owns -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.base.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.model.parameters()).dtype

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def hooks(self) -> ExpertHooks:
        """The expert hooks on the base model's MLPs (training sets routes on them directly)."""
        if self._hooks is None:
            raise ValueError("a bare base model has no expert hooks")
        return self._hooks

    @property
    def expert_names(self) -> tuple[str, ...]:
        """Names of the bank's tensors, as stored in a run's shards and keyed in a TensorBank."""
        return EXPERT_TENSORS

    @property
    def default_max_new_tokens(self) -> int:
        """The run's longest trained answer (tokens, end-of-turn included) plus ANSWER_MARGIN, at least 128."""
        longest = (self.run.meta.get("longest_answer_tokens") if self.run is not None else None) or 0
        return max(DEFAULT_MAX_NEW_TOKENS, longest + ANSWER_MARGIN if longest else 0)

    def close(self) -> None:
        """Detach the expert hooks (the base model is plain again) and release the bank's files."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        if self.memory is not None:
            self.memory.bank.close()

    def __enter__(self) -> MemoryModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- generation ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        min_new_tokens: int = 0,
        logits_processor: LogitsProcessorList | None = None,
    ) -> list[Answer]:
        """Greedy answers; `min_new_tokens` ignores end-of-turn until then (latency measured at a fixed length);
        `logits_processor` constrains decoding (constrained.py), routing is unchanged."""
        limit = self.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {limit}")
        tokens = self._tokenize(prompts, limit)
        answers: list[Answer] = []
        with self._lock:
            for start in range(0, len(prompts), batch_size):
                rows = slice(start, start + batch_size)
                batch = self._batch(list(prompts[rows]), tokens[rows])
                answers.extend(self._generate_batch(batch, limit, min_new_tokens, logits_processor))
        return answers

    @torch.no_grad()
    def generate_batch(
        self,
        prompts: Sequence[PromptTokens],
        questions: Sequence[str],
        *,
        max_new_tokens: int,
        on_route: Callable[[list[dict[str, object] | None]], None] | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
    ) -> torch.Tensor:
        """One batch of already tokenized prompts through the split prefill, routing and transformers' generate.

        prompts (B,) chat-prompt tokens with their question marked; questions (B,) the text the gate reads per row.
        Returns (B, T + n) int64 ids on the device: the prompts left-padded to T, then n <= max_new_tokens tokens
        (pad after a row's end). Raises ValueError, before any model work, for B = 0, mismatched lengths, a prompt
        ending inside its question, a prompt longer than the context with max_new_tokens added, max_new_tokens < 1.
        """
        if not prompts or len(prompts) != len(questions):
            raise ValueError(f"{len(prompts)} prompts and {len(questions)} questions: give one question per prompt")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        problems = [
            problem for number, tokens in enumerate(prompts) for problem in self._check(number, tokens, max_new_tokens)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        extra: dict[str, Any] = {"logits_processor": logits_processor, "stopping_criteria": stopping_criteria}
        with self._lock:
            batch = self._batch(list(questions), list(prompts))
            output, _ = self._decode(batch, max_new_tokens, on_route, **extra)
        return output

    def _generate_batch(
        self,
        batch: _Batch,
        max_new_tokens: int,
        min_new_tokens: int,
        logits_processor: LogitsProcessorList | None = None,
    ) -> list[Answer]:
        extra = {"min_new_tokens": min_new_tokens, "logits_processor": logits_processor}
        output, routing = self._decode(batch, max_new_tokens, None, **extra)
        return self._answers(batch, output, routing)

    def _decode(
        self,
        batch: _Batch,
        max_new_tokens: int,
        on_route: Callable[[list[dict[str, object] | None]], None] | None,
        **extra: Any,
    ) -> tuple[torch.Tensor, Routing | None]:
        """Prefill, route, arm, then transformers' generate from the last prompt token; `extra` goes to generate."""
        options = {
            "attention_mask": batch.attention,
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            **{name: value for name, value in extra.items() if value is not None},
        }
        if self.memory is None:
            if on_route is not None:
                on_route([None] * len(batch.prompts))
            return self.base.model.generate(batch.ids, **options), None
        prefill = self._prefill(batch)
        routing = self._route(batch, prefill)
        if on_route is not None:
            on_route([routing.describe(row) for row in range(len(batch.prompts))])
        self._arm(routing, last_only=True)
        try:
            output = self.base.model.generate(batch.ids, cache=prefill.cache, **options)
        finally:
            self.hooks.clear()
        return output, routing

    def _answers(self, batch: _Batch, output: torch.Tensor, routing: Routing | None) -> list[Answer]:
        width = batch.ids.shape[1]
        eos = self.tokenizer.eos_token_id
        answers = []
        for row, generated in enumerate(output[:, width:].tolist()):
            finished = eos in generated
            count = generated.index(eos) + 1 if finished else len(generated)
            text = self.tokenizer.decode(generated[:count], skip_special_tokens=True).strip()
            route = routing.describe(row) if routing is not None else None
            reason: FinishReason = "stop" if finished else "length"
            answers.append(Answer(text, route, reason, count, len(batch.tokens[row].ids)))
        return answers

    # --- teacher forcing ----------------------------------------------------------------------------------

    @torch.no_grad()
    def score(
        self, questions: Sequence[str], answers: Sequence[str], *, end_of_turn: bool = False, batch_size: int = 8
    ) -> list[Scored]:
        """Teacher-forced argmax and surprisal of each gold answer token (end-of-turn appended if asked).

        Experts act where generation applies them: the last prompt token and every answer position. Per batch:
        prefill ids[:, :T-1] (base), route, then one forward over [last prompt token, answer[:-1]] (right-padded)
        reading that cache; the logits at chunk position i predict answer token i."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        tokens = self._tokenize(questions, 0)
        tokenizer = self.tokenizer
        targets = [
            answer_tokens(tokenizer, a) if end_of_turn else list(tokenizer(a, add_special_tokens=False)["input_ids"])
            for a in answers
        ]
        scored: list[Scored] = []
        with self._lock:
            for start in range(0, len(questions), batch_size):
                rows = slice(start, start + batch_size)
                batch = self._batch(list(questions[rows]), tokens[rows])
                scored.extend(self._score_batch(batch, targets[rows]))
        return scored

    def predict_tokens(self, questions: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Per item, (argmax tokens, gold answer tokens without end-of-turn): evaluation's TokenPredictor."""
        return [(item.predicted, item.target) for item in self.score(questions, answers)]

    def _score_batch(self, batch: _Batch, targets: list[list[int]]) -> list[Scored]:
        prefill = self._prefill(batch)
        routing = self._route(batch, prefill) if self.memory is not None else None
        width = max([1, *(len(t) for t in targets)])  # (A,) at least the last prompt token
        last = batch.ids[:, -1].tolist()
        pad = self.tokenizer.pad_token_id
        chunk = [[last[row], *target[:-1]] for row, target in enumerate(targets)]
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in chunk], device=self.device)  # (B, A)
        valid = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in chunk], device=self.device)
        lengths = batch.attention.sum(1, keepdim=True)  # (B, 1) real prompt tokens
        positions = lengths - 1 + torch.arange(width, device=self.device)  # (B, A)
        attention = torch.cat([batch.attention[:, :-1], valid], dim=1)  # (B, T-1+A)
        if routing is not None:
            self._arm(routing, last_only=False)
        try:
            logits = self.base.model(
                input_ids=ids, attention_mask=attention, position_ids=positions, cache=prefill.cache, use_cache=True
            ).logits  # (B, A, V)
        finally:
            if self._hooks is not None:
                self._hooks.clear()
        scored = []
        for row, target in enumerate(targets):
            count = len(target)
            logp = torch.log_softmax(logits[row, :count].float(), dim=-1)  # (A, V)
            gold = torch.tensor(target, device=logp.device, dtype=torch.long)
            nats = (-logp.gather(1, gold[:, None])[:, 0]).tolist() if count else []
            route = routing.describe(row) if routing is not None else None
            scored.append(Scored(logp.argmax(-1).tolist(), list(target), nats, route))
        return scored

    # --- routing --------------------------------------------------------------------------------------------

    def training_route(self, questions: Sequence[str]) -> Route:
        """(N, k) experts and weights of the trained questions routed by their own keys, as generation routes them
        (their own key and anchors match, so none is gated). `questions` are the memory's, in slot order."""
        if self.memory is None or self.router is None:
            raise ValueError("a bare base model has no memory to route to")
        return self.router(self.memory.keys, list(questions)).route

    def _tokenize(self, prompts: Sequence[str], max_new_tokens: int) -> list[PromptTokens]:
        """Chat-prompt tokens of every prompt, every problem named before any model work."""
        tokens, problems = [], []
        for number, prompt in enumerate(prompts):
            try:
                prompt_tokens = tokenize_prompt(self.tokenizer, prompt)
            except ValueError as error:
                problems.append(f"prompt {number}: {error}")
                continue
            problems.extend(self._check(number, prompt_tokens, max_new_tokens))
            tokens.append(prompt_tokens)
        if problems:
            raise ValueError("; ".join(problems))
        return tokens

    def _check(self, number: int, tokens: PromptTokens, max_new_tokens: int) -> list[str]:
        """What keeps one tokenized prompt from being generated from (the key needs the question before the last
        prompt token, which only decoding runs), or []."""
        problems = []
        if len(tokens.ids) != len(tokens.question_mask) or not any(tokens.question_mask[:-1]):
            return [f"prompt {number}: no question tokens marked before the last prompt token"]
        if tokens.question_mask[-1]:
            problems.append(f"prompt {number}: the chat prompt ends inside the question (no turn marker after it)")
        if self._context is not None and len(tokens.ids) + max_new_tokens > self._context:
            problems.append(
                f"prompt {number}: {len(tokens.ids)} prompt tokens + max_new_tokens {max_new_tokens} "
                f"exceed the model's context of {self._context} tokens"
            )
        return problems

    def _batch(self, prompts: list[str], tokens: list[PromptTokens]) -> _Batch:
        width = max(len(t.ids) for t in tokens)
        pad = self.tokenizer.pad_token_id
        device = self.device
        ids = torch.tensor([[pad] * (width - len(t.ids)) + t.ids for t in tokens], device=device)
        attention = torch.tensor([[0] * (width - len(t.ids)) + [1] * len(t.ids) for t in tokens], device=device)
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
        question = torch.tensor([[False] * (width - len(t.ids)) + t.question_mask for t in tokens], device=device)
        return _Batch(prompts, tokens, ids, attention, positions, question)

    def _prefill(self, batch: _Batch) -> _Prefill:
        """The decoder over every column but the last: KV cache and routing keys (no LM head)."""
        model = self.base.model
        cache = DynamicCache(config=model.config)
        key_layer = self.memory.layout.key_layer if self.memory is not None else 0
        with capture_layer_inputs(model, [key_layer]) as captured:
            model.base_model(
                input_ids=batch.ids[:, :-1],
                attention_mask=batch.attention[:, :-1],
                position_ids=batch.positions[:, :-1],
                cache=cache,
                use_cache=True,
            )
        keys = pool_keys(captured[key_layer].float(), batch.question[:, :-1]).cpu()  # (B, d)
        return _Prefill(cache, keys)

    def _route(self, batch: _Batch, prefill: _Prefill) -> Routing:
        assert self.router is not None  # callers check for a memory
        return self.router(prefill.keys, batch.prompts)

    def _arm(self, routing: Routing, *, last_only: bool) -> None:
        """Set the hooks to the routed experts (read from the bank on demand); nobody routed: leave them off."""
        assert self.memory is not None and self._hooks is not None
        if bool(routing.gated.all()):
            return
        experts, weights = routing.route.experts, routing.route.weights  # (B, k) each, host
        needed = experts[~routing.gated].unique()  # (U,) sorted: only what ungated rows mix
        tensors = self.memory.bank.gather(needed, self.device, EXPERT_DTYPE)
        # Gated rows weigh 0: whichever loaded expert they point at adds exactly nothing.
        local = torch.searchsorted(needed, experts).clamp(max=len(needed) - 1)  # (B, k) into `needed`
        route = Route(local.to(self.device), weights.to(self.device, EXPERT_DTYPE))
        self._hooks.set_route(tensors["A"], tensors["B"], route, last_only=last_only)
