"""Local mock servers speaking the documented SGLang and OpenAI-compatible HTTP APIs (tests only).

`MockServer` listens on 127.0.0.1 at a free port, in a thread, and answers

- SGLang native: ``POST /generate`` (``text`` str or list, ``sampling_params`` dict or one per
  row, ``stop``, ``no_stop_trim``, ``max_new_tokens``; ``meta_info`` with ``finish_reason``
  ``{"type": "stop", "matched": str | token id}`` / ``{"type": "length", "length": N}``,
  ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``spec_verify_ct`` and, with
  ``return_logprob``, ``output_token_ids_logprobs``), ``GET /get_model_info``,
  ``GET /get_server_info``, ``GET /health``, ``POST /flush_cache`` (400 while ``busy``);
- OpenAI-compatible: ``POST /v1/completions`` (stop string stripped from the text; ``stop_reason``
  like vLLM unless ``flavor="plain"``; ``usage``; legacy ``logprobs.top_logprobs``),
  ``GET /v1/models`` (``max_model_len``);
- llama.cpp (``flavor="llamacpp"``): ``/v1/models`` says ``owned_by: llamacpp`` (no
  ``max_model_len``), ``/v1/completions`` names no stop string, ``POST /completion`` (native:
  ``content`` without the stop word, ``stop_type`` word / eos / limit, ``stopping_word``,
  ``tokens_predicted``, ``tokens_evaluated``, ``tokens_cached``) and ``GET /props``
  (``default_generation_settings.n_ctx``, ``total_slots``);
- ``POST /tokenize`` in the vLLM/SGLang shape (``prompt`` -> ``tokens``, ``count``) or the
  llama.cpp shape (``content`` -> ``tokens``).

Texts are continued deterministically by a `FakeEngine` script (the completion written so far is
the text after the prompt's ``<assistant>`` marker) and one character is one token (token id =
``ord(char)``). ``fail_next`` queues error statuses answered before the next success;
``api_key`` makes every route demand ``Authorization: Bearer <key>``; ``requests`` records what came in.

Example:
    >>> with MockServer(["A1.\\n\\n", "A2."]) as server:          # doctest: +SKIP
    ...     requests.post(server.url + "/generate", json={"text": "<assistant>\\n"}).json()
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lookahead.engines.fake import FakeEngine

EOS_ID = 151645  # token id reported as the matched EOS token


class MockServer:
    """One mock server; use as a context manager (or call `start` / `stop`)."""

    def __init__(
        self,
        steps: list[str],
        *,
        model: str = "mock-model",
        context: int = 4096,
        flavor: str = "vllm",
        spec_per_pass: int = 0,
        api_key: str | None = None,
        max_new_tokens_limit: int = 100_000,
    ) -> None:
        self.script = FakeEngine(steps)  # decides every continuation
        self.model = model  # name in /v1/models and /get_model_info
        self.context = context  # max_model_len reported (tokens)
        self.flavor = flavor  # "vllm": stop_reason in choices; "plain": no hint (like OpenAI); "llamacpp"
        self.spec_per_pass = spec_per_pass  # >0: report spec_verify_ct as if each pass committed this many tokens
        self.api_key = api_key  # demanded bearer token, None = no auth
        self.max_new_tokens_limit = max_new_tokens_limit  # larger requests get HTTP 400
        self.fail_next: list[int] = []  # statuses answered (and popped) before the next success
        self.busy = False  # True: POST /flush_cache is refused (400), as SGLang does while requests run
        self.requests: list[dict[str, Any]] = []  # {"method", "path", "headers", "body"} per request
        self._seen_prompts: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> MockServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- dispatch --------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.requests.append({"method": method, "path": handler.path, "headers": dict(handler.headers), "body": body})
        if self.api_key is not None and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(handler, 401, {"error": {"message": "Invalid API key", "type": "auth_error"}})
        if self.fail_next:
            return self._send(handler, self.fail_next.pop(0), {"error": {"message": "temporarily overloaded"}})
        routes = {
            ("GET", "/health"): lambda: {},
            ("GET", "/get_model_info"): lambda: {"model_path": self.model, "tokenizer_path": self.model,
                                                 "is_generation": True},
            ("GET", "/get_server_info"): lambda: {"speculative_num_draft_tokens": self.spec_per_pass + 1
                                                  if self.spec_per_pass else None},
            ("GET", "/v1/models"): lambda: {"object": "list", "data": [self._model_card()]},
            ("GET", "/props"): lambda: self._props(),
            ("POST", "/completion"): lambda: self._native_completion(body or {}),
            ("POST", "/tokenize"): lambda: self._tokenize(body or {}),
            ("POST", "/generate"): lambda: self._generate(body or {}),
            ("POST", "/flush_cache"): lambda: self._flush_cache(),
            ("POST", "/v1/completions"): lambda: self._completions(body or {}),
        }
        route = routes.get((method, handler.path))
        if route is None:
            return self._send(handler, 404, {"detail": "Not Found"})
        try:
            answer = route()
        except KeyError:  # a route this flavor of server does not have
            return self._send(handler, 404, {"detail": "Not Found"})
        except ValueError as exc:  # our own validation: a 400 with a message, like the real servers
            return self._send(handler, 400, {"error": {"message": str(exc), "type": "BadRequestError"}})
        self._send(handler, 200, answer)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    # -- continuation ----------------------------------------------------------------------------
    def _continue(self, prompt: str, max_new: int, stops: list[str]) -> tuple[str, str, Any]:
        """(text incl. a matched stop, kind, matched) with kind in stop / length / eos."""
        if max_new > self.max_new_tokens_limit:
            raise ValueError(f"max_new_tokens={max_new} exceeds this server's limit of {self.max_new_tokens_limit}")
        text = self.script.continuation(prompt)
        hits = [(text.find(s) + len(s), s) for s in stops if s and s in text]
        if hits:
            end, matched = min(hits)
            if end <= max_new:
                return text[:end], "stop", matched
        if len(text) > max_new or (len(text) == max_new and not hits):
            return text[:max_new], "length", None
        return text, "eos", EOS_ID

    def _cached(self, prompt: str) -> int:
        best = 0
        for seen in self._seen_prompts:
            n = 0
            for a, b in zip(seen, prompt, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        self._seen_prompts.append(prompt)
        return best

    def _next_char_logprobs(self, prompt: str) -> dict[int, float]:
        """A deterministic next-token distribution: the scripted next char gets log(0.9)."""
        nxt = self.script.continuation(prompt)[:1] or "\0"
        return {ord(nxt): math.log(0.9), ord(" "): math.log(0.05), ord("x"): math.log(0.01)}

    # -- SGLang ----------------------------------------------------------------------------------
    def _flush_cache(self) -> Any:
        """SGLang's ``/flush_cache``: forget the prompts seen (400 while `busy`)."""
        if self.busy:
            raise ValueError("Cache not flushed because there are pending requests")
        self._seen_prompts.clear()
        return {}

    def _generate(self, body: dict[str, Any]) -> Any:
        texts = body.get("text")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts or [])
        sampling = body.get("sampling_params") or {}
        per_row = sampling if isinstance(sampling, list) else [sampling] * len(texts)
        if len(per_row) != len(texts):
            raise ValueError("sampling_params list must have one entry per text")
        wanted = body.get("token_ids_logprob")
        out = []
        for i, (prompt, sp) in enumerate(zip(texts, per_row, strict=False)):
            stops = sp.get("stop") or []
            stops = [stops] if isinstance(stops, str) else stops
            text, kind, matched = self._continue(prompt, int(sp.get("max_new_tokens", 128)), stops)
            n = len(text)
            if kind == "stop" and not sp.get("no_stop_trim"):
                text = text[: len(text) - len(matched)]
            finish = {"type": "length", "length": n} if kind == "length" else {"type": "stop", "matched": matched}
            meta: dict[str, Any] = {"id": f"req-{i}", "finish_reason": finish, "prompt_tokens": len(prompt),
                                    "completion_tokens": n, "cached_tokens": self._cached(prompt)}
            if self.spec_per_pass:
                meta["spec_verify_ct"] = math.ceil(n / self.spec_per_pass)
            if body.get("return_logprob"):
                dist = self._next_char_logprobs(prompt)
                ids = wanted[i] if wanted and isinstance(wanted[0], list) else (wanted or [])
                meta["output_token_ids_logprobs"] = [[[dist.get(t, math.log(1e-4)), t, None] for t in ids]]
            out.append({"text": text, "output_ids": [ord(c) for c in text], "meta_info": meta})
        return out[0] if single else out

    # -- OpenAI-compatible -------------------------------------------------------------------------
    def _completions(self, body: dict[str, Any]) -> Any:
        if body.get("model") != self.model:
            raise ValueError(f"The model `{body.get('model')}` does not exist.")
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, prompt in enumerate(prompts):
            text, kind, matched = self._continue(prompt, int(body.get("max_tokens", 16)), stops)
            completion_tokens += len(text)
            prompt_tokens += len(prompt)
            if kind == "stop":
                text = text[: len(text) - len(matched)]
            choice: dict[str, Any] = {"index": i, "text": text, "logprobs": None,
                                      "finish_reason": "length" if kind == "length" else "stop"}
            if self.flavor == "vllm":
                choice["stop_reason"] = matched if kind == "stop" else None
            if body.get("logprobs"):
                dist = self._next_char_logprobs(prompt)
                top = dict(sorted(((chr(t), lp) for t, lp in dist.items()), key=lambda kv: -kv[1])[: body["logprobs"]])
                first = text[:1]
                choice["logprobs"] = {"tokens": [first], "token_logprobs": [top.get(first, -9.0)],
                                      "top_logprobs": [top], "text_offset": [0]}
            choices.append(choice)
            self._cached(prompt)
        return {"id": "cmpl-mock", "object": "text_completion", "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    # -- llama.cpp ---------------------------------------------------------------------------------
    def _model_card(self) -> dict[str, Any]:
        if self.flavor == "llamacpp":
            return {"id": self.model, "object": "model", "owned_by": "llamacpp", "meta": {"n_ctx_train": 8192}}
        return {"id": self.model, "object": "model", "root": self.model, "max_model_len": self.context}

    def _props(self) -> Any:
        if self.flavor != "llamacpp":
            raise KeyError("/props")
        return {"default_generation_settings": {"n_ctx": self.context, "params": {"top_k": 40, "min_p": 0.05}},
                "total_slots": 4, "model_path": self.model}

    def _native_completion(self, body: dict[str, Any]) -> Any:
        if self.flavor != "llamacpp":
            raise KeyError("/completion")
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError("this mock takes one string prompt")
        stops = body.get("stop") or []
        n_predict = int(body.get("n_predict", -1))
        text, kind, matched = self._continue(prompt, n_predict if n_predict >= 0 else 100_000, stops)
        n = len(text)
        if kind == "stop":
            text = text[: len(text) - len(matched)]
        return {"content": text, "stop": True, "model": self.model, "tokens_predicted": n,
                "tokens_evaluated": len(prompt), "tokens_cached": self._cached(prompt),
                "stop_type": {"stop": "word", "length": "limit", "eos": "eos"}[kind],
                "stopping_word": matched if kind == "stop" else "", "truncated": False}

    def _tokenize(self, body: dict[str, Any]) -> Any:
        if "prompt" in body:
            tokens = [ord(c) for c in body["prompt"]]
            return {"tokens": tokens, "count": len(tokens), "max_model_len": self.context}
        if "content" in body:
            return {"tokens": [ord(c) for c in body["content"]]}
        raise ValueError("tokenize needs 'prompt' or 'content'")
