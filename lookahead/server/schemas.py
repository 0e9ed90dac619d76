"""What goes over the wire: request and response bodies (pydantic), the OpenAI error object, and
the defensive reading of a JSON body.

The request models are strict ("0.5" is not a number) and ignore unknown fields; the response
models forbid extra fields, so the OpenAPI schema served at ``/openapi.json`` says exactly what
the server sends (tests/test_server_schema.py checks every answer against it). Bodies are read
by `decode_body`, not by FastAPI, so that hostile JSON (nesting thousands of levels deep, an
integer of thousands of digits, NaN or Infinity) is a 400 in the error schema, never a 500.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lookahead.errors import LookaheadError, PromptError

MAX_JSON_DEPTH = 64  # deepest nesting read in a request body (an OpenAI request needs about 6)
INT_MAX_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300  # Python's int-string limit

# --------------------------------------------------------------------------------------------
# Errors in the OpenAI schema


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status  # HTTP status code
        self.message = message  # what went wrong and how to fix it
        self.type = type_  # OpenAI error type, e.g. "invalid_request_error"
        self.param = param  # the request field at fault, if any
        self.code = code  # machine-readable code, e.g. "model_not_found"
        self.headers: dict[str, str] = {}  # extra response headers, e.g. Retry-After

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(headers or {})})


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    """A 400 invalid_request_error naming the field at fault."""
    return APIError(400, message, param=param, code=code)


def from_lookahead_error(exc: LookaheadError, prompt_param: str) -> APIError:
    """A reasoner error (bad prompt, bad override) as a 400."""
    message = str(exc)
    if isinstance(exc, PromptError):
        code = "context_length_exceeded" if "context" in message else "invalid_prompt"
        return APIError(400, message, param=prompt_param, code=code)
    return APIError(400, message, code="invalid_value")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "literal"}


def from_validation_error(exc: ValidationError) -> APIError:
    """The first pydantic error as a 400 naming the field (``messages.0.content``)."""
    error = exc.errors()[0]
    parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]
    param = ".".join(parts) or None
    got = error.get("input")
    detail = error["msg"]
    if error["type"] != "missing":
        detail += f" (got {_short_json(got)})"
    return APIError(400, f"{param}: {detail}" if param else detail, param=param, code="invalid_type")


def _short_json(value: Any) -> str:
    """The start of ``value`` as JSON (or its type's name when it is not JSON data)."""
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError, RecursionError):
        return type(value).__name__


# --------------------------------------------------------------------------------------------
# Reading a body


