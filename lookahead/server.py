"""An OpenAI-compatible HTTP server over one `LookaheadReasoner` (FastAPI, run with uvicorn).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (non-streaming, or
streaming as server-sent events with one chunk per committed step), ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text). Every response of a completion carries
the OpenAI fields plus ``lookahead``: the per-request statistics (mode, rounds, drafted and
accepted steps, acceptance per depth, seconds split between draft, target and verifier).

Requests may add the lookahead fields ``mode`` ("ar"/"lr"/"sd"/"lr+sd"), ``gamma``, ``verifier`` and
``speculation`` (false = "ar"); ``max_tokens``, ``temperature``, ``top_p`` and ``seed`` become
per-request config overrides. ``stop`` is validated but ignored (steps end on the configured
step delimiter). Chat messages are passed to the model as they are; a completion ``prompt`` is
the question, wrapped by the config's ``prompt_template`` like ``lookahead solve`` does.

Concurrency: the reasoner runs one generation at a time, so the server admits at most
``max_concurrency`` requests (one running, the others waiting for the reasoner) and answers 429
beyond that. Each admitted request runs start to end in its own worker thread (the reasoner's
lock belongs to the thread that iterates a stream); a timeout (504) or a client that goes away
sets a flag the worker checks after every committed step, and the worker then closes the stream
so the reasoner is freed. Every error is an OpenAI error object
``{"error": {"message", "type", "param", "code"}}``, never a traceback.

Example:
    lookahead serve --config tiny --port 8000          # scripted fake engines, no model

    >>> from lookahead import LookaheadReasoner, load_config
    >>> from lookahead.server import ServerSettings, create_app
    >>> reasoner = LookaheadReasoner.from_config(load_config("tiny"))
    >>> app = create_app(reasoner, ServerSettings(model_name="fake", max_concurrency=4))
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lookahead.config import MODES, LookaheadConfig, with_overrides
from lookahead.errors import ConfigError, LookaheadError, PromptError
from lookahead.loop import LookaheadReasoner
from lookahead.types import Result, StepRecord

logger = logging.getLogger("lookahead.server")

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
KNOWN_PATHS = (*COMPLETION_PATHS, "/v1/models", "/health", "/metrics")
OPEN_PATHS = ("/health",)  # answered without the API key (liveness probes)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)  # seconds
OUTCOME_KEY = "lookahead.outcome"  # scope key: the status a streamed response really ended with


# --------------------------------------------------------------------------------------------
# Settings


@dataclass
class ServerSettings:
    """How the server admits and limits requests (the ``lookahead serve`` options)."""

    model_name: str = ""  # the `model` clients must send; "" = derived from target.model
    api_key: str | None = None  # bearer token required on /v1/* and /metrics; None = no auth
    max_concurrency: int = 8  # requests admitted at once: 1 running + the rest waiting (requests)
    timeout_s: float = 300.0  # per request, from admission to the last byte (seconds)
    max_body_bytes: int = 1_048_576  # largest request body accepted, else 413 (bytes)

    def validate(self) -> ServerSettings:
        if self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be >= 1 (got {self.max_concurrency})")
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout must be > 0 seconds (got {self.timeout_s})")
        if self.max_body_bytes < 1:
            raise ConfigError(f"--max-body-bytes must be >= 1 (got {self.max_body_bytes})")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key is empty; give a token or leave the option out to disable auth")
        return self


def default_model_name(config: LookaheadConfig) -> str:
    """The served name: target.model as configured (a local path shortens to its last part)."""
    model = config.target.model
    return Path(model).name if ("/" in model or "\\" in model) and Path(model).exists() else model


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


def _bad(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    """A 400 invalid_request_error naming the field at fault."""
    return APIError(400, message, param=param, code=code)


def _from_lookahead_error(exc: LookaheadError, prompt_param: str) -> APIError:
    """A reasoner error (bad prompt, bad override) as a 400."""
    message = str(exc)
    if isinstance(exc, PromptError):
        code = "context_length_exceeded" if "context" in message else "invalid_prompt"
        return APIError(400, message, param=prompt_param, code=code)
    return APIError(400, message, code="invalid_value")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "literal"}


def _from_validation_error(exc: ValidationError) -> APIError:
    """The first pydantic error as a 400 naming the field (``messages.0.content``)."""
    error = exc.errors()[0]
    parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]
    param = ".".join(parts) or None
    got = error.get("input")
    detail = error["msg"]
    if error["type"] != "missing":
        detail += f" (got {json.dumps(got)[:80] if _jsonable(got) else type(got).__name__})"
    return APIError(400, f"{param}: {detail}" if param else detail, param=param, code="invalid_type")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Request bodies (strict types: "0.5" is not a number; unknown fields are ignored)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Strict):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"]  # "text" (images and audio are not supported)
    text: str  # the text of this part


class ChatMessage(_Strict):
    """One OpenAI chat message."""

    role: Literal["system", "developer", "user", "assistant"]  # "developer" is read as "system"
    content: str | list[TextPart] | None = None  # text, or a list of text parts

    def to_dict(self) -> dict[str, str]:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    """OpenAI ``stream_options``."""

    include_usage: bool = False  # send a last chunk with `usage` (and no choices)


class _CompletionFields(_Strict):
    """Fields shared by both completion endpoints."""

    model: str | None = None  # must equal the served model name; None = the served model
    max_tokens: int | None = Field(default=None, ge=1)  # completion budget (tokens)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int | None = None  # only 1 is supported
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None  # validated, ignored: steps end on the step delimiter
    # lookahead extras
    mode: str | None = None  # "ar", "lr", "sd" or "lr+sd"; None = the server's configured mode
    gamma: int | None = None  # lookahead depth for this request (steps)
    verifier: str | None = None  # verifier name for this request, e.g. "normalized"
    speculation: bool = True  # false = "ar" (the target alone)


class ChatCompletionRequest(_CompletionFields):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)  # newer name of max_tokens


class CompletionRequest(_CompletionFields):
    """Body of ``POST /v1/completions``."""

    prompt: str | list[str]  # the question; a list must hold exactly one string


# --------------------------------------------------------------------------------------------
# Admission and the worker that runs one generation


class Admission:
    """At most `limit` requests admitted at once; the rest are refused (never queued)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # requests admitted at once
        self.active = 0  # requests admitted and not finished (their worker still runs)
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1


