"""Many problems at once in process: the batcher merges their engine calls, each output is its own.

Greedy decoding with the exact verifier: a problem's text under concurrency must equal its text
alone, in every mode; the merged calls must really carry several problems' rows; a cancelled
call leaves its batch; the oldest call runs first; the adaptive policy drafts less under load.
"""

from __future__ import annotations

import threading
import time

import pytest

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.adaptive import AdaptiveGamma, RoundOutcome
from lookahead.config import SamplingParams, SpeculationConfig
from lookahead.engines.batching import Batcher, BatchingEngine
from lookahead.engines.fake import FakeEngine
from lookahead.engines.hf import HFEngine
from lookahead.errors import GenerationCancelled
from lookahead.scheduler import Job, run_many
from lookahead.server.service import Admission

from tiny import tiny_llama, tiny_lr_config

QUESTIONS = ["The quick brown fox", "Step 2: multiply", "A short story about a cat", "One, two, three", "The final"]


def hf_reasoner(model, other_model, tok, **overrides) -> LookaheadReasoner:
    spec = SpeculationConfig(method="ngram")
    target = HFEngine(model, tok, speculation=spec)
    draft = HFEngine(other_model, tok, speculation=spec)
    return LookaheadReasoner(tiny_lr_config(**overrides), target=target, draft=draft)


@pytest.mark.parametrize("mode", ["ar", "lr", "sd", "lr+sd"])
def test_greedy_text_under_concurrency_equals_the_text_alone(model, other_model, tok, mode):
    """Five problems in flight over one in-process target and draft: each text is its text alone,
    and the target's calls carried rows of several problems (merged, or joined to a running loop)."""
    alone = hf_reasoner(model, other_model, tok, gamma=2)
    expected = [alone.generate(q, mode=mode).text for q in QUESTIONS]
    alone.close()
    together = hf_reasoner(model, other_model, tok, gamma=2)
    outcomes = run_many(together, [Job(q, mode) for q in QUESTIONS], concurrency=len(QUESTIONS))
    assert [o.result.text for o in outcomes] == expected
    together.close()  # its driver threads end after their loops counted their figures
    stats = together.batcher.snapshot()
    assert stats["merged_calls"] + stats["joined_calls"] > 0 and stats["peak_rows"] > (3 if "lr" in mode else 1)


def test_adaptive_and_pipelined_rounds_under_concurrency_keep_the_text(model, other_model, tok):
    """Adaptive γ (load-aware) and pipelined rounds, four problems at once: the text stays ar's."""
    ar = hf_reasoner(model, other_model, tok, gamma=2)
    expected = [ar.generate(q, mode="ar").text for q in QUESTIONS[:4]]
    ar.close()
    for overrides in ({"adaptive_gamma": True, "adaptive_prior_acceptance": 0.9}, {"pipeline": True}):
        reasoner = hf_reasoner(model, other_model, tok, gamma=2, **overrides)
        outcomes = run_many(reasoner, QUESTIONS[:4], concurrency=4)
        assert [o.result.text for o in outcomes] == expected, overrides
        reasoner.close()


def test_generate_from_threads_agenerate_and_generate_batch_run_together(model, other_model, tok):
    """The three public ways of running several problems all share batches and keep each text."""
    import asyncio

    reasoner = hf_reasoner(model, other_model, tok, gamma=1)
    expected = [reasoner.generate(q).text for q in QUESTIONS]
    before = reasoner.batcher.snapshot()
    calls_before = before["merged_calls"] + before["joined_calls"]
    assert [r.text for r in reasoner.generate_batch(QUESTIONS)] == expected
    texts: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: texts.__setitem__(i, reasoner.generate(QUESTIONS[i]).text)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [texts[i] for i in range(5)] == expected

    async def all_at_once():
        return await asyncio.gather(*(reasoner.agenerate(q) for q in QUESTIONS))

    assert [r.text for r in asyncio.run(all_at_once())] == expected
    after = reasoner.batcher.snapshot()
    assert after["merged_calls"] + after["joined_calls"] > calls_before
    reasoner.close()


