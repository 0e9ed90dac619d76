"""The `Engine` protocol: the only thing the loop knows about a model backend.

An engine turns a batch of prompt texts into one `Completion` each. Steps are exchanged as
text, so draft and target may use different tokenizers. Engines keep whatever cache they like
(the HF engine reuses the KV cache of the longest token prefix it has already seen).

Example:
    >>> from lookahead.engines import create_engine
    >>> engine = create_engine(EngineConfig(backend="fake"))           # doctest: +SKIP
    >>> engine.generate(["2+2="], SamplingParams(max_new_tokens=8), stop=["\\n\\n"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from lookahead.config import SamplingParams
from lookahead.errors import PromptError
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