def decode_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; any body that is not a sane JSON object is a 400 `APIError`."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:  # the C decoder gives up near 1,000 levels
        raise _too_deep(None) from None
    except ValueError:  # an integer literal beyond Python's int-string limit
        raise APIError(
            400,
            f"the request body holds an integer of more than {INT_MAX_DIGITS} digits; send a shorter number",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    check_tree(data)
    return data


def check_tree(data: dict[str, Any] | list[Any]) -> None:
    """400 for JSON nested deeper than `MAX_JSON_DEPTH`, holding NaN / Infinity, or text that is not
    valid Unicode (a lone surrogate such as ``"\\ud800"``, which no tokenizer or UTF-8 answer takes).
    Iterative: no recursion however deep the data."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(data, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(path)
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(key, str) and not _is_unicode(key):
                raise _not_unicode((*path, key), "a key")
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1, (*path, key)))
            elif isinstance(value, str) and not _is_unicode(value):
                raise _not_unicode((*path, key), "the text")
            elif isinstance(value, float) and not math.isfinite(value):
                param = _param((*path, key))
                raise APIError(
                    400,
                    f"{param}: {value} is not a finite number; send a finite number (JSON has no NaN or Infinity)",
                    param=param,
                    code="invalid_value",
                )


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _param(path: tuple[Any, ...]) -> str:
    """``("messages", 0, "content")`` -> ``messages.0.content`` (lone surrogates escaped)."""
    return ".".join(str(p) for p in path).encode("utf-8", "backslashreplace").decode("utf-8")


def _not_unicode(path: tuple[Any, ...], what: str) -> APIError:
    param = _param(path)
    return APIError(
        400,
        f"{param}: {what} holds a lone surrogate (an escape such as \\ud800 without its pair), which is not "
        "valid Unicode; send UTF-8 text",
        param=param,
        code="invalid_value",
    )


def _too_deep(path: tuple[Any, ...] | None) -> APIError:
    param = _param(path[:8]) if path else None
    return APIError(
        400,
        f"the request body is nested more than {MAX_JSON_DEPTH} levels deep; send a flatter object",
        param=param,
        code="invalid_json",
    )


# --------------------------------------------------------------------------------------------
# Request bodies (strict types: "0.5" is not a number; unknown fields are ignored)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Strict):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"] = Field(description="Only 'text' (images and audio are not supported).")
    text: str = Field(description="The text of this part.")


class ChatMessage(_Strict):
    """One OpenAI chat message."""

    role: Literal["system", "developer", "user", "assistant"] = Field(description="'developer' is read as 'system'.")
    content: str | list[TextPart] | None = Field(default=None, description="Text, or a list of text parts.")

    def to_dict(self) -> dict[str, str]:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    """OpenAI ``stream_options``."""

    include_usage: bool = Field(default=False, description="Send a last chunk with `usage` (and no choices).")


class CompletionFields(_Strict):
    """Fields shared by both completion endpoints."""

    model: str | None = Field(default=None, description="Must equal the served model name; omitted = the served model.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Completion budget (tokens); at most the config's max_total_tokens."
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature of the target (and draft)."
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling threshold.")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="Sampling seed (a 64-bit integer).")
    n: int | None = Field(default=None, description="Choices per request; only 1 is supported.")
    stream: bool = Field(default=False, description="Answer as server-sent events, one chunk per committed step.")
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options.")
    stop: str | list[str] | None = Field(
        default=None, description="Validated (at most 4) but ignored: steps end on the configured step delimiter."
    )
    mode: str | None = Field(
        default=None, description="Lookahead extra: 'ar', 'lr', 'sd' or 'lr+sd'; omitted = the server's configured mode."
    )
    gamma: int | None = Field(default=None, description="Lookahead extra: lookahead depth for this request (steps).")
    verifier: str | None = Field(
        default=None, description="Lookahead extra: verifier name for this request, e.g. 'normalized'."
    )
    speculation: bool = Field(default=True, description="Lookahead extra: false = 'ar' (the target alone).")


class ChatCompletionRequest(CompletionFields):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(description="The conversation; at least one non-empty user message.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Newer name of max_tokens (wins over it).")


class CompletionRequest(CompletionFields):
    """Body of ``POST /v1/completions``."""

    prompt: str | list[str] = Field(
        description="The question (wrapped by the config's prompt_template); a list must hold exactly one string."
    )


# --------------------------------------------------------------------------------------------
# Response bodies (documentation of what the server sends; extra fields forbidden)


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Exact):
    """The OpenAI error object."""

    message: str = Field(description="What went wrong and how to fix it.")
    type: str = Field(description="invalid_request_error, rate_limit_error, timeout_error or server_error.")
    param: str | None = Field(description="The request field at fault, e.g. 'messages.0.role'.")
    code: str | None = Field(description="Machine-readable code, e.g. 'model_not_found', 'invalid_type'.")


class ErrorResponse(_Exact):
    """Every error answer (4xx and 5xx), also as an event of a stream that fails midway."""

    error: ErrorDetail


class Usage(_Exact):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LookaheadStats(_Exact):
    """The ``lookahead`` field of an answer: what this request's generation did."""

    mode: str = Field(description="ar, lr, sd or lr+sd.")
    finish_reason: str = Field(description="eos, answer, length, stop or cancelled (before the OpenAI mapping).")
    rounds: int
    steps: int = Field(description="Committed steps.")
    drafted_steps: int
    accepted_steps: int
    acceptance_rate: float
    acceptance_by_depth: list[float]
    steps_per_round: float
    draft_s: float = Field(description="Seconds spent in the draft model.")
    target_s: float = Field(description="Seconds spent in the target model.")
    verify_s: float = Field(description="Seconds spent in the verifier.")
    wall_time_s: float = Field(description="Seconds of the whole generation.")
    queue_s: float = Field(description="Seconds waiting for the reasoner before starting.")
    answer: str | None = Field(description="The extracted final answer, if any.")


class StepInfo(_Exact):
    """The ``lookahead`` field of a streamed step chunk."""

    step: int = Field(description="0-based position of the step in the completion.")
    round: int
    depth: int = Field(description="1-based lookahead depth in its round.")
    source: Literal["draft", "target"]
    tokens: int


FinishReason = Literal["stop", "length"]


class AssistantMessage(_Exact):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Exact):
    index: int
    finish_reason: FinishReason
    logprobs: None
    message: AssistantMessage


