"""What the remote engines (`SGLangEngine`, `OpenAIEngine`) share: connection, text side, plumbing.

Both talk to a server through one pooled, retrying `HTTPClient` (`lookahead.engines.http`) built
from the engine config the same way (`open_client`); both count tokens and render chat with a
`RemoteTokenizer`: a local transformers tokenizer when one can be loaded, else the server's
``/tokenize`` (`connect_tokenizer`); both report the context length the server (or the local
tokenizer, `tokenizer_context`) gives, and close their connection on `RemoteEngine.shutdown`.
A batch is checked the same way before either sends it (`prepare_batch`).

Example:
    >>> clean_stops(["\\n\\n", ""])
    ['\\n\\n']
    >>> as_int("4"), as_int(None), as_int("x")
    (4, None, None)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines.base import EngineBase, check_prompts, clean_stops, row_params
from lookahead.engines.http import HTTPClient, RemoteTokenizer, load_tokenizer


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def as_int(value: Any) -> int | None:
    """``value`` as an int, or None when it is None or not a number."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def tokenizer_context(tokenizer: Any) -> int | None:
    """``model_max_length`` of a tokenizer when it is a real limit (not transformers' 1e30 sentinel)."""
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if isinstance(value, int) and 0 < value < 10_000_000 else None


def open_client(cfg: EngineConfig, opts: dict[str, Any], *, base_url: str, server: str, hint: str) -> HTTPClient:
    """The engine's `HTTPClient`: timeouts and retries from ``cfg``, backoff and concurrency from the
    client options ``opts`` (``retry_backoff_s``, ``max_concurrency``)."""
    return HTTPClient(
        base_url,
        server=server,
        api_key=cfg.api_key,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        backoff_s=float(opts.get("retry_backoff_s", 0.5)),
        max_concurrency=int(opts.get("max_concurrency", 16)),
        hint=hint,
    )


@contextlib.contextmanager
def closed_on_error(client: Closable) -> Iterator[None]:
    """Close ``client`` if the block raises (an engine that fails to start leaks no connections)."""
    try:
        yield
    except BaseException:
        client.close()
        raise


def connect_tokenizer(opts: dict[str, Any], client: HTTPClient, fallbacks: Sequence[str | None], model: str) -> RemoteTokenizer:
    """The engine's `RemoteTokenizer`: ``options.tokenizer`` or the first loadable of ``fallbacks``
    (its ``local`` is then that tokenizer), else the server's ``/tokenize`` via ``client``."""
    local = load_tokenizer(opts, fallbacks)
    if local is None:
        return RemoteTokenizer(None, client, model=model, source="")
    return RemoteTokenizer(local[0], None, model=model, source=local[1])


def prepare_batch(
    prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams], stop: Sequence[str]
) -> tuple[float, list[str], list[SamplingParams], list[str]]:
    """``(start time, prompts, one SamplingParams per row, stop strings)`` of a checked batch."""
    started = time.perf_counter()
    prompts = check_prompts(prompts)
    return started, prompts, row_params(params, len(prompts)), clean_stops(stop)


class RemoteEngine(EngineBase, Generic[C]):
    """Base of the engines whose model runs elsewhere: ``name``, the `RemoteTokenizer`, the
    context length and one closable connection (an `HTTPClient`, or SGLang's in-process engine)."""

    def __init__(self, connection: C, tokenizer: RemoteTokenizer, name: str, context: int | None) -> None:
        self._connection: C | None = connection  # None once shut down
        self.tokenizer = tokenizer
        self.name = name
        self.context = context  # max prompt + completion tokens, None = unknown

    # -- Engine protocol -----------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self.tokenizer.format_chat(messages, self.name)

    def context_length(self) -> int | None:
        return self.context

    def shutdown(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # -- capabilities --------------------------------------------------------------------------
    def check_logprob_labels(self, labels: Sequence[str], where: str = "") -> None:
        """Any label can be scored: a server scores a candidate by its first token."""

    # -- helpers -------------------------------------------------------------------------------
    def _open(self) -> C:
        """The connection; RuntimeError after `shutdown`."""
        if self._connection is None:
            raise RuntimeError(f"engine {self.name} was shut down")
        return self._connection
