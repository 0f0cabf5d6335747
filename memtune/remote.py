"""The SDK's remote backend: `MemoryTuner(api_url=...)` answers through a `memtune serve` endpoint.

It speaks the server's OpenAI-compatible `/v1/completions` (every prompt of a call in one request, so the server
batches them) with the standard library's HTTP client: the SDK needs no extra package to call a server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class RemoteError(RuntimeError):
    """The server refused a request (its OpenAI-style error message) or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class RemoteAnswer:
    """What the local engine's Answer says, as far as the OpenAI wire format tells it."""

    output: str
    route: dict[str, object] | None
    """{"run", "experts", "distance", "gated", "reason"} as the server reports it; None for a base model."""
    finish_reason: str
    """"stop" (end of turn) or "length" (cut at the limit)."""
    completion_tokens: int | None
    """The limit for an answer cut there; None otherwise (the wire format counts tokens per request, not per
    answer)."""


class RemoteGenerator:
    """`generate(prompts, max_new_tokens=...)` like the local engine's, answered by a server."""

    def __init__(self, api_url: str, model: str | None = None, *, api_key: str | None = None, timeout_s: float = 600):
        """`api_url`: the server's root (`http://host:8000`) or its `/v1`. `model`: the served model to ask (None:
        the server's only model)."""
        if not api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must be an http:// or https:// URL, got {api_url!r}")
        self.base_url = api_url.rstrip("/").removesuffix("/v1") + "/v1"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._model = model
        self._default_max_tokens: int | None = None

    @property
    def model(self) -> str:
        if self._model is None:
            served = [card["id"] for card in self._call("GET", "/models")["data"]]
            if len(served) != 1:
                raise RemoteError(f"{self.base_url} serves {served or 'no model yet'}; name one with model_name=")
            self._model = served[0]
        return self._model

    def generate(self, prompts: list[str], *, max_new_tokens: int | None = None, **_: Any) -> list[RemoteAnswer]:
        """Greedy answers, in order. max_new_tokens None: the server's default for its model (a run's longest
        trained answer plus a margin, at least its --default-max-tokens). Raises RemoteError with the server's
        message on a refusal."""
        limit = max_new_tokens if max_new_tokens is not None else self.default_max_tokens
        body = {"model": self.model, "prompt": prompts, "max_tokens": limit, "temperature": 0}
        choices = sorted(self._call("POST", "/completions", body)["choices"], key=lambda choice: choice["index"])
        return [
            RemoteAnswer(
                choice["text"].strip(),
                choice.get("route"),
                choice["finish_reason"],
                limit if choice["finish_reason"] == "length" else None,
            )
            for choice in choices
        ]

    @property
    def default_max_tokens(self) -> int:
        """The server's max_tokens for a request that gives none, from the model's card."""
        if self._default_max_tokens is None:
            card = self._call("GET", f"/models/{urllib.parse.quote(self.model, safe='')}")
            self._default_max_tokens = int(card["memtune"]["default_max_tokens"])
        return self._default_max_tokens

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) URL
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RemoteError(f"{method} {self.base_url}{path}: {error.code} {_message(error)}", error.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise RemoteError(f"{method} {self.base_url}{path}: {error}") from None


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return error.reason