class ChatCompletionResponse(_Exact):
    """Answer of ``POST /v1/chat/completions`` (not streamed)."""

    id: str
    object: Literal["chat.completion"]
    created: int = Field(description="Unix seconds.")
    model: str
    choices: list[ChatChoice]
    usage: Usage
    lookahead: LookaheadStats


class CompletionChoice(_Exact):
    index: int
    finish_reason: FinishReason
    logprobs: None
    text: str


class CompletionResponse(_Exact):
    """Answer of ``POST /v1/completions`` (not streamed)."""

    id: str
    object: Literal["text_completion"]
    created: int = Field(description="Unix seconds.")
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    lookahead: LookaheadStats


class ChatDelta(_Exact):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Exact):
    index: int
    finish_reason: FinishReason | None
    logprobs: None
    delta: ChatDelta


class ChatCompletionChunk(_Exact):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice] = Field(description="Empty in the include_usage chunk.")
    lookahead: StepInfo | LookaheadStats | None = Field(default=None, description="Per step; the stats at the end.")
    usage: Usage | None = None


class CompletionChunkChoice(_Exact):
    index: int
    finish_reason: FinishReason | None
    logprobs: None
    text: str


class CompletionChunk(_Exact):
    """One server-sent event of a streamed completion."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice] = Field(description="Empty in the include_usage chunk.")
    lookahead: StepInfo | LookaheadStats | None = Field(default=None, description="Per step; the stats at the end.")
    usage: Usage | None = None


class ModelCard(_Exact):
    id: str = Field(description="The served model name, the `model` requests send.")
    object: Literal["model"]
    created: int = Field(description="Unix seconds the server started.")
    owned_by: str


class ModelList(_Exact):
    object: Literal["list"]
    data: list[ModelCard]


class Health(_Exact):
    status: Literal["ok"]
    model: str
    mode: str = Field(description="The configured mode.")
    in_flight: int = Field(description="Requests admitted and not finished (running or waiting).")
    running: int = Field(description="Requests running now; their engine calls share batches.")
    waiting: int = Field(description="Requests admitted and waiting for a running slot.")
    max_concurrency: int = Field(description="Most requests running at once (--max-concurrency).")
    max_queue: int = Field(description="Most requests waiting beyond those (--max-queue); more get 429.")
    batches: dict[str, float] = Field(
        description="The in-process batcher's counters: engine calls, rows, merged calls, calls that joined a "
        "running decode loop, mean and max rows, rows decoding together per pass, cancelled calls, seconds "
        "queued and busy, calls waiting, clients."
    )
    caches: dict[str, dict[str, int]] = Field(
        description="Per loaded engine (target, draft), what its caches hold next to their bounds "
        "(the in-process engine's prefix cache: rows, max_rows, tokens, max_tokens)."
    )


REQUEST_MODELS = (ChatCompletionRequest, CompletionRequest)  # documented by hand (bodies are read by decode_body)
CHUNK_MODELS = (ChatCompletionChunk, CompletionChunk)  # documented inside the text/event-stream answers
