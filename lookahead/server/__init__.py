"""An OpenAI-compatible HTTP server over one `LookaheadReasoner` (FastAPI, run with uvicorn).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (non-streaming, or
streaming as server-sent events with one chunk per committed step), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text) and ``GET /openapi.json`` (the schema of every
request and answer). Every response of a completion carries the OpenAI fields plus ``lookahead``:
the per-request statistics (mode, rounds, drafted and accepted steps, acceptance per depth,
seconds split between draft, target and verifier).

Requests may add the lookahead fields ``mode`` ("ar"/"lr"/"sd"/"lr+sd"), ``gamma``, ``verifier`` and
``speculation`` (false = "ar"); ``max_tokens``, ``temperature``, ``top_p`` and ``seed`` become
per-request config overrides. ``stop`` is validated but ignored (steps end on the configured
step delimiter). Chat messages are passed to the model as they are; a completion ``prompt`` is
the question, wrapped by the config's ``prompt_template`` like ``lookahead solve`` does.

Layout: ``app`` (routes, error handlers, the OpenAPI schema), ``service`` (settings, admission,
the worker thread of each generation, streaming, timeouts and cancellation), ``schemas`` (request
and response bodies, the error object, defensive JSON reading), ``metrics`` (Prometheus and the
middlewares). Every error is an OpenAI error object ``{"error": {"message", "type", "param",
"code"}}``, never a traceback.

Example:
    lookahead serve --config tiny --port 8000          # scripted fake engines, no model

    >>> from lookahead import LookaheadReasoner, load_config
    >>> from lookahead.server import ServerSettings, create_app
    >>> reasoner = LookaheadReasoner.from_config(load_config("tiny"))
    >>> app = create_app(reasoner, ServerSettings(model_name="fake", max_concurrency=4))
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
"""

from __future__ import annotations

from lookahead.server.app import create_app
from lookahead.server.metrics import (
    COMPLETION_PATHS,
    KNOWN_PATHS,
    LATENCY_BUCKETS,
    OPEN_PATHS,
    Metrics,
)
from lookahead.server.schemas import (
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ErrorResponse,
    StreamOptions,
    TextPart,
)
from lookahead.server.service import (
    FINISH_REASONS,
    Admission,
    Generation,
    ServerSettings,
    Service,
    default_model_name,
    lookahead_stats,
)

__all__ = [
    "COMPLETION_PATHS",
    "FINISH_REASONS",
    "KNOWN_PATHS",
    "LATENCY_BUCKETS",
    "OPEN_PATHS",
    "APIError",
    "Admission",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ErrorResponse",
    "Generation",
    "Metrics",
    "ServerSettings",
    "Service",
    "StreamOptions",
    "TextPart",
    "create_app",
    "default_model_name",
    "lookahead_stats",
]
