"""Keep K problems in flight at once over one reasoner: the batch runner behind eval and benchmarks.

Why: one problem at a time leaves an engine mostly idle (a round waits for its draft steps, then
for one small target batch). With K problems in flight their engine calls meet in merged
batches -- the reasoner's batcher in front of in-process engines (`lookahead.engines.batching`),
a Ray pool's replicas (`lookahead.engines.pool.PoolEngine`), or a server that batches concurrent
requests -- so the target decodes K rounds' rows in one call and throughput grows with K while
each problem's output stays what it would be alone.

`run_many` runs each job (question or chat messages, mode, per-request overrides) on one of K
worker threads through the reasoner's own verbs -- ``start``, ``advance``, ``result``. The
reasoner's engines are always safe to call from many threads (an in-process one sits behind its
batcher). Verifiers are shared by the threads: the built-in ones are safe; a verifier that keeps
state must guard it itself.

Outcomes: every job gets exactly one `JobOutcome` (its `Result`, or the error that ended it: a
bad override, a `PromptError`, an `EngineCallError` after the pool's retries ... -- one job's
failure never stops the others). ``on_result`` receives them in job order by default
(``ordered=False``: as they finish), each with its job index.

Ctrl-C: the first stops feeding new jobs and lets the ones in flight finish; the second cancels
those at their next engine call (their outcome holds the steps so far and a `JobCancelled`
error). Every finished job has been passed to ``on_result`` before `KeyboardInterrupt` is
re-raised, so an eval loop that writes one JSON line per outcome loses nothing.

Example:
    >>> reasoner = LookaheadReasoner.from_config(load_config("default", ["target.replicas=2",
    ...                                          "draft.replicas=2"]))          # doctest: +SKIP
    >>> jobs = [Job("What is 17 * 23?"), Job("What is 2 + 2?", mode="ar", overrides={"gamma": 3})]
    >>> outcomes = run_many(reasoner, jobs, concurrency=8,
    ...                     on_result=lambda o: print(o.index, o.ok))         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lookahead.config import (
    MODES,
    LookaheadConfig,
    uses_step_speculation,
    with_overrides,
)
from lookahead.errors import ConfigError, LookaheadError
from lookahead.loop import verifier_key
from lookahead.prompts import Prompt
from lookahead.types import Result

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One problem to solve."""

    prompt: Prompt  # the question text, or chat messages
    mode: str | None = None  # "ar", "lr", ...; None = the (overridden) config's mode
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys for this job only (as --set)


class JobCancelled(LookaheadError):
    """The job was cut short by Ctrl-C; its outcome's result holds the steps committed so far."""


@dataclass
class JobOutcome:
    """What one job ended with: a result, an error, or (cancelled) both."""

    index: int  # 0-based position of the job in the input
    result: Result | None  # the Result; None when the job failed before producing one
    error: BaseException | None  # why the job did not finish normally; None on success
    latency_s: float  # seconds from the job's start on a worker until its outcome (s)

    @property
    def ok(self) -> bool:
        return self.error is None


def run_many(
    reasoner: Any,
    jobs: Iterable[Job | Prompt | tuple],
    concurrency: int | None = None,
    on_result: Callable[[JobOutcome], None] | None = None,
    *,
    ordered: bool = True,
) -> list[JobOutcome]:
    """Solve every job with up to ``concurrency`` in flight; return the outcomes in job order.

    ``reasoner`` is a `LookaheadReasoner`; ``jobs`` are `Job`s, plain prompts, or tuples
    ``(prompt, mode, overrides)`` (mode and overrides optional); ``concurrency`` defaults to the
    reasoner's ``config.concurrency``. ``on_result`` is called once per job, in the calling
    thread, in job order (``ordered=True``) or as jobs finish. Raises `ConfigError` when
    ``concurrency > 1`` meets an engine that is not thread-safe, and re-raises
    `KeyboardInterrupt` after a Ctrl-C once every finished outcome has been delivered.
    """
    job_list = [_as_job(job, i) for i, job in enumerate(jobs)]
    k = reasoner.config.concurrency if concurrency is None else concurrency
    if k < 1:
        raise ConfigError(f"concurrency must be >= 1 (got {k})")
    run = _Run(reasoner, job_list, k, on_result, ordered)
    return run.go()


