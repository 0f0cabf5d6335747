"""Batching: requests that arrive together share forward passes, routing included.

One thread owns the model. It takes the first waiting sequence, gathers whatever else arrives (a quiet window after
each arrival, at most a few windows, up to `max_batch`), and runs them as one batch: one prefill routes every row at
once (one faiss search, one key pass), then each decoding step computes every row's next token in one forward pass.
Each row keeps its own `max_tokens`, `stop`, `temperature` and `seed`; a finished row drops out of the stopping check
and the batch ends when every row is done. Requests that arrive while a batch runs wait for the next one (waves, not
continuous batching: the engine's `generate` owns the KV cache).

Text reaches the asyncio side as events on each sequence's queue: Routed (right after the prefill), Text deltas,
then Finished or Failed. Model swaps (reloads) are queued like requests and happen between batches, so a batch
always runs start to end on one model and no request is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from memtune.serving.engine import Encoded, Prepared, Route, ServedModel
from memtune.serving.metrics import ServerMetrics
from memtune.serving.protocol import APIError

log = logging.getLogger(__name__)
_MAX_WINDOWS = 5


@dataclass
class Sampling:
    """Per-row decoding settings (validated by the protocol layer)."""

    max_tokens: int
    min_tokens: int = 0
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Routed:
    route: Route | None


@dataclass
class Text:
    delta: str


@dataclass
class Finished:
    reason: str
    """"stop" (end of turn or a stop sequence) or "length" (max_tokens)."""
    completion_tokens: int


@dataclass
class Failed:
    error: APIError


Event = Routed | Text | Finished | Failed


class Sequence:
    """One choice to generate: a prompt, its settings, and the queue its events go to."""

    def __init__(
        self,
        encode: Callable[[ServedModel], Encoded],
        prompt: Encoded,
        model: ServedModel,
        sampling: Sampling,
        loop: asyncio.AbstractEventLoop,
    ):
        """`prompt` is `encode(model)`; `encode` runs again if a reload changes the base model (its tokenizer)."""
        self.encode = encode
        self.prompt = prompt
        self.encoded_for = model.base.sha256
        self.sampling = sampling
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self._loop = loop
        self._tokens: list[int] = []
        self._sent = 0
        self._done = False
        self._rng: torch.Generator | None = None
        if sampling.temperature > 0:
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(63)
            self._rng = torch.Generator().manual_seed(seed)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.ids)

    def emit(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server shutting down)
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)

    def adjust(self, step: int, scores: torch.Tensor, eos: int) -> None:
        """In place on this row's logits (V,): suppress end-of-turn before min_tokens; sample when temperature > 0
        (the chosen token becomes the only finite logit, so the engine's greedy pick takes it)."""
        if self._done:
            return
        if step < self.sampling.min_tokens:
            scores[eos] = float("-inf")
        if self._rng is None:
            return
        # on the host: the row's generator lives there, whatever device the model runs on
        probs = torch.softmax(scores.float().cpu() / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:  # nucleus: the smallest set of tokens holding top_p of the mass
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs >= self.sampling.top_p
            probs[order[outside]] = 0.0
        token = int(torch.multinomial(probs, 1, generator=self._rng))
        scores.fill_(float("-inf"))
        scores[token] = 0.0

    def step(self, token: int, model: ServedModel) -> bool:
        """Take this row's newest token; emit the text that is now safe to show; return True once finished."""
        if self._done:
            return True
        if self.cancelled:
            self._done = True
            return True
        if token == model.eos_token_id:
            return self._finish("stop", model)
        self._tokens.append(token)
        text = model.decode(self._tokens)
        stops = self.sampling.stop
        hits = [index for index in (text.find(stop) for stop in stops) if index >= 0]
        if hits:
            return self._finish("stop", model, text[: min(hits)])
        if len(self._tokens) >= self.sampling.max_tokens:
            return self._finish("length", model, text)
        safe = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 character decodes as U+FFFD until its last byte
        for size in range(min(safe, max((len(s) for s in stops), default=1) - 1), 0, -1):
            if any(stop.startswith(text[safe - size : safe]) for stop in stops):
                safe -= size  # might be the start of a stop sequence: hold it back
                break
        if safe > self._sent:
            self.emit(Text(text[self._sent : safe]))
            self._sent = safe
        return False

    def _finish(self, reason: str, model: ServedModel, text: str | None = None) -> bool:
        if text is None:
            text = model.decode(self._tokens)
        if len(text) > self._sent:
            self.emit(Text(text[self._sent :]))
            self._sent = len(text)
        self._done = True
        self.emit(Finished(reason, len(self._tokens)))
        return True

    def fail(self, error: APIError) -> None:
        if not self._done:
            self._done = True
            self.emit(Failed(error))


@dataclass
class _Swap:
    prepared: Prepared
    done: threading.Event = field(default_factory=threading.Event)
    result: ServedModel | None = None
    error: BaseException | None = None


class Batcher:
    """The thread that owns the model and runs every batch."""

    def __init__(self, metrics: ServerMetrics, *, max_batch: int = 16, window_s: float = 0.01):
        self.metrics = metrics
        self.max_batch = max_batch
        self.window_s = window_s
        self.model: ServedModel | None = None
        self._queue: queue.Queue[Sequence | _Swap | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="memtune-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, sequence: Sequence) -> None:
        self._queue.put(sequence)
        self.metrics.queue_depth.set(self._queue.qsize())

    def swap(self, prepared: Prepared, timeout_s: float = 600) -> ServedModel:
        """Serve `prepared` from the next batch on (blocks until swapped; call off the event loop). Sequences
        submitted before the swap run on the old model."""
        swap = _Swap(prepared)
        self._queue.put(swap)
        if not swap.done.wait(timeout_s):
            raise TimeoutError(f"the batch thread did not swap models within {timeout_s} s")
        if swap.error is not None:
            raise swap.error
        assert swap.result is not None
        return swap.result

    def _loop(self) -> None:
        pending: Sequence | _Swap | None = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is None:
                return
            if isinstance(item, _Swap):
                self._swap(item)
                continue
            batch = [item]
            started = time.monotonic()
            deadline = started + self.window_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    following = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(following, Sequence):
                    pending = following  # a swap or shutdown: after this batch
                    break
                batch.append(following)
                # Clients answered by the last batch come back within moments of each other: keep gathering while
                # they do (a quiet window after each arrival), up to a few windows in all.
                deadline = min(time.monotonic() + self.window_s, started + _MAX_WINDOWS * self.window_s)
            self.metrics.queue_depth.set(self._queue.qsize())
            self._run([sequence for sequence in batch if not sequence.cancelled])

    def _swap(self, swap: _Swap) -> None:
        try:
            new = swap.prepared.activate()
        except BaseException as error:  # reported to the caller of swap(); the old model keeps serving
            swap.error = error
            swap.done.set()
            return
        old, self.model = self.model, new
        if old is not None:
            old.close()
        swap.result = new
        swap.done.set()

    def _run(self, batch: list[Sequence]) -> None:
        model = self.model
        if not batch:
            return
        if model is None:  # requests are refused before the first load; kept for safety
            for sequence in batch:
                sequence.fail(APIError(503, "the model is not loaded yet", code="model_loading"))
            return
        ready = []
        for sequence in batch:
            try:
                if sequence.encoded_for != model.base.sha256:  # a reload changed the tokenizer's model
                    sequence.prompt = sequence.encode(model)
                    sequence.encoded_for = model.base.sha256
                ready.append(sequence)
            except ValueError as error:
                sequence.fail(APIError(400, str(error), param="messages"))
        if not ready:
            return
        self.metrics.batch_size.observe(len(ready))
        eos = model.eos_token_id

        def on_route(routes: list[Route | None]) -> None:
            for sequence, route in zip(ready, routes, strict=True):
                sequence.emit(Routed(route))

        def adjust(step: int, scores: torch.Tensor) -> torch.Tensor:
            for row, sequence in enumerate(ready):
                sequence.adjust(step, scores[row], eos)
            return scores

        def on_step(tokens: list[int]) -> list[bool]:
            return [sequence.step(token, model) for sequence, token in zip(ready, tokens, strict=True)]

        try:
            model.run_batch(
                [sequence.prompt for sequence in ready],
                max_new_tokens=max(sequence.sampling.max_tokens for sequence in ready),
                on_route=on_route,
                adjust=adjust,
                on_step=on_step,
            )
        except Exception as error:  # one bad batch must not take the server down
            log.exception("batch of %d failed", len(ready))
            for sequence in ready:
                sequence.fail(APIError(500, f"generation failed: {type(error).__name__}: {error}"))
            return
        for sequence in ready:  # the engine stopped before a row finished (it should not): say so
            sequence.fail(APIError(500, "generation ended before the sequence finished"))
