"""Tree rounds (``width`` > 1): several sampled draft steps per node, any matching one accepted.

Scripted engines show which path a round takes; tiny random Llamas with a sampled draft check the
lossless property (greedy target + exact verifier: the text is ``ar``'s).
"""

from __future__ import annotations

import pytest

from lookahead import ConfigError, LookaheadReasoner, config_from_dict, load_config
from lookahead.engines.fake import FakeEngine
from lookahead.engines.hf import HFEngine

from tiny import BrokenVerifier, tiny_lr_config

T = ["A1.\n\n", "A2.\n\n", "A3.\n\n", "A4.\n\n", "Answer \\boxed{4}."]
OFF = ["x1.\n\n", "A2.\n\n", "A3.\n\n", "A4.\n\n", "Answer \\boxed{4}."]  # wrong at step 1 only


class Samples:
    """A draft that "samples": its k-th call answers from script k mod n (FakeEngine's rules)."""

    def __init__(self, *scripts):
        self.engines = [FakeEngine(s) for s in scripts]
        self.calls = 0

    def generate(self, prompts, params, stop=None, speculate=False):
        engine = self.engines[self.calls % len(self.engines)]
        self.calls += 1
        return engine.generate(prompts, params, stop=stop, speculate=speculate)

    def __getattr__(self, name):
        return getattr(self.engines[0], name)


def make(draft, verifier=None, **overrides):
    cfg = config_from_dict({
        "mode": "lr", "gamma": 2, "width": 2, "max_step_tokens": 64, "max_total_tokens": 1000,
        "draft_sampling": {"temperature": 0.7}, "target": {"backend": "fake"}, "draft": {"backend": "fake"},
        **overrides,
    })  # fmt: skip
    target = FakeEngine(T)
    return LookaheadReasoner(cfg, target=target, draft=draft, verifier=verifier), target


def test_a_second_sample_is_accepted_where_the_first_is_not():
    """Round 1 (root drafts x1 and A1): x1 is rejected, A1 accepted, then A2 from (A1), and the
    bonus row after (A1, A2) commits A3: three steps. A chain with the first sample only commits one."""
    reasoner, target = make(Samples(OFF, T))
    with reasoner:
        tree = reasoner.generate("q")
        first = [s for s in tree.steps if s.round == 0]
        assert [(s.source, s.text) for s in first] == [("draft", "A1.\n\n"), ("draft", "A2.\n\n"), ("target", "A3.\n\n")]
        assert tree.text == reasoner.generate("q", mode="ar").text == "".join(T)
        # one batched target call per round: the root, 2 children, (x1, A2) and (A1, A2) -> 5 rows
        assert target.calls[0] == 5
    chain, _ = make(FakeEngine(OFF), width=1)
    with chain:
        assert [s.source for s in chain.generate("q").steps if s.round == 0] == ["target"]


def test_repeated_samples_are_one_node_and_rejections_fall_back():
    """Identical samples make one child (no duplicate rows); all-wrong samples commit the target
    step, count the depth as judged and rejected, and the text is still ar's."""
    reasoner, target = make(Samples(T, T))
    with reasoner:
        result = reasoner.generate("q")
        assert target.calls[0] == 3  # root, (A1), (A1, A2): the repeats were dropped
        assert result.text == "".join(T)
    reasoner, _ = make(Samples(["y\n\n"] * 6, ["z\n\n"] * 6))
    with reasoner:
        result = reasoner.generate("q")
        assert result.text == "".join(T) and result.accepted_steps == 0
        assert result.stats["acceptance_by_depth"][0] == 0.0 and result.drafted_steps == result.rounds


@pytest.mark.parametrize("budget", [9, 23, 1000])
@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_tree_rounds_equal_ar_on_scripts(gamma, budget):
    """Budgets cut mid-step and at a node; a final-answer step ends the tree: tree == chain == ar."""
    mixed = ["A1.\n\n", "no\n\n", "A3.\n\n", "nope\n\n", "Answer \\boxed{4}."]
    reasoner, _ = make(Samples(OFF, mixed, T), gamma=gamma, width=3, max_total_tokens=budget)
    with reasoner:
        tree = reasoner.generate("q")
        assert tree.text == reasoner.generate("q", width=1).text == reasoner.generate("q", mode="ar").text
        assert tree.completion_tokens <= budget


def test_verifier_failure_rejects_and_is_counted():
    reasoner, _ = make(Samples(OFF, T), verifier=BrokenVerifier())
    with reasoner:
        result = reasoner.generate("q")
    assert result.text == "".join(T) and result.accepted_steps == 0 and result.stats["verifier_failures"] > 0


@pytest.mark.parametrize("width", [2, 3])
def test_tree_lr_equals_ar_on_tiny_models_with_a_sampled_draft(tok, model, other_model, width):
    """Greedy target, draft sampled at T = 0.7 (the target's own weights, so samples match often):
    the tree's text equals ar's on every question; steps were accepted and rejected."""
    accepted = rejected = 0
    for draft_model in (model, other_model):
        cfg = tiny_lr_config(gamma=2, width=width, max_total_tokens=48, draft_sampling={"temperature": 0.7, "seed": 1})
        with LookaheadReasoner(cfg, target=HFEngine(model, tok), draft=HFEngine(draft_model, tok)) as reasoner:
            for question in ("Step 1: add", "The quick brown fox"):
                tree = reasoner.generate(question)
                ar = reasoner.generate(question, mode="ar")
                assert tree.text == ar.text and tree.completion_tokens == ar.completion_tokens
                accepted += tree.accepted_steps
                rejected += tree.drafted_steps - tree.accepted_steps
    assert accepted > 0 and rejected > 0


def test_width_config_errors_name_the_fix():
    assert load_config("tiny").width == 1
    assert load_config("tiny", ["width=2", "draft_sampling.temperature=0.7"]).width == 2
    with pytest.raises(ConfigError, match="width .* must be >= 1"):
        load_config("tiny", ["width=0"])
    with pytest.raises(ConfigError, match="draft_sampling.temperature=0.7"):
        load_config("tiny", ["width=2"])  # greedy drafts: every sample the same step
    with pytest.raises(ConfigError, match="pipeline=false"):
        load_config("tiny", ["width=2", "draft_sampling.temperature=0.7", "pipeline=true"])
    with pytest.raises(ConfigError, match="tree of 84 draft steps"):
        load_config("tiny", ["width=4", "gamma=3", "draft_sampling.temperature=0.7"])
