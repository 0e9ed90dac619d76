"""The Ray engine pool and the concurrency scheduler, on CPU: tiny HF models and fake engines.

One local Ray session serves the whole module (starting Ray costs seconds); the pools in it do
not own it, so they never stop it.
"""

from __future__ import annotations

import _thread
import json
import logging
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from lookahead.config import EngineConfig, SamplingParams, load_config  # noqa: E402
from lookahead.engines.fake import FakeEngine  # noqa: E402
from lookahead.engines.hf import HFEngine  # noqa: E402
from lookahead.engines.pool import EngineCallError, PoolEngine  # noqa: E402
from lookahead.errors import ConfigError, ModelLoadError, PromptError  # noqa: E402
from lookahead.loop import LookaheadReasoner  # noqa: E402
from lookahead.scheduler import Job, JobCancelled, run_many  # noqa: E402

from tiny import tiny_llama, train_tokenizer  # noqa: E402

STOP = ["\n\n"]
QUESTIONS = [f"Question {i}: how many clips did Natalia sell?" for i in range(10)]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fake_factory(delay_per_token: float = 0.0, slow_marker: str | None = None, slow_s: float = 0.0):
    """Engine factory for the actors: the scripted fake, optionally slowed (per token, or per marked prompt)."""

    def build(config: EngineConfig) -> FakeEngine:
        engine = FakeEngine.from_config(config)
        engine.delay_per_token = delay_per_token
        if slow_marker is not None:
            plain = engine.generate

            def generate(prompts, params, stop=(), speculate=False):
                if any(slow_marker in p for p in prompts):
                    time.sleep(slow_s)
                return plain(prompts, params, stop=stop, speculate=speculate)

            engine.generate = generate
        return engine

    return build


def fake_pool(**kwargs) -> PoolEngine:
    cfg = EngineConfig(backend="fake", model="fake", replicas=kwargs.pop("replicas", 2))
    return PoolEngine.from_config(cfg, **kwargs)


def call_together(pool: PoolEngine, requests: list[tuple], barrier_parties: int | None = None) -> list:
    """Call ``pool.generate(*request)`` from one thread per request, all at once; results or exceptions."""
    out: list = [None] * len(requests)
    barrier = threading.Barrier(barrier_parties or len(requests))

    def call(i: int) -> None:
        barrier.wait()
        try:
            out[i] = pool.generate(*requests[i])
        except Exception as exc:  # collected for the assertions
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def summary(results) -> list[tuple]:
    return [(c.text, c.finish_reason, c.completion_tokens) for c in results]


# --------------------------------------------------------------------------------------------
# Tiny HF model: two actors vs the in-process engine


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tokenizer = train_tokenizer(300)
    model = tiny_llama(tokenizer, seed=0)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_pool(tiny_dir):
    cfg = EngineConfig(backend="hf", model=str(tiny_dir), replicas=2, pad_batches=False)
    pool = PoolEngine.from_config(cfg, call_timeout_s=60, batch_window_s=0.05)
    yield pool
    pool.shutdown()


def test_hf_pool_matches_in_process_engine(hf_pool, tiny_dir):
    """Guards merged batches: each caller's rows equal what the in-process engine gives them alone."""
    local = HFEngine.from_config(EngineConfig(backend="hf", model=str(tiny_dir), pad_batches=False))
    prompts = ["The quick brown fox", "Step 1: add the", "A short story about a cat", "One, two, three"]
    requests = [
        ([prompts[0], prompts[0] + " jumps"], [SamplingParams(max_new_tokens=12), SamplingParams(max_new_tokens=5)], STOP),
        ([prompts[1]], SamplingParams(max_new_tokens=16), STOP),
        ([prompts[2], prompts[3]], SamplingParams(max_new_tokens=9), STOP),
        ([prompts[3]], SamplingParams(max_new_tokens=20), [" the"]),  # other stop: its own call
    ]
    got = call_together(hf_pool, requests)
    for request, result in zip(requests, got, strict=False):
        assert summary(result) == summary(local.generate(*request))
    assert hf_pool.stats.merged_calls >= 1  # at least two callers shared one replica call
    assert hf_pool.count_tokens("The quick brown fox") == local.count_tokens("The quick brown fox")
    chat = [{"role": "user", "content": "hi"}]
    assert hf_pool.format_chat(chat) == local.format_chat(chat)
    assert hf_pool.context_length() == local.context_length() == 512
    local.shutdown()