def test_generate_batch_raises_the_first_error_after_the_others_finish():
    cfg = config_from_dict({"mode": "ar", "target": {"backend": "fake"}, "draft": {"backend": "fake"}})
    reasoner = LookaheadReasoner(cfg, target=FakeEngine(["A.\n\n", "\\boxed{1}"]))
    with pytest.raises(Exception, match="empty"):
        reasoner.generate_batch(["q", "", "r"])
    reasoner.close()


# -- the batcher on a scripted engine ------------------------------------------------------------


class Gate(FakeEngine):
    """A fake whose calls block until released, recording the prompts of every call."""

    def __init__(self) -> None:
        super().__init__(["A.\n\n"])
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def generate(self, prompts, params, stop=(), speculate=False):
        self.batches.append(list(prompts))
        self.entered.set()
        assert self.release.wait(10)
        return super().generate(prompts, params, stop, speculate)


def _call(engine, prompt, out, cancel=None):
    try:
        with engine.batcher.client(cancel):
            out[prompt] = engine.generate([prompt], SamplingParams(max_new_tokens=4), stop=["\n\n"])[0].text
    except GenerationCancelled as exc:
        out[prompt] = exc


def _wait_queued(batcher: Batcher, n: int) -> None:
    deadline = time.monotonic() + 10
    while batcher.snapshot()["waiting_calls"] < n:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_waiting_calls_merge_into_one_call_in_arrival_order():
    """While one call runs, three more queue; the next engine call carries all three, oldest first."""
    gate = Gate()
    engine = BatchingEngine(gate, Batcher(batch_window_s=0.0))
    out: dict[str, object] = {}
    first = threading.Thread(target=_call, args=(engine, "p0", out))
    first.start()
    assert gate.entered.wait(10)
    threads = []
    for i in (1, 2, 3):
        threads.append(threading.Thread(target=_call, args=(engine, f"p{i}", out)))
        threads[-1].start()
        _wait_queued(engine.batcher, i)
    gate.release.set()
    for t in [first, *threads]:
        t.join(10)
    assert gate.batches == [["p0"], ["p1", "p2", "p3"]]
    assert all(isinstance(out[f"p{i}"], str) for i in range(4))
    engine.batcher.close()


def test_a_cancelled_call_leaves_the_queue_and_frees_its_slot():
    """A call waiting behind a running one is cancelled: it raises at once, and the next engine
    call carries only the rows of the calls that were not cancelled."""
    gate = Gate()
    engine = BatchingEngine(gate, Batcher(batch_window_s=0.0))
    out: dict[str, object] = {}
    first = threading.Thread(target=_call, args=(engine, "p0", out))
    first.start()
    assert gate.entered.wait(10)
    cancel = threading.Event()
    quitter = threading.Thread(target=_call, args=(engine, "quitter", out, cancel))
    quitter.start()
    _wait_queued(engine.batcher, 1)
    stayer = threading.Thread(target=_call, args=(engine, "stayer", out))
    stayer.start()
    _wait_queued(engine.batcher, 2)
    cancel.set()
    quitter.join(5)
    assert not quitter.is_alive() and isinstance(out["quitter"], GenerationCancelled)  # before p0 ended
    gate.release.set()
    first.join(10)
    stayer.join(10)
    assert gate.batches == [["p0"], ["stayer"]]
    assert engine.batcher.snapshot()["cancelled"] == 1
    engine.batcher.close()


