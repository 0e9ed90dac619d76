"""The `Engine` protocol: the only thing the loop knows about a model backend.

An engine turns a batch of prompt texts into one `Completion` each. Steps are exchanged as
text, so draft and target may use different tokenizers. Engines keep whatever cache they like
(the HF engine reuses the KV cache of the longest token prefix it has already seen).

`EngineBase` is the base class of every engine in this package. It declares the **optional
capabilities** callers may rely on, each with a default, so a caller reads ``engine.thread_safe``
or calls ``engine.prepare_speculation()`` on any engine instead of probing with ``getattr``:

- ``thread_safe`` (default False): `generate` may be called from several threads at once;
- ``batch_costs`` (default None = unknown): seconds of one decode step by batch size;
- ``cache_usage()`` (default {}): what the engine's caches hold now, next to their bounds;
- ``occupancy()`` (default 0 = unknown): rows of other callers the next call would share a batch
  with (`lookahead.engines.batching.BatchingEngine`, `lookahead.engines.pool.PoolEngine`);
- ``tokenizer`` (default None): the engine's local tokenizer;
- ``clear_prefix_cache()`` (default: False, nothing cleared): forget the prompt prefixes the
  engine's cache holds, so its next calls start cold (the eval harness starts every run's block
  of concurrent problems from the same state);
- ``prepare_speculation()`` (default: nothing to do): load and check what
  ``generate(..., speculate=True)`` needs, before the first question;
- ``next_token_logprobs(prompts, candidates)`` (default: raises `ConfigError`): log-probability of
  each candidate as the next token, for the LLM-judge verifiers;
- ``check_logprob_labels(labels)`` (default: raises `ConfigError`): fail now if those labels
  cannot be scored, before the first verification.

Example:
    >>> from lookahead.engines import create_engine
    >>> engine = create_engine(EngineConfig(backend="fake"))           # doctest: +SKIP
    >>> engine.generate(["2+2="], SamplingParams(max_new_tokens=8), stop=["\\n\\n"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lookahead.config import SamplingParams
from lookahead.errors import ConfigError, PromptError
from lookahead.types import Completion


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The batch as a list; a single string (not a batch) or an empty prompt is refused."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise PromptError(f"prompt {i} is empty; the model needs at least one token to continue")
    return prompts


def row_params(params: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    """One validated `SamplingParams` per row: ``params`` shared by all rows, or one per row."""
    if isinstance(params, SamplingParams):
        out = [params] * n
    else:
        out = list(params)
        if len(out) != n:
            raise ValueError(f"got {len(out)} SamplingParams for {n} prompts; give one or one per prompt")
    for p in out:
        p.validate("sampling")
    return out


def clean_stops(stop: Sequence[str] | str) -> list[str]:
    """The non-empty stop strings of ``stop`` (one string or several)."""
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


def merge_key_parts(
    prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams], stop: Sequence[str] | str
) -> tuple[list[str], list[SamplingParams], tuple[str, ...]]:
    """A call's rows, one `SamplingParams` per row and its non-empty stop strings, as the engines
    that merge calls (the Ray pool, the in-process batcher) queue them; a single string is refused."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    prompts = list(prompts)
    per_row = row_params(params, len(prompts)) if prompts else []
    stops = tuple(clean_stops(stop))
    return prompts, per_row, stops


@dataclass(eq=False)
class RowRequest:
    """One caller's rows in a joining decode loop (`HFEngine.generate_requests`)."""

    prompts: list[str]  # the caller's prompts, in order
    params: list[SamplingParams]  # one per prompt
    deliver: Callable[[list[Completion] | BaseException], None]  # called once: its completions, or its error
    rows: list[Any] = field(default_factory=list)  # its rows once the engine tokenized them
    left: int = 0  # rows still decoding


@dataclass
class DecodeStats:
    """What one decode loop did: forward passes and how many rows each carried."""

    passes: int = 0  # forward passes after the prefill (passes)
    row_passes: int = 0  # live rows summed over those passes (row-passes)
    peak_rows: int = 0  # most live rows in one pass (rows)


