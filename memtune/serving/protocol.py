"""The OpenAI wire format the server accepts, and its error bodies.

Requests are validated here, before any token is computed; every refusal names the offending field (`param`) the
way OpenAI's API does: `{"error": {"message", "type", "param", "code"}}` with a 4xx status. Fields that change
what OpenAI would return but that this server does not implement (several choices, log-probabilities, tools,
penalties) are refused rather than silently ignored; harmless ones (`user`, `metadata`, ...) are ignored.

Two deliberate differences from OpenAI, both because a tuned memory is asked like `memtune generate`:
  - greedy by default: `temperature` absent means 0 (OpenAI's default is 1);
  - `/v1/completions` wraps each prompt in the model's chat template, as training did (a memory answers questions).
`min_tokens` (as in vLLM) is accepted as an extension: end-of-turn is suppressed until that many tokens exist.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP_STRINGS = 4  # OpenAI's limit


class APIError(Exception):
    """An error the client caused (4xx) or the server met (5xx), rendered as OpenAI's error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only one choice per prompt")
    frequency_penalty: float | None = Field(default=None, ge=0.0, le=0.0, description="penalties are not implemented")
    presence_penalty: float | None = Field(default=None, ge=0.0, le=0.0, description="penalties are not implemented")
    logit_bias: dict[str, float] | None = Field(default=None, max_length=0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = Field(default=None, le=False, description="log-probabilities are not implemented")
    tools: list[Any] | None = Field(default=None, max_length=0, description="tools are not implemented")

    @field_validator("messages")
    @classmethod
    def _has_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(message.role == "user" for message in messages):
            raise ValueError("needs at least one message with role 'user'")
        return messages

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """Messages for the chat template ('developer' is OpenAI's newer name for 'system')."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool | None = Field(default=None, le=False, description="echo is not implemented")
    logprobs: int | None = Field(default=None, le=0, description="log-probabilities are not implemented")
    best_of: int | None = Field(default=None, ge=1, le=1, description="only one choice per prompt")
    suffix: str | None = Field(default=None, max_length=0, description="suffix is not implemented")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("needs at least one prompt")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def requested_tokens(self) -> int | None:
        return self.max_tokens


def parse_request(model: type[_Request], body: bytes) -> Any:
    """JSON bytes -> a validated request, or APIError(400) naming the first offending field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        if problem["type"] == "json_invalid":
            raise APIError(400, f"the request body is not valid JSON: {problem['msg']}") from None
        param = ".".join(str(part) for part in problem["loc"]) or None
        message = problem["msg"]
        field = model.model_fields.get(str(problem["loc"][0])) if problem["loc"] else None
        if field is not None and field.description and problem["type"] != "missing":
            message = f"{message} ({field.description})"
        raise APIError(400, f"{param}: {message}" if param else message, param=param) from None
