"""Property-based fuzzing of the server through its own OpenAPI schema (schemathesis, in process).

schemathesis reads ``/openapi.json`` of the app over the `tiny` preset (scripted fake engines)
and sends each operation generated requests, valid and invalid ones. Every answer must be no 5xx,
a status and content type the schema documents, a body that matches the schema, a 4xx for
invalid data, and every 4xx the OpenAI error object. Bounded: 25 examples per operation.

Example:
    .venv/bin/python -m pytest -q tests/test_server_schema.py
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from lookahead import LookaheadReasoner, load_config
from lookahead.server import ErrorResponse, ServerSettings, create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def openai_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx answer is exactly ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code >= 400:
        ErrorResponse.model_validate(response.json())
        assert response.json()["error"]["message"], response.text
    return None


REASONER = LookaheadReasoner.from_config(load_config("tiny"))
APP = create_app(REASONER, ServerSettings(model_name="fake", timeout_s=20))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)  # starts the app's lifespan


@pytest.fixture(scope="module", autouse=True)
def _stop_the_app() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()  # the app's lifespan end: waits for its worker threads
    REASONER.close()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_every_operation_answers_per_its_schema(case):
    """No 5xx; documented statuses, content types and bodies; 4xx for invalid data, in the error schema."""
    case.call_and_validate(checks=[*CHECKS, negative_data_rejection, openai_error_body])


USER = [{"role": "user", "content": "What is 17 * 23?"}]


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/v1/chat/completions", "POST", {"model": "fake", "messages": USER}),
        ("/v1/chat/completions", "POST", {"messages": USER, "stream": True}),
        ("/v1/chat/completions", "POST", {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/chat/completions", "POST", {"messages": USER, "max_tokens": 1000}),  # 400
        ("/v1/chat/completions", "POST", {"model": "other", "messages": USER}),  # 404
        ("/v1/completions", "POST", {"prompt": "What is 17 * 23?", "mode": "ar", "max_tokens": 40}),
        ("/v1/completions", "POST", {"prompt": ["What is 17 * 23?"], "stream": True}),
        ("/v1/completions", "POST", {"prompt": "17 * 23?", "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/models", "GET", None),
        ("/health", "GET", None),
        ("/metrics", "GET", None),
    ],
)
def test_real_answers_match_the_schema(path, method, body):
    """Answers that fuzzing rarely reaches (whole and streamed completions) match the schema exactly."""
    operation = schema[path][method]
    case = operation.Case(body=body, media_type="application/json") if body is not None else operation.Case()
    response = case.call_and_validate(checks=[*CHECKS, openai_error_body])
    assert response.status_code in (200, 400, 404), response.text


def test_the_schema_is_served_without_auth_and_documents_bodies_and_errors():
    """/openapi.json needs no key; both completion bodies and the error answers are described."""
    reasoner = LookaheadReasoner.from_config(load_config("tiny"))
    try:
        with TestClient(create_app(reasoner, ServerSettings(model_name="fake", api_key="k3y"))) as client:
            response = client.get("/openapi.json")
            assert client.get("/v1/models").status_code == 401
    finally:
        reasoner.close()
    assert response.status_code == 200
    doc = response.json()
    components = doc["components"]["schemas"]
    for path, model in (("/v1/chat/completions", "ChatCompletion"), ("/v1/completions", "Completion")):
        operation = doc["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{model}Request")
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{model}Response")
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        for status in ("400", "401", "404", "413", "429", "503", "504"):
            assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        assert "422" not in operation["responses"]
    request_fields = set(components["ChatCompletionRequest"]["properties"])
    assert {"messages", "max_tokens", "temperature", "top_p", "seed", "stream", "mode", "gamma"} <= request_fields
    assert all("description" in field for field in components["CompletionRequest"]["properties"].values())
    assert set(components["ErrorDetail"]["required"]) == {"message", "type", "param", "code"}
    assert "HTTPValidationError" not in components
