"""Next-token log-probabilities of single-token candidates: how an in-process model *judges*.

`HFEngine.next_token_logprobs` runs one padded forward pass per chunk of ``max_batch`` prompts
under ``torch.inference_mode``: left padding, an attention mask and position ids counted from
each row's first real token, so a row's log-probabilities do not depend on the batch it is in.
Each candidate must be ONE token of the model's tokenizer (checked; the error lists how it splits).

Example:
    >>> label_logprobs_of(model, tokenizer, ["Is 2+2=4? Answer:"], [" yes", " no"], context=None, name="hf")  # doctest: +SKIP
    [[-0.31, -1.95]]
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from lookahead.engines.hf.text import single_token_ids
from lookahead.errors import PromptError


def label_logprobs_of(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    context: int | None,
    name: str,
    max_batch: int = 16,
) -> list[list[float]]:
    """``out[i][j]`` = log P(``labels[j]`` is the next token | ``prompts[i]``), natural log.

    ``context`` is the model's context length (a prompt must leave room for one token);
    ``name`` the engine's, for messages.
    """
    label_ids = single_token_ids(tokenizer, labels, where=f"label of {name}")
    rows = tokenizer(list(prompts), add_special_tokens=False).input_ids
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