def test_an_error_in_a_merged_call_reaches_only_its_caller():
    """One empty prompt in a merged call: its caller gets the PromptError, the others their rows."""
    gate = Gate()
    engine = BatchingEngine(gate, Batcher(batch_window_s=0.0))
    out: dict[str, object] = {}

    def call(prompt):
        try:
            out[prompt] = engine.generate([prompt], SamplingParams(max_new_tokens=4))[0].text
        except Exception as exc:  # noqa: BLE001
            out[prompt] = exc

    first = threading.Thread(target=call, args=("p0",))
    first.start()
    assert gate.entered.wait(10)

    class Boom(Exception):
        pass

    original = gate.generate

    def generate(prompts, params, stop=(), speculate=False):
        if "bad" in prompts:
            raise Boom("bad row")
        return original(prompts, params, stop, speculate)

    gate.generate = generate  # type: ignore[method-assign]
    threads = [threading.Thread(target=call, args=(p,)) for p in ("ok1", "bad", "ok2")]
    for i, t in enumerate(threads, 1):
        t.start()
        _wait_queued(engine.batcher, i)
    gate.release.set()
    for t in [first, *threads]:
        t.join(10)
    assert isinstance(out["bad"], Boom) and out["ok1"] == out["ok2"] == "A.\n\n"
    engine.batcher.close()


def test_a_closed_stream_cancels_the_generation_at_its_next_engine_call():
    """`ResultStream.cancel` from another thread: the generation ends "cancelled" with its steps so far."""
    steps = [f"S{i}.\n\n" for i in range(30)]
    cfg = config_from_dict({"mode": "ar", "target": {"backend": "fake"}, "stop_at_final_answer": False})
    target = FakeEngine(steps)
    target.delay_per_token = 0.002
    reasoner = LookaheadReasoner(cfg, target=target)
    stream = reasoner.stream("q")
    seen = []
    for step in stream:
        seen.append(step)
        if len(seen) == 2:
            threading.Timer(0.0, stream.cancel).start()
    assert stream.result.finish_reason == "cancelled"
    assert 2 <= len(stream.result.steps) < 30
    reasoner.close()


def test_admission_is_first_come_first_served_and_bounded():
    """Two running slots, two waiting: a fifth is refused; slots go to the waiting in arrival order."""
    admission = Admission(limit=2, queue=2)
    tickets = [admission.try_acquire() for _ in range(4)]
    assert all(t is not None for t in tickets) and admission.try_acquire() is None
    never = threading.Event()
    assert admission.turn(tickets[0], never) and admission.turn(tickets[1], never)
    order: list[int] = []
    waiters = [threading.Thread(target=lambda i=i: order.append(i) if admission.turn(tickets[i], never) else None) for i in (3, 2)]
    for w in waiters:  # the later ticket starts waiting first: it must still go second
        w.start()
        time.sleep(0.05)
    admission.release(tickets[0], ran=True)
    time.sleep(0.3)
    assert order == [2]
    admission.release(tickets[1], ran=True)
    for w in waiters:
        w.join(5)
    assert order == [2, 3]


def test_a_cancelled_waiting_request_leaves_the_admission_queue():
    admission = Admission(limit=1, queue=1)
    running, waiting = admission.try_acquire(), admission.try_acquire()
    assert admission.turn(running, threading.Event())
    cancel = threading.Event()
    cancel.set()
    assert not admission.turn(waiting, cancel)
    admission.release(waiting, ran=False)
    assert admission.waiting == 0 and admission.active == 1


# -- the load-aware policy ------------------------------------------------------------------------


def warmed_policy(alpha: float) -> AdaptiveGamma:
    """A policy that has measured its costs: c = 0.1, a CPU-like curve, acceptance ``alpha``."""
    policy = AdaptiveGamma(2, prior_acceptance=alpha)
    for _ in range(3):
        policy.learn(RoundOutcome(1, 1 if alpha > 0.5 else 0, [alpha > 0.5], draft_s=0.01, target_s=0.11, target_rows=2,
                                  verify_s=0.0, draft_tokens=1, target_tokens=2))
        policy.learn(RoundOutcome(0, 0, [], draft_s=0.0, target_s=0.1, target_rows=1, verify_s=0.0, target_tokens=1))
    return policy


