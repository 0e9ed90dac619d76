"""What an engine's calls cost, measured through the `Engine` API (any engine: in process, a
Ray pool, an SGLang / OpenAI-compatible server), with the calls the loop makes.

- **decode step by rows** (``decode_s``): one call of n rows at two lengths (``short`` and ``long``
  new tokens, no stop string); seconds per decode step = the difference of the two calls over the
  difference of their longest rows (prefill and per-call costs cancel). The curve is made
  non-decreasing (an engine pads to the cheapest batch at or above a size);
- **prefill** (``prefill_s_per_token``): a long fresh prompt against a short one, one new token;
- **per-call cost** (``call_s``): the short 1-row call less its decode steps;
- **join cost** (``join_s``, engines with a joining decode loop: the HF engine): in a loop of n
  rows, the pass during which one more row joins (a cached prompt plus one word, one new token)
  less the loop's median pass: what a join costs the loop (its forward pass, and splicing the row
  into the batch's KV cache and out again, which grows with the rows live).

`lookahead profile` writes these into a cost profile; `lookahead bench` uses the curve as the
target's b(k) where it cannot time the model's forward pass itself (a served target).

Example:
    >>> times = measure_engine(engine, sizes=[1, 2, 3])      # doctest: +SKIP
    >>> times.decode_s[3] / times.decode_s[1]                # b(3)  # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lookahead.config import SamplingParams
from lookahead.engines.base import RowRequest
from lookahead.errors import ConfigError

Say = Callable[[str], None]
MIN_STEP_S = 1e-7  # a decode step measured at or below this (noise around a cost-free engine) counts as this (s)
FILLER = "the quick brown fox jumps over the lazy dog and counts one two three four five six seven".split()


def _quiet(message: str) -> None:
    pass


@dataclass
class CallTimes:
    """What `measure_engine` found for one engine."""

    decode_s: dict[int, float]  # seconds of one decode step by rows (s)
    prefill_s_per_token: float  # seconds per uncached prompt token (s)
    call_s: float  # fixed seconds per call (s)
    join_s: dict[int, float] = field(default_factory=dict)  # one join into a running loop of n rows (s); {}: none measured


def filler_words(n: int, rng: random.Random) -> str:
    """``n`` words of filler text (prompts whose content does not matter)."""
    return " ".join(rng.choice(FILLER) for _ in range(n))


def _timed(engine: Any, prompts: list[str], tokens: int, repeats: int) -> tuple[float, int]:
    """Best seconds of one call over ``repeats`` tries, and its longest row's new tokens."""
    best, longest = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, SamplingParams(max_new_tokens=tokens), stop=())
        seconds = time.perf_counter() - start
        if seconds < best:
            best, longest = seconds, max(c.completion_tokens for c in out)
    return best, longest


def measure_engine(engine: Any, sizes: Sequence[int], short: int = 4, long: int = 24, repeats: int = 2,
                   seed: int = 0, say: Say = _quiet, context_words: int = 40) -> CallTimes:
    """Decode step by rows, prefill per token and per-call cost of ``engine`` (module docstring).
    ``context_words``: the rows' shared prompt in words (about one token each): a decode step
    reads every row's keys and values, so its cost grows with the context it decodes at."""
    rng = random.Random(seed)
    base = filler_words(max(context_words, 1), rng)
    decode: dict[int, float] = {}
    intercept = 0.0
    for n in sorted(set(sizes)):
        say(f"{engine.name}: {n} row(s)")
        prompts = [f"{base} {i}: {filler_words(4, rng)}" for i in range(n)]
        engine.generate(prompts, SamplingParams(max_new_tokens=1), stop=())  # prefill them once: both timed calls reuse it
        t_short, m_short = _timed(engine, prompts, short, repeats)
        t_long, m_long = _timed(engine, prompts, long, repeats)
        if m_long <= m_short:
            raise ConfigError(f"{engine.name} ended its rows after {m_long} tokens; measuring needs rows that run to --long")
        decode[n] = max((t_long - t_short) / (m_long - m_short), MIN_STEP_S)
        if n == 1:
            intercept = max(t_short - decode[1] * max(m_short - 1, 0), 0.0)
    curve, top = {}, 0.0
    for n in sorted(decode):  # more rows never cost less: the engine pads to the cheapest size at or above
        top = max(top, decode[n])
        curve[n] = round(top, 9)
    prefill = _prefill(engine, rng, repeats)
    return CallTimes(curve, round(prefill, 9), round(intercept, 6))  # (the timed calls' prompts were cached)


def measure_join(engine: Any, sizes: Sequence[int], tokens: int = 12, after: int = 4, repeats: int = 3,
                 seed: int = 2, say: Say = _quiet, context_words: int = 40) -> dict[int, float]:
    """Seconds one join costs a running decode loop of n rows, for n in ``sizes`` (module docstring);
    {} for an engine without a joining loop (``generate_requests``). The loop asks its ``join``
    callback once per forward pass, so the time between two asks is one pass: the pass during which
    a row joined (prefilled, spliced into the batch, ended after its one token and cut out again)
    less the median of the loop's other passes, the median over ``repeats`` loops."""
    run = getattr(engine, "generate_requests", None)
    if run is None:
        return {}
    rng = random.Random(seed)
    base = filler_words(max(context_words, 1), rng)

    def request(texts: list[str], new: int) -> RowRequest:
        return RowRequest(list(texts), [SamplingParams(max_new_tokens=new)] * len(texts), lambda out: None)

    def one_join(prompts: list[str], joiner: str) -> float:
        asked: list[float] = []

        def join(live_rows: int) -> list[RowRequest]:
            asked.append(time.perf_counter())
            return [request([joiner], 1)] if len(asked) == after else []

        run([request(prompts, tokens)], stop=(), join=join)
        passes = [b - a for a, b in zip(asked, asked[1:], strict=False)]
        if len(passes) <= after:
            raise ConfigError(f"{engine.name} ended its rows after {len(passes)} passes; measuring a join needs {after + 1}")
        others = sorted(p for i, p in enumerate(passes) if i != after - 1)
        return passes[after - 1] - others[len(others) // 2]

    out: dict[int, float] = {}
    for n in sorted(set(sizes)):
        say(f"{engine.name}: a join into {n} row(s)")
        prompts = [f"{base} {i}: {filler_words(4, rng)}" for i in range(n)]
        engine.generate(prompts, SamplingParams(max_new_tokens=1), stop=())  # cached, as a round's rows are
        costs = sorted(one_join(prompts, f"{prompts[0]} {filler_words(1, rng)}") for _ in range(repeats))
        out[n] = round(max(costs[len(costs) // 2], 0.0), 6)
    return out


def _prefill(engine: Any, rng: random.Random, repeats: int) -> float:
    """Seconds per prompt token: a long fresh prompt against a short fresh one, one new token each."""
    times = []
    for length in (16, 400):
        best = float("inf")
        tokens = 0
        for _ in range(repeats):
            prompt = f"{rng.random()} {filler_words(length, rng)}"  # fresh: nothing of it is cached
            tokens = engine.count_tokens(prompt)
            start = time.perf_counter()
            engine.generate([prompt], SamplingParams(max_new_tokens=1), stop=())
            best = min(best, time.perf_counter() - start)
        times.append((tokens, best))
    (n0, t0), (n1, t1) = times
    return max((t1 - t0) / max(n1 - n0, 1), 0.0)


__all__ = ["CallTimes", "filler_words", "measure_engine", "measure_join"]
