"""The HTTP layer of the remote engines (SGLang, OpenAI-compatible): one pooled client per engine.

Remote engines are as reliable as the network and the server behind them, so every request goes
through `HTTPClient`, which

- keeps one `requests.Session` with a connection pool (keep-alive; sized for the engine's
  concurrency), so a round of γ+1 target rows does not open γ+1 TCP connections;
- retries with exponential backoff and jitter on connection errors, HTTP 5xx and 429 (honouring a
  ``Retry-After`` header), at most ``EngineConfig.max_retries`` times;
- never retries a 4xx answer other than 429: that is a mistake in what we sent (a bad model name,
  a prompt beyond the context), raised at once as `RequestRejected` with the server's own message;
- gives each request ``EngineConfig.timeout_s`` seconds; a timeout while waiting for the answer is
  not retried (the server may still be generating; retrying would only add load);
- sends ``Authorization: Bearer <key>`` from ``EngineConfig.api_key`` or ``$LOOKAHEAD_API_KEY``;
- runs "one request per prompt" protocols concurrently (`HTTPClient.map`, a thread pool);
- reads plain-text answers too (`HTTPClient.get_text`: vLLM's Prometheus ``/metrics``).

It also holds `RemoteTokenizer`, the tokenization shared by both remote engines: a local
transformers tokenizer when one can be loaded (exact and free), else the server's ``/tokenize``
endpoint (SGLang and vLLM: ``{"prompt", "add_special_tokens"} -> {"tokens", "count",
"max_model_len"}``; llama.cpp: ``{"content", "add_special"} -> {"tokens"}``; one request carries
both spellings, each server reads its own).

Sources relied on: SGLang ``python/sglang/srt/entrypoints/openai/serving_tokenize.py`` and
``http_server.py`` (``/tokenize`` and ``/v1/tokenize`` routes); vLLM ``TokenizeCompletionRequest``
(``prompt``, ``add_special_tokens``); llama.cpp server README (``POST /tokenize`` with
``content``, ``add_special``).

Example:
    >>> client = HTTPClient("http://127.0.0.1:30000", server="SGLang", timeout_s=5, max_retries=2)  # doctest: +SKIP
    >>> client.post("/generate", {"text": "2+2=", "sampling_params": {"max_new_tokens": 4}})   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from lookahead.errors import ConfigError, LookaheadError

logger = logging.getLogger(__name__)

API_KEY_ENV = "LOOKAHEAD_API_KEY"
"""Environment variable read for the bearer token when ``EngineConfig.api_key`` is None."""

CLIENT_OPTIONS = ("tokenizer", "retry_backoff_s", "max_concurrency", "top_logprobs", "api", "cache_prompt", "batch")
"""``EngineConfig.options`` keys read by the remote clients themselves. Every other key of a
remote engine's ``options`` is a server argument (an SGLang `ServerArgs` field name, a
``llama-server`` or vLLM flag), used by the in-process SGLang engine and by the launch scripts
(``scripts/launch_sglang.py``, ``launch_llamacpp.py``, ``launch_vllm.py``), and ignored by the
HTTP clients."""

T = TypeVar("T")
R = TypeVar("R")


class ServerUnavailable(LookaheadError):
    """The server could not be reached, or kept failing (5xx/429), after every retry."""


class RequestRejected(ConfigError):
    """The server refused a request with a 4xx status: something we sent is wrong."""


def client_options(options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` the HTTP clients read (see `CLIENT_OPTIONS`)."""
    return {k: v for k, v in options.items() if k in CLIENT_OPTIONS}