def test_clear_prefix_cache_reaches_every_replica(hf_pool):
    """The pool's `clear_prefix_cache` clears each running replica's cache: the next call of a prompt
    a replica computed before finds nothing cached."""
    prompt = "Once upon a time there was a"
    hf_pool.generate([prompt], SamplingParams(max_new_tokens=6))
    hf_pool.generate([prompt], SamplingParams(max_new_tokens=6))  # each replica may have served one
    assert hf_pool.clear_prefix_cache() is True
    assert hf_pool.generate([prompt], SamplingParams(max_new_tokens=6))[0].cached_tokens == 0


def test_engine_error_fails_only_its_caller(hf_pool):
    """Guards error isolation: an over-long prompt gets PromptError; the call merged with it still succeeds."""
    long_prompt = "The quick brown fox " * 200
    got = call_together(
        hf_pool,
        [([long_prompt], SamplingParams(max_new_tokens=4), STOP), (["The quick"], SamplingParams(max_new_tokens=4), STOP)],
    )
    assert isinstance(got[0], PromptError) and "context of 512" in str(got[0])
    assert not isinstance(got[1], Exception) and got[1][0].completion_tokens == 4


# --------------------------------------------------------------------------------------------
# Merging, timeouts, dead actors (fake engines)


def test_concurrent_requests_are_merged_and_grouped_by_stop():
    """Guards continuous batching: 8 concurrent callers need fewer calls; different stops never share one."""
    pool = fake_pool(replicas=2, batch_window_s=0.3)
    try:
        prompt = pool.format_chat([{"role": "user", "content": "q"}])
        requests = [([prompt] * 3, SamplingParams(max_new_tokens=64), STOP) for _ in range(8)]
        requests.append(([prompt], SamplingParams(max_new_tokens=64), ["."]))
        got = call_together(pool, requests)
        assert all(r[0].text == "Natalia sold 48 clips in April.\n\n" for r in got[:8])
        assert got[8][0].text == "Natalia sold 48 clips in April."
        calls = [rows for rep in pool.replica_stats() for rows in rep["calls"]]
        assert sum(calls) == 8 * 3 + 1
        assert len(calls) <= 3  # the 24 rows in at most 2 merged calls (one per replica) + the "." call
        assert 1 in calls  # the "." request was not merged into a "\n\n" call
        assert all(rows <= pool.config.max_batch_rows for rows in calls)
        assert pool.stats.merged_calls >= 2 and pool.stats.failed_requests == 0
    finally:
        pool.shutdown()
    with pytest.raises(EngineCallError, match="shut down"):
        pool.generate(["x"], SamplingParams())


def test_hung_call_is_retried_then_fails_alone():
    """Guards timeouts: a call hanging past call_timeout_s is retried, then fails only its own request."""
    pool = fake_pool(
        replicas=2,
        call_timeout_s=1.0,
        call_retries=1,
        batch_window_s=0.2,
        engine_factory=fake_factory(slow_marker="SLOW", slow_s=30.0),
    )
    try:
        prompt = pool.format_chat([{"role": "user", "content": "q"}])
        slow = pool.format_chat([{"role": "user", "content": "SLOW"}])
        requests = [([slow], SamplingParams(max_new_tokens=64), STOP)]
        requests += [([prompt], SamplingParams(max_new_tokens=64), STOP) for _ in range(3)]
        started = time.perf_counter()
        got = call_together(pool, requests)
        assert isinstance(got[0], EngineCallError)
        assert got[0].attempts == 2 and "call_timeout_s=1 s" in str(got[0])
        assert all(r[0].text == "Natalia sold 48 clips in April.\n\n" for r in got[1:])
        assert pool.stats.timeouts >= 2 and pool.stats.failed_requests == 1
        assert time.perf_counter() - started < 20  # never waited for the 30 s sleep
        # the killed replicas came back and serve again
        assert pool.generate([prompt], SamplingParams(max_new_tokens=64), STOP)[0].finish_reason == "stop"
    finally:
        pool.shutdown()


def test_replica_that_fails_to_load_raises_model_load_error():
    """Guards startup errors: an engine that cannot load in the actor is a ModelLoadError, not a Ray trace."""

    def broken(config):
        raise ModelLoadError("no weights in /nowhere")

    with pytest.raises(ModelLoadError, match="no weights in /nowhere"):
        fake_pool(replicas=1, engine_factory=broken)


