"""Pipelined rounds (``pipeline``): same text as sequential ``lr`` and ``ar``, overlap, early stop, carry.

Scripted fake engines (one character = one token; ``delay_per_token`` makes a call take time) for
the loop's edge cases and timings, tiny random Llamas (tests/tiny.py) for the lossless property.
"""

from __future__ import annotations

import threading
import time

import pytest

from lookahead import ConfigError, LookaheadReasoner, config_from_dict, load_config
from lookahead.config import with_overrides
from lookahead.engines.fake import FakeEngine
from lookahead.engines.hf import HFEngine
from lookahead.scheduler import run_many

from tiny import BrokenVerifier, tiny_lr_config

T = ["A1.\n\n", "A2.\n\n", "A3.\n\n", "A4.\n\n", "Answer \\boxed{4}."]
WRONG = ["x1.\n\n", "x2.\n\n", "x3.\n\n", "x4.\n\n", "x5.\n\n", "x6.\n\n"]
LONG = [f"S{i:02d}.\n\n" for i in range(14)] + ["Answer \\boxed{9}."]


def make(target_steps, draft_steps, verifier=None, **overrides):
    cfg = config_from_dict(
        {
            "mode": "lr",
            "gamma": 3,
            "max_step_tokens": 64,
            "max_total_tokens": 1000,
            "pipeline": True,
            "target": {"backend": "fake"},
            "draft": {"backend": "fake"},
            **overrides,
        }
    )
    target, draft = FakeEngine(target_steps), FakeEngine(draft_steps)
    return LookaheadReasoner(cfg, target=target, draft=draft, verifier=verifier), target, draft


# -- lossless on scripted engines: the loop's edge cases -------------------------------------------


@pytest.mark.parametrize("gamma", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "drafts",
    [T, ["A1.\n\n", "no\n\n", "A3.\n\n", "nope\n\n", "Answer \\boxed{4}."], WRONG, ["A1.\n\n"]],
    ids=["accept", "mixed", "reject", "short"],
)
@pytest.mark.parametrize("budget", [12, 23, 1000])
def test_pipelined_equals_sequential_and_ar_on_scripts(gamma, drafts, budget):
    """Accepting, mixed, rejecting and short drafts, budgets cut mid-step: pipelined == sequential == ar."""
    reasoner, _, _ = make(T, drafts, gamma=gamma, max_total_tokens=budget)
    with reasoner:
        piped = reasoner.generate("q")
        assert piped.text == reasoner.generate("q", pipeline=False).text == reasoner.generate("q", mode="ar").text
        assert piped.completion_tokens <= budget


@pytest.mark.parametrize(
    "target_steps, draft_steps, overrides",
    [
        (["A1.\n\n", "end"], ["A1.\n\n", "end-draft\n\n", "more\n\n"], {"stop_at_final_answer": False}),  # EOS at depth 2
        (["A1.\n\n", "a very long second step\n\n", "end"], ["A1.\n\n", "a very long\n\n"], {"max_step_tokens": 11}),
        (["A1.\n\n", "The final answer is \\boxed{7}.\n\n", "junk\n\n"], None, {}),  # answer: no bonus row
        (["x" * 50], None, {"max_step_tokens": 8, "stop_at_final_answer": False}),  # no delimiter at all
    ],
    ids=["eos-inside", "capped-target", "final-answer", "no-delimiter"],
)
def test_pipelined_edge_cases_equal_ar(target_steps, draft_steps, overrides):
    """End of sequence inside the lookahead, capped target steps, the answer step, no delimiter."""
    reasoner, _, _ = make(target_steps, draft_steps or target_steps, **overrides)
    with reasoner:
        piped = reasoner.generate("q")
        ar = reasoner.generate("q", mode="ar")
        assert (piped.text, piped.finish_reason) == (ar.text, ar.finish_reason)


