"""The FastAPI app: routes (each a line or two calling the `Service`), error handlers, the
OpenAPI schema at ``/openapi.json`` and the middleware stack."""

from __future__ import annotations

import functools
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookahead import __version__
from lookahead.loop import LookaheadReasoner
from lookahead.server.metrics import (
    AuthMiddleware,
    BodySizeMiddleware,
    CleanRequestMiddleware,
    MetricsMiddleware,
)
from lookahead.server.schemas import (
    CHUNK_MODELS,
    REQUEST_MODELS,
    APIError,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
)
from lookahead.server.service import ServerSettings, Service

logger = logging.getLogger("lookahead.server")

SCHEMA_REF = "#/components/schemas/{model}"
ERRORS = {  # status -> when the server answers it (the OpenAPI descriptions)
    400: "Invalid request: bad JSON, a wrong type or value, a prompt beyond the context",
    401: "Missing or wrong 'Authorization: Bearer KEY' (only with --api-key)",
    404: "Unknown model",
    413: "Body larger than --max-body-bytes",
    429: "--max-concurrency requests running and --max-queue waiting; retry after Retry-After seconds",
    499: "The client closed the connection (recorded in the metrics; the client sees nothing)",
    500: "An engine failed",
    503: "The server is shutting down",
    504: "The request took longer than --timeout",
}
COMPLETION_ERRORS = (400, 401, 404, 413, 429, 499, 500, 503, 504)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


def _completion_doc(request: type[BaseModel], chunk: type[BaseModel]) -> dict[str, Any]:
    """`responses` and `openapi_extra` of a completion route: its body, its event stream, its errors."""
    chunks = [{"$ref": SCHEMA_REF.format(model=m)} for m in (chunk.__name__, "ErrorResponse")]
    data = {
        "description": f"A JSON {chunk.__name__}; an ErrorResponse if the generation fails midway; "
        "the last event of a complete answer is the literal [DONE]",
        "anyOf": [
            {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": chunks}},
            {"type": "string", "const": "[DONE]"},
        ],
    }
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    body = {"$ref": SCHEMA_REF.format(model=request.__name__)}
    stream = {"description": "With stream=true: server-sent events, one chunk per committed step", "schema": event}
    return {
        "responses": {200: {"content": {"text/event-stream": stream}}, **_errors(*COMPLETION_ERRORS)},
        "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}},
    }


def service_of(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service_of)]
router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    summary="Chat completion (OpenAI-compatible)",
    **_completion_doc(ChatCompletionRequest, ChatCompletionChunk),
)
async def chat_completions(http: Request, service: ServiceDep) -> Response:
    return await service.complete(http, service.parse_chat(await service.read_json(http)))


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    summary="Text completion of a question (OpenAI-compatible)",
    **_completion_doc(CompletionRequest, CompletionChunk),
)
async def completions(http: Request, service: ServiceDep) -> Response:
    return await service.complete(http, service.parse_completion(await service.read_json(http)))


@router.get("/v1/models", response_model=ModelList, responses=_errors(401), summary="The served model")
async def list_models(service: ServiceDep) -> dict[str, Any]:
    return {"object": "list", "data": [service.model_card()]}


@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=_errors(401, 404), summary="One model")
async def get_model(model: str, service: ServiceDep) -> dict[str, Any]:
    return service.get_model(model)


@router.get("/health", response_model=Health, summary="Liveness and load (no API key needed)")
async def health(service: ServiceDep) -> dict[str, Any]:
    return service.health()


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **_errors(401),
    },
    summary="Prometheus metrics",
)
async def prometheus_metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------------------------
# Errors: always the OpenAI schema


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions"
        return APIError(404, message, code="not_found").response()
    return APIError(exc.status_code, str(exc.detail), code=None).response(dict(exc.headers or {}))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return APIError(400, str(exc.errors()[0].get("msg", "invalid request")), code="invalid_type").response()


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error: %s: %s", type(exc).__name__, exc)
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log", "server_error").response()


# --------------------------------------------------------------------------------------------
# The OpenAPI schema


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies (read by hand, so FastAPI does not know them) and
    the stream chunks; without FastAPI's 422 answers (validation errors are 400s here)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        models = [(m, "validation") for m in REQUEST_MODELS] + [(m, "serialization") for m in CHUNK_MODELS]
        _, extra = models_json_schema(models, ref_template=SCHEMA_REF)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in extra.get("$defs", {}).items():
            components.setdefault(name, definition)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        app.openapi_schema = schema
    return app.openapi_schema


# --------------------------------------------------------------------------------------------
# The app


def create_app(reasoner: LookaheadReasoner, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `reasoner`; run it with uvicorn (``lookahead serve`` does)."""
    service = Service(reasoner, (settings or ServerSettings()).validate())
    app = FastAPI(
        title="lookahead",
        description="OpenAI-compatible API over Lookahead Reasoning",
        version=__version__,
        lifespan=service.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # CleanRequestMiddleware strips trailing slashes: never a redirect
    )
    app.state.service = service
    app.state.settings = service.settings
    app.state.metrics = service.metrics
    app.state.admission = service.admission
    app.state.model_name = service.model_name
    app.state.reasoner = reasoner
    app.add_middleware(BodySizeMiddleware, max_bytes=service.settings.max_body_bytes)
    if service.settings.api_key:
        app.add_middleware(AuthMiddleware, api_key=service.settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(CleanRequestMiddleware)  # added last = outermost
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(router)
    app.openapi = functools.partial(openapi_schema, app)  # type: ignore[method-assign]
    return app
