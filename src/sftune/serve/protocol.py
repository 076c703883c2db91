"""The OpenAI request and response shapes the server speaks, and OpenAI's error shape.

Requests are pydantic models in strict mode (max_tokens "5" or true is refused, as OpenAI refuses it): a
field the server does not know is refused (400, naming it), and an option it knows but does not implement
is accepted only at its neutral value (n=1, penalties 0, ...), so a client never gets an answer that
silently ignored what it asked for. The rules beyond types (role order, tool results, surrogates) are in
serve/rules.py; a broken rule is a validation error whose context names the field (`param`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sftune.generation import GenerationOptions
from sftune.serve import rules


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# Options the server knows but does not implement: accepted only at these neutral values.
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "top_logprobs": 0,
           "logit_bias": {}, "echo": False, "best_of": 1, "suffix": ""}


def refused(err: rules.Refused) -> PydanticCustomError:
    """A broken rule as a pydantic error whose context carries OpenAI's `param` (see server._error_handlers)."""
    return PydanticCustomError("invalid_request", "{message}", {"message": str(err), "param": err.param})


def _checked(rule: Callable[[Any], None], value: Any) -> Any:
    """`value`, once `rule` holds for it."""
    try:
        rule(value)
    except rules.Refused as err:
        raise refused(err) from None
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64; torch takes all of it
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the operator's logs; no effect on the answer
    n: int | None = 1
    presence_penalty: float | None = 0
    frequency_penalty: float | None = 0
    logprobs: bool | int | None = False
    top_logprobs: int | None = 0
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, body: Any) -> Any:
        found = rules.lone_surrogate(body)
        if found is not None:
            raise refused(rules.Refused(found, "holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without "
                                               "its pair), which is no text; send valid UTF-16 pairs or the "
                                               "character itself"))
        return body

    @model_validator(mode="after")
    def _stream_options_with_stream(self) -> "_Request":
        if self.stream_options is not None and not self.stream:
            raise refused(rules.Refused("stream_options", "is only allowed when stream is true"))
        return self

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(value)}")
        return value

    def unsupported(self) -> None:
        """Refuse (400) a known option set to something the server does not do."""
        for name, neutral in NEUTRAL.items():
            value = getattr(self, name, None)
            if value is not None and value != neutral and not (neutral == {} and not value):
                raise ApiError(400, f"{name}={value!r} is not supported by this server (it answers with "
                                    f"{name}={neutral!r}); drop the option or set it to {neutral!r}", param=name,
                               code="unsupported_parameter")

    def options(self, default_max_tokens: int) -> GenerationOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationOptions(max_new_tokens=self.requested_max_tokens or default_max_tokens,
                                 temperature=self.temperature, top_p=self.top_p, stop=tuple(s for s in stop if s),
                                 seed=self.seed)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _openai_order(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _checked(rules.check_messages, messages)

    @field_validator("tools")
    @classmethod
    def _openai_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return tools if tools is None else _checked(rules.check_tools, tools)

    def unsupported(self) -> None:
        super().unsupported()
        if self.tool_choice not in (None, "auto", "none"):
            raise ApiError(400, f"tool_choice={self.tool_choice!r} is not supported: the model decides whether to "
                                "call a tool ('auto'), or gets no tools ('none')", param="tool_choice",
                           code="unsupported_parameter")
        if self.response_format not in (None, {"type": "text"}):
            raise ApiError(400, "response_format other than {'type': 'text'} is not supported (no constrained "
                                "decoding); ask for JSON in the prompt instead", param="response_format",
                           code="unsupported_parameter")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens or self.max_completion_tokens

    @property
    def active_tools(self) -> list[dict[str, Any]] | None:
        return None if self.tool_choice == "none" else (self.tools or None)


class CompletionRequest(_Request):
    """POST /v1/completions: raw text in, raw text out (no chat template)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool | None = False
    best_of: int | None = 1
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list[str]) -> str | list[str]:
        return _checked(rules.check_prompt, prompt)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_message(text: str, calls: list[dict] | None, reasoning: str | None = None,
                 reasons: bool = False) -> dict[str, Any]:
    """The assistant message of a reply: its text, its tool calls in OpenAI's shape when it made any, and for
    a model that reasons (`reasons`) its reasoning as `reasoning_content` (None when it wrote none), as vLLM
    answers."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None if calls else text}
    if reasons:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message


def chat_chunk(chunk_id: str, model: str, created: int, delta: dict[str, Any],
               finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def now() -> int:
    return int(time.time())


FinishReason = Literal["stop", "length", "tool_calls"]
