"""The OpenAI-compatible server on the scripted fake engines: real uvicorn, official openai client.

Each test starts its own server (uvicorn in a thread, on a free port of 127.0.0.1) over the
`tiny` preset, so settings and engine tweaks (a slow engine, a small context) never leak.

Example:
    .venv/bin/python -m pytest -q tests/test_server.py
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import uvicorn

from lookahead import LookaheadReasoner, load_config
from lookahead.engines.fake import DEFAULT_SCRIPT
from lookahead.server import ServerSettings, create_app

SCRIPT_TEXT = "".join(DEFAULT_SCRIPT)
QUESTION = "Natalia sold 48 clips in April and half as many in May. How many in all?"


@dataclass
class Running:
    """A server started by the `serve` fixture."""

    url: str  # http://127.0.0.1:PORT
    server: uvicorn.Server  # set `should_exit` to stop it
    reasoner: LookaheadReasoner  # its reasoner (tiny preset: fake engines)
    thread: threading.Thread  # runs the server

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=20)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, parsed JSON or text) of one raw request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            raw = response.read().decode()
            try:
                payload: Any = json.loads(raw)
            except json.JSONDecodeError:
                payload = raw
            return response.status, dict(response.getheaders()), payload
        finally:
            conn.close()

    def chat(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        return self.request("POST", "/v1/chat/completions", {"model": "fake", **body}, headers)

    def wait_in_flight(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", "/health")[2]["in_flight"] == count:
                return
            time.sleep(0.02)
        raise AssertionError(f"in_flight never reached {count}")


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    """Factory: serve(settings=None, *overrides) starts a server; all are stopped afterwards."""
    started: list[Running] = []

    def start(settings: ServerSettings | None = None, *overrides: str) -> Running:
        reasoner = LookaheadReasoner.from_config(load_config("tiny", list(overrides)))
        app = create_app(reasoner, settings or ServerSettings())
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        running = Running(f"http://127.0.0.1:{port}", server, reasoner, thread)
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.should_exit = True
    for running in started:
        running.thread.join(timeout=10)
        running.reasoner.close()


def slow(running: Running, per_token: float = 0.004) -> None:
    """Make the fake target sleep per generated token (a step of ~40 characters: ~0.16 s)."""
    running.reasoner.target.delay_per_token = per_token


def assert_error(payload: Any, code: str | None = None, param: str | None = None) -> None:
    assert set(payload) == {"error"}, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
    assert payload["error"]["message"] and "Traceback" not in payload["error"]["message"]
    if code is not None:
        assert payload["error"]["code"] == code, payload
    if param is not None:
        assert payload["error"]["param"] == param, payload


# -- the happy paths, through the official client ----------------------------------------------


def test_chat_completion_has_openai_fields_and_lookahead_stats(serve):
    """Non-streaming chat: the scripted text, usage, finish_reason and the `lookahead` extra field."""
    response = serve().client().chat.completions.create(model="fake", messages=[{"role": "user", "content": QUESTION}])
    assert response.object == "chat.completion" and response.model == "fake"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == SCRIPT_TEXT
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.completion_tokens == len(SCRIPT_TEXT) and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stats = response.model_extra["lookahead"]
    assert stats["mode"] == "lr" and stats["drafted_steps"] == 3 and stats["accepted_steps"] == 3
    assert stats["acceptance_by_depth"] == [1.0, 1.0, 1.0] and stats["answer"] == "72"
    for key in ("rounds", "acceptance_rate", "draft_s", "target_s", "verify_s", "wall_time_s"):
        assert key in stats


def test_completions_endpoint_and_the_lookahead_request_fields(serve):
    """/v1/completions answers the same text; mode/speculation switch to ar, gamma applies per request."""
    client = serve().client()
    lr = client.completions.create(model="fake", prompt=QUESTION, extra_body={"gamma": 1})
    ar = client.completions.create(model="fake", prompt=QUESTION, extra_body={"mode": "ar"})
    off = client.completions.create(model="fake", prompt=[QUESTION], extra_body={"speculation": False})
    assert lr.object == "text_completion" and lr.choices[0].text == ar.choices[0].text == SCRIPT_TEXT
    assert lr.model_extra["lookahead"]["acceptance_by_depth"] == [1.0]  # gamma=1: one depth
    assert ar.model_extra["lookahead"]["mode"] == off.model_extra["lookahead"]["mode"] == "ar"
    assert ar.model_extra["lookahead"]["drafted_steps"] == 0


def test_max_tokens_cuts_the_completion_with_finish_reason_length(serve):
    """max_tokens becomes the token budget; hitting it maps to finish_reason "length"."""
    response = serve().client().chat.completions.create(
        model="fake", messages=[{"role": "user", "content": QUESTION}], max_tokens=40, temperature=0, seed=1, top_p=0.9
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens <= 40


def test_streaming_chat_sends_one_chunk_per_step_and_concatenates_to_the_text(serve):
    """Streaming chat: role chunk, one content chunk per committed step, a final chunk with stats."""
    client = serve().client()
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="fake", messages=messages).choices[0].message.content
    chunks = list(client.chat.completions.create(model="fake", messages=messages, stream=True))
    assert all(c.object == "chat.completion.chunk" and c.model == "fake" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == DEFAULT_SCRIPT  # each step arrives as one chunk
    assert "".join(contents) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["lookahead"]["accepted_steps"] == 3
    assert [c.model_extra["lookahead"]["source"] for c in chunks[1:-1]] == ["draft", "draft", "draft", "target"]


def test_streaming_completions_and_include_usage(serve):
    """Streaming completions: text chunks join to the text; include_usage adds a usage chunk."""
    chunks = list(
        serve().client().completions.create(
            model="fake", prompt=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == SCRIPT_TEXT
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(SCRIPT_TEXT)


def test_models_list_health_and_unknown_fields(serve):
    """GET /v1/models lists the served name; /health answers; unknown OpenAI fields are ignored."""
    running = serve(ServerSettings(model_name="lookahead-fake"))
    client = running.client()
    assert [m.id for m in client.models.list().data] == ["lookahead-fake"]
    assert client.models.retrieve("lookahead-fake").id == "lookahead-fake"
    status, _, health = running.request("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "lookahead-fake"
    status, _, body = running.request(
        "POST",
        "/v1/chat/completions",
        {"model": "lookahead-fake", "messages": [{"role": "user", "content": QUESTION}], "logprobs": False, "user": "u1"},
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == SCRIPT_TEXT


# -- bad requests: the right status and the OpenAI error schema --------------------------------

USER = [{"role": "user", "content": QUESTION}]
BLANK = [{"role": "user", "content": "  "}]
ROBOT = [{"role": "robot", "content": "x"}]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/chat/completions", {"model": "fake", "messages": []}, 400, "invalid_value", "messages"),
        ("/v1/chat/completions", {"model": "fake", "messages": BLANK}, 400, "invalid_value", "messages"),
        ("/v1/chat/completions", {"model": "fake", "messages": "hi"}, 400, "invalid_type", "messages"),
        ("/v1/chat/completions", {"model": "fake"}, 400, None, "messages"),
        ("/v1/chat/completions", {"model": "fake", "messages": ROBOT}, 400, None, "messages.0.role"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "temperature": "hot"}, 400, "invalid_type", "temperature"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "max_tokens": 1.5}, 400, "invalid_type", "max_tokens"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "stream": "yes"}, 400, "invalid_type", "stream"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "stop": 3}, 400, "invalid_type", "stop"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "n": 2}, 400, "invalid_value", "n"),
        ("/v1/chat/completions", {"model": "gpt-9", "messages": USER}, 404, "model_not_found", "model"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "max_tokens": 100000}, 400, "invalid_value", "max_tokens"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "gamma": 0}, 400, "invalid_value", "gamma"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "mode": "turbo"}, 400, "invalid_value", "mode"),
        ("/v1/chat/completions", {"model": "fake", "messages": USER, "verifier": "psychic"}, 400, "invalid_value", "verifier"),
        ("/v1/completions", {"model": "fake", "prompt": "   "}, 400, "invalid_value", "prompt"),
        ("/v1/completions", {"model": "fake", "prompt": ["a", "b"]}, 400, "invalid_value", "prompt"),
        ("/v1/completions", {"model": "fake", "prompt": 7}, 400, "invalid_type", "prompt"),
        ("/v1/completions", b"{not json", 400, "invalid_json", None),
        ("/v1/completions", b"[1, 2]", 400, "invalid_json", None),
        ("/v1/nothing", {}, 404, "not_found", None),
    ],
)
def test_bad_requests_get_a_4xx_with_the_openai_error_schema(serve, path, body, status, code, param):
    """Each invalid request: the documented status, {"error": {message, type, param, code}}, no 500."""
    got, _, payload = serve().request("POST", path, body)
    assert got == status, payload
    assert_error(payload, code, param)


def test_bad_requests_raise_the_openai_client_errors(serve):
    """The official client maps our errors to its exceptions (404 NotFound, 400 BadRequest)."""
    client = serve().client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake", messages=[])


def test_prompt_beyond_the_context_and_max_tokens_beyond_it_are_400(serve):
    """A prompt longer than the context, or prompt + max_tokens beyond it: 400, no generation."""
    running = serve(None, "mode=ar")
    running.reasoner.target.context = 300  # the fake engine counts characters
    status, _, payload = running.chat({"messages": [{"role": "user", "content": "x" * 400}]})
    assert status == 400
    assert_error(payload, "context_length_exceeded", "messages")
    status, _, payload = running.chat({"messages": USER, "max_tokens": 290})
    assert status == 400 and "max_tokens" in payload["error"]["message"]
    assert_error(payload, "context_length_exceeded")
    status, _, payload = running.chat({"messages": USER, "max_tokens": 100})  # fits: still served
    assert status == 200, payload


def test_body_larger_than_the_limit_is_413(serve):
    """By Content-Length, and for a chunked body while it arrives: 413 with the error schema."""
    running = serve(ServerSettings(max_body_bytes=2000))
    status, _, payload = running.chat({"messages": [{"role": "user", "content": "x" * 5000}]})
    assert status == 413
    assert_error(payload, "request_too_large")
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    chunks = iter([b'{"model": "fake", "messages": [{"role": "user", "content": "', b"x" * 1500, b"y" * 1500, b'"}]}'])
    conn.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 413
    assert_error(json.loads(response.read()), "request_too_large")
    conn.close()


def test_api_key_is_required_when_set_and_health_stays_open(serve):
    """--api-key: 401 without or with a wrong bearer token, 200 with it; /health needs none."""
    running = serve(ServerSettings(api_key="s3cret"))
    status, headers, payload = running.chat({"messages": USER})
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert_error(payload, "invalid_api_key")
    status, _, payload = running.chat({"messages": USER}, {"Authorization": "Bearer nope"})
    assert status == 401
    assert_error(payload, "invalid_api_key")
    assert running.request("GET", "/metrics")[0] == 401
    assert running.request("GET", "/health")[0] == 200
    with pytest.raises(openai.AuthenticationError):
        running.client("wrong").models.list()
    assert running.client("s3cret").chat.completions.create(model="fake", messages=USER).choices[0].message.content


def test_no_api_key_means_no_auth(serve):
    """Without --api-key a request with no Authorization header is served."""
    status, _, payload = serve().chat({"messages": USER})
    assert status == 200 and payload["choices"][0]["message"]["content"] == SCRIPT_TEXT


# -- limits: concurrency, timeout, disconnect, shutdown -----------------------------------------


def test_requests_beyond_max_concurrency_get_429_at_once(serve):
    """Two admitted (one running, one waiting for a running slot); the third is refused immediately."""
    running = serve(ServerSettings(max_concurrency=1, max_queue=1), "mode=ar")
    slow(running)
    results: list[int] = []
    workers = [threading.Thread(target=lambda: results.append(running.chat({"messages": USER})[0])) for _ in range(2)]
    for worker in workers:
        worker.start()
    running.wait_in_flight(2)
    start = time.monotonic()
    status, headers, payload = running.chat({"messages": USER})
    assert status == 429 and time.monotonic() - start < 0.5
    assert headers.get("retry-after") == "1"
    assert_error(payload, "too_many_requests")
    for worker in workers:
        worker.join(timeout=10)
    assert results == [200, 200]
    assert running.chat({"messages": USER})[0] == 200  # admitted again once they finished


def test_timeout_is_504_and_frees_the_reasoner(serve):
    """A request past --timeout gets 504; its generation is closed and the next request is served."""
    running = serve(ServerSettings(timeout_s=0.3), "mode=ar")
    slow(running)
    status, _, payload = running.chat({"messages": USER})
    assert status == 504
    assert_error(payload, "timeout")
    running.wait_in_flight(0)  # the worker closed the stream after its current step
    slow(running, 0.0)
    status, _, payload = running.chat({"messages": USER})
    assert status == 200 and payload["choices"][0]["message"]["content"] == SCRIPT_TEXT


def test_client_disconnect_while_streaming_frees_the_reasoner(serve):
    """Closing the connection mid-stream cancels the generation (in_flight drops back to 0)."""
    running = serve(None, "mode=ar")
    slow(running, 0.01)  # ~0.4 s per step, ~1.5 s in all
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    body = json.dumps({"model": "fake", "messages": USER, "stream": True})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(6) == b"data: "  # the role chunk
    conn.sock.close()
    conn.close()
    start = time.monotonic()
    running.wait_in_flight(0)
    assert time.monotonic() - start < 1.2  # freed after the current step, not the whole answer
    assert 'status="499"' in running.request("GET", "/metrics")[2]


def test_client_disconnect_while_waiting_for_a_whole_answer_frees_the_reasoner(serve):
    """A non-streaming client that gives up is noticed too (polled), and its generation closed."""
    running = serve(None, "mode=ar")
    slow(running, 0.02)  # ~0.8 s per step, ~3 s in all
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "fake", "messages": USER}))
    running.wait_in_flight(1)
    conn.sock.close()
    conn.close()
    start = time.monotonic()
    running.wait_in_flight(0)
    assert time.monotonic() - start < 2.0  # one poll (0.5 s) plus the current step, not the rest


def test_an_engine_failure_is_a_500_error_object_and_the_server_recovers(serve, monkeypatch):
    """An engine that raises: 500 with the error schema (no traceback), then normal service again."""
    running = serve(None, "mode=ar")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("GPU on fire")

    monkeypatch.setattr(running.reasoner.target, "generate", broken)
    status, _, payload = running.chat({"messages": USER})
    assert status == 500
    assert_error(payload)
    assert payload["error"]["type"] == "server_error"
    with pytest.raises(openai.APIError):  # streamed: the error arrives as an SSE error event
        list(running.client().chat.completions.create(model="fake", messages=USER, stream=True))
    monkeypatch.undo()
    status, _, payload = running.chat({"messages": USER})
    assert status == 200 and payload["choices"][0]["message"]["content"] == SCRIPT_TEXT


def test_graceful_shutdown_lets_the_running_request_finish(serve):
    """Stopping the server (as on Ctrl-C) waits for the in-flight request, which gets its 200."""
    running = serve(None, "mode=ar")
    slow(running)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(running.chat({"messages": USER})))
    worker.start()
    running.wait_in_flight(1)
    running.server.should_exit = True
    worker.join(timeout=10)
    running.thread.join(timeout=10)
    assert results and results[0][0] == 200 and results[0][2]["choices"][0]["message"]["content"] == SCRIPT_TEXT
    assert not running.thread.is_alive()


def test_metrics_count_requests_tokens_and_steps(serve):
    """/metrics: Prometheus text with the request counter by endpoint/status, tokens, steps, latency."""
    running = serve()
    running.chat({"messages": USER})
    running.chat({"messages": []})
    status, headers, text = running.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'lookahead_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'lookahead_requests_total{endpoint="/v1/chat/completions",status="400"} 1.0' in text
    assert f'lookahead_completion_tokens_total{{mode="lr"}} {float(len(SCRIPT_TEXT))}' in text
    assert 'lookahead_drafted_steps_total{mode="lr"} 3.0' in text
    assert 'lookahead_accepted_steps_total{mode="lr"} 3.0' in text
    assert 'lookahead_request_latency_seconds_count{endpoint="/v1/chat/completions"} 2.0' in text


def test_serve_with_a_bad_override_exits_2_with_one_line():
    """`lookahead serve --set gama=1`: exit 2, one line naming the key, no traceback, no server."""
    proc = subprocess.run(
        [sys.executable, "-m", "lookahead.cli", "serve", "--config", "tiny", "--set", "gama=1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown config key 'gama'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
