"""Hostile input against the server (issue 22): every case is a 4xx in the OpenAI error schema (or
a quiet 499), never a 500, a traceback, a redirect built from the client's Host header, or a
secret in a log or an answer.

Each test starts its own uvicorn server (a thread, a free port of 127.0.0.1, the `tiny` preset:
scripted fake engines) without uvicorn's logging config, so its log records reach `caplog`.

Example:
    .venv/bin/python -m pytest -q tests/test_server_hostile.py
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from lookahead import LookaheadReasoner, load_config
from lookahead.errors import ConfigError
from lookahead.server import ServerSettings, create_app

USER = [{"role": "user", "content": "What is 17 * 23?"}]
SECRET = "sk-hostile-0123456789abcdef"


@dataclass
class Running:
    """A server started by the `serve` fixture."""

    port: int
    server: uvicorn.Server
    reasoner: LookaheadReasoner
    thread: threading.Thread

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, lower-cased headers, parsed JSON or text) of one raw request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            raw = response.read().decode()
            try:
                payload: Any = json.loads(raw)
            except json.JSONDecodeError:
                payload = raw
            return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
        finally:
            conn.close()

    def chat(self, raw: str) -> tuple[int, Any]:
        status, _, payload = self.request("POST", "/v1/chat/completions", raw.encode())
        return status, payload

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[2]


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    """Factory: serve(settings=None, *overrides) starts a server; all are stopped afterwards."""
    started: list[Running] = []

    def start(settings: ServerSettings | None = None, *overrides: str) -> Running:
        reasoner = LookaheadReasoner.from_config(load_config("tiny", list(overrides)))
        app = create_app(reasoner, settings or ServerSettings(model_name="fake"))
        # log_config=None: uvicorn leaves logging alone, its records propagate to caplog's handler
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="info")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        running = Running(server.servers[0].sockets[0].getsockname()[1], server, reasoner, thread)
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.should_exit = True
    for running in started:
        running.thread.join(timeout=10)
        running.reasoner.close()


def assert_error(payload: Any, status: int, got: int, code: str | None = None, param: str | None = None) -> None:
    assert got == status, payload
    assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}, payload
    assert payload["error"]["type"] == "invalid_request_error" and "Traceback" not in payload["error"]["message"]
    if code is not None:
        assert payload["error"]["code"] == code, payload
    if param is not None:
        assert payload["error"]["param"] == param, payload


def deep_list(levels: int) -> str:
    return "[" * levels + "]" * levels


def deep_dict(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


# -- 1. bodies nested thousands of levels deep, integers of thousands of digits -----------------


@pytest.mark.parametrize(
    "raw",
    [
        f'{{"messages": {deep_list(1000)}}}',
        f'{{"messages": {deep_list(100_000)}}}',
        f'{{"messages": {json.dumps(USER)}, "extra": {deep_dict(5000)}}}',
        f'{{"messages": {json.dumps(USER)}, "extra": {deep_list(900)}}}',  # under the decoder's limit
        deep_list(3000),
    ],
    ids=["list-1000", "list-100000", "dict-5000", "list-900", "top-level-list"],
)
def test_deeply_nested_bodies_are_400(serve, raw):
    """RecursionError in the JSON decoder (or later on the parsed data) is a 400, not a 500."""
    running = serve()
    status, payload = running.chat(raw)
    assert_error(payload, 400, status, "invalid_json")
    assert "nested" in payload["error"]["message"] or "JSON object" in payload["error"]["message"]
    assert 'status="500"' not in running.metrics()


@pytest.mark.parametrize("field", ["max_tokens", "seed", "unknown_field"])
def test_integer_literals_beyond_the_int_string_limit_are_400(serve, field):
    """An integer of 5,000 digits (Python's int-string limit is 4,300) is a 400, not a 500."""
    status, payload = serve().chat(f'{{"messages": {json.dumps(USER)}, "{field}": {"7" * 5000}}}')
    assert_error(payload, 400, status, "invalid_json")
    assert "digits" in payload["error"]["message"]


def test_a_seed_beyond_64_bits_is_400_not_an_engine_crash(serve):
    """torch's manual_seed overflows past 64 bits (a 500 from the transformers engine): refused up front."""
    running = serve()
    status, payload = running.chat(json.dumps({"messages": USER, "seed": 10**30}))
    assert_error(payload, 400, status, param="seed")
    status, payload = running.chat(json.dumps({"messages": USER, "seed": 2**63 - 1}))
    assert status == 200, payload


# -- 3. NaN and Infinity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("temperature", "NaN"),
        ("temperature", "Infinity"),
        ("top_p", "-Infinity"),
        ("temperature", "1e999"),
        ("seed", "NaN"),
        ("gamma", "Infinity"),
        ("unknown_field", "NaN"),
    ],
)
def test_non_finite_numbers_in_a_request_are_400(serve, field, literal):
    """NaN / Infinity (and 1e999, read as inf) in any field: 400 naming the field, not 'less than 2'."""
    status, payload = serve().chat(f'{{"messages": {json.dumps(USER)}, "{field}": {literal}}}')
    assert_error(payload, 400, status, "invalid_value", field)
    assert "finite" in payload["error"]["message"]


