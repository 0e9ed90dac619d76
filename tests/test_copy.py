"""Copying from the context (``EngineConfig.copy``): a draft picks only among the tokens that
followed earlier occurrences of its last n tokens.

What must hold: the candidate rule itself; every token the engine writes where a match exists is
one of those candidates (and its own most likely one when greedy); token-level speculation does
not change a copying engine's output; `lr` with a copying draft stays lossless; the config keeps
copying off the target and off remote backends.
"""

from __future__ import annotations

import pytest

from lookahead import LookaheadReasoner
from lookahead.config import CopyConfig, SpeculationConfig, load_config
from lookahead.engines.hf import HFEngine, copy_candidates, restrict_to_copies
from lookahead.errors import ConfigError

from test_lossless import GSM8K_LIKE, QUESTIONS, needs_smollm2, tiny_config
from tiny import greedy

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Step 1: add the numbers. Step 2: multiply 3 by 4. Step",
    "A short story about a cat",
]


def test_copy_candidates_take_the_longest_match_most_recent_first():
    """Guards the rule: longest n wins, every occurrence of it counts, most recent first, no repeats."""
    #          0  1  2  3  4  5  6  7  8  9
    tokens = [1, 2, 3, 9, 2, 3, 7, 1, 2, 3]
    assert copy_candidates(tokens, max_ngram=3, min_ngram=1) == [9]  # (1, 2, 3) occurred once
    assert copy_candidates(tokens, max_ngram=2, min_ngram=1) == [7, 9]  # (2, 3) twice, most recent first
    assert copy_candidates([4, 2, 4, 2, 4, 2], max_ngram=1, min_ngram=1) == [4]  # repeats dropped
    assert copy_candidates(tokens, max_ngram=8, min_ngram=4) == []  # nothing of 4+ tokens occurred before
    assert copy_candidates([7], max_ngram=3, min_ngram=1) == []
    assert copy_candidates([5, 5, 5], max_ngram=3, min_ngram=2) == [5]  # overlapping occurrence


def test_restrict_to_copies_masks_everything_but_the_candidates():
    import torch

    logits = torch.tensor([0.0, 5.0, 1.0, 2.0, 3.0])
    kept = restrict_to_copies(logits, [2, 3, 9, 2, 3], CopyConfig(enabled=True, min_ngram=2, max_ngram=2))
    # (2, 3) was followed by 9, outside this 5-token vocabulary: nothing to copy, logits unchanged
    assert torch.equal(kept, logits)
    kept = restrict_to_copies(logits, [3, 4, 2, 3], CopyConfig(enabled=True, min_ngram=1, max_ngram=2))
    assert int(kept.argmax()) == 4 and torch.isinf(kept[[0, 1, 2, 3]]).all()
    # candidates the model gives -inf (a draft's output vocabulary): left as they were
    blocked = torch.tensor([0.0, 5.0, 1.0, 2.0, float("-inf")])
    assert torch.equal(restrict_to_copies(blocked, [3, 4, 2, 3], CopyConfig(enabled=True, min_ngram=1)), blocked)