def _as_job(job: Job | Prompt | tuple, index: int) -> Job:
    if isinstance(job, Job):
        return job
    if isinstance(job, tuple):
        if not 1 <= len(job) <= 3:
            raise ConfigError(f"job {index} must be (prompt, mode, overrides) with mode and overrides optional")
        prompt, mode, overrides = (*job, None, None)[:3]
        return Job(prompt, mode, dict(overrides or {}))
    return Job(job)


class _Run:
    """One `run_many` call: the feed, the worker threads and the in-order delivery."""

    def __init__(self, reasoner: Any, jobs: list[Job], concurrency: int, on_result: Callable | None, ordered: bool):
        self.reasoner = reasoner
        self.jobs = jobs
        self.concurrency = concurrency
        self.on_result = on_result
        self.ordered = ordered
        self.outcomes: list[JobOutcome | None] = [None] * len(jobs)  # delivered outcomes, by index
        self.configs: list[LookaheadConfig | None] = [None] * len(jobs)  # effective config per job
        self.done: queue.Queue[JobOutcome] = queue.Queue()  # outcomes from the workers
        self.buffer: dict[int, JobOutcome] = {}  # finished, not yet delivered (ordered mode)
        self.next_index = 0  # ordered mode: the next job index to deliver
        self.feed_lock = threading.Lock()
        self.feed_at = 0  # next job index a worker takes
        self.stop_feeding = threading.Event()  # first Ctrl-C: start no new job
        self.cancel = threading.Event()  # second Ctrl-C: end the jobs in flight at their next step
        self.interrupts = 0  # Ctrl-C presses seen during the run
        self.in_flight: dict[int, Any] = {}  # job index -> its ProblemState while it runs

    # ---- setup in the calling thread --------------------------------------------------------

    def prepare(self) -> list[JobOutcome]:
        """Resolve each job's config, load the engines and verifiers it needs.

        A job whose overrides are invalid fails here, alone; the engines are created here (not
        lazily by K threads at once), and a failure to load one raises for the whole run.
        """
        failed = []
        needs_draft = False
        verifier_configs = {}
        for i, job in enumerate(self.jobs):
            try:
                cfg = with_overrides(self.reasoner.config, job.overrides)
                mode = job.mode or cfg.mode
                if mode not in MODES:
                    raise ConfigError(f"job {i}: mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
            except LookaheadError as exc:
                failed.append(JobOutcome(i, None, exc, 0.0))
                continue
            self.configs[i] = cfg
            if uses_step_speculation(mode):
                needs_draft = True
                verifier_configs.setdefault(verifier_key(cfg), cfg)
        self.reasoner.target  # noqa: B018 -- load the engines now, not lazily by K threads at once
        if needs_draft:
            self.reasoner.draft  # noqa: B018
        for cfg in verifier_configs.values():
            self.reasoner.verifier_for(cfg)  # create shared verifiers once, before the threads start
        return failed

    # ---- the run ------------------------------------------------------------------------------

    def go(self) -> list[JobOutcome]:
        for outcome in self.prepare():
            self.done.put(outcome)
        workers = [
            threading.Thread(target=self.work, name=f"run_many-{n}", daemon=True)
            for n in range(min(self.concurrency, len(self.jobs)))
        ]
        callback_error: BaseException | None = None
        with self.ctrl_c_handler():  # before the workers start: a Ctrl-C can come at once
            for w in workers:
                w.start()
            while True:
                try:
                    if self.done.empty() and not any(w.is_alive() for w in workers):
                        break
                    try:
                        outcome = self.done.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    self.receive(outcome)
                except KeyboardInterrupt:  # off the main thread no handler is installed
                    self.interrupted()
                except Exception as exc:  # noqa: BLE001 -- the caller's on_result raised: stop, then re-raise it
                    callback_error = callback_error or exc
                    self.stop_feeding.set()
                    self.cancel_in_flight()
            for w in workers:
                w.join()
        if callback_error is not None:
            raise callback_error
        for index in sorted(self.buffer):  # after a stop: deliver what finished behind a gap
            self.deliver(self.buffer.pop(index))
        if self.interrupts:
            raise KeyboardInterrupt
        return [o for o in self.outcomes if o is not None]

    @contextlib.contextmanager
    def ctrl_c_handler(self) -> Iterator[None]:
        """Count Ctrl-C as `interrupted` calls instead of KeyboardInterrupt while the run lasts.

        A KeyboardInterrupt can land anywhere, also inside the handling of the first one, and
        then escapes before the finished jobs are delivered; a signal handler cannot be cut short
        that way. Only the main thread can install one: elsewhere the KeyboardInterrupt path stays.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, lambda signum, frame: self.interrupted())
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def interrupted(self) -> None:
        """One Ctrl-C: the first starts no new job, the second cancels the jobs in flight."""
        self.interrupts += 1
        self.stop_feeding.set()
        if self.interrupts == 1:
            logger.warning("interrupted: starting no new job; Ctrl-C again to cancel the jobs in flight")
        else:
            self.cancel_in_flight()
            logger.warning("cancelling the jobs in flight at their next engine call")

    def cancel_in_flight(self) -> None:
        """End the jobs in flight at their next engine call (a waiting call leaves its batch now)."""
        self.cancel.set()
        with self.feed_lock:
            for state in self.in_flight.values():
                state.cancel.set()

    def receive(self, outcome: JobOutcome) -> None:
        if not self.ordered:
            self.deliver(outcome)
            return
        self.buffer[outcome.index] = outcome
        while self.next_index in self.buffer:
            self.deliver(self.buffer.pop(self.next_index))
            self.next_index += 1

    def deliver(self, outcome: JobOutcome) -> None:
        if self.outcomes[outcome.index] is not None:
            raise RuntimeError(f"job {outcome.index} finished twice")  # an internal invariant
        self.outcomes[outcome.index] = outcome  # marked first: delivered at most once
        if self.on_result is not None:
            self.on_result(outcome)

    def take(self) -> int | None:
        """The next job index to start (skipping jobs that failed in `prepare`), or None."""
        with self.feed_lock:
            while self.feed_at < len(self.jobs):
                if self.stop_feeding.is_set():
                    return None
                index = self.feed_at
                self.feed_at += 1
                if self.configs[index] is not None:
                    return index
            return None

    def work(self) -> None:
        while (index := self.take()) is not None:
            self.done.put(self.solve(index))

    def solve(self, index: int) -> JobOutcome:
        """Run one job through the reasoner's verbs; any exception becomes this job's outcome."""
        job, cfg = self.jobs[index], self.configs[index]
        start = time.perf_counter()
        try:
            state = self.reasoner.start(job.prompt, job.mode, cfg)
            with self.feed_lock:
                self.in_flight[index] = state
                if self.cancel.is_set():
                    state.cancel.set()
            steps = self.reasoner.advance(state)
            try:
                for _ in steps:
                    if self.cancel.is_set():
                        break
            finally:
                steps.close()
                with self.feed_lock:
                    self.in_flight.pop(index, None)
            cancelled = state.finish_reason in (None, "cancelled")
            if state.finish_reason is None:
                state.finish_reason = "cancelled"
            result = self.reasoner.result(state, time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 -- one job's failure (PromptError, EngineCallError, ...) is its own
            return JobOutcome(index, None, exc, time.perf_counter() - start)
        error = JobCancelled(f"job {index} was cancelled after {len(result.steps)} steps") if cancelled else None
        return JobOutcome(index, result, error, time.perf_counter() - start)