def test_lone_surrogates_are_400_also_in_keys(serve):
    """Text that is not valid Unicode (a lone surrogate) is refused before a tokenizer sees it."""
    running = serve()
    status, payload = running.chat('{"messages": [{"role": "user", "content": "hi \\ud800"}]}')
    assert_error(payload, 400, status, "invalid_value", "messages.0.content")
    status, payload = running.chat(f'{{"messages": {json.dumps(USER)}, "\\udc00": NaN}}')
    assert_error(payload, 400, status, "invalid_value")


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_server_settings_refuse_a_non_finite_timeout(value):
    """`ServerSettings.validate()`: --timeout inf / nan is a ConfigError saying it must be finite."""
    with pytest.raises(ConfigError, match="finite"):
        ServerSettings(timeout_s=value).validate()
    with pytest.raises(ConfigError, match="whole number"):
        ServerSettings(max_concurrency=value).validate()  # type: ignore[arg-type]


def test_serve_with_an_infinite_timeout_exits_2_with_one_line():
    """`lookahead serve --timeout inf`: exit 2 and one line, no traceback (no OverflowError later)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lookahead.cli", "serve", "--config", "tiny", "--timeout", "inf"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "finite" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# -- 2. a client that leaves while sending its body ------------------------------------------------


def test_client_leaving_mid_upload_is_499_without_a_traceback(serve, caplog):
    """Headers promise 1000 bytes, 200 arrive, the socket closes: 499 in /metrics, no 500, no traceback."""
    caplog.set_level(logging.INFO)
    running = serve()
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"messages": [{"role": "user", "content": "' + b"x" * 150)
    time.sleep(0.2)  # the app is reading the body
    sock.close()
    deadline = time.monotonic() + 5
    while 'status="499"' not in (text := running.metrics()):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert 'lookahead_requests_total{endpoint="/v1/chat/completions",status="499"} 1.0' in text
    assert 'status="500"' not in text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]
    assert any("closed the connection" in r.getMessage() for r in caplog.records)


# -- 4. trailing slashes: no redirect built from the Host header -----------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions/"), ("POST", "/v1/completions/"), ("GET", "/v1/models/"), ("GET", "/health/")],
)
def test_a_trailing_slash_is_served_without_a_redirect_to_the_forged_host(serve, method, path):
    """A forged Host header never comes back in a Location: the slashed path is served as it is."""
    running = serve()
    body = json.dumps({"messages": USER, "prompt": "What is 17 * 23?"}).encode() if method == "POST" else None
    status, headers, payload = running.request(method, path, body, {"Host": "evil.example"})
    assert status == 200, payload
    assert "location" not in headers
    assert "evil.example" not in json.dumps(payload)


# -- 5. secrets in the query string never reach the access log -------------------------------------


def test_query_string_values_never_reach_the_access_log(serve, caplog):
    """`?api_key=...` (any query value) is redacted in uvicorn's access log; the path is still logged."""
    caplog.set_level(logging.INFO)
    running = serve()
    status, _, _ = running.request("GET", f"/v1/models?api_key={SECRET}&token={SECRET}&{SECRET}")
    assert status == 200
    running.request("POST", f"/v1/chat/completions?key={SECRET}", json.dumps({"messages": USER}).encode())
    access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/v1/models?api_key=***&token=***&***" in line for line in access), access
    assert any("/v1/chat/completions?key=***" in line for line in access), access
    assert not [r.getMessage() for r in caplog.records if SECRET in r.getMessage()]


# -- 6. configured secrets never shown ---------------------------------------------------------------


def test_secrets_never_appear_in_logs_answers_or_reprs(serve, caplog):
    """target.api_key / options tokens and the server's own key: not in the startup log, /health,
    /v1/models, /metrics, /openapi.json, error answers, or `repr(ServerSettings)`."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="lookahead")  # a CLI test before may have set it to INFO
    settings = ServerSettings(model_name="fake", api_key="server-" + SECRET)
    assert SECRET not in repr(settings)
    running = serve(settings, f"target.api_key={SECRET}", f"draft.options.hf_token={SECRET}")
    auth = {"Authorization": f"Bearer server-{SECRET}"}
    seen = []
    for method, path, body in [
        ("GET", "/health", None),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/fake", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
        ("POST", "/v1/chat/completions", json.dumps({"messages": USER}).encode()),
        ("POST", "/v1/chat/completions", b'{"messages": []}'),
        ("POST", "/v1/chat/completions", json.dumps({"messages": USER, "gamma": 0}).encode()),
        ("GET", "/v1/models", None),  # without the key: 401
    ]:
        status, headers, payload = running.request(method, path, body, auth if len(seen) < 8 else None)
        seen.append(status)
        assert SECRET not in json.dumps(payload) + json.dumps(headers)
    assert seen == [200, 200, 200, 200, 200, 200, 400, 400, 401]
    config_lines = [r.getMessage() for r in caplog.records if "config" in r.getMessage()]
    assert config_lines and "***" in config_lines[0]  # the startup log shows the config, redacted
    assert not [r.getMessage() for r in caplog.records if SECRET in r.getMessage()]
