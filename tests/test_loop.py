"""Loop edge cases on scripted fake engines (one character = one token), milliseconds each."""

from __future__ import annotations

import pytest

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.engines.fake import FakeEngine
from lookahead.types import Verdict

from tiny import BrokenVerifier

T = ["A1.\n\n", "A2.\n\n", "A3.\n\n", "A4.\n\n", "Answer \\boxed{4}."]


def make(target_steps, draft_steps, verifier=None, **overrides):
    cfg = config_from_dict(
        {
            "mode": "lr",
            "gamma": 3,
            "max_step_tokens": 64,
            "max_total_tokens": 1000,
            "target": {"backend": "fake"},
            "draft": {"backend": "fake"},
            **overrides,
        }
    )
    target, draft = FakeEngine(target_steps), FakeEngine(draft_steps)
    return LookaheadReasoner(cfg, target=target, draft=draft, verifier=verifier), target, draft


def ar_text(target_steps, **overrides):
    reasoner, _, _ = make(target_steps, target_steps, **overrides)
    return reasoner.generate("q", mode="ar")


def test_all_accepted_commits_gamma_plus_bonus_per_round():
    """All γ draft steps accepted -> γ draft steps plus the bonus target step per round."""
    reasoner, target, _ = make(T, T)
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    assert [s.source for s in result.steps[:4]] == ["draft", "draft", "draft", "target"]
    assert result.steps[3].depth == 4 and result.steps[3].draft_text is None  # the bonus step
    assert result.stats["acceptance_rate"] == 1.0
    assert target.calls[0] == 4  # P, P+d1, P+d2, P+d3 in ONE batched call


def test_none_accepted_commits_one_target_step_per_round():
    """Every draft step rejected -> each round commits exactly the target's first step."""
    drafts = ["B1.\n\n", "B2.\n\n", "B3.\n\n", "B4.\n\n", "B5.\n\n"]
    reasoner, _, _ = make(T, drafts)
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    assert all(s.source == "target" for s in result.steps)
    assert result.rounds == len(T)
    assert result.accepted_steps == 0 and result.drafted_steps > 0
    assert result.steps[0].verdict is not None and not result.steps[0].verdict.accepted


def test_first_accepted_then_rejected_uses_fallback_at_mismatch():
    """d1 accepted, d2 rejected -> commit d1 then the target's t2 (the fallback step)."""
    drafts = ["A1.\n\n", "XX.\n\n", "A3.\n\n", "A4.\n\n", "Answer \\boxed{4}."]
    reasoner, _, _ = make(T, drafts)
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    first = [s for s in result.steps if s.round == 0]
    assert [(s.source, s.text) for s in first] == [("draft", "A1.\n\n"), ("target", "A2.\n\n")]
    assert first[1].draft_text == "XX.\n\n" and first[1].target_text == "A2.\n\n"
    assert result.stats["acceptance_by_depth"][0] == 1.0


def test_first_step_rejected_still_advances():
    """A rejection at depth 1 still commits one target step (every round moves forward)."""
    drafts = ["ZZ.\n\n", *T[1:]]
    reasoner, _, _ = make(T, drafts, gamma=2)
    state = reasoner.start("q")
    records = list(_one_round(reasoner, state))
    assert [(r.source, r.text) for r in records] == [("target", "A1.\n\n")]


def _one_round(reasoner, state):
    drafts = reasoner.propose(state)
    targets = reasoner.expand(state, drafts)
    from lookahead.rounds.state import Proposal

    yield from reasoner.commit(state, Proposal(drafts, targets, reasoner.judge(state, drafts, targets)), 0.0)


def test_end_of_sequence_inside_the_lookahead():
    """The target ends (EOS) at depth 2 of a round -> stop there, nothing after it is committed."""
    short = ["A1.\n\n", "end"]
    reasoner, _, _ = make(short, ["A1.\n\n", "end-draft\n\n", "more\n\n"], stop_at_final_answer=False)
    result = reasoner.generate("q")
    assert result.text == "A1.\n\nend"
    assert result.finish_reason == "eos"
    assert result.text == ar_text(short, stop_at_final_answer=False).text


def test_budget_reached_mid_round():
    """The token budget runs out inside a round -> stop at the budget, same text as ar."""
    reasoner, _, _ = make(T, T, max_total_tokens=12)  # each step is 5 tokens
    result = reasoner.generate("q")
    assert result.finish_reason == "length"
    assert result.completion_tokens <= 12
    assert result.text == "A1.\n\nA2.\n\nA3"  # the third step is cut at the budget
    assert result.text == ar_text(T, max_total_tokens=12).text


def test_gamma_one():
    """γ = 1: one draft step and one bonus step per round when accepted."""
    reasoner, target, _ = make(T, T, gamma=1)
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    assert all(n == 2 for n in target.calls[:-1])
    assert result.stats["steps_per_round"] == 2.0 or result.rounds == 3