Event = tuple[str, Any]  # ("started", prompt_tokens) | ("step", StepRecord) | ("done", Result) | ("error", exc)


class Generation:
    """One admitted request's generation, run start to end in ONE worker thread.

    The reasoner's lock is held by the thread that iterates a `ResultStream`, so creating,
    iterating and closing the stream all happen in the worker; the event loop reads `events`
    and asks it to stop through `cancel` (checked after every committed step).
    """

    def __init__(
        self,
        reasoner: LookaheadReasoner,
        prompt: str | list[dict[str, str]],
        options: dict[str, Any],
        max_tokens: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.reasoner = reasoner
        self.prompt = prompt  # the question, or chat messages
        self.options = options  # mode, speculation and config overrides for reasoner.stream
        self.max_tokens = max_tokens  # the request's max_tokens, checked against the context
        self.cancel = threading.Event()  # set by the event loop: stop after the current step
        self.events: asyncio.Queue[Event] = asyncio.Queue()  # read on the event loop
        self.started_at = time.perf_counter()  # admission time (perf_counter seconds)
        self.queue_s = 0.0  # seconds from admission until the generation could start
        self.poll_at = 0.0  # event-loop time of the next client-disconnect check (seconds)
        self._loop = loop

    def _emit(self, kind: str, payload: Any = None) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (server stopped): nobody is listening
            self.cancel.set()

    def run(self) -> None:
        """The worker: stream the steps out as events; always ends with "done" or "error"."""
        if self.cancel.is_set():
            self._emit("error", APIError(504, "cancelled before it started", "timeout_error", code="timeout"))
            return
        try:
            stream = self.reasoner.stream(self.prompt, **self.options)  # waits for the reasoner
        except LookaheadError as exc:
            self._emit("error", exc)
            return
        except Exception as exc:  # an engine failure must become a 500 answer, not a dead request
            logger.exception("generation failed before its first step")
            self._emit("error", exc)
            return
        failure: BaseException | None = None
        try:
            context = self.reasoner.target.context_length()
            prompt_tokens = stream.state.prompt_tokens
            if self.max_tokens is not None and context is not None and prompt_tokens + self.max_tokens > context:
                raise PromptError(
                    f"max_tokens={self.max_tokens} plus the prompt's {prompt_tokens} tokens exceed the model's "
                    f"context of {context} tokens; set max_tokens to at most {context - prompt_tokens}"
                )
            if not self.cancel.is_set():
                self.queue_s = time.perf_counter() - self.started_at
                self._emit("started", prompt_tokens)
                for step in stream:  # the first step waits for the reasoner's lock
                    self._emit("step", step)
                    if self.cancel.is_set():
                        break
        except LookaheadError as exc:
            failure = exc
        except Exception as exc:  # an engine failure mid-generation: report it, free the reasoner
            logger.exception("generation failed")
            failure = exc
        finally:
            stream.close()  # in this thread: the reasoner's lock is released here
        if failure is not None:
            self._emit("error", failure)
        else:
            self._emit("done", stream.result)


# --------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """Prometheus metrics of one app, in their own registry (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lookahead_requests",
            "HTTP requests by endpoint and status (a streamed answer counts with the status it ended "
            "with: 504 timeout, 499 client gone, 500 failure)",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "lookahead_prompt_tokens", "Prompt tokens of completed generations", ["mode"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "lookahead_completion_tokens",
            "Completion tokens generated (also of cut-short ones)",
            ["mode"],
            registry=self.registry,
        )
        self.drafted_steps = Counter(
            "lookahead_drafted_steps", "Draft steps proposed and judged", ["mode"], registry=self.registry
        )
        self.accepted_steps = Counter(
            "lookahead_accepted_steps", "Draft steps accepted (committed as drafted)", ["mode"], registry=self.registry
        )
        self.latency = Histogram(
            "lookahead_request_latency_seconds",
            "Seconds from receiving a completion request to its last byte",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "lookahead_requests_in_flight", "Requests admitted and not finished", registry=self.registry
        )
        self.rejected = Counter(
            "lookahead_rejected", "Requests refused with 429 because max_concurrency were admitted", registry=self.registry
        )

    def observe_result(self, result: Result) -> None:
        self.prompt_tokens.labels(result.mode).inc(result.prompt_tokens)
        self.completion_tokens.labels(result.mode).inc(result.completion_tokens)
        self.drafted_steps.labels(result.mode).inc(result.drafted_steps)
        self.accepted_steps.labels(result.mode).inc(result.accepted_steps)


# --------------------------------------------------------------------------------------------
# ASGI middlewares: metrics (outermost), auth, body size


class _MetricsMiddleware:
    """Counts every HTTP request by endpoint and status; times the completion endpoints."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        endpoint = path if path in KNOWN_PATHS else ("/v1/models/{model}" if path.startswith("/v1/models/") else "other")
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            status = scope.get(OUTCOME_KEY, status)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if endpoint in COMPLETION_PATHS:
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class _AuthMiddleware:
    """``Authorization: Bearer KEY`` on every path but /health; 401 otherwise."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.api_key):
            message = (
                "missing API key: send the header 'Authorization: Bearer KEY' (the key given to lookahead serve --api-key)"
                if not header
                else "invalid API key: send 'Authorization: Bearer KEY' with the key given to lookahead serve --api-key"
            )
            error = APIError(401, message, code="invalid_api_key")
            await error.response({"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    """Raised by the wrapped `receive` once a body grows past the limit."""


class _BodySizeMiddleware:
    """413 for a body larger than the limit, by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(
            413,
            f"the request body is larger than {self.max_bytes} bytes; send a shorter prompt "
            "(or start the server with a larger --max-body-bytes)",
            param=None,
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._error().response()(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def watch_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except _BodyTooLarge:
            if not started:
                await self._error().response()(scope, receive, send)


# --------------------------------------------------------------------------------------------
# Response shapes


FINISH_REASONS = {"eos": "stop", "answer": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


def lookahead_stats(result: Result, queue_s: float = 0.0) -> dict[str, Any]:
    """The ``lookahead`` field of a response: what this request's generation did."""
    stats = result.stats
    return {
        "mode": result.mode,
        "finish_reason": result.finish_reason,  # eos, answer, length (before the OpenAI mapping)
        "rounds": result.rounds,
        "steps": len(result.steps),
        "drafted_steps": result.drafted_steps,
        "accepted_steps": result.accepted_steps,
        "acceptance_rate": round(float(stats.get("acceptance_rate", 0.0)), 4),
        "acceptance_by_depth": [round(float(a), 4) for a in stats.get("acceptance_by_depth", [])],
        "steps_per_round": round(float(stats.get("steps_per_round", 0.0)), 4),
        "draft_s": stats.get("draft_s", 0.0),
        "target_s": stats.get("target_s", 0.0),
        "verify_s": stats.get("verify_s", 0.0),
        "wall_time_s": round(result.wall_time_s, 4),
        "queue_s": round(queue_s, 4),  # seconds waiting for the reasoner before starting
        "answer": result.answer,
    }


def _usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _step_info(step: StepRecord) -> dict[str, Any]:
    return {"step": step.index, "round": step.round, "depth": step.depth, "source": step.source, "tokens": step.tokens}


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# --------------------------------------------------------------------------------------------
# The app


class _Completion:
    """One validated completion request, ready to run."""

    def __init__(
        self,
        chat: bool,
        prompt: str | list[dict[str, str]],
        options: dict[str, Any],
        body: _CompletionFields,
        max_tokens: int | None,
    ) -> None:
        self.chat = chat  # chat.completions (True) or completions (False)
        self.prompt = prompt  # messages or the question
        self.options = options  # keyword arguments of reasoner.stream
        self.body = body  # the parsed request
        self.max_tokens = max_tokens  # max_tokens (or max_completion_tokens), if given
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())  # unix seconds


def create_app(reasoner: LookaheadReasoner, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `reasoner`; run it with uvicorn (``lookahead serve`` does)."""
    settings = (settings or ServerSettings()).validate()
    model_name = settings.model_name or default_model_name(reasoner.config)
    metrics = Metrics()
    admission = Admission(settings.max_concurrency)
    executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="lookahead-gen")
    generations: set[Generation] = set()
    started_at = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has let in-flight requests finish; stop what is left (a forced exit) and wait.
        for generation in list(generations):
            generation.cancel.set()
        await asyncio.to_thread(executor.shutdown, wait=True)

    app = FastAPI(
        title="lookahead",
        description="OpenAI-compatible API over Lookahead Reasoning",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.admission = admission
    app.state.model_name = model_name
    app.state.reasoner = reasoner

    app.add_middleware(_BodySizeMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(_AuthMiddleware, api_key=settings.api_key)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)  # added last = outermost

    # -- errors: always the OpenAI schema ---------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions"
            return APIError(404, message, code="not_found").response()
        return APIError(exc.status_code, str(exc.detail), code=None).response(dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return APIError(400, str(exc.errors()[0].get("msg", "invalid request")), code="invalid_type").response()

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error: %s: %s", type(exc).__name__, exc)
        return APIError(500, f"internal error ({type(exc).__name__}); see the server log", "server_error").response()

    # -- parsing -----------------------------------------------------------------------------
    async def read_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return data

    def check_common(body: _CompletionFields, max_tokens: int | None) -> dict[str, Any]:
        """Validate the shared fields; return the keyword arguments of reasoner.stream."""
        if body.model is not None and body.model != model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server serves {model_name!r} (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        if body.n not in (None, 1):
            raise _bad(f"n={body.n} is not supported; only one choice per request (n=1)", "n")
        if isinstance(body.stop, list) and len(body.stop) > 4:
            raise _bad(f"stop holds {len(body.stop)} strings; at most 4 are allowed", "stop")
        limit = reasoner.config.max_total_tokens
        if max_tokens is not None and max_tokens > limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is above this server's limit of {limit} tokens (config max_total_tokens); "
                f"ask for at most {limit}",
                param="max_tokens",
                code="invalid_value",
            )
        if body.mode is not None and body.mode not in MODES:
            raise _bad(f"mode {body.mode!r} is unknown; choose one of {', '.join(MODES)}", "mode")
        overrides: dict[str, Any] = {}
        for key, value in (
            ("max_total_tokens", max_tokens),
            ("temperature", body.temperature),
            ("top_p", body.top_p),
            ("seed", body.seed),
            ("gamma", body.gamma),
            ("verifier", body.verifier),
        ):
            if value is None:
                continue
            try:
                with_overrides(reasoner.config, {key: value})  # one at a time: the error names its field
            except ConfigError as exc:
                param = "max_tokens" if key == "max_total_tokens" else key
                raise APIError(400, str(exc), param=param, code="invalid_value") from None
            overrides[key] = value
        return {"mode": body.mode, "speculation": body.speculation, **overrides}

    def parse_chat(data: dict[str, Any]) -> _Completion:
        try:
            body = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise _from_validation_error(exc) from None
        if not body.messages:
            raise _bad("messages is empty; send at least one user message", "messages")
        messages = [m.to_dict() for m in body.messages]
        if not any(m["content"].strip() for m in messages if m["role"] == "user"):
            raise _bad("the messages hold no non-empty user message", "messages")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return _Completion(True, messages, check_common(body, max_tokens), body, max_tokens)

    def parse_completion(data: dict[str, Any]) -> _Completion:
        try:
            body = CompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise _from_validation_error(exc) from None
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise _bad(f"prompt holds {len(prompt)} strings; send exactly one (no batches)", "prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise _bad("prompt is empty; send the question text", "prompt")
        return _Completion(False, prompt, check_common(body, body.max_tokens), body, body.max_tokens)

    # -- running -----------------------------------------------------------------------------
    def admit(request: _Completion) -> Generation:
        if not admission.try_acquire():
            metrics.rejected.inc()
            busy = APIError(
                429,
                f"the server is busy: {admission.limit} requests are already admitted (--max-concurrency); retry shortly",
                "rate_limit_error",
                code="too_many_requests",
            )
            busy.headers["Retry-After"] = "1"
            raise busy
        generation = Generation(reasoner, request.prompt, request.options, request.max_tokens, asyncio.get_running_loop())
        generations.add(generation)
        metrics.in_flight.inc()

        def finished(_: object) -> None:  # in the worker thread, once it has freed the reasoner
            admission.release()
            metrics.in_flight.dec()
            generations.discard(generation)

        try:
            executor.submit(generation.run).add_done_callback(finished)
        except RuntimeError:  # the executor is shut down: the server is stopping
            finished(None)
            raise APIError(503, "the server is shutting down; retry later", "server_error", code="unavailable") from None
        return generation

    def timeout_error() -> APIError:
        return APIError(
            504,
            f"the request took longer than {settings.timeout_s:g} s (lookahead serve --timeout); "
            "ask for fewer max_tokens or retry when the server is less busy",
            "timeout_error",
            code="timeout",
        )

    async def next_event(
        generation: Generation, deadline: float, disconnected: Callable[[], Any] | None = None
    ) -> Event:
        """The worker's next event; raises the 504 at the deadline (499 once the client has left).

        ``disconnected`` (non-streaming only: Starlette watches streamed responses itself) is
        polled every 0.5 s, also while steps keep arriving.
        """
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now >= deadline:
                generation.cancel.set()
                raise timeout_error()
            if disconnected is not None and now >= generation.poll_at:
                generation.poll_at = now + 0.5
                if await disconnected():
                    generation.cancel.set()
                    raise APIError(499, "the client closed the connection", code="client_closed")
            try:
                return await asyncio.wait_for(generation.events.get(), timeout=min(deadline - now, 0.5))
            except asyncio.TimeoutError:
                continue

    def event_error(payload: Any, request: _Completion) -> APIError:
        if isinstance(payload, APIError):
            return payload
        if isinstance(payload, LookaheadError):
            return _from_lookahead_error(payload, "messages" if request.chat else "prompt")
        return APIError(500, f"internal error ({type(payload).__name__}: {payload}); see the server log", "server_error")

    async def run_whole(http: Request, request: _Completion) -> JSONResponse:
        generation = admit(request)
        deadline = asyncio.get_running_loop().time() + settings.timeout_s
        while True:
            kind, payload = await next_event(generation, deadline, http.is_disconnected)
            if kind == "error":
                raise event_error(payload, request)
            if kind == "done":
                break
        result: Result = payload
        metrics.observe_result(result)
        stats = lookahead_stats(result, generation.queue_s)
        finish = FINISH_REASONS.get(result.finish_reason, "stop")
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if request.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        return JSONResponse(
            {
                "id": request.id,
                "object": "chat.completion" if request.chat else "text_completion",
                "created": request.created,
                "model": model_name,
                "choices": [choice],
                "usage": _usage(result),
                "lookahead": stats,
            }
        )

    def chunk(
        request: _Completion, text: str | None, finish: str | None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if request.chat:
            choice["delta"] = {} if text is None else {"content": text}
        else:
            choice["text"] = text or ""
        out = {
            "id": request.id,
            "object": "chat.completion.chunk" if request.chat else "text_completion",
            "created": request.created,
            "model": model_name,
            "choices": [choice],
        }
        out.update(extra or {})
        return out

    async def run_streaming(http: Request, request: _Completion) -> Response:
        generation = admit(request)
        deadline = asyncio.get_running_loop().time() + settings.timeout_s
        # Wait for the start (or a bad-input error) before sending headers, so errors keep their status.
        kind, payload = await next_event(generation, deadline, http.is_disconnected)
        if kind == "error":
            raise event_error(payload, request)
        scope = http.scope

        async def body() -> AsyncIterator[bytes]:
            outcome = 200
            try:
                if request.chat:
                    first = chunk(request, None, None)
                    first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                    yield _sse(first)
                while True:
                    try:
                        kind, payload = await next_event(generation, deadline)
                    except APIError as exc:
                        outcome = exc.status
                        yield _sse(exc.body())  # the openai client raises it as an APIError
                        return
                    if kind == "step":
                        yield _sse(chunk(request, payload.text, None, {"lookahead": _step_info(payload)}))
                    elif kind == "error":
                        error = event_error(payload, request)
                        outcome = error.status
                        yield _sse(error.body())
                        return
                    elif kind == "done":
                        result: Result = payload
                        metrics.observe_result(result)
                        finish = FINISH_REASONS.get(result.finish_reason, "stop")
                        extra = {"lookahead": lookahead_stats(result, generation.queue_s)}
                        if not (request.body.stream_options and request.body.stream_options.include_usage):
                            extra["usage"] = _usage(result)
                        yield _sse(chunk(request, None if request.chat else "", finish, extra))
                        if request.body.stream_options and request.body.stream_options.include_usage:
                            usage_chunk = chunk(request, None, None)
                            usage_chunk["choices"] = []
                            usage_chunk["usage"] = _usage(result)
                            yield _sse(usage_chunk)
                        yield _sse("[DONE]")
                        return
            except (asyncio.CancelledError, GeneratorExit):
                outcome = 499  # the client went away: free the reasoner after the current step
                raise
            finally:
                generation.cancel.set()  # no-op once the worker is done
                scope[OUTCOME_KEY] = outcome

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    # -- routes ------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request) -> Response:
        request = parse_chat(await read_body(http))
        return await (run_streaming if request.body.stream else run_whole)(http, request)

    @app.post("/v1/completions")
    async def completions(http: Request) -> Response:
        request = parse_completion(await read_body(http))
        return await (run_streaming if request.body.stream else run_whole)(http, request)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": started_at, "owned_by": "lookahead"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        if model != model_name:
            message = f"the model {model!r} does not exist; this server serves {model_name!r}"
            raise APIError(404, message, param="model", code="model_not_found")
        return model_card()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "mode": reasoner.config.mode,
            "in_flight": admission.active,
            "max_concurrency": admission.limit,
        }

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
