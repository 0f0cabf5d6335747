"""The HTTP layer (FastAPI): OpenAI-compatible endpoints over the batcher, health, metrics and reload.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models[/{id}]      (OpenAI wire format, SSE streaming)
    GET /healthz (process up)   GET /readyz (model verified and loaded)   GET /metrics (Prometheus)
    POST /admin/reload          (serve the newest committed run of the job output, if newer)

Each choice carries `route` next to OpenAI's fields: {"run", "experts", "distance", "gated", "reason"} for a tuned
model, null for a base model. `system_fingerprint` names the run that answered. With an API key set, /v1 and /admin
require `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from memtune import storage
from memtune.redact import redact
from memtune.serving.batcher import Batcher, Failed, Finished, Routed, Sampling, Sequence, Text
from memtune.serving.engine import Encoded, ServedModel
from memtune.serving.metrics import ServerMetrics
from memtune.serving.protocol import APIError, ChatRequest, CompletionRequest, parse_request
from memtune.serving.reload import Reloader, ReloadRefused, default_model_name

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    name: str | None = None
    """The model id clients pass (default: from the model reference, see reload.default_model_name)."""
    max_batch: int = 16
    batch_window_s: float = 0.01
    """How long a batch waits for more requests after the first (idle server only: busy, they queue anyway)."""
    max_tokens_limit: int = 1024
    default_max_tokens: int = 128
    """max_tokens when a request gives none (raised to a run's answer budget: see Server.default_max_tokens)."""
    reload_interval_s: float = 0.0
    """Poll for a newer run this often (0: only POST /admin/reload)."""
    api_key: str | None = None
    device: str | None = None
    """None/"auto": CUDA when torch sees a GPU, else the CPU (as `memtune generate --device`)."""
    dtype: str | None = None
    """None/"auto": bfloat16 on CUDA, float32 on the CPU."""


class Server:
    """State shared by the handlers: the batcher (which owns the model), metrics, the reloader."""

    def __init__(self, ref: str, options: ServeOptions, on_load_failure: Callable[[BaseException], None] | None):
        self.ref = ref
        self.options = options
        self.name = options.name or default_model_name(ref)
        self.metrics = ServerMetrics()
        self.batcher = Batcher(self.metrics, max_batch=options.max_batch, window_s=options.batch_window_s)
        self.reloader = Reloader(ref, self.name, self.batcher, self.metrics, device=options.device, dtype=options.dtype)
        self.load_error: BaseException | None = None
        self.created = int(time.time())
        self._on_load_failure = on_load_failure
        self._stop = threading.Event()

    def start(self) -> None:
        self.batcher.start()
        threading.Thread(target=self._load, name="memtune-load", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.batcher.stop()

    def _load(self) -> None:
        try:
            self.reloader.load()
        except BaseException as error:
            log.error("cannot serve %s: %s", redact(self.ref), redact(str(error)))
            self.load_error = error
            if self._on_load_failure is not None:
                self._on_load_failure(error)
            return
        if self.options.reload_interval_s > 0:
            self.reloader.poll(self.options.reload_interval_s, self._stop)

    @property
    def ready(self) -> bool:
        return self.batcher.model is not None and self.batcher.alive

    def model_for(self, requested: str) -> ServedModel:
        model = self.batcher.model
        if model is None:
            raise APIError(503, f"model {self.name!r} is still loading", code="model_loading", kind="server_error")
        if requested != self.name:
            raise APIError(
                404, f"the model {requested!r} does not exist; this server serves {self.name!r}",
                param="model", code="model_not_found",
            )  # fmt: skip
        return model

    def default_max_tokens(self, model: ServedModel) -> int:
        """max_tokens for a request that gives none: --default-max-tokens, raised to the run's answer budget (its
        longest trained answer plus a margin, as `memtune generate`) so that no trained answer is cut by default;
        never above --max-tokens-limit."""
        return min(max(self.options.default_max_tokens, model.answer_budget), self.options.max_tokens_limit)

    def sampling(self, request: ChatRequest | CompletionRequest, prompt_tokens: int, model: ServedModel) -> Sampling:
        """Per-sequence settings, or APIError(400) for a request that cannot fit."""
        room = model.max_context - prompt_tokens
        prompt_param = "messages" if isinstance(request, ChatRequest) else "prompt"
        if room < 1:
            raise APIError(
                400, f"the prompt is {prompt_tokens} tokens; this model's context is {model.max_context} tokens",
                param=prompt_param, code="context_length_exceeded",
            )  # fmt: skip
        requested = request.requested_tokens()
        limit = self.options.max_tokens_limit
        if requested is not None and requested > limit:
            raise APIError(400, f"max_tokens {requested} is above this server's limit of {limit}", param="max_tokens")
        if requested is not None and requested > room:
            raise APIError(
                400,
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({requested}) exceeds this model's context "
                f"of {model.max_context} tokens",
                param="max_tokens", code="context_length_exceeded",
            )  # fmt: skip
        max_tokens = requested if requested is not None else min(self.default_max_tokens(model), room)
        if request.min_tokens > max_tokens:
            raise APIError(400, f"min_tokens {request.min_tokens} is above max_tokens {max_tokens}", param="min_tokens")
        return Sampling(
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            temperature=request.temperature or 0.0,
            top_p=request.top_p if request.top_p is not None else 1.0,
            stop=request.stop_list(),
            seed=request.seed,
        )

    def sequence(
        self, request: ChatRequest | CompletionRequest, encode: Callable[[ServedModel], Encoded], model: ServedModel
    ) -> Sequence:
        try:
            prompt = encode(model)
        except ValueError as error:
            raise APIError(
                400, str(error), param="messages" if isinstance(request, ChatRequest) else "prompt"
            ) from None
        sampling = self.sampling(request, len(prompt.ids), model)
        return Sequence(encode, prompt, model, sampling, asyncio.get_running_loop())

    def check_key(self, request: Request) -> None:
        key = self.options.api_key
        if not key:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise APIError(401, "invalid API key (Authorization: Bearer <key>)", code="invalid_api_key")

    def observe(self, endpoint: str, status: int, started: float) -> None:
        self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)


@dataclass
class _Outcome:
    """What one sequence produced, gathered from its events."""

    text: str = ""
    route: dict[str, object] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0
    route_sent: bool = False
    """Streaming: the route went out on this choice's first chunk."""


async def _events(sequences: list[Sequence]) -> AsyncIterator[tuple[int, Routed | Text | Finished | Failed]]:
    """Events of several sequences as they come, until each has finished (or one failed)."""
    merged: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def forward(index: int, sequence: Sequence) -> None:
        while True:
            event = await sequence.events.get()
            await merged.put((index, event))
            if isinstance(event, Finished | Failed):
                return

    tasks = [asyncio.create_task(forward(i, s)) for i, s in enumerate(sequences)]
    try:
        open_count = len(sequences)
        while open_count:
            index, event = await merged.get()
            yield index, event
            if isinstance(event, Failed):
                return
            if isinstance(event, Finished):
                open_count -= 1
    finally:
        for task in tasks:
            task.cancel()
        for sequence in sequences:  # the client left early or one failed: stop generating for the others
            sequence.cancelled = True


def _usage(sequences: list[Sequence], outcomes: list[_Outcome]) -> dict[str, int]:
    prompt = sum(s.prompt_tokens for s in sequences)
    completion = sum(o.completion_tokens for o in outcomes)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def create_app(
    ref: str, options: ServeOptions | None = None, on_load_failure: Callable[[BaseException], None] | None = None
) -> FastAPI:
    """The ASGI app serving `ref` (a job output, a run folder, s3 URIs of either, or a base model alias/folder).
    The model loads in the background once the app starts: /healthz answers at once, /readyz when loaded."""
    server = Server(ref, options or ServeOptions(), on_load_failure)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        yield
        await run_in_threadpool(server.stop)

    app = FastAPI(title="memtune", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(APIError(500, f"internal error: {type(error).__name__}").body(), status_code=500)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        model = server.batcher.model
        if server.ready and model is not None:
            return JSONResponse({"ready": True, "model": server.name, **model.describe()})
        reason = f"load failed: {redact(str(server.load_error))}" if server.load_error else "loading"
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        server.check_key(request)
        model = server.batcher.model
        return {"object": "list", "data": [_model_card(server, model)] if model else []}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        server.check_key(request)
        return _model_card(server, server.model_for(model_id))

    @app.post("/admin/reload")
    async def reload(request: Request) -> JSONResponse:
        server.check_key(request)
        try:
            return JSONResponse(await run_in_threadpool(server.reloader.reload))
        except ReloadRefused as error:
            raise APIError(409, redact(str(error)), code="reload_refused") from None
        except storage.StorageError as error:
            raise APIError(503 if error.transient else 409, redact(str(error)), code="storage_error") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(server, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(server, request, "completions")

    return app


def _model_card(server: Server, model: ServedModel) -> dict[str, Any]:
    return {"id": server.name, "object": "model", "created": server.created, "owned_by": "memtune",
            "memtune": {**model.describe(), "default_max_tokens": server.default_max_tokens(model)}}  # fmt: skip


async def _complete(server: Server, request: Request, endpoint: str) -> Response:
    started = time.perf_counter()
    try:
        server.check_key(request)
        chat = endpoint == "chat"
        parsed = parse_request(ChatRequest if chat else CompletionRequest, await request.body())
        model = server.model_for(parsed.model)
        if chat:
            messages = parsed.chat()
            sequences = [server.sequence(parsed, lambda m: m.encode_chat(messages), model)]
        else:
            sequences = [
                server.sequence(parsed, lambda m, text=text: m.encode_question(text), model)
                for text in parsed.prompts()
            ]
    except APIError as error:
        server.observe(endpoint, error.status, started)
        raise
    for sequence in sequences:
        server.batcher.submit(sequence)
    identity = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    if parsed.stream:
        stream = _stream(server, endpoint, parsed, sequences, identity, started)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    outcomes = [_Outcome() for _ in sequences]
    async for index, event in _events(sequences):
        if isinstance(event, Failed):
            server.observe(endpoint, event.error.status, started)
            raise event.error
        _apply(server, endpoint, outcomes[index], event, started)
    server.observe(endpoint, 200, started)
    _count(server, sequences, outcomes)
    choices = [
        {"index": i, **({"message": {"role": "assistant", "content": o.text}} if chat else {"text": o.text}),
         "finish_reason": o.finish_reason, "logprobs": None, "route": o.route}
        for i, o in enumerate(outcomes)
    ]  # fmt: skip
    body = {
        "id": identity,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": server.name,
        "system_fingerprint": _fingerprint(outcomes),
        "choices": choices,
        "usage": _usage(sequences, outcomes),
    }
    return JSONResponse(body)


def _apply(server: Server, endpoint: str, outcome: _Outcome, event: Routed | Text | Finished, started: float) -> None:
    if isinstance(event, Routed):
        outcome.route = event.route
    elif isinstance(event, Text):
        if not outcome.text and event.delta:
            server.metrics.first_token.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        outcome.text += event.delta
    else:
        outcome.finish_reason = event.reason
        outcome.completion_tokens = event.completion_tokens


def _count(server: Server, sequences: list[Sequence], outcomes: list[_Outcome]) -> None:
    server.metrics.prompt_tokens.inc(sum(s.prompt_tokens for s in sequences))
    server.metrics.completion_tokens.inc(sum(o.completion_tokens for o in outcomes))
    for outcome in outcomes:
        if outcome.route is not None:
            server.metrics.count_route(bool(outcome.route["gated"]))


def _fingerprint(outcomes: list[_Outcome]) -> str | None:
    runs = {str(o.route["run"]) for o in outcomes if o.route is not None}
    return f"memtune-{runs.pop()}" if len(runs) == 1 else None


async def _stream(
    server: Server,
    endpoint: str,
    request: ChatRequest | CompletionRequest,
    sequences: list[Sequence],
    identity: str,
    started: float,
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format; `route` rides on each choice's first chunk."""
    chat = endpoint == "chat"
    outcomes = [_Outcome() for _ in sequences]
    created = int(time.time())
    status = 200

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _sse({"id": identity, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": server.name, "choices": choices, **extra})  # fmt: skip

    try:
        async for index, event in _events(sequences):
            if isinstance(event, Failed):
                status = event.error.status
                yield _sse(event.error.body())
                return
            _apply(server, endpoint, outcomes[index], event, started)
            outcome = outcomes[index]
            choice: dict[str, Any] = {"index": index, "finish_reason": None, "logprobs": None}
            if isinstance(event, Routed):
                if not chat:
                    continue  # completions have no role chunk: the route rides on the first text
                choice["delta"] = {"role": "assistant", "content": ""}
            elif isinstance(event, Text):
                if not event.delta:
                    continue
                choice |= {"delta": {"content": event.delta}} if chat else {"text": event.delta}
            else:
                choice |= {"delta": {}} if chat else {"text": ""}
                choice["finish_reason"] = event.reason
            if not outcome.route_sent:
                choice["route"] = outcome.route
                outcome.route_sent = True
            yield chunk([choice])
        if request.include_usage:
            yield chunk([], usage=_usage(sequences, outcomes))
        yield _sse("[DONE]")
        _count(server, sequences, outcomes)
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code): the sequences were cancelled in _events
        raise
    finally:
        server.observe(endpoint, status, started)
