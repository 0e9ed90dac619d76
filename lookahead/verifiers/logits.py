"""Next-token log-probabilities of a few label strings: how a model *judges* in one forward pass.

An LLM judge or a self-score verifier does not need to sample text: the log-probability the model
gives to " yes" vs " no" (or to the digits "0".."9") as the next token after the prompt is the
judgement, read from one batched forward pass -- deterministic, and as cheap as a prefill.

Dispatch on the engine:

- an engine with ``next_token_logprobs(prompts, candidates) -> list[dict[str, float]]`` (remote
  servers: OpenAI-compatible, SGLang) answers itself; a label it does not report gets ``-inf``;
- an in-process `HFEngine` runs one padded forward pass per chunk of ``max_batch`` prompts under
  ``torch.inference_mode``: left padding, an attention mask and position ids counted from each
  row's first real token, so a row's log-probabilities do not depend on the batch it is in;
- anything else raises `ConfigError` naming the engine.

Each label must be ONE token of the model's tokenizer (checked; the error lists how it splits).

Example:
    >>> label_logprobs(engine, ["Is 2+2=4? Answer:"], [" yes", " no"])   # doctest: +SKIP
    [[-0.31, -1.95]]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

from lookahead.errors import ConfigError, PromptError


def label_logprobs(engine: Any, prompts: Sequence[str], labels: Sequence[str], max_batch: int = 16) -> list[list[float]]:
    """``out[i][j]`` = log P(``labels[j]`` is the next token | ``prompts[i]``), natural log."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    prompts, labels = list(prompts), list(labels)
    if not labels:
        raise ValueError("give at least one label")
    if not prompts:
        return []
    method = getattr(engine, "next_token_logprobs", None)
    if callable(method):
        answers = method(prompts, labels)
        if len(answers) != len(prompts):
            raise RuntimeError(f"{engine.name}: next_token_logprobs returned {len(answers)} rows for {len(prompts)} prompts")
        return [[float(row.get(label, -math.inf)) for label in labels] for row in answers]
    check_logprob_support(engine)
    return _hf_label_logprobs(engine, prompts, labels, max_batch)


def check_logprob_support(engine: Any) -> None:
    """Raise `ConfigError` now if `label_logprobs` cannot work with ``engine``."""
    from lookahead.engines.hf import HFEngine

    if callable(getattr(engine, "next_token_logprobs", None)) or isinstance(engine, HFEngine):
        return
    raise ConfigError(
        f"engine {getattr(engine, 'name', type(engine).__name__)!r} cannot report next-token log-probabilities "
        "(it has no next_token_logprobs method and is not an in-process HF engine); "
        "use an hf engine as judge, e.g. options: {engine: {backend: hf, model: PATH}}"
    )


def single_token_ids(tokenizer: Any, labels: Sequence[str], where: str = "") -> list[int]:
    """The token id of each label; a label that is not exactly one token raises `ConfigError`."""
    ids = []
    for label in labels:
        pieces = tokenizer(label, add_special_tokens=False).input_ids
        if len(pieces) != 1:
            shown = [tokenizer.convert_ids_to_tokens(i) for i in pieces]
            raise ConfigError(
                f"{where or 'label'} {label!r} is {len(pieces)} tokens in this tokenizer ({shown}), not one; "
                "pick labels that are single tokens (e.g. with or without a leading space) via options.labels"
            )
        ids.append(int(pieces[0]))
    return ids


def _hf_label_logprobs(engine: Any, prompts: list[str], labels: list[str], max_batch: int) -> list[list[float]]:
    import torch

    model, tokenizer = engine.model, engine.tokenizer
    if model is None:
        raise RuntimeError(f"engine {engine.name} was shut down")
    label_ids = single_token_ids(tokenizer, labels, where=f"label of {engine.name}")
    rows = tokenizer(prompts, add_special_tokens=False).input_ids
    context = engine.context_length()
    for i, ids in enumerate(rows):
        if not ids:
            raise PromptError(f"judge prompt {i} is empty; the model needs at least one token to continue")
        if context is not None and len(ids) >= context:
            raise PromptError(f"judge prompt {i} has {len(ids)} tokens; the model's context holds {context}")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    device = next(model.parameters()).device
    index = torch.tensor(label_ids, device=device)
    # only the last column's logits: [rows, vocab] instead of [rows, width, vocab]
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(rows), max_batch):
            chunk = rows[start : start + max_batch]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, ids in enumerate(chunk):  # left padding: every row's last real token is column -1
                input_ids[b, width - len(ids) :] = torch.tensor(ids)
                mask[b, width - len(ids) :] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=False,
                **keep,
            ).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            out.extend(logprobs.index_select(1, index).tolist())
    return out
