"""Prometheus metrics and the ASGI middlewares that wrap the app.

Outermost first: `CleanRequestMiddleware` (trailing slashes off the path, query values redacted
so the access log never shows a secret), `MetricsMiddleware` (requests by endpoint and status),
`AuthMiddleware` (bearer key, only with ``--api-key``), `BodySizeMiddleware` (413).
"""

from __future__ import annotations

import logging
import secrets
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lookahead.config import REDACTED
from lookahead.server.schemas import APIError
from lookahead.types import Result

logger = logging.getLogger("lookahead.server")

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
KNOWN_PATHS = (*COMPLETION_PATHS, "/v1/models", "/health", "/metrics", "/openapi.json")
OPEN_PATHS = ("/health", "/openapi.json")  # answered without the API key (liveness probes, the schema)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)  # seconds
OUTCOME_KEY = "lookahead.outcome"  # scope key: the status a streamed response really ended with


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


def redact_query(query: bytes) -> bytes:
    """``api_key=sk-1&x=2`` -> ``api_key=***&x=***``: names kept, every value hidden."""
    parts = []
    for part in query.split(b"&"):
        name, equals, _ = part.partition(b"=")
        parts.append(name + b"=" + REDACTED.encode() if equals else REDACTED.encode())
    return b"&".join(parts)


class CleanRequestMiddleware:
    """Serves ``/path/`` as ``/path`` (no redirect, so no ``Location`` built from the client's Host
    header) and redacts query-string values in the scope, which is what uvicorn's access log
    prints (the same dict: uvicorn logs ``scope["query_string"]`` after the app has run). No
    route reads the query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope["path"] = path.rstrip("/") or "/"
                if scope.get("raw_path"):
                    scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
            if scope.get("query_string"):
                scope["query_string"] = redact_query(scope["query_string"])
        await self.app(scope, receive, send)


class MetricsMiddleware:
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


class AuthMiddleware:
    """``Authorization: Bearer KEY`` on every path but /health and /openapi.json; 401 otherwise."""

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


class BodyTooLarge(Exception):
    """Raised by the wrapped `receive` once a body grows past the limit."""


class BodySizeMiddleware:
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
        if length is not None and (not length.isdigit() or len(length) > 18 or int(length) > self.max_bytes):
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
                    raise BodyTooLarge
            return message

        async def watch_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except BodyTooLarge:
            if not started:
                await self._error().response()(scope, receive, send)