def server_args(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the client keys: SGLang server arguments."""
    return {k: v for k, v in options.items() if k not in CLIENT_OPTIONS}


def resolve_api_key(api_key: str | None) -> str | None:
    """``api_key`` if set, else ``$LOOKAHEAD_API_KEY``, else None (no auth header)."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def _server_message(response: requests.Response) -> str:
    """The human message inside an error answer (OpenAI, vLLM, SGLang, FastAPI or plain text)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)[:500]
    return json.dumps(body)[:500]


class HTTPClient:
    """A pooled, retrying JSON client for one server (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        server: str = "remote",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_concurrency: int = 16,
        hint: str = "",
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"server url {base_url!r} must start with http:// or https://, e.g. http://127.0.0.1:30000")
        self.base_url = base_url.rstrip("/")  # e.g. http://127.0.0.1:30000
        self.server = server  # "SGLang", "OpenAI-compatible": named in error messages
        self.timeout_s = timeout_s  # seconds one HTTP request may take
        self.max_retries = max_retries  # retries after the first try (count)
        self.backoff_s = backoff_s  # first backoff delay (seconds), doubled per retry
        self.max_backoff_s = max_backoff_s  # cap of one backoff delay (seconds)
        self.max_concurrency = max(1, int(max_concurrency))  # requests in flight from `map` (count)
        self.hint = hint  # how to fix an unreachable server, appended to the error
        self.requests_sent = 0  # HTTP requests sent, retries included (count)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.max_concurrency)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        key = resolve_api_key(api_key)
        if key:
            self._session.headers["Authorization"] = f"Bearer {key}"
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- requests ----------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        return self.request("POST", path, payload)

    def get_text(self, path: str) -> str:
        """``GET path`` answered in plain text (e.g. Prometheus ``/metrics``), with the same retries."""
        return self.request("GET", path, as_text=True)

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None, *, as_text: bool = False) -> Any:
        """Send one request (with retries) and return the decoded JSON answer (``as_text``: the body as text)."""
        url = f"{self.base_url}{path}"
        tries = self.max_retries + 1
        last_problem = ""
        for attempt in range(tries):
            retry_after: float | None = None
            try:
                self.requests_sent += 1
                response = self._session.request(method, url, json=payload, timeout=self.timeout_s)
            except requests.exceptions.ReadTimeout:
                raise ServerUnavailable(
                    f"the {self.server} server at {self.base_url} sent no answer to {method} {path} within "
                    f"{self.timeout_s:g} s; raise timeout_s in the engine config (e.g. --set target.timeout_s=600)"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 400:
                    if as_text:
                        return response.text
                    try:
                        return response.json()
                    except ValueError:
                        raise ServerUnavailable(
                            f"the {self.server} server at {url} answered with invalid JSON: {response.text[:200]!r}"
                        ) from None
                message = _server_message(response)
                if status == 429 or status >= 500:
                    last_problem = f"HTTP {status}: {message}"
                    retry_after = self._retry_after(response)
                else:
                    raise RequestRejected(
                        f"the {self.server} server at {self.base_url} rejected {method} {path} with HTTP {status}: "
                        f"{message}"
                    )
            if attempt + 1 < tries:
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
                if retry_after is not None:
                    delay = min(self.max_backoff_s, max(delay, retry_after))
                logger.warning("%s %s failed (%s); retry %d/%d in %.2f s", method, url, last_problem,
                               attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        hint = f" — {self.hint}" if self.hint else ""
        raise ServerUnavailable(
            f"cannot reach the {self.server} server at {self.base_url} after {tries} "
            f"{'try' if tries == 1 else 'tries'}: {last_problem}{hint}"
        )

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    # -- concurrency -------------------------------------------------------------------------
    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]`` with up to ``max_concurrency`` calls in flight; input order."""
        items = list(items)
        if len(items) <= 1:
            return [fn(x) for x in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"lookahead-{self.server}")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        """Close the pooled connections and the worker threads. Calling it twice is harmless."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        self._session.close()


# --------------------------------------------------------------------------------------------
# Tokenization shared by the remote engines


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def load_local_tokenizer(specs: Sequence[str | None]) -> tuple[Any, str] | None:
    """The first transformers tokenizer loadable from ``specs`` (local dirs, models shipped in
    ``lookahead/models/`` by name, or cached hub ids).

    Hub ids are only looked up in the local cache (``local_files_only``): a remote engine must not
    stall on a download at start-up. Returns ``(tokenizer, spec)`` or None.
    """
    candidates = [s for s in specs if s]
    if not candidates:
        return None
    from transformers import AutoTokenizer  # heavy; only when a tokenizer is wanted

    shipped = Path(__file__).resolve().parent.parent / "models"
    for spec in candidates:
        path = Path(spec).expanduser()
        if not path.is_dir() and (shipped / spec).is_dir():
            path = shipped / spec
        try:
            if path.is_dir():
                return AutoTokenizer.from_pretrained(str(path)), spec
            if _looks_like_hub_id(spec):
                return AutoTokenizer.from_pretrained(spec, local_files_only=True), spec
        except Exception as exc:  # noqa: BLE001 -- transformers raises many types for unusable folders
            logger.info("no tokenizer from %s: %s", spec, exc)
    return None


def load_tokenizer(options: dict[str, Any], fallbacks: Sequence[str | None]) -> tuple[Any, str] | None:
    """The tokenizer named by ``options.tokenizer`` (an error if it cannot be loaded), else the
    first loadable of ``fallbacks``, else None (the engine then asks the server's /tokenize)."""
    named = options.get("tokenizer")
    if named:
        found = load_local_tokenizer([str(named)])
        if found is None:
            raise ConfigError(
                f"options.tokenizer {named!r} is neither a tokenizer folder nor a hub id in the local cache; "
                "give the folder that holds tokenizer.json / tokenizer_config.json"
            )
        return found
    return load_local_tokenizer(fallbacks)


class RemoteTokenizer:
    """Token counts, first tokens and chat rendering for a remote engine.

    Uses a local transformers tokenizer when one is given, else the server's ``/tokenize``.
    Chat rendering needs the local tokenizer (servers expose no "render template" endpoint
    common to SGLang, vLLM and llama.cpp).
    """

    def __init__(self, local: Any = None, client: HTTPClient | None = None, model: str = "", source: str = "") -> None:
        self.local = local  # a transformers tokenizer, or None
        self.client = client  # the server to ask when there is no local tokenizer
        self.model = model  # model name sent with /tokenize (vLLM wants one)
        self.source = source  # where the local tokenizer came from, for messages
        if local is None and client is None:
            raise ConfigError("a remote engine needs a tokenizer: set options.tokenizer to a local tokenizer folder")
        self._cache = functools.lru_cache(maxsize=4096)(self._encode_uncached)

    @property
    def chat_template(self) -> str | None:
        """The local tokenizer's chat template (None without one: `format_chat` then raises)."""
        return getattr(self.local, "chat_template", None) if self.local is not None else None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (cached)."""
        return list(self._cache(text))

    def count(self, text: str) -> int:
        return len(self._cache(text)) if text else 0

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        if self.local is not None:
            return tuple(self.local(text, add_special_tokens=False).input_ids)
        assert self.client is not None
        body = self.client.post(
            "/tokenize",
            {"model": self.model, "prompt": text, "add_special_tokens": False, "content": text, "add_special": False},
        )
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list):
            raise ConfigError(
                f"the {self.client.server} server at {self.client.base_url} has no usable /tokenize endpoint "
                f"(answer: {str(body)[:200]}); set options.tokenizer to a local tokenizer folder"
            )
        return tuple(int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens)

    def first_token(self, text: str) -> tuple[int, str | None]:
        """Id of the first token of ``text`` and, with a local tokenizer, its decoded text."""
        ids = self.encode(text)
        if not ids:
            raise ConfigError(f"candidate {text!r} has no tokens; give non-empty candidate strings")
        piece = self.local.decode(ids[:1]) if self.local is not None else None
        return ids[0], piece

    def format_chat(self, messages: Sequence[dict[str, str]], engine_name: str) -> str:
        if self.local is None or not getattr(self.local, "chat_template", None):
            what = f"the tokenizer from {self.source} has no chat template" if self.local is not None else (
                "no local tokenizer could be loaded"
            )
            raise ConfigError(
                f"engine {engine_name} cannot render chat messages: {what}; set options.tokenizer to a local "
                "folder (or cached hub id) whose tokenizer has the model's chat template"
            )
        return self.local.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