def test_delimiter_missing_steps_end_at_the_cap():
    """No delimiter at all -> every step ends at the token cap and no draft step is accepted."""
    text = ["x" * 50]
    reasoner, _, _ = make(text, text, max_step_tokens=8, stop_at_final_answer=False)
    result = reasoner.generate("q")
    assert result.text == "x" * 50
    assert result.accepted_steps == 0  # capped draft steps are never proposed
    assert all(s.tokens <= 8 for s in result.steps)
    assert result.text == ar_text(text, max_step_tokens=8, stop_at_final_answer=False).text


def test_capped_target_step_is_never_accepted():
    """A draft equal to a target step that hit the cap is rejected (the step was not complete)."""
    target = ["A1.\n\n", "a very long second step\n\n", "end"]
    reasoner, _, _ = make(target, ["A1.\n\n", "a very long\n\n"], max_step_tokens=11, stop_at_final_answer=False)
    state = reasoner.start("q")
    records = list(_one_round(reasoner, state))
    assert [r.source for r in records] == ["draft", "target"]
    assert records[1].text == "a very long"  # the capped fallback step


def test_final_answer_stops_and_skips_the_bonus_row():
    """A committed step stating the answer ends generation; no bonus row is computed after it."""
    steps = ["A1.\n\n", "The final answer is \\boxed{7}.\n\n", "junk\n\n"]
    reasoner, target, _ = make(steps, steps, gamma=3)
    result = reasoner.generate("q")
    assert result.finish_reason == "answer" and result.answer == "7"
    assert result.text == "".join(steps[:2])
    assert target.calls == [2]


def test_verifier_failure_rejects_and_is_counted():
    """A verifier that raises rejects the round's drafts; the run finishes with target steps."""
    reasoner, _, _ = make(T, T, verifier=BrokenVerifier())
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    assert result.accepted_steps == 0
    # every round but the last judged drafts (the last step has no delimiter, so no draft step)
    assert result.stats["verifier_failures"] == result.rounds - 1 == 4


class AcceptAll:
    name = "accept-all"

    def verify(self, contexts, drafts, targets):
        return [Verdict(True, 1.0, self.name) for _ in drafts]


def test_lenient_verifier_commits_draft_text():
    """With a verifier that accepts paraphrases, the draft's own words are committed."""
    drafts = ["B1.\n\n", "B2.\n\n", "B3.\n\n", "B4.\n\n", "B5.\n\n"]
    reasoner, _, _ = make(T, drafts, verifier=AcceptAll(), stop_at_final_answer=False, max_total_tokens=15)
    result = reasoner.generate("q")
    assert result.text.startswith("B1.\n\nB2.\n\nB3.\n\n")


@pytest.mark.parametrize("gamma", [1, 2, 4])
@pytest.mark.parametrize(
    "drafts",
    [T, ["A1.\n\n", "no\n\n", "A3.\n\n", "nope\n\n", "Answer \\boxed{4}."], ["x\n\n"] * 6, ["A1.\n\n"]],
)
def test_lr_equals_ar_under_exact_verifier(gamma, drafts):
    """Lossless: with the exact verifier lr commits exactly the text ar commits."""
    reasoner, _, _ = make(T, drafts, gamma=gamma, max_total_tokens=23)
    assert reasoner.generate("q").text == ar_text(T, max_total_tokens=23).text


def test_prompt_longer_than_context_is_refused():
    """A prompt that does not fit the target context raises PromptError with its token count."""
    from lookahead.errors import PromptError

    reasoner, target, _ = make(T, T)
    target.context = 10
    with pytest.raises(PromptError, match="tokens"):
        reasoner.generate("a long question")


def test_stream_yields_the_steps_of_generate():
    """stream() yields the committed steps; their texts join to the generate() text."""
    reasoner, _, _ = make(T, ["A1.\n\n", "no\n\n"])
    stream = reasoner.stream("q")
    assert "".join(s.text for s in stream) == reasoner.generate("q").text == stream.result.text


def test_per_request_overrides_leave_the_defaults_alone():
    """generate(gamma=1, verifier=...) applies to that call only; engine keys are refused."""
    from lookahead import ConfigError

    reasoner, target, _ = make(T, T)
    assert reasoner.generate("q", gamma=1).steps[1].depth == 2  # bonus after one draft step
    assert target.calls[0] == 2
    assert reasoner.generate("q").steps[3].depth == 4  # back to γ = 3
    assert reasoner.generate("q", speculation=False).mode == "ar"
    with pytest.raises(ConfigError, match="unknown config key"):
        reasoner.generate("q", gama=2)
    with pytest.raises(ConfigError, match="cannot change per request"):
        reasoner.generate("q", **{"target.model": "x"})
    assert reasoner.config.gamma == 3


def test_stream_cut_short_keeps_the_steps_so_far():
    """Closing a stream early ends the generation with finish 'cancelled' and the steps so far."""
    reasoner, _, _ = make(T, ["no\n\n"] * 5)
    stream = reasoner.stream("q")
    first = next(iter(stream))
    stream.close()
    assert stream.result.finish_reason == "cancelled" and stream.result.text == first.text
    assert reasoner.generate("q").text == "".join(T)  # the reasoner is free again


