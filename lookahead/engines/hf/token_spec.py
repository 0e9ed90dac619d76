"""The maths of token-level speculative decoding, with no engine state: proposals and acceptance.

Vocabulary (as in `lookahead.engines.hf.engine`): a **verification pass** feeds a row's last
committed token plus its **proposed tokens**; the row commits the longest **accepted** prefix plus
one token of the target's own (the correction at the first rejection, or the **bonus token** when
all were accepted).

- `ngram_propose`: prompt lookup, the tokens that followed the most recent earlier occurrence of
  the row's last n tokens;
- `copy_candidates` / `restrict_to_copies`: copying from the context (``EngineConfig.copy``);
- `greedy_accept` / `accept_or_resample`: accept while the proposal equals the target's argmax, or
  speculative rejection sampling for sampled rows (`sampling_probs` is the target's distribution).

Example:
    >>> ngram_propose([5, 6, 7, 1, 5, 6], num_tokens=2, max_ngram=2, min_ngram=1)
    [7, 1]
    >>> greedy_accept([7, 1, 9], [7, 2])
    (1, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lookahead.config import CopyConfig, SamplingParams


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a sampled row draws from: softmax of ``[vocab]`` logits after temperature,
    top-k and top-p (``params.temperature`` must be > 0)."""
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability mass of the better tokens
        drop = mass_before > params.top_p
        drop[0] = False
        scores = scores.clone()
        scores[order[drop]] = float("-inf")
    return torch.softmax(scores, dim=-1)


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick one token from a ``[vocab]`` logits row with temperature, top-k and top-p."""
    return int(torch.multinomial(sampling_probs(logits, params), 1, generator=generator).item())


def _suffix_match_ends(tokens: Sequence[int], max_ngram: int, min_ngram: int) -> list[int]:
    """Where the longest suffix n-gram of ``tokens`` (n = ``max_ngram`` down to ``min_ngram``)
    occurred before: the index of each earlier occurrence's last token, most recent first; ``[]``
    when no n in that range has an earlier occurrence."""
    length = len(tokens)
    if length < 2:
        return []
    last = tokens[-1]
    ends = [e for e in range(length - 2, -1, -1) if tokens[e] == last]  # most recent first
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = list(tokens[length - n :])
        found = [e for e in ends if e >= n - 1 and list(tokens[e - n + 1 : e + 1]) == suffix]
        if found:
            return found
    return []


def ngram_propose(tokens: Sequence[int], num_tokens: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Prompt-lookup proposal: what followed the most recent earlier occurrence of the last n tokens.

    Tries n = ``max_ngram`` down to ``min_ngram``; the first n with an earlier match wins, and the
    (at most ``num_tokens``) tokens after that match are returned. ``[]`` when nothing matches.

    Example:
        >>> ngram_propose([5, 6, 7, 1, 5, 6], num_tokens=2, max_ngram=2, min_ngram=1)
        [7, 1]
    """
    if num_tokens < 1:
        return []
    ends = _suffix_match_ends(tokens, max_ngram, min_ngram)
    return list(tokens[ends[0] + 1 : ends[0] + 1 + num_tokens]) if ends else []


def copy_candidates(tokens: Sequence[int], max_ngram: int, min_ngram: int) -> list[int]:
    """The tokens that followed every earlier occurrence of the longest matching suffix n-gram.

    n runs from ``max_ngram`` down to ``min_ngram``; the first n with an earlier occurrence wins,
    and the tokens after each of its occurrences are returned, most recent first, without
    repeats. ``[]`` when no suffix of at least ``min_ngram`` tokens occurred before.

    Example:
        >>> copy_candidates([5, 6, 7, 5, 6, 8, 5, 6], max_ngram=3, min_ngram=2)
        [8, 7]
        >>> copy_candidates([5, 6, 7, 5, 6, 8, 5, 6], max_ngram=3, min_ngram=3)
        []
    """
    return list(dict.fromkeys(tokens[e + 1] for e in _suffix_match_ends(tokens, max_ngram, min_ngram)))


def restrict_to_copies(logits: torch.Tensor, tokens: Sequence[int], copy: CopyConfig) -> torch.Tensor:
    """``logits`` (one ``[vocab]`` row) with every token but the `copy_candidates` of ``tokens``
    at -inf; unchanged when nothing matches (or when no candidate is a token the model scores)."""
    candidates = [t for t in copy_candidates(tokens, copy.max_ngram, copy.min_ngram) if t < logits.shape[-1]]
    if not candidates:
        return logits
    index = torch.tensor(candidates, dtype=torch.long, device=logits.device)
    if not torch.isfinite(logits[index]).any():  # e.g. ids outside a draft's output vocabulary
        return logits
    kept = torch.full_like(logits, float("-inf"))
    kept[index] = logits[index]
    return kept


def accept_or_resample(
    target_probs: torch.Tensor,
    proposal: Sequence[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Speculative rejection sampling (Leviathan et al. 2023; Chen et al. 2023) for one row.

    ``target_probs`` is ``[k+1, vocab]``: the target's distribution p_i before proposal i (row k is
    the bonus distribution). ``proposal`` holds the k proposed tokens x_1..x_k; ``draft_probs``
    (``[k, vocab]``) the distributions q_i they were drawn from, or None for a deterministic
    proposal (n-gram lookup: q_i is a point mass on x_i). Proposal i is **accepted** with
    probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the next token is drawn from
    normalize(max(p_i - q_i, 0)); when all k are accepted the **bonus token** is drawn from p_k.
    Each emitted token is then distributed exactly as p (the target's own sampling).

    Returns ``(accepted, token)``: the row commits ``proposal[:accepted] + [token]``.
    """
    device = target_probs.device
    for i, x in enumerate(proposal):
        p = target_probs[i]
        px = float(p[x])
        qx = float(draft_probs[i][x]) if draft_probs is not None else 1.0
        u = float(torch.rand((), generator=generator, device=device))
        if u * qx < px:  # u < p(x)/q(x), without dividing by a tiny q(x)
            continue
        if draft_probs is not None:
            residual = torch.clamp(p - draft_probs[i], min=0.0)
        else:
            residual = p.clone()
            residual[x] = 0.0
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: the rejection was a rounding artefact
            residual = p
        token = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        return i, int(token.item())
    bonus = torch.multinomial(target_probs[len(proposal)], 1, generator=generator)
    return len(proposal), int(bonus.item())


def greedy_accept(target_argmax: Sequence[int], proposal: Sequence[int]) -> tuple[int, int]:
    """The greedy case of `accept_or_resample`: accept while the proposal equals the target's argmax.

    ``target_argmax[i]`` is the target's argmax before proposal i (k+1 entries). Returns
    ``(accepted, token)`` with ``token`` the target's argmax after the accepted run.
    """
    accepted = 0
    while accepted < len(proposal) and proposal[accepted] == target_argmax[accepted]:
        accepted += 1
    return accepted, int(target_argmax[accepted])


def fit_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Cut or ``-inf``-pad ``[batch, V]`` draft logits to the target's ``vocab`` logits."""
    if logits.shape[-1] == vocab:
        return logits
    if logits.shape[-1] > vocab:
        return logits[..., :vocab]
    pad = torch.full((*logits.shape[:-1], vocab - logits.shape[-1]), float("-inf"), device=logits.device)
    return torch.cat([logits, pad], dim=-1)
