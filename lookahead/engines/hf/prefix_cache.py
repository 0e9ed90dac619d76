"""The cross-call prefix cache of `HFEngine`: KV rows of earlier calls, reused by later ones.

A call that continues an earlier one (the next round of the same problem) only pays for its new
tokens: `PrefixCache` keeps the rows of the last calls (prompt plus generated tokens, pads
removed) least-recently-used first, under a row and a token budget, and hands back the longest
remembered prefix of a new prompt. Rows of the speculation draft model travel with the target's
(``draft_keys`` / ``draft_values``), so the draft's mirror cache is reused too.

The two prefill layouts of the engine read from it: the shared layout takes one batch-1 cache of
the rows' common prefix (`PrefixCache.reused_cache`); the per-row layout takes each row's own
remembered prefix, left-padded into one batch (`left_padded_cache`). When a row ends, `capture_row`
copies its KV out of the running batch.

Example:
    >>> store = PrefixCache(max_rows=64, max_tokens=16384)
    >>> store.token_rows()
    []
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

from lookahead.errors import ConfigError

PREFIX_CACHE_ROWS = 64
"""Default bound on the remembered rows of the cross-call prefix cache (rows)."""
PREFIX_CACHE_TOKENS = 16384
"""Default bound on the tokens those rows hold, summed (tokens). The KV of one token costs
2 x layers x kv_heads x head_dim x bytes: SmolLM2-135M in float32 45 KiB (30 x 3 x 64), so the
default keeps at most ~720 MiB, plus ~64 MiB for the distilled speculation draft's KV (4 KiB)."""