def test_actor_killed_mid_run_still_completes_every_problem():
    """Guards restarts: killing a replica during a concurrent run loses no problem and changes no output."""
    pool = fake_pool(replicas=2, engine_factory=fake_factory(delay_per_token=0.002), call_timeout_s=30)
    cfg = load_config("tiny", ["concurrency=4"])
    expected = LookaheadReasoner(cfg).generate(QUESTIONS[0])
    reasoner = LookaheadReasoner(cfg, target=pool, draft=pool)
    killed = threading.Event()

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pool._replicas[0].status == "busy":
                ray.kill(pool.replica_handles()[0], no_restart=False)
                killed.set()
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        outcomes = run_many(reasoner, QUESTIONS[:6], concurrency=4)
    finally:
        killer.join()
        reasoner.close()
    assert killed.is_set()
    assert [o.index for o in outcomes] == list(range(6))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert all(o.result.text == expected.text and o.result.finish_reason == expected.finish_reason for o in outcomes)
    assert pool.stats.deaths >= 1 and pool.stats.retries >= 1


# --------------------------------------------------------------------------------------------
# The scheduler


@pytest.fixture(scope="module")
def pooled_reasoner():
    cfg = load_config("tiny", ["target.replicas=2", "draft.replicas=1", "concurrency=4"])
    reasoner = LookaheadReasoner.from_config(cfg)
    yield reasoner
    reasoner.close()


def test_run_many_returns_every_job_once_in_order(pooled_reasoner):
    """Guards the scheduler: K=4 in flight, mixed modes, one bad job -> each outcome once, in job order."""
    reference = LookaheadReasoner(load_config("tiny"))
    jobs = [Job(q, mode="ar" if i % 3 == 0 else "lr") for i, q in enumerate(QUESTIONS)]
    jobs.append(Job("bad override", overrides={"gamma": 0}))
    jobs.append(("tuple job", "lr", {"gamma": 1}))
    seen = []
    outcomes = run_many(pooled_reasoner, jobs, on_result=lambda o: seen.append(o.index))
    assert seen == list(range(len(jobs)))
    assert [o.index for o in outcomes] == seen
    bad = outcomes[len(QUESTIONS)]
    assert isinstance(bad.error, ConfigError) and "gamma" in str(bad.error) and bad.result is None
    for job, outcome in zip(jobs[: len(QUESTIONS)], outcomes, strict=False):
        want = reference.generate(job.prompt, mode=job.mode)
        assert outcome.ok and outcome.result.mode == job.mode
        assert outcome.result.text == want.text and outcome.result.rounds == want.rounds
    assert outcomes[-1].ok and outcomes[-1].result.rounds > outcomes[1].result.rounds  # gamma=1: more rounds
    assert pooled_reasoner.target.stats.merged_calls >= 1  # problems shared target calls


def test_concurrency_over_in_process_engines_needs_no_pool():
    """K > 1 over in-process engines: the reasoner's batcher merges their calls; same texts as K = 1."""
    reasoner = LookaheadReasoner(load_config("tiny"))
    together = run_many(reasoner, QUESTIONS[:2], concurrency=2)
    alone = run_many(reasoner, QUESTIONS[:2], concurrency=1)
    assert [o.result.text for o in together] == [o.result.text for o in alone]
    reasoner.close()


