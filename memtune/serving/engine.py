"""The server's one door into the engine: load a model (base + memory), encode prompts, run a batch step by step.

Everything the server knows about the trainer's objects is in this file, so that moving to another engine API
changes this file only. A batch is one call of `MemoryModel.generate_batch` (the split prefill keys and routes every
row at once, then transformers' generate decodes with the KV cache, exactly as `MemoryModel.generate`), with three
hooks the batcher needs:

    on_route(routes)              once, after routing (before any expert runs or any token is decoded)
    adjust(step, scores) -> scores  every step, on the next-token logits (B, V): per-row sampling, min_tokens
    on_step(tokens) -> done       every step, with each row's new token (B,): per-row stop, length, cancellation

Loading is split in two so that a reload never disturbs a batch in flight: `prepare` (any thread: fetch, verify
every checksum, deserialise, move to the device) and `Prepared.activate` (the batch thread, between batches: build
the MemoryModel, which attaches the expert hooks). A newer run on the same base model reuses the loaded base weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from memtune import storage
from memtune.manifest import MANIFEST_NAME, IntegrityError, read_manifest, sha256_file
from memtune.spec import is_remote
from memtune.trainer.mome.artifacts import RunInfo, committed_runs, load_memory, read_run, resolve_run, runs_dir
from memtune.trainer.mome.base import LoadedModel, folder_sha256, load_base_model
from memtune.trainer.mome.devices import resolve_device, resolve_dtype
from memtune.trainer.mome.keys import PromptTokens, tokenize_prompt
from memtune.trainer.mome.memory import Memory
from memtune.trainer.mome.model import MemoryModel

log = logging.getLogger(__name__)

Route = dict[str, object]
"""{"run": str, **Routing.describe(row)} (experts, distance, gated, the gate's reason): which memory answered."""


@dataclass
class Encoded:
    """A tokenized request: its chat-prompt tokens (the question's marked: the routing key) and the question text."""

    tokens: PromptTokens
    question: str
    """The text the router's gate reads: the (last) user message."""

    @property
    def ids(self) -> list[int]:
        return self.tokens.ids


def latest_run_name(ref: str) -> str | None:
    """Name of the newest committed run of a job output; None when `ref` is not a job output (nothing to reload).

    Cheap (a listing): the poller calls it every few seconds."""
    if is_remote(ref):
        uri = storage.latest_committed_run(ref)  # None for a single run (no runs/ under it)
        return uri.rstrip("/").rsplit("/", 1)[-1] if uri else None
    path = Path(ref.removeprefix("file://")).expanduser()
    if not runs_dir(path).is_dir():
        return None
    runs = committed_runs(path)
    return runs[-1].name if runs else None


@dataclass
class Prepared:
    """A verified, deserialised model not yet attached to the base model's layers."""

    base: LoadedModel
    memory: Memory | None
    run: RunInfo | None
    manifest_sha256: str | None
    run_id: str | None

    def activate(self) -> ServedModel:
        """Attach the expert hooks (call from the thread that runs batches, between batches)."""
        return ServedModel(MemoryModel(self.base, self.memory, self.run), self.manifest_sha256, self.run_id)


def prepare(
    ref: str, current: ServedModel | None = None, *, device: str | None = None, dtype: str | None = None
) -> Prepared:
    """Fetch and verify (manifest checksums, then the base model's sha256) before deserialising anything.

    `current`: the model being served; its base weights are reused when the new run was trained on the same ones.
    device/dtype: as `MemoryModel.load` (None: CUDA in bfloat16 when there is a GPU, else the CPU in float32).
    Raises IntegrityError (a file does not match its manifest), ModelError, StorageError, SpecError (a device or
    dtype this machine cannot run)."""
    where = resolve_device(device)
    precision = resolve_dtype(dtype, where)
    run_folder = resolve_run(ref)
    if run_folder is None:
        base = load_base_model(ref, dtype=precision)
        base.model.to(where)
        return Prepared(base, None, None, None, None)
    run = read_run(run_folder)  # every file's sha256 against the manifest
    manifest_sha256 = sha256_file(run_folder / MANIFEST_NAME)  # the run's identity: it vouches for every file
    # The run id as written (a fetched copy's folder is named `<run id>-<hash of its URI>`).
    run_id = str(read_manifest(run_folder).get("run_id") or run_folder.name)
    if current is not None and current.base.sha256 == run.base_sha256:
        base = current.base
    else:
        base = load_base_model(run.base_model, dtype=precision)
        actual = folder_sha256(base.path)
        if actual != base.sha256:
            raise IntegrityError(f"{base.path}: base model files changed since conversion (sha256 {actual[:12]}…)")
        base.model.to(where)
    # lazy: the bank stays in its memory-mapped shards, routed experts are read (and kept hot) on demand
    return Prepared(base, load_memory(run, base.sha256, lazy=True), run, manifest_sha256, run_id)


class ServedModel:
    """One model as served: a MemoryModel (a base model, optionally a memory) and the identity of its run."""

    def __init__(self, model: MemoryModel, manifest_sha256: str | None = None, run_id: str | None = None):
        self.model = model
        self.base = model.base
        self.tokenizer = model.tokenizer
        self.eos_token_id: int = self.tokenizer.eos_token_id
        config = model.base.model.config
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_context: int = int(context or 2048)
        self.answer_budget: int = model.default_max_new_tokens
        """Tokens that cover the run's longest trained answer plus a margin (at least 128; 128 for a base model)."""
        self.run_name = run_id
        """The run id (the name of its folder under the job output's runs/); None for a base model."""
        self.manifest_sha256 = manifest_sha256

    def close(self) -> None:
        """Detach the expert hooks and release the bank's files (the base weights may live on in the next model)."""
        self.model.close()

    def describe(self) -> dict[str, object]:
        run, memory = self.model.run, self.model.memory
        return {
            "run": self.run_name,
            "manifest_sha256": self.manifest_sha256,
            "base_model": self.base.model_id if run is None else run.base_model,
            "base_sha256": self.base.sha256,
            "experts": memory.num_experts if memory is not None else 0,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
        }

    def encode_question(self, question: str) -> Encoded:
        """A question in the single-turn chat prompt (what training and `memtune generate` use)."""
        return _encoded(tokenize_prompt(self.tokenizer, question), question)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> Encoded:
        """A conversation; the last user message is the question that routes. One user message alone is encoded
        exactly as `encode_question` encodes it."""
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        if len(messages) == 1:
            return self.encode_question(question)
        if not self.tokenizer.chat_template:
            raise ValueError("this model has no chat template: send a single user message")
        prompt = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        encoding = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        return _encoded(_mark_question(encoding, prompt, question), question)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def run_batch(
        self,
        prompts: Sequence[Encoded],
        *,
        max_new_tokens: int,
        on_route: Callable[[list[Route | None]], None],
        adjust: Callable[[int, torch.Tensor], torch.Tensor],
        on_step: Callable[[list[int]], list[bool]],
    ) -> None:
        """Decode a batch with the engine's routing; see the module docstring for the hooks."""
        width = max(len(p.ids) for p in prompts)

        def routed(routes: list[dict[str, object] | None]) -> None:
            on_route([None if route is None else {"run": self.run_name, **route} for route in routes])

        self.model.generate_batch(
            [p.tokens for p in prompts],
            [p.question for p in prompts],
            max_new_tokens=max_new_tokens,
            on_route=routed,
            logits_processor=LogitsProcessorList([_Adjust(width, adjust)]),
            stopping_criteria=StoppingCriteriaList([_Step(on_step)]),
        )


def _encoded(tokens: PromptTokens, question: str) -> Encoded:
    """Refuse (ValueError, a 400) a prompt the engine could not key: its question must end before its last token."""
    if tokens.question_mask[-1]:
        raise ValueError("the chat prompt ends inside the question (no turn marker after it)")
    return Encoded(tokens, question)


def _mark_question(encoding: dict, prompt: str, question: str) -> PromptTokens:
    """As `tokenize_prompt`, for a prompt built from several messages: mark the tokens of the last `question`."""
    text = question.strip()
    start = prompt.rfind(text)
    if not text or start < 0:
        raise ValueError(f"question {question!r} does not appear verbatim in its chat prompt")
    end = start + len(text)
    mask = [begin < end and stop > start for begin, stop in encoding["offset_mapping"]]
    return PromptTokens(list(encoding["input_ids"]), mask, list(encoding["offset_mapping"]), start)


class _Adjust(LogitsProcessor):
    def __init__(self, prompt_width: int, adjust: Callable[[int, torch.Tensor], torch.Tensor]):
        self.prompt_width = prompt_width
        self.adjust = adjust

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.adjust(input_ids.shape[1] - self.prompt_width, scores)


class _Step(StoppingCriteria):
    """Sees each row's newest token right after it is chosen; returns which rows are done."""

    def __init__(self, on_step: Callable[[list[int]], list[bool]]):
        self.on_step = on_step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return torch.tensor(self.on_step(input_ids[:, -1].tolist()), dtype=torch.bool, device=input_ids.device)
