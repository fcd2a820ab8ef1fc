"""The request bodies the server accepts (OpenAI's fields; unknown fields are refused) and
OpenAI-style error bodies."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by both endpoints. Ranges are checked by `SamplingParams` (a 400 with its
    message); pydantic only checks types (a 422)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0  # OpenAI's default; send 0 for greedy
    top_p: float = 1.0
    top_k: int = 0  # an extension (vLLM has it too): 0 = off
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None  # accepted and ignored
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


class CompletionRequest(SamplingFields):
    prompt: str


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    """An HTTP error with OpenAI's body."""
    return JSONResponse(error_body(message, kind, code, param), status_code=status, headers=headers)


def error_body(
    message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}} (a response or a stream event)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
