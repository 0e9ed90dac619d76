"""The work behind the routes: settings, admission, one generation per worker thread, streaming,
timeouts and cancellation (`Service` holds them; the routes in app.py call its methods).

Admission: at most ``max_concurrency`` requests RUN at once, and their engine calls share the
reasoner's batches (`lookahead.engines.batching`: the rows of every running request meet in one
engine call); at most ``max_queue`` more wait for a running slot, first come first served; any
beyond get 429. Each admitted request runs start to end in its own worker thread. A timeout (504)
or a client that goes away cancels the generation: a waiting request leaves the queue, a running
one leaves the batch at its next engine call, and the worker closes its stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from lookahead.config import MODES, LookaheadConfig, with_overrides
from lookahead.errors import ConfigError, LookaheadError, PromptError
from lookahead.loop import LookaheadReasoner
from lookahead.server.metrics import OUTCOME_KEY, Metrics
from lookahead.server.schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionFields,
    CompletionRequest,
    bad_request,
    decode_body,
    from_lookahead_error,
    from_validation_error,
)
from lookahead.types import Result, StepRecord

logger = logging.getLogger("lookahead.server")

MODEL_FREE_VERIFIERS = ("exact", "normalized", "numeric")  # per-request verifiers that load nothing

FINISH_REASONS = {"eos": "stop", "answer": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}

# --------------------------------------------------------------------------------------------
# Settings


@dataclass
class ServerSettings:
    """How the server admits and limits requests (the ``lookahead serve`` options)."""

    model_name: str = ""  # the `model` clients must send; "" = derived from target.model
    api_key: str | None = field(default=None, repr=False)  # bearer token on /v1/* and /metrics; None = no auth
    max_concurrency: int = 8  # requests running at once, sharing the engines' batches (requests)
    max_queue: int = 64  # requests admitted beyond those, waiting for a running slot (requests)
    timeout_s: float = 300.0  # per request, from admission to the last byte (seconds)
    max_body_bytes: int = 1_048_576  # largest request body accepted, else 413 (bytes)

    def validate(self) -> ServerSettings:
        for value, option in (
            (self.max_concurrency, "--max-concurrency"),
            (self.max_queue, "--max-queue"),
            (self.max_body_bytes, "--max-body-bytes"),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{option} must be a whole number (got {value!r})")
        if self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be >= 1 (got {self.max_concurrency})")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be >= 0 (got {self.max_queue}); 0 refuses every request beyond the running ones")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)):
            raise ConfigError(f"--timeout must be a number of seconds (got {self.timeout_s!r})")
        if not math.isfinite(self.timeout_s):
            raise ConfigError(f"--timeout must be a finite number of seconds (got {self.timeout_s})")
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
# Admission and the worker that runs one generation


class Admission:
    """At most ``limit`` requests running and ``queue`` waiting; first come, first served.

    `try_acquire` admits a request (False: refuse it, 429); its worker then waits in `turn` until
    every request admitted before it has started and a running slot is free; `release` ends it
    (running or still waiting).
    """

    def __init__(self, limit: int, queue: int = 0) -> None:
        self.limit = limit  # requests running at once
        self.queue = queue  # requests waiting beyond those
        self.active = 0  # requests admitted and not finished (running or waiting)
        self.running = 0  # requests that have their running slot
        self._waiting: collections.deque[object] = collections.deque()  # tickets in arrival order
        self._cond = threading.Condition()

    def try_acquire(self) -> object | None:
        """A ticket for a new request, or None when running and waiting slots are all taken."""
        with self._cond:
            if self.active >= self.limit + self.queue:
                return None
            self.active += 1
            ticket = object()
            self._waiting.append(ticket)
            return ticket

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def turn(self, ticket: object, cancel: threading.Event) -> bool:
        """Wait until ``ticket`` is first in line and a slot is free; False if cancelled meanwhile."""
        with self._cond:
            while not (self._waiting and self._waiting[0] is ticket and self.running < self.limit):
                if cancel.is_set():
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
                    return False
                self._cond.wait(timeout=0.1)
            self._waiting.popleft()
            self.running += 1
            self._cond.notify_all()
            return True

    def release(self, ticket: object, ran: bool) -> None:
        with self._cond:
            self.active -= 1
            if ran:
                self.running -= 1
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._cond.notify_all()


Event = tuple[str, Any]  # ("started", prompt_tokens) | ("step", StepRecord) | ("done", Result) | ("error", exc)


class Generation:
    """One admitted request's generation, run start to end in ONE worker thread.

    The worker waits for its running slot (`Admission.turn`), then creates, iterates and closes
    the stream; the event loop reads `events` and asks it to stop through `cancel`, which is the
    generation's own cancel event: a call of it waiting in a batch leaves at once.
    """

    def __init__(
        self,
        reasoner: LookaheadReasoner,
        prompt: str | list[dict[str, str]],
        options: dict[str, Any],
        max_tokens: int | None,
        loop: asyncio.AbstractEventLoop,
        admission: Admission | None = None,
        ticket: object | None = None,
    ) -> None:
        self.reasoner = reasoner
        self.admission = admission  # where it waits for its running slot (None: it runs at once)
        self.ticket = ticket  # its place in the admission queue
        self.ran = False  # did it get its running slot?
        self.prompt = prompt  # the question, or chat messages
        self.options = options  # mode, speculation and config overrides for reasoner.stream
        self.max_tokens = max_tokens  # the request's max_tokens, checked against the context
        self.cancel = threading.Event()  # set by the event loop: leave the queue, or the batch at the next call
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
        if self.admission is not None:
            self.ran = self.admission.turn(self.ticket, self.cancel)
        if self.cancel.is_set():
            self._emit("error", APIError(504, "cancelled before it started", "timeout_error", code="timeout"))
            return
        try:
            stream = self.reasoner.stream(self.prompt, **self.options)
        except LookaheadError as exc:
            self._emit("error", exc)
            return
        except Exception as exc:  # an engine failure must become a 500 answer, not a dead request
            logger.exception("generation failed before its first step")
            self._emit("error", exc)
            return
        stream.state.cancel = self.cancel  # one event: the event loop's cancel reaches the batch
        failure: BaseException | None = None
        try:
            self._check_context(stream.state.prompt_tokens)
            if not self.cancel.is_set():
                self.queue_s = time.perf_counter() - self.started_at
                self._emit("started", stream.state.prompt_tokens)
                for step in stream:
                    self._emit("step", step)
                    if self.cancel.is_set():
                        break
        except LookaheadError as exc:
            failure = exc
        except Exception as exc:  # an engine failure mid-generation: report it, free the reasoner
            logger.exception("generation failed")
            failure = exc
        finally:
            stream.close()  # in this thread, which iterated it
        if failure is not None:
            self._emit("error", failure)
        else:
            self._emit("done", stream.result)

    def _check_context(self, prompt_tokens: int) -> None:
        context = self.reasoner.target.context_length()
        if self.max_tokens is not None and context is not None and prompt_tokens + self.max_tokens > context:
            raise PromptError(
                f"max_tokens={self.max_tokens} plus the prompt's {prompt_tokens} tokens exceed the model's "
                f"context of {context} tokens; set max_tokens to at most {context - prompt_tokens}"
            )


# --------------------------------------------------------------------------------------------
# Response shapes


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
        "queue_s": round(queue_s, 4),  # seconds waiting for a running slot before starting
        "answer": result.answer,
    }


def usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def step_info(step: StepRecord) -> dict[str, Any]:
    return {"step": step.index, "round": step.round, "depth": step.depth, "source": step.source, "tokens": step.tokens}


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class CompletionJob:
    """One validated completion request, ready to run."""

    def __init__(
        self,
        chat: bool,
        prompt: str | list[dict[str, str]],
        options: dict[str, Any],
        body: CompletionFields,
        max_tokens: int | None,
    ) -> None:
        self.chat = chat  # chat.completions (True) or completions (False)
        self.prompt = prompt  # messages or the question
        self.options = options  # keyword arguments of reasoner.stream
        self.body = body  # the parsed request
        self.max_tokens = max_tokens  # max_tokens (or max_completion_tokens), if given
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())  # unix seconds

    @property
    def include_usage(self) -> bool:
        """stream_options.include_usage: usage in a last chunk of its own."""
        return bool(self.body.stream_options and self.body.stream_options.include_usage)


# --------------------------------------------------------------------------------------------
# The service


class Service:
    """One reasoner behind the HTTP API: parses requests, admits them, runs and streams them."""

    def __init__(self, reasoner: LookaheadReasoner, settings: ServerSettings) -> None:
        self.reasoner = reasoner
        self.settings = settings
        self.model_name = settings.model_name or default_model_name(reasoner.config)  # the served name
        self.metrics = Metrics()
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.executor: ThreadPoolExecutor | None = self.new_executor()  # None once the lifespan has ended
        self.generations: set[Generation] = set()  # admitted and not finished
        self.started_at = int(time.time())  # unix seconds

    def new_executor(self) -> ThreadPoolExecutor:
        workers = self.settings.max_concurrency + self.settings.max_queue  # waiting requests wait in their worker
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookahead-gen")

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """The app's lifespan: on shutdown, stop what is left and wait for the workers.

        It may run again (test clients end and restart it): a new start gets new workers.
        """
        if self.executor is None:
            self.executor = self.new_executor()
        config = json.dumps(self.reasoner.config.public_dict(), default=str)  # never the secrets
        logger.debug("serving %r (mode %s), config %s", self.model_name, self.reasoner.config.mode, config)
        yield
        # uvicorn has let in-flight requests finish; stop what is left (a forced exit) and wait.
        executor, self.executor = self.executor, None
        for generation in list(self.generations):
            generation.cancel.set()
        await asyncio.to_thread(executor.shutdown, wait=True)

    # -- the small endpoints -------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.started_at, "owned_by": "lookahead"}

    def get_model(self, model: str) -> dict[str, Any]:
        if model != self.model_name:
            message = f"the model {model!r} does not exist; this server serves {self.model_name!r}"
            raise APIError(404, message, param="model", code="model_not_found")
        return self.model_card()

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.model_name,
            "mode": self.reasoner.config.mode,
            "in_flight": self.admission.active,
            "running": self.admission.running,
            "waiting": self.admission.waiting,
            "max_concurrency": self.admission.limit,
            "max_queue": self.admission.queue,
            "batches": self.reasoner.batcher.snapshot(),
            "caches": self.reasoner.cache_usage(),
        }

    # -- parsing ---------------------------------------------------------------------------------
    async def read_json(self, http: Request) -> dict[str, Any]:
        """The body as a JSON object; 499 when the client leaves before sending all of it."""
        try:
            raw = await http.body()
        except ClientDisconnect:
            message = "the client closed the connection before sending the whole body"
            logger.info("%s %s: %s", http.method, http.url.path, message)
            raise APIError(499, message, code="client_closed") from None
        return decode_body(raw)

    def parse_chat(self, data: dict[str, Any]) -> CompletionJob:
        try:
            body = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        if not body.messages:
            raise bad_request("messages is empty; send at least one user message", "messages")
        messages = [m.to_dict() for m in body.messages]
        if not any(m["content"].strip() for m in messages if m["role"] == "user"):
            raise bad_request("the messages hold no non-empty user message", "messages")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return CompletionJob(True, messages, self.check_common(body, max_tokens), body, max_tokens)

    def parse_completion(self, data: dict[str, Any]) -> CompletionJob:
        try:
            body = CompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise bad_request(f"prompt holds {len(prompt)} strings; send exactly one (no batches)", "prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise bad_request("prompt is empty; send the question text", "prompt")
        return CompletionJob(False, prompt, self.check_common(body, body.max_tokens), body, body.max_tokens)

    def check_common(self, body: CompletionFields, max_tokens: int | None) -> dict[str, Any]:
        """Validate the shared fields; return the keyword arguments of reasoner.stream."""
        if body.model is not None and body.model != self.model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server serves {self.model_name!r} (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        if body.n not in (None, 1):
            raise bad_request(f"n={body.n} is not supported; only one choice per request (n=1)", "n")
        if isinstance(body.stop, list) and len(body.stop) > 4:
            raise bad_request(f"stop holds {len(body.stop)} strings; at most 4 are allowed", "stop")
        limit = self.reasoner.config.max_total_tokens
        if max_tokens is not None and max_tokens > limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is above this server's limit of {limit} tokens (config max_total_tokens); "
                f"ask for at most {limit}",
                param="max_tokens",
                code="invalid_value",
            )
        if body.mode is not None and body.mode not in MODES:
            raise bad_request(f"mode {body.mode!r} is unknown; choose one of {', '.join(MODES)}", "mode")
        return {"mode": body.mode, "speculation": body.speculation, **self.overrides(body, max_tokens)}

    def overrides(self, body: CompletionFields, max_tokens: int | None) -> dict[str, Any]:
        """The per-request config overrides, each checked alone so that its error names its field."""
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
                with_overrides(self.reasoner.config, {key: value})
            except ConfigError as exc:
                param = "max_tokens" if key == "max_total_tokens" else key
                raise APIError(400, str(exc), param=param, code="invalid_value") from None
            overrides[key] = value
        verifier = overrides.get("verifier")
        configured = self.reasoner.config.verifier.name
        if verifier is not None and verifier != configured and verifier not in MODEL_FREE_VERIFIERS:
            raise APIError(
                400,
                f"verifier {verifier!r} would load a model while other requests run; this server's verifier is "
                f"{configured!r}: send that, one of {', '.join(MODEL_FREE_VERIFIERS)}, or start the server with "
                f"--set verifier.name={verifier}",
                param="verifier",
                code="invalid_value",
            )
        return overrides

    # -- running ---------------------------------------------------------------------------------
    async def complete(self, http: Request, request: CompletionJob) -> Response:
        """Run an admitted request: one JSON answer, or server-sent events with ``stream``."""
        return await (self.run_streaming if request.body.stream else self.run_whole)(http, request)

    def admit(self, request: CompletionJob) -> Generation:
        ticket = self.admission.try_acquire()
        if ticket is None:
            self.metrics.rejected.inc()
            busy = APIError(
                429,
                f"the server is busy: {self.admission.limit} requests are running (--max-concurrency) and "
                f"{self.admission.queue} waiting (--max-queue); retry shortly",
                "rate_limit_error",
                code="too_many_requests",
            )
            busy.headers["Retry-After"] = "1"
            raise busy
        loop = asyncio.get_running_loop()
        generation = Generation(
            self.reasoner, request.prompt, request.options, request.max_tokens, loop, self.admission, ticket
        )
        self.generations.add(generation)
        self.metrics.in_flight.inc()

        def finished(_: object) -> None:  # in the worker thread, once its stream is closed
            self.admission.release(ticket, generation.ran)
            self.metrics.in_flight.dec()
            self.generations.discard(generation)

        try:
            if self.executor is None:
                raise RuntimeError("no workers")
            self.executor.submit(generation.run).add_done_callback(finished)
        except RuntimeError:  # the executor is shut down: the server is stopping
            finished(None)
            raise APIError(503, "the server is shutting down; retry later", "server_error", code="unavailable") from None
        return generation

    def timeout_error(self) -> APIError:
        return APIError(
            504,
            f"the request took longer than {self.settings.timeout_s:g} s (lookahead serve --timeout); "
            "ask for fewer max_tokens or retry when the server is less busy",
            "timeout_error",
            code="timeout",
        )

    async def next_event(
        self, generation: Generation, deadline: float, disconnected: Callable[[], Any] | None = None
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
                raise self.timeout_error()
            if disconnected is not None and now >= generation.poll_at:
                generation.poll_at = now + 0.5
                if await disconnected():
                    generation.cancel.set()
                    raise APIError(499, "the client closed the connection", code="client_closed")
            try:
                return await asyncio.wait_for(generation.events.get(), timeout=min(deadline - now, 0.5))
            except asyncio.TimeoutError:
                continue

    @staticmethod
    def event_error(payload: Any, request: CompletionJob) -> APIError:
        if isinstance(payload, APIError):
            return payload
        if isinstance(payload, LookaheadError):
            return from_lookahead_error(payload, "messages" if request.chat else "prompt")
        return APIError(500, f"internal error ({type(payload).__name__}: {payload}); see the server log", "server_error")

    async def run_whole(self, http: Request, request: CompletionJob) -> JSONResponse:
        generation = self.admit(request)
        deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        while True:
            kind, payload = await self.next_event(generation, deadline, http.is_disconnected)
            if kind == "error":
                raise self.event_error(payload, request)
            if kind == "done":
                break
        result: Result = payload
        self.metrics.observe_result(result)
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
                "model": self.model_name,
                "choices": [choice],
                "usage": usage(result),
                "lookahead": lookahead_stats(result, generation.queue_s),
            }
        )

    def chunk(
        self, request: CompletionJob, text: str | None, finish: str | None, extra: dict[str, Any] | None = None
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
            "model": self.model_name,
            "choices": [choice],
        }
        out.update(extra or {})
        return out

    async def run_streaming(self, http: Request, request: CompletionJob) -> Response:
        generation = self.admit(request)
        deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        # Wait for the start (or a bad-input error) before sending headers, so errors keep their status.
        kind, payload = await self.next_event(generation, deadline, http.is_disconnected)
        if kind == "error":
            raise self.event_error(payload, request)
        return StreamingResponse(
            self.stream_events(http.scope, request, generation, deadline),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream_events(
        self, scope: dict[str, Any], request: CompletionJob, generation: Generation, deadline: float
    ) -> AsyncIterator[bytes]:
        """The SSE body: a role chunk (chat), one chunk per step, the final chunk(s), ``[DONE]``.

        An error midway ends the stream with an error event; the status it stands for is left in
        the scope for the metrics (the headers said 200 long before).
        """
        outcome = 200
        try:
            if request.chat:
                first = self.chunk(request, None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield sse(first)
            while True:
                try:
                    kind, payload = await self.next_event(generation, deadline)
                except APIError as exc:
                    kind, payload = "error", exc
                if kind == "step":
                    yield sse(self.chunk(request, payload.text, None, {"lookahead": step_info(payload)}))
                elif kind == "error":
                    error = self.event_error(payload, request)
                    outcome = error.status
                    yield sse(error.body())  # the openai client raises it as an APIError
                    return
                elif kind == "done":
                    for event in self.final_chunks(request, payload, generation):
                        yield event
                    return
        except (asyncio.CancelledError, GeneratorExit):
            outcome = 499  # the client went away: its generation leaves the batch at its next engine call
            raise
        finally:
            generation.cancel.set()  # no-op once the worker is done
            scope[OUTCOME_KEY] = outcome

    def final_chunks(self, request: CompletionJob, result: Result, generation: Generation) -> list[bytes]:
        """The finish chunk (with stats, and usage unless include_usage), the usage chunk, ``[DONE]``."""
        self.metrics.observe_result(result)
        finish = FINISH_REASONS.get(result.finish_reason, "stop")
        extra: dict[str, Any] = {"lookahead": lookahead_stats(result, generation.queue_s)}
        if not request.include_usage:
            extra["usage"] = usage(result)
        events = [sse(self.chunk(request, None if request.chat else "", finish, extra))]
        if request.include_usage:
            usage_chunk = self.chunk(request, None, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = usage(result)
            events.append(sse(usage_chunk))
        events.append(sse("[DONE]"))
        return events