class _LogEvent(logging.Handler):
    """Sets an event when the scheduler logs a message containing ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.WARNING)
        self.needle, self.seen = needle, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()


@pytest.fixture
def scheduler_log():
    """``scheduler_log(needle)`` -> an event set once the scheduler logs ``needle`` (handlers removed after)."""
    sched_logger = logging.getLogger("lookahead.scheduler")
    handlers = []

    def watch(needle: str) -> threading.Event:
        handler = _LogEvent(needle)
        sched_logger.addHandler(handler)
        handlers.append(handler)
        return handler.seen

    yield watch
    for handler in handlers:
        sched_logger.removeHandler(handler)


class _GatedEngine(FakeEngine):
    """The scripted fake; a hook runs before each call whose prompt contains ``marker`` (event-driven tests)."""

    marker = ""
    hook = staticmethod(lambda calls: None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marked_calls = 0

    def generate(self, prompts, params, stop=(), speculate=False):
        if any(self.marker and self.marker in p for p in prompts):
            self.marked_calls += 1
            self.hook(self.marked_calls)
        return super().generate(prompts, params, stop, speculate)


def _gated_reasoner(marker: str, hook) -> LookaheadReasoner:
    cfg = load_config("tiny")
    target = _GatedEngine.from_config(cfg.target)
    target.marker, target.hook = marker, hook
    return LookaheadReasoner(cfg, target=target, draft=FakeEngine.from_config(cfg.draft))


def test_ctrl_c_keeps_finished_results(scheduler_log):
    """Guards Ctrl-C: no new job starts, finished jobs are all delivered once, then KeyboardInterrupt.

    Event-driven (no timers): job 1 holds its first target call until the scheduler has logged
    that it took the Ctrl-C, which is sent while job 0 is being delivered.
    """
    job1_started, interrupted = threading.Event(), scheduler_log("interrupted: starting no new job")

    def hold_job1(calls: int) -> None:
        if calls == 1:
            job1_started.set()
            assert interrupted.wait(10), "the scheduler never took the Ctrl-C"

    reasoner = _gated_reasoner(QUESTIONS[1], hold_job1)
    delivered = []

    def on_result(outcome):
        delivered.append(outcome)
        if outcome.index == 0:
            assert job1_started.wait(10), "job 1 never started"
            _thread.interrupt_main()  # Ctrl-C while job 1 is in flight

    with pytest.raises(KeyboardInterrupt):
        run_many(reasoner, QUESTIONS, concurrency=1, on_result=on_result)
    assert [o.index for o in delivered] == [0, 1]  # the job in flight finished; the rest never started
    assert all(o.ok and o.result.text.endswith("\\boxed{72}.") for o in delivered)


def test_second_ctrl_c_cancels_jobs_in_flight(scheduler_log):
    """Guards cancellation: a second Ctrl-C ends the job in flight at its next step, with its steps so far.

    Event-driven: job 0's second target call sends Ctrl-C, waits until the scheduler logged it,
    sends the second one and waits until the scheduler logged the cancellation.
    """
    first, second = scheduler_log("interrupted: starting no new job"), scheduler_log("cancelling the jobs in flight")

    def interrupt_twice(calls: int) -> None:
        if calls == 2:
            _thread.interrupt_main()
            assert first.wait(10), "the scheduler never took the first Ctrl-C"
            _thread.interrupt_main()
            assert second.wait(10), "the scheduler never took the second Ctrl-C"

    reasoner = _gated_reasoner(QUESTIONS[0], interrupt_twice)
    delivered = []
    with pytest.raises(KeyboardInterrupt):
        run_many(reasoner, [Job(q, mode="ar") for q in QUESTIONS], concurrency=1, on_result=delivered.append)
    assert [o.index for o in delivered] == [0]
    last = delivered[-1]
    assert isinstance(last.error, JobCancelled) and last.result.finish_reason == "cancelled"
    assert len(last.result.steps) == 2  # the step in flight when the second Ctrl-C came, and the one before


def test_bench_concurrency_smoke(tmp_path):
    """Guards the benchmark script: the tiny run writes JSON (with its command) and a PNG, no failures."""
    import importlib.util
    from pathlib import Path

    from lookahead.eval.tasks import default_data_dir

    if not (default_data_dir() / "gsm8k" / "test.jsonl").is_file():
        pytest.skip("needs the GSM8K test file in the data directory")
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_concurrency.py"
    spec = importlib.util.spec_from_file_location("bench_concurrency", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "concurrency"
    report = bench.main(["--config", "tiny", "--limit", "3", "--replicas", "1", "--concurrency", "1", "3", "--out", str(out)])
    assert (tmp_path / "concurrency.png").stat().st_size > 0
    saved = json.loads((tmp_path / "concurrency.json").read_text())
    assert saved["command"].startswith("python scripts/bench_concurrency.py --config tiny")
    assert [(r["mode"], r["concurrency"]) for r in report["rows"]] == [("ar", 1), ("ar", 3), ("lr", 1), ("lr", 3)]
    assert all(r["failed"] == 0 and r["same_text_as_first_k"] == 3 for r in report["rows"])
    assert report["rows"][3]["target_rows_per_call"] > report["rows"][2]["target_rows_per_call"]  # merged at K=3
