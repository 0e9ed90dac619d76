"""Next-token log-probabilities of a few label strings: how a model *judges* in one forward pass.

An LLM judge or a self-score verifier does not need to sample text: the log-probability the model
gives to " yes" vs " no" (or to the digits "0".."9") as the next token after the prompt is the
judgement, read from one batched forward pass -- deterministic, and as cheap as a prefill.

Every engine declares the capability (`lookahead.engines.base.EngineBase.next_token_logprobs`):

- remote servers (OpenAI-compatible, SGLang) answer themselves; a label they do not report gets
  ``-inf``;
- the in-process `HFEngine` runs one padded forward pass per chunk of ``max_batch`` prompts, so
  a row's log-probabilities do not depend on the batch it is in; each label must be ONE token of
  its tokenizer (checked; the error lists how it splits);
- any other engine raises `ConfigError` naming the engine.

Example:
    >>> label_logprobs(engine, ["Is 2+2=4? Answer:"], [" yes", " no"])   # doctest: +SKIP
    [[-0.31, -1.95]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lookahead.engines.base import EngineBase


def label_logprobs(
    engine: EngineBase, prompts: Sequence[str], labels: Sequence[str], max_batch: int = 16
) -> list[list[float]]:
    """``out[i][j]`` = log P(``labels[j]`` is the next token | ``prompts[i]``), natural log."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    prompts, labels = list(prompts), list(labels)
    if not labels:
        raise ValueError("give at least one label")
    if not prompts:
        return []
    answers = engine.next_token_logprobs(prompts, labels, max_batch=max_batch)
    if len(answers) != len(prompts):
        raise RuntimeError(f"{engine.name}: next_token_logprobs returned {len(answers)} rows for {len(prompts)} prompts")
    return [[float(row.get(label, -math.inf)) for label in labels] for row in answers]