def test_agenerate_and_generate_batch():
    """The asyncio and batch entry points return the same results as generate."""
    import asyncio

    reasoner, _, _ = make(T, T)
    assert asyncio.run(reasoner.agenerate("q")).text == "".join(T)
    assert [r.text for r in reasoner.generate_batch(["q", "r"])] == ["".join(T)] * 2


class Recording(FakeEngine):
    """A fake engine that records the max_new_tokens of every row it is asked for."""

    def __init__(self, steps):
        super().__init__(steps)
        self.caps = []

    def generate(self, prompts, params, stop=()):
        rows = [params] * len(prompts) if not isinstance(params, list) else params
        self.caps.extend(p.max_new_tokens for p in rows)
        return super().generate(prompts, params, stop)


def test_draft_steps_are_capped_at_the_budget_left():
    """A draft step never runs past the budget: the target's step there would be capped anyway."""
    cfg = config_from_dict(
        {"gamma": 3, "max_step_tokens": 64, "max_total_tokens": 12, "target": {"backend": "fake"}, "draft": {"backend": "fake"}}
    )
    draft = Recording(T)
    reasoner = LookaheadReasoner(cfg, target=FakeEngine(T), draft=draft)
    result = reasoner.generate("q")
    assert draft.caps[:3] == [12, 7, 2]  # 12 tokens of budget, steps of 5 tokens
    assert result.text == ar_text(T, max_total_tokens=12).text


# -- the round strategies and their shared arithmetic (lookahead.rounds) ------------------------------


@pytest.mark.parametrize(
    ("mode", "overrides", "kind"),
    [
        ("ar", {}, "ar"),
        ("sd", {}, "ar"),
        ("lr", {}, "chain"),
        ("lr", {"adaptive_gamma": True}, "chain"),
        ("lr", {"width": 2, "draft_sampling": {"temperature": 0.7}}, "tree"),
        ("lr", {"pipeline": True}, "pipelined"),
    ],
)
def test_round_kind_follows_mode_and_config(mode, overrides, kind):
    """advance picks its round strategy from the ROUNDS table by mode and config (no if/elif drift)."""
    from lookahead.rounds import ROUNDS

    reasoner, _, _ = make(T, T, **overrides)
    state = reasoner.start("q", mode)
    assert reasoner._round_kind(state) == kind and kind in ROUNDS
    assert reasoner.generate("q", mode=mode).text == "".join(T)


def test_problem_state_budget_and_step_caps():
    """tokens_left counts the target tokens after committed + drafted text; step caps take the smaller."""
    reasoner, _, _ = make(T, T, max_total_tokens=12, max_step_tokens=8)
    state = reasoner.start("q")
    assert state.tokens_left(reasoner.target) == 12
    assert state.tokens_left(reasoner.target, "A1.\n\n") == 7  # one character = one token
    assert state.step_params(state.config.target_sampling, 3).max_new_tokens == 3
    assert state.step_params(state.config.target_sampling, 30).max_new_tokens == 8
    assert state.states_answer("so \\boxed{4}") and not state.states_answer("A1.\n\n")
    going_on, _, _ = make(T, T, stop_at_final_answer=False)
    assert not going_on.start("q").states_answer("so \\boxed{4}")


def test_steps_drafted_ahead_carry_only_onto_the_text_they_follow():
    """carry_ahead keeps e_2.. only when the commit produced exactly ahead_of + e_1, and the problem goes on."""
    from lookahead.rounds.state import carry_ahead

    reasoner, _, _ = make(T, T)
    state = reasoner.start("q")
    state.completion = "A1.\n\nA2.\n\n"
    carry_ahead(state, "A1.\n\n", ["A2.\n\n", "A3.\n\n"])
    assert state.carried_steps == ["A3.\n\n"]
    state.carried_steps = []
    carry_ahead(state, "A1.\n\n", ["B2.\n\n", "A3.\n\n"])
    assert state.carried_steps == []


def test_adaptive_learn_record_equals_observe_keywords():
    """policy.learn(RoundOutcome(...)) and the keyword form policy.observe(...) learn the same."""
    from lookahead.adaptive import AdaptiveGamma, RoundOutcome

    by_record, by_keywords = AdaptiveGamma(max_gamma=3), AdaptiveGamma(max_gamma=3)
    for policy in (by_record, by_keywords):
        policy.choose()
    by_record.learn(RoundOutcome(1, 1, [True], 0.02, 0.15, 2, 0.01, draft_tokens=10, target_tokens=20))
    by_keywords.observe(1, 1, [True], draft_s=0.02, target_s=0.15, target_rows=2, verify_s=0.01,
                        draft_tokens=10, target_tokens=20)  # fmt: skip
    assert by_record.snapshot() == by_keywords.snapshot()


def test_importing_the_loop_loads_no_heavy_or_outer_layer():
    """The core (loop, rounds) imports no torch / transformers / ray / fastapi, nothing from eval/server/cli."""
    import subprocess
    import sys

    code = (
        "import sys, lookahead.loop, lookahead.rounds; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'ray', 'fastapi') "
        "or m.startswith(('lookahead.eval', 'lookahead.server', 'lookahead.cli'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