def test_final_answer_draft_gets_no_bonus_row():
    """A draft step stating the answer ends drafting; no target row is computed after it."""
    steps = ["A1.\n\n", "The final answer is \\boxed{7}.\n\n", "junk\n\n"]
    reasoner, target, _ = make(steps, steps)
    result = reasoner.generate("q")
    assert result.finish_reason == "answer" and result.text == "".join(steps[:2])
    assert target.calls == [1, 1]  # t_1 and t_2, one row per call; none after the answer


# -- lossless on tiny real models ------------------------------------------------------------------


QUESTIONS = ["Step 1: add", "The quick brown fox"]


class Slowed:
    """An engine that takes ``delay`` seconds longer per generate call (a target slower than its draft)."""

    def __init__(self, engine, delay):
        self.engine = engine
        self.delay = delay  # seconds added to each call
        self.name = engine.name

    def generate(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.engine.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_pipelined_lr_equals_sequential_and_ar_on_tiny_models(tok, model, other_model, gamma):
    """Greedy + exact verifier on real (tiny) models: an accepting and a rejecting draft."""
    accepted = rejected = 0
    for draft_model in (model, other_model):
        target = HFEngine(model, tok)
        reasoner = LookaheadReasoner(tiny_lr_config(gamma=gamma, pipeline=True, max_total_tokens=48), target=target, draft=HFEngine(draft_model, tok))
        for question in QUESTIONS:
            piped = reasoner.generate(question)
            sequential = reasoner.generate(question, pipeline=False)
            ar = reasoner.generate(question, mode="ar")
            assert piped.text == sequential.text == ar.text
            assert piped.completion_tokens == ar.completion_tokens
            accepted += piped.accepted_steps
            rejected += piped.drafted_steps - piped.accepted_steps
        reasoner.close()
    assert accepted > 0 and rejected > 0  # both the accepting and the fallback path ran


def test_pipelined_lr_plus_sd_equals_ar_on_tiny_models(tok, model, other_model):
    """lr+sd pipelined (token-level n-gram speculation in every call) still commits ar's text."""
    for draft_model in (model, other_model):
        target = HFEngine(model, tok)
        reasoner = LookaheadReasoner(tiny_lr_config(gamma=2, pipeline=True, max_total_tokens=48), target=target, draft=HFEngine(draft_model, tok))
        for question in QUESTIONS:
            piped = reasoner.generate(question, mode="lr+sd")
            assert piped.text == reasoner.generate(question, mode="ar").text
            assert piped.stats["spec_verify_passes"] > 0  # the target rows did speculate
        reasoner.close()


def test_draft_equal_to_the_target_carries_drafts_ahead(tok, model):
    """The target's own weights as the draft (and a slower target): every step is accepted, steps
    drafted ahead are reused by the next round, and the text is still ar's."""
    target = Slowed(HFEngine(model, tok), delay=0.03)
    reasoner = LookaheadReasoner(tiny_lr_config(gamma=3, pipeline=True), target=target, draft=HFEngine(model, tok))
    carried = 0
    for question in QUESTIONS:
        piped = reasoner.generate(question)
        assert piped.text == reasoner.generate(question, mode="ar").text
        assert piped.accepted_steps == piped.drafted_steps > 0
        carried += piped.stats["carried_drafts"]
    assert carried > 0
    reasoner.close()


def test_carried_drafts_on_scripts_skip_draft_calls():
    """All accepted with a slow target: carried steps replace draft calls, text unchanged."""
    reasoner, target, draft = make(LONG, LONG, gamma=3)
    target.delay_per_token = 0.004  # 24 ms per 6-token row; the draft is instant
    result = reasoner.generate("q")
    assert result.text == "".join(LONG)
    carried = result.stats["carried_drafts"]
    assert carried > 0
    assert result.stats["drafted_steps"] == result.stats["accepted_steps"]
    assert result.stats["draft_calls"] == len(draft.calls)  # the steps drafted ahead are counted too
    assert [s.text for s in result.steps] == LONG


def test_steps_drafted_ahead_carry_only_onto_their_own_prefix():
    """e_2.. carry over only when the committed text is P + d_1..d_γ + e_1 (the bonus step == e_1)."""
    from lookahead.rounds.pipelined import RoundInFlight

    reasoner, _, _ = make(T, T, gamma=2)
    for bonus, expected in (("A3.\n\n", ["A4.\n\n"]), ("other\n\n", [])):
        state = reasoner.start("q")
        run = RoundInFlight(prefix="", carried=[], drafts=["A1.\n\n", "A2.\n\n"], ahead=["A3.\n\n", "A4.\n\n"])
        state.completion = "A1.\n\nA2.\n\n" + bonus  # what commit left
        reasoner.carry(state, run)
        assert state.carried_steps == expected
    state.finish_reason = "answer"  # no next round: nothing to carry
    state.completion = "A1.\n\nA2.\n\nA3.\n\n"
    reasoner.carry(state, run)
    assert state.carried_steps == []


# -- early stop, overlap, stats --------------------------------------------------------------------


def test_rows_after_a_rejection_are_cancelled():
    """A slow target and a rejected d_1: the queued rows t_3, t_4 never run (sequential: 4 rows a round)."""
    reasoner, target, _ = make(T, WRONG, gamma=3)
    target.delay_per_token = 0.02  # 100 ms per row: the rejection is known long before t_2 ends
    result = reasoner.generate("q")
    assert result.text == "".join(T) and result.accepted_steps == 0
    assert all(n == 1 for n in target.calls)  # one row per call
    assert len(target.calls) <= 2 * result.rounds  # t_1, and t_2 that had started; t_3, t_4 cancelled
    sequential, sequential_target, _ = make(T, WRONG, gamma=3, pipeline=False)
    sequential.generate("q")
    assert sum(sequential_target.calls) >= 3 * result.rounds  # what the early stop saved


def test_drafting_stops_at_the_first_rejection():
    """A slow draft and a fast target: d_1 is judged (rejected) before d_2 is drafted."""
    reasoner, _, draft = make(T, WRONG, gamma=3)
    draft.delay_per_token = 0.02  # 100 ms per draft step; t_1 is ready long before
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    assert len(draft.calls) <= result.rounds + 1  # one draft step per round (sequential: γ per round)
    assert result.stats["drafted_steps"] <= result.rounds + 1


def test_parts_overlap_and_the_time_split_adds_up():
    """Sleeping fakes: the round's wall time is below the sum of its parts (overlap_s > 0)."""
    reasoner, target, draft = make(LONG, LONG, gamma=3, max_total_tokens=40)
    target.delay_per_token = 0.005  # 30 ms per row
    draft.delay_per_token = 0.003  # 18 ms per draft step
    result = reasoner.generate("q")
    stats = result.stats
    busy = stats["draft_s"] + stats["target_s"] + stats["verify_s"]
    assert stats["overlap_s"] > 0
    assert busy - stats["overlap_s"] <= result.wall_time_s + 1e-3
    assert stats["other_s"] >= 0
    assert stats["other_s"] == pytest.approx(result.wall_time_s - (busy - stats["overlap_s"]), abs=2e-3)
    # target_s is the sum of the rows' durations: at least their sleeps
    assert stats["target_s"] >= 0.005 * sum(len(s.text) for s in result.steps if s.source == "target") * 0.9
    sequential = reasoner.generate("q", pipeline=False).stats
    assert sequential["overlap_s"] == 0.0 and sequential["carried_drafts"] == 0


def test_verifier_failure_rejects_and_is_counted():
    """A verifier that raises rejects the pair it judged; the run ends with the target's steps."""
    reasoner, _, _ = make(T, T, verifier=BrokenVerifier())
    result = reasoner.generate("q")
    assert result.text == "".join(T) and result.accepted_steps == 0
    assert result.stats["verifier_failures"] == result.rounds - 1 == 4


def test_same_engine_for_draft_and_target_runs_sequentially():
    """One engine object cannot overlap with itself: the round falls back to one batched call."""
    cfg = config_from_dict({"gamma": 3, "pipeline": True, "target": {"backend": "fake"}, "draft": {"backend": "fake"}})
    engine = FakeEngine(T)
    reasoner = LookaheadReasoner(cfg, target=engine, draft=engine)
    assert not reasoner.pipelines(reasoner.start("q"))
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    assert 4 in engine.calls  # P, P+d1, P+d2, P+d3 in ONE batched call


def test_in_process_rows_run_on_the_problems_own_thread():
    """An in-process target: a problem's pipelined rows run on its own thread (in order), which ends
    with the problem; the reasoner keeps no shared worker pool for them."""
    reasoner, _, _ = make(T, T)
    assert reasoner.generate("q").text == "".join(T)
    assert reasoner._workers is None
    assert not [t for t in threading.enumerate() if t.name.startswith("lookahead-rows")]


def test_close_stops_the_target_workers():
    """close() shuts the shared target workers of a thread-safe target down."""
    cfg = config_from_dict({"gamma": 2, "pipeline": True, "target": {"backend": "fake"}, "draft": {"backend": "fake"}})
    reasoner = LookaheadReasoner(cfg, target=SafeFake(T), draft=FakeEngine(T))
    reasoner.generate("q")
    worker = reasoner._workers
    assert worker is not None
    reasoner.close()
    assert reasoner._workers is None and worker._shutdown


# -- scheduler and config --------------------------------------------------------------------------


class SafeFake(FakeEngine):
    """A fake that declares itself thread-safe, as a `PoolEngine` does."""

    thread_safe = True


def test_run_many_with_concurrency_and_pipeline_gives_the_same_texts():
    """Two problems in flight, pipelined rounds on a thread-safe engine: each text is ar's."""
    cfg = config_from_dict(
        {"gamma": 2, "pipeline": True, "concurrency": 2, "target": {"backend": "fake"}, "draft": {"backend": "fake"}}
    )
    mixed = ["A1.\n\n", "no\n\n", "A3.\n\n", "A4.\n\n", "Answer \\boxed{4}."]
    target, draft = SafeFake(T), SafeFake(mixed)
    target.delay_per_token = draft.delay_per_token = 0.001
    reasoner = LookaheadReasoner(cfg, target=target, draft=draft)
    outcomes = run_many(reasoner, ["q1", "q2", "q3", ("q4", "ar")], concurrency=2)
    assert all(o.ok for o in outcomes)
    assert [o.result.text for o in outcomes] == ["".join(T)] * 4
    assert outcomes[0].result.accepted_steps > 0
    assert reasoner._workers is not None and reasoner._workers._max_workers > 1  # rows run at once
    reasoner.close()


def test_pipeline_config_key():
    """pipeline is a bool key: --set parses, a string is refused, adaptive_gamma is refused with it."""
    assert load_config("tiny", ["pipeline=true"]).pipeline is True
    assert load_config("tiny").pipeline is False
    with pytest.raises(ConfigError, match="pipeline must be true or false"):
        config_from_dict({"pipeline": "yes"})
    with pytest.raises(ConfigError, match="pipeline must be true or false"):
        with_overrides(load_config("tiny"), {"pipeline": "yes"})
    with pytest.raises(ConfigError, match="adaptive_gamma=false"):
        load_config("tiny", ["pipeline=true", "adaptive_gamma=true"])


def test_pipeline_per_request():
    """pipeline=True for one generate call only; the reasoner's default stays sequential."""
    reasoner, target, _ = make(T, T, pipeline=False)
    assert reasoner.generate("q").text == "".join(T)
    assert target.calls[0] == 4  # sequential: one batched call of γ + 1 rows
    target.calls.clear()
    assert reasoner.generate("q", pipeline=True).text == "".join(T)
    assert set(target.calls) == {1}  # pipelined: one row per call
    assert reasoner.config.pipeline is False