GPU_LIKE = [float("inf")] + [0.1 * (1 + 0.02 * (k - 1)) if k <= 8 else 0.1 * k / 8 for k in range(1, 33)]
"""Seconds per decode step by rows: flat up to 8 rows (memory-bound), then every row costs."""


def test_load_aware_policy_drafts_when_the_batch_is_empty_and_not_when_it_is_full():
    policy = warmed_policy(0.8)
    assert policy.choose(load=0, batch_costs=GPU_LIKE) > 0  # nothing else in the batch: drafting pays
    assert policy.choose(load=2, batch_costs=GPU_LIKE) > 0  # room left in the flat part
    assert policy.choose(load=24, batch_costs=GPU_LIKE) == 0  # a full batch: a drafted row costs a row
    assert policy.snapshot()["load"] == 24
    assert policy.choose(load=0, batch_costs=GPU_LIKE) > 0  # the load fell: it drafts again


def test_occupancy_counts_waiting_rows_and_clients_between_calls():
    gate = Gate()
    engine = BatchingEngine(gate, Batcher(batch_window_s=0.0))
    assert engine.occupancy() == 0
    out: dict[str, object] = {}
    first = threading.Thread(target=_call, args=(engine, "p0", out))
    first.start()
    assert gate.entered.wait(10)
    second = threading.Thread(target=_call, args=(engine, "p1", out))
    second.start()
    _wait_queued(engine.batcher, 1)
    with engine.batcher.client():  # this thread: a client between calls, asking before its call
        assert engine.occupancy() == 1  # p1's row waits; p0 is running, not in the next call
    gate.release.set()
    first.join(10)
    second.join(10)
    engine.batcher.close()


def test_a_lone_client_never_waits_for_others():
    """One problem alone: every call is taken at once (no gathering window is spent)."""
    cfg = config_from_dict({"mode": "ar", "target": {"backend": "fake"}})
    reasoner = LookaheadReasoner(cfg, target=FakeEngine(["A.\n\n", "B.\n\n", "\\boxed{1}"]))
    reasoner.batcher.batch_window_s = 5.0  # a wait would show as seconds
    start = time.monotonic()
    reasoner.generate("q")
    assert time.monotonic() - start < 2.0
    reasoner.close()


def test_wrapping_keeps_the_engine_reachable(tok):
    """The reasoner wraps an in-process engine once; its attributes stay readable and settable."""
    engine = HFEngine(tiny_llama(tok, seed=0), tok)
    cfg = tiny_lr_config()
    reasoner = LookaheadReasoner(cfg, target=engine, draft=engine)
    assert reasoner.target is reasoner.draft and reasoner.target.inner is engine and reasoner.target.thread_safe
    reasoner.target.prefix_cache_rows  # noqa: B018 -- forwarded to the engine
    reasoner.close()


def test_an_idle_driver_thread_ends_and_the_next_call_starts_another(monkeypatch):
    """A reasoner that is never closed must not keep a thread per engine forever: a lane's driver
    ends after DRIVER_IDLE_S with nothing to do, and the next call starts a new one."""
    import lookahead.engines.batching as batching

    monkeypatch.setattr(batching, "DRIVER_IDLE_S", 0.5)
    engine = BatchingEngine(FakeEngine(["A.\n\n"]), Batcher(batch_window_s=0.0))
    params = SamplingParams(max_new_tokens=8)

    def drivers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "lookahead-batcher" and t.is_alive()}

    before = drivers()
    assert engine.generate(["q"], params)[0].text == "A.\n\n"
    ours = drivers() - before
    assert len(ours) == 1
    for thread in ours:
        thread.join(timeout=5.0)
        assert not thread.is_alive()
    assert engine.generate(["q"], params)[0].text == "A.\n\n"