@dataclass
class RememberedRow:
    """KV cache of one row of an earlier call, kept for cross-call prefix reuse."""

    token_ids: list[int]  # tokens whose KV is stored: prompt + generated minus the last sampled one
    keys: list[torch.Tensor]  # per layer, [1, kv_heads, len(token_ids), head_dim], pads removed
    values: list[torch.Tensor]  # per layer, same shape as `keys`
    draft_keys: list[torch.Tensor] | None = None  # speculation draft model's KV of the same tokens
    draft_values: list[torch.Tensor] | None = None  # (None when the call did not run the draft)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    # compare 64-token slices first (C speed): the prefix cache runs this for every row x entry
    while i + 64 <= n and a[i : i + 64] == b[i : i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _holds(a: RememberedRow, b: RememberedRow) -> bool:
    """Does remembered row ``a`` hold everything ``b`` does (its tokens as a prefix, its draft KV)?"""
    n = len(b.token_ids)
    if len(a.token_ids) < n or (b.draft_keys is not None and a.draft_keys is None):
        return False
    return common_prefix_len(a.token_ids, b.token_ids) == n


class PrefixCache:
    """The remembered rows of one engine, least recently used first, within ``max_rows`` rows and
    ``max_tokens`` tokens (summed); ``enabled=False`` remembers nothing and finds nothing."""

    def __init__(self, enabled: bool = True, max_rows: int = PREFIX_CACHE_ROWS, max_tokens: int = PREFIX_CACHE_TOKENS):
        for key, value in (("prefix_cache_rows", max_rows), ("prefix_cache_tokens", max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key} must be an integer >= 0 (got {value!r}); 0 keeps nothing across calls")
        self.enabled = enabled  # remember rows across calls at all
        self.max_rows = max_rows  # at most this many remembered rows (rows)
        self.max_tokens = max_tokens  # ... holding at most this many tokens in all (tokens)
        self.rows: list[RememberedRow] = []  # least recently used first

    def usage(self) -> dict[str, int]:
        """Rows and tokens held now, next to their bounds."""
        return {
            "rows": len(self.rows),
            "max_rows": self.max_rows,
            "tokens": sum(len(e.token_ids) for e in self.rows),
            "max_tokens": self.max_tokens,
        }

    def clear(self) -> None:
        self.rows = []

    def token_rows(self) -> list[tuple[int, ...]]:
        """Token ids of the rows kept now, least recently used first (for tests/stats)."""
        return [tuple(e.token_ids) for e in self.rows]

    def best_entry(
        self, ids: list[int], limit: int | None = None, draft: bool = False, prefer_draft: bool = False
    ) -> tuple[RememberedRow | None, int]:
        """The remembered row sharing the longest token prefix with ``ids[:limit]``, and that length.

        ``draft=True``: only rows that kept the speculation draft's KV; ``prefer_draft``: among
        rows of equal length, those that kept it. Other ties go to the most recently used row.
        ``(None, 0)`` when nothing is shared (or the prefix cache is off).
        """
        ids = ids if limit is None else ids[:limit]
        best, best_key = None, (0, False)
        for entry in reversed(self.rows) if self.enabled else ():
            has_draft = entry.draft_keys is not None
            if draft and not has_draft:
                continue
            key = (common_prefix_len(entry.token_ids, ids), prefer_draft and has_draft)
            if key[0] > 0 and key > best_key:
                best, best_key = entry, key
        return best, best_key[0]

    def reused_cache(self, model: PreTrainedModel, shared_ids: list[int], draft: bool = False) -> tuple[DynamicCache, int]:
        """A batch-1 cache of ``model`` holding the longest remembered prefix of ``shared_ids``, and
        its length. ``draft=True``: the speculation draft's cache, from rows that kept one."""
        cache = DynamicCache(config=model.config)
        best, best_len = self.best_entry(shared_ids, draft=draft)
        if best is not None:
            self.touch([best])
            keys, values = (best.draft_keys, best.draft_values) if draft else (best.keys, best.values)
            for layer, k, v in zip(cache.layers, keys, values, strict=False):
                layer.update(k[:, :, :best_len, :], v[:, :, :best_len, :])
        return cache, best_len

    def touch(self, entries: Sequence[RememberedRow | None]) -> None:
        """Mark remembered rows as just used (the eviction order is least recently used first)."""
        used = {id(e) for e in entries if e is not None}
        if used:
            self.rows = [e for e in self.rows if id(e) not in used] + [e for e in self.rows if id(e) in used]

    def remember(self, new_rows: Sequence[RememberedRow]) -> None:
        """Add the rows a call just captured, then evict least recently used rows over the bounds.

        A row whose tokens (and draft KV, if any) another row holds as a prefix is redundant: a new
        row drops the older rows it covers, and a new row that an older one covers is not added
        (the older one counts as used instead). One problem's consecutive rounds thus keep one row.
        """
        kept = list(self.rows)
        for row in new_rows:
            kept = [e for e in kept if not _holds(row, e)]
            holder = next((e for e in kept if _holds(e, row)), None)
            if holder is not None:
                kept.remove(holder)
                row = holder
            kept.append(row)
        total = sum(len(e.token_ids) for e in kept)
        while kept and (len(kept) > self.max_rows or total > self.max_tokens):
            total -= len(kept.pop(0).token_ids)
        self.rows = kept


def capture_row(
    cache: DynamicCache,
    draft_cache: DynamicCache | None,
    mask: torch.Tensor,
    j: int,
    fed_ids: list[int],
    extra: int = 0,
) -> RememberedRow:
    """Copy row ``j`` of the running cache(s) without its pad positions and without the last
    ``extra`` real positions (accepted proposals after the token that ended the row)."""
    real = mask[j].nonzero().squeeze(1)
    if real.numel() - extra != len(fed_ids):  # an internal invariant: one cached position per fed token
        raise RuntimeError(f"KV cache holds {real.numel() - extra} tokens for a row that fed {len(fed_ids)}")
    real = real[: len(fed_ids)]
    keys = [layer.keys[j : j + 1].index_select(2, real) for layer in cache.layers]
    values = [layer.values[j : j + 1].index_select(2, real) for layer in cache.layers]
    row = RememberedRow(token_ids=list(fed_ids), keys=keys, values=values)
    if draft_cache is not None:
        row.draft_keys = [layer.keys[j : j + 1].index_select(2, real) for layer in draft_cache.layers]
        row.draft_values = [layer.values[j : j + 1].index_select(2, real) for layer in draft_cache.layers]
    return row


def left_padded_cache(
    model: PreTrainedModel,
    kv: list[tuple[list[torch.Tensor], list[torch.Tensor]] | None],
    lengths: list[int],
    head: int,
) -> DynamicCache:
    """A ``[batch, kv_heads, head, head_dim]`` cache per layer of ``model``: row b holds the first
    ``lengths[b]`` positions of ``kv[b]`` (per-layer keys, values, ``[1, kv_heads, T, head_dim]``)
    at its right end, zeros before them (masked by the caller)."""
    cache = DynamicCache(config=model.config)
    if head == 0:
        return cache
    ref = next(pair for pair, n in zip(kv, lengths, strict=False) if n)
    for i, layer in enumerate(cache.layers):
        shape = (len(lengths), ref[0][i].shape[1], head, ref[0][i].shape[3])
        keys, values = ref[0][i].new_zeros(shape), ref[1][i].new_zeros(shape)
        for b, (pair, n) in enumerate(zip(kv, lengths, strict=False)):
            if n:
                keys[b, :, head - n :] = pair[0][i][0, :, :n]
                values[b, :, head - n :] = pair[1][i][0, :, :n]
        layer.update(keys, values)
    return cache