@runtime_checkable
class Engine(Protocol):
    name: str  # short label for logs and traces, e.g. "hf:SmolLM2-135M-Instruct"

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        """Continue every prompt in one batched call.

        ``speculate=True`` asks for token-level speculative decoding (``sd`` / ``lr+sd`` modes) as
        configured in the engine's ``EngineConfig.speculation``; it never changes greedy output.
        Engines that cannot speculate (or whose server always does) ignore it and report what
        they know in ``Completion.spec_draft_tokens`` / ``spec_accepted_tokens``.

        ``params`` is one `SamplingParams` for all rows or one per row (rows may have different
        ``max_new_tokens``). A row ends at the first stop string (kept at the end of its text,
        ``finish_reason="stop"``), at ``max_new_tokens`` (``"length"``) or at end of sequence
        (``"eos"``; the EOS token is not part of the text). Results are in input order.
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` in this engine's tokenizer (no special tokens)."""
        ...

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Render chat messages as the prompt text that precedes the assistant's answer."""
        ...

    def context_length(self) -> int | None:
        """Maximum tokens (prompt + completion) the model accepts, or None if unbounded."""
        ...

    def shutdown(self) -> None:
        """Free models and caches. Calling it twice is harmless."""
        ...


class EngineBase:
    """Base class of the engines: the optional capabilities of an `Engine`, with their defaults.

    Subclasses implement the `Engine` protocol (``name``, `generate`, `count_tokens`,
    `format_chat`, `context_length`, `shutdown`) and override the capabilities they have (the
    table in the module docstring). A capability is always present, so callers never probe.
    """

    name: str  # short label for logs and traces, set by every engine (see `Engine`)
    thread_safe: bool = False
    """May `generate` be called from several threads at once? (A Ray pool, or a client of a
    server that batches concurrent requests, can; an in-process model cannot.)"""
    batch_costs: list[float] | None = None
    """Seconds of one decode step by batch size (index 0 unused) where the engine has measured
    them (the in-process HF engine); None when unknown. The adaptive policy reads it."""
    tokenizer: Any = None
    """The engine's local tokenizer (a transformers tokenizer for ``hf``; a
    `lookahead.engines.http.RemoteTokenizer` for the remote engines), or None."""

    def cache_usage(self) -> dict[str, int]:
        """What the engine's own caches hold now, next to their bounds (e.g. the HF engine's prefix
        cache: rows, max_rows, tokens, max_tokens); {} for an engine that reports none."""
        return {}

    def occupancy(self) -> int:
        """Rows of other callers that the caller's next call would share a batch with, where the
        engine merges calls (the adaptive policy drafts less under load); 0 where unknown."""
        return 0

    def clear_prefix_cache(self) -> bool:
        """Forget every prompt prefix the engine's cache holds (its next calls compute their prompts
        afresh). True when cleared; False when the engine keeps no cache it can clear from here.
        Default: False."""
        return False

    def prepare_speculation(self) -> None:
        """Load and check now what ``generate(..., speculate=True)`` needs (e.g. a draft model),
        so a mistake surfaces before the first question. Default: nothing to prepare."""

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, max_batch: int = 16
    ) -> list[dict[str, float]]:
        """Log-probability of each candidate as the next token right after each prompt.

        One ``{candidate: logprob}`` per prompt, in input order; a candidate the engine cannot
        see (outside a server's top list) gets ``-inf``. ``max_batch`` bounds the prompts of one
        forward pass where the engine runs the model itself (servers batch on their own).
        Default: this engine reports no log-probabilities, and says so with a `ConfigError`.
        """
        raise self._no_logprobs()

    def check_logprob_labels(self, labels: Sequence[str], where: str = "") -> None:
        """Raise `ConfigError` now if `next_token_logprobs` cannot score ``labels`` (e.g. a label
        that is not one token of an in-process model). Default: it cannot score anything."""
        raise self._no_logprobs()

    def _no_logprobs(self) -> ConfigError:
        return ConfigError(
            f"engine {self.name!r} cannot report next-token log-probabilities "
            "(in-process hf engines and OpenAI-compatible or SGLang servers can); "
            "use an hf engine as judge, e.g. options: {engine: {backend: hf, model: PATH}}"
        )