def test_a_call_joins_the_running_decode_loop_and_returns_when_its_rows_end(model, tok):
    """Token-level joining: a call that arrives while a long one decodes joins its loop, gets its
    rows back before the long call ends, and both texts are what each gives alone."""
    engine = HFEngine(model, tok)
    long_params, short_params = SamplingParams(max_new_tokens=48), SamplingParams(max_new_tokens=4)
    alone = {"long": engine.generate(["The quick brown fox"], long_params)[0].text,
             "short": engine.generate(["Step 2: multiply"], short_params)[0].text}  # fmt: skip
    engine.remembered.clear()
    passes = threading.Event()
    inner = engine.generate_requests

    def slowed(requests, stop=(), join=None):  # the loop's first pass waits until the second call is queued
        def pacing(live):
            if not passes.is_set():
                passes.set()
                _wait_queued(wrapped.batcher, 1)
            return join(live)
        return inner(requests, stop=stop, join=pacing)

    engine.generate_requests = slowed
    wrapped = BatchingEngine(engine, Batcher(batch_window_s=0.0))
    done: dict[str, tuple[str, float]] = {}

    def call(name, prompt, params):
        text = wrapped.generate([prompt], params)[0].text
        done[name] = (text, time.monotonic())

    first = threading.Thread(target=call, args=("long", "The quick brown fox", long_params))
    first.start()
    assert passes.wait(10)
    second = threading.Thread(target=call, args=("short", "Step 2: multiply", short_params))
    second.start()
    for t in (first, second):
        t.join(30)
    assert {k: v[0] for k, v in done.items()} == alone
    assert done["short"][1] < done["long"][1]  # handed back as its rows ended, not with the long row
    deadline = time.monotonic() + 10
    while not wrapped.batcher.snapshot()["passes"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the loop's figures are counted when it ends, after it handed back the rows
    stats = wrapped.batcher.snapshot()
    assert stats["joined_calls"] == 1 and stats["calls"] == 1 and stats["peak_rows"] == 2
    wrapped.batcher.close()


def test_calls_that_joined_a_failed_loop_run_again_and_only_its_own_caller_gets_the_error():
    """The engine fails after a second call joined its loop: the first caller gets the error, the
    joined call goes back to the front of the queue and runs in the next engine call."""
    from lookahead.engines.base import DecodeStats, EngineBase
    from lookahead.types import Completion

    class Joining(EngineBase):
        name = "joining"

        def __init__(self):
            self.loops = 0
            self.entered, self.go = threading.Event(), threading.Event()

        def generate(self, prompts, params, stop=(), speculate=False):
            raise AssertionError("plain calls use generate_requests")

        def generate_requests(self, requests, stop=(), join=None):
            self.loops += 1
            if self.loops == 1:
                self.entered.set()
                assert self.go.wait(10)
                assert [r.prompts for r in join(1)] == [["b"]]
                raise RuntimeError("the loop failed")
            for r in requests:
                r.deliver([Completion(p + "!", 1, 1, "eos") for p in r.prompts])
            return DecodeStats(passes=1, row_passes=len(requests), peak_rows=len(requests))

    inner = Joining()
    engine = BatchingEngine(inner, Batcher(batch_window_s=0.0))
    params = SamplingParams(max_new_tokens=4)
    out: dict[str, object] = {}

    def call(prompt):
        try:
            out[prompt] = engine.generate([prompt], params)[0].text
        except RuntimeError as exc:
            out[prompt] = exc

    first = threading.Thread(target=call, args=("a",))
    first.start()
    assert inner.entered.wait(10)
    second = threading.Thread(target=call, args=("b",))
    second.start()
    _wait_queued(engine.batcher, 1)
    inner.go.set()
    for t in (first, second):
        t.join(10)
    assert isinstance(out["a"], RuntimeError) and out["b"] == "b!" and inner.loops == 2
    engine.batcher.close()