def test_a_copying_engine_writes_only_copies_where_a_match_exists(model, tok):
    """Every greedy token written after a matching suffix is the model's best candidate."""
    import torch

    copy = CopyConfig(enabled=True, min_ngram=2, max_ngram=4)
    plain = HFEngine(model, tok, prefix_cache=False)
    copying = HFEngine(model, tok, prefix_cache=False, copy=copy)
    got = copying.generate(PROMPTS, greedy(24))
    want = plain.generate(PROMPTS, greedy(24))
    assert [c.text for c in got] != [c.text for c in want]  # copying changed something
    copied = 0
    for prompt, completion in zip(PROMPTS, got, strict=False):
        ids = tok(prompt + completion.text, add_special_tokens=False)["input_ids"]
        start = len(tok(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        for i in range(start, len(ids)):
            candidates = copy_candidates(ids[:i], copy.max_ngram, copy.min_ngram)
            if candidates:
                copied += 1
                assert ids[i] == max(candidates, key=lambda t: float(logits[i - 1, t]))
            else:
                assert ids[i] == int(logits[i - 1].argmax())
    assert copied > 5  # the rule was exercised


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_token_speculation_keeps_a_copying_engines_output(model, looping_model, tok, method):
    """Verification passes pick as plain decoding does, copying included (batch, stops, caps)."""
    copy = CopyConfig(enabled=True, min_ngram=2, max_ngram=4)
    weights = looping_model if method == "ngram" else model
    params = [greedy(30), greedy(9), greedy(41)]
    plain = HFEngine(weights, tok, prefix_cache=False, copy=copy)
    fast = HFEngine(
        weights,
        tok,
        copy=copy,
        speculation=SpeculationConfig(method=method, num_tokens=4),
        draft_model=model if method == "draft" else None,  # proposes without copying
    )
    accepted = 0
    for stop in ([], [" the", "e"]):
        want = plain.generate(PROMPTS, params, stop=stop)
        got = fast.generate(PROMPTS, params, stop=stop, speculate=True)
        assert [(c.text, c.finish_reason) for c in got] == [(c.text, c.finish_reason) for c in want]
        accepted += sum(c.spec_accepted_tokens for c in got)
    assert accepted > 0


@pytest.mark.parametrize("gamma", [1, 3])
def test_lr_with_a_copying_draft_is_lossless(model, other_model, tok, gamma):
    """The draft's picks change, the committed text does not: it still equals `ar`'s."""
    target = HFEngine(model, tok)
    draft = HFEngine(other_model, tok, copy=CopyConfig(enabled=True, min_ngram=2))
    reasoner = LookaheadReasoner(tiny_config(gamma=gamma), target=target, draft=draft)
    for question in QUESTIONS:
        ar = reasoner.generate(question, mode="ar")
        lr = reasoner.generate(question, mode="lr")
        assert lr.text == ar.text
        assert lr.drafted_steps > 0


def test_copy_config_keys_and_refusals():
    cfg = load_config("default", ["draft.copy=true"])
    assert cfg.draft.copy.enabled and cfg.draft.copy.min_ngram == 3
    cfg = load_config("default", ["draft.copy.enabled=true", "draft.copy.max_ngram=5"])
    assert cfg.draft.copy.enabled and cfg.draft.copy.max_ngram == 5
    with pytest.raises(ConfigError, match="target.copy"):
        load_config("default", ["target.copy=true"])
    with pytest.raises(ConfigError, match="min_ngram <= max_ngram"):
        load_config("default", ["draft.copy=true", "draft.copy.min_ngram=9"])
    with pytest.raises(ConfigError, match="in-process engine"):
        load_config("default", ["draft.backend=sglang", "draft.copy=true"])
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config("default", ["draft.copy=maybe"])


@needs_smollm2
def test_shipped_pair_with_a_copying_draft_is_lossless_and_step_match_sees_it(tmp_path):
    """Real weights: `lr` with the copying shipped draft equals `ar`; scripts/step_match.py, fed
    the `ar` texts, finds that the target reproduces all of its own steps and the draft fewer."""
    import importlib.util
    import json
    from pathlib import Path

    overrides = {"max_step_tokens": 48, "max_total_tokens": 96}
    fixed_gamma = ["draft.copy=true", "adaptive_gamma=false"]  # every round drafts (the preset adapts γ)
    cfg = load_config("default", [f"{k}={v}" for k, v in overrides.items()] + fixed_gamma)
    records = []
    with LookaheadReasoner.from_config(cfg) as reasoner:
        for question in GSM8K_LIKE:
            ar = reasoner.generate(question, mode="ar")
            lr = reasoner.generate(question, mode="lr")
            assert lr.text == ar.text and lr.drafted_steps > 0
            records.append({"run": "ar", "status": "ok", "question": question, "completion": ar.text})
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    script = Path(__file__).resolve().parent.parent / "scripts" / "step_match.py"
    spec = importlib.util.spec_from_file_location("step_match", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [str(tmp_path), "--draft", "smollm2-135m-instruct", "--draft", "smollm2-135m-gsm8k-draft"]
    report = module.main(argv + [f"--set={k}={v}" for k, v in overrides.items()])
    assert report["steps"] >= len(GSM8K_LIKE)
    # its own greedy steps, up to near-ties that one forward pass over the whole text decides
    # differently from step-by-step decoding (1 token of 6 steps here)
    itself = report["drafts"]["smollm2-135m-instruct"]["step_match"]
    assert itself >= 0.8 and itself > report["drafts"]["smollm2-135m-gsm8k-draft"]["step_match"]
    assert json.loads((tmp_path / "step_match.json").read_text()) == report
    (tmp_path / "records.jsonl").write_text(json.dumps({"run": "ar", "status": "ok", "question": "q"}) + "\n")
    with pytest.raises(SystemExit, match="line 1: an ar record without its question or completion"):
        module.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="no finished `ar` records"):
        (tmp_path / "records.jsonl").write_text(json.dumps({"run": "lr", "status": "ok"}) + "\n")
        module.main([str(tmp_path)])
