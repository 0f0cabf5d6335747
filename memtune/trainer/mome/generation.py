"""Generation with routing: routing is decided once per prompt, inside the prefill, then decoding keeps the KV cache.

    from memtune.trainer.mome.generation import load_generator
    generator = load_generator("runs/facts")        # a job output (latest run), a run folder, or a base model
    generator = load_generator("s3://bucket/facts")  # the same on s3: fetched and verified into a local cache
    [answer] = generator.generate(["Where was Lumdor Pragridor born?"])
    answer.output, answer.route                      # "Katevsha", {"experts": [17], "distance": 0.0, "gated": False}

Per batch, one model.generate(...):
    prefill, at the key layer's input:  keys  = mean over each prompt's question tokens   (B, d)
                                        route = router(keys, prompts)                       experts, weights (B, k)
    prefill, expert layers:             experts at the last prompt token only (gated rows weigh 0)
    each decoded token:                 experts on (see experts.py)
The key layer sits below every expert layer, so the route is known before any expert runs: no extra pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import torch
from torch import nn
from transformers import LogitsProcessorList

from memtune import storage
from memtune.data import memtune_home
from memtune.manifest import MANIFEST_NAME, IntegrityError
from memtune.spec import is_remote
from memtune.trainer.mome.artifacts import RunInfo, committed_runs, load_memory, read_run, runs_dir
from memtune.trainer.mome.base import LoadedModel, decoder_layers, folder_sha256, load_base_model
from memtune.trainer.mome.experts import ExpertHooks
from memtune.trainer.mome.keys import pool_keys, tokenize_prompt
from memtune.trainer.mome.memory import Memory
from memtune.trainer.mome.router import Routing


@dataclass
class Answer:
    output: str
    route: dict[str, object] | None
    """{"experts": [...], "distance": float, "gated": bool}; None for a plain base model."""


class Generator:
    def __init__(self, base: LoadedModel, memory: Memory | None = None, run: RunInfo | None = None):
        self.base = base
        self.memory = memory
        self.run = run
        self._hooks = ExpertHooks(base.model, memory.layout.expert_layers) if memory is not None else None
        self._router = memory.router() if memory is not None else None

    def close(self) -> None:
        """Detach the expert hooks so the base model object is plain again."""
        if self._hooks is not None:
            self._hooks.remove()

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        min_new_tokens: int = 0,
        logits_processor: LogitsProcessorList | None = None,
    ) -> list[Answer]:
        """Greedy answers; `min_new_tokens` ignores end-of-turn until then (latency measured at a fixed length);
        `logits_processor` constrains decoding (constrained.py), routing is unchanged."""
        answers: list[Answer] = []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            answers.extend(self._generate_batch(batch, max_new_tokens, min_new_tokens, logits_processor))
        return answers

    def _generate_batch(
        self,
        prompts: list[str],
        max_new_tokens: int,
        min_new_tokens: int,
        logits_processor: LogitsProcessorList | None = None,
    ) -> list[Answer]:
        tokenizer = self.base.tokenizer
        tokens = [tokenize_prompt(tokenizer, prompt) for prompt in prompts]
        width = max(len(t.ids) for t in tokens)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(t.ids)) + t.ids for t in tokens])  # (B, T) left-padded
        attention_mask = torch.tensor([[0] * (width - len(t.ids)) + [1] * len(t.ids) for t in tokens])  # (B, T)
        question_mask = torch.tensor([[False] * (width - len(t.ids)) + t.question_mask for t in tokens])  # (B, T)
        options = {
            "attention_mask": attention_mask,
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min_new_tokens,
            "do_sample": False,
            "pad_token_id": pad,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if logits_processor is not None:
            options["logits_processor"] = logits_processor
        if self.memory is None or self._router is None or self._hooks is None:
            return [Answer(text, None) for text in self._decode(self.base.model.generate(input_ids, **options), width)]
        decided: list[Routing] = []
        handle = decoder_layers(self.base.model)[self.memory.layout.key_layer].register_forward_pre_hook(
            partial(self._route_prefill, prompts, question_mask, decided)
        )
        try:
            output = self.base.model.generate(input_ids, **options)
        finally:
            handle.remove()
            self._hooks.clear()
        routing = decided[0]
        texts = self._decode(output, width)
        return [Answer(text, routing.describe(row)) for row, text in enumerate(texts)]

    def _route_prefill(
        self, prompts: list[str], question_mask: torch.Tensor, decided: list[Routing], module: nn.Module, args: tuple
    ) -> None:
        """Pre-hook of the key layer: on the prefill (the first pass), key the prompts, route, arm the experts."""
        if decided or self._router is None or self._hooks is None or self.memory is None:
            return
        routing = self._router(pool_keys(args[0], question_mask), prompts)  # args[0]: (B, T, d) entering the layer
        decided.append(routing)
        if not bool(routing.gated.all()):  # nobody routed: leave the hooks off, exactly the base model
            params = self.memory.params
            self._hooks.set_route(params["A"], params["B"], routing.route, last_only=True)

    def _decode(self, output: torch.Tensor, prompt_width: int) -> list[str]:
        return [
            text.strip()
            for text in self.base.tokenizer.batch_decode(output[:, prompt_width:], skip_special_tokens=True)
        ]


def fetch_run(uri: str) -> Path:
    """Download the latest committed run of an s3 job output (or one run) into `$MEMTUNE_HOME/runs-cache`.

    `storage.fetch_folder` verifies every checksum before the folder appears, and reuses an identical copy.
    """
    run = storage.latest_committed_run(uri) or uri  # not a job output: a run, which must hold a manifest
    name = f"{PurePosixPath(run.rstrip('/')).name}-{hashlib.sha256(run.encode()).hexdigest()[:12]}"
    target = memtune_home() / "runs-cache" / name
    storage.fetch_folder(run, target)
    return target


def resolve_run(model_ref: str | Path) -> Path | None:
    """A run folder, the latest committed run of a job output, or None when `model_ref` is neither."""
    if is_remote(str(model_ref)):
        return fetch_run(str(model_ref))
    path = Path(str(model_ref).removeprefix("file://")).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return path
    if runs_dir(path).is_dir():
        runs = committed_runs(path)
        if not runs:
            raise IntegrityError(f"{path}: no committed run under runs/ (every run lacks {MANIFEST_NAME})")
        return runs[-1]
    return None


def load_generator(model_ref: str) -> Generator:
    """Checksums first (run files, then the base model's weights), deserialisation after."""
    run_folder = resolve_run(model_ref)
    if run_folder is None:
        return Generator(load_base_model(model_ref))
    run = read_run(run_folder)
    base = load_base_model(run.base_model)
    actual = folder_sha256(base.path)
    if actual != base.sha256:
        raise IntegrityError(f"{base.path}: base model files changed since conversion (sha256 {actual[:12]}…)")
    return Generator(base, load_memory(run, actual), run)
