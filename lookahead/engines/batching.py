"""Continuous batching in this process: one batch for every problem in flight (calls merge at the
level of rounds, and rows join a running decode loop at the level of tokens).

Why: an in-process engine (the HF engine, any engine with ``thread_safe = False``) decodes one
batch at a time and keeps caches, so before this layer the reasoner ran one generation at a time
and a server's clients queued behind each other while a batch of 8 rows cost the CPU about as
much as 2-3 rows of one. `Batcher` puts ONE driver thread in front of such engines: every caller
thread (a server request, a scheduler job, a judge call) queues its call, and the driver runs
the calls that wait with the same **group** as one merged engine call, so the γ + 1 target rows
of one problem's round share a batch with the rows of every other problem in flight (the HF
engine then reuses each row's own cached prefix: `lookahead.engines.hf.prefix_cache`). Draft
steps, target steps, judge passes and token-level speculation (``speculate=True``) calls of
concurrent problems each meet in their own merged calls. A Ray pool (`lookahead.engines.pool`)
does the same across replicas; a server engine (SGLang, OpenAI-compatible) needs neither, the
server batches concurrent requests itself.

How a call travels::

    caller thread --generate()--> the engine's lane --> its driver thread (one per engine)
        takes the OLDEST waiting call, adds every waiting call of the same group (same kind,
        same stop strings / speculate flag / judge labels) up to ``max_batch_rows`` rows, runs
        ONE engine call, splits the rows back to the callers

Rules it keeps:
- first come, first served: the oldest waiting call always runs next, so no caller starves;
- one engine call at a time per engine (its caches allow no more); the target's and the
  draft's lanes run side by side, as pipelined rounds expect;
- **gathering**: when a call is picked while some callers are still working between their
  calls (a round's Python: committing a step, checking a verdict), the driver waits for them up
  to ``batch_window_s`` -- counted from the later of the oldest call's arrival and the end of
  the lane's previous engine call, whose callers are exactly the ones about to come back -- so
  their rows join this call instead of the next one (without it the clients split into cohorts
  that alternate, each call carrying a fraction of them). A lone caller never waits (it is the
  only client), so one problem alone runs exactly as without the layer;
- **joining a running call** (an engine with ``generate_requests``, the HF engine, plain
  decoding): while the engine decodes, calls of the same group that arrive join its loop between
  two forward passes, from the front of the queue, up to ``max_batch_rows`` live rows, and every
  caller gets its rows back the moment they end, not when the call's longest row ends (the
  round-level merge above left the decode iterations 55 % full at 8 clients:
  docs/benchmarks/README.md, server-concurrency). A call whose engine call fails after others
  joined it puts them back at the front of the queue;
- each caller gets exactly its rows back (greedy output of a problem is the same alone or in a
  batch: the HF engine's padded layout keeps every row's positions and attention);
- an engine error in a merged call is retried call by call, so only the caller whose rows
  raise it gets the error;
- **cancellation**: a caller registered with `Batcher.client` and a cancel event leaves at its
  next engine call: a call still waiting is withdrawn at once (its rows free their slot in the
  next batch) and `GenerationCancelled` is raised in the caller; a call already running finishes.

`BatchingEngine.occupancy` tells the adaptive policy how many rows the call it would join
already carries (`lookahead.adaptive.AdaptiveGamma.choose`); `BatchingEngine.observed_costs`
is the measured decode-step cost by rows of the merged calls.

Example:
    >>> batcher = Batcher()
    >>> target = BatchingEngine(HFEngine.from_config(cfg), batcher)   # doctest: +SKIP
    >>> # now call target.generate(...) from many threads at once
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from lookahead.config import SamplingParams
from lookahead.engines.base import DecodeStats, Engine, EngineBase, RowRequest, merge_key_parts
from lookahead.errors import GenerationCancelled
from lookahead.types import Completion

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_ROWS = 16  # most rows of one merged call (rows)
DEFAULT_BATCH_WINDOW_S = 0.03  # most a picked call waits for callers still between calls (s)
DRIVER_IDLE_S = 5.0  # a lane's driver thread ends after this long with nothing to do; the next call starts one (s)
CANCEL_POLL_S = 0.05  # how often a waiting caller checks its cancel event (s)
COST_EMA = 0.2  # weight of a new merged call in the observed cost by rows


@dataclass(eq=False)
class _Call:
    """One caller's engine call while it waits for the driver."""

    group: tuple[Any, ...]  # only calls with equal groups share an engine call
    rows: list[Any]  # the caller's rows (prompts), in order
    extra: list[Any]  # per-row companions of ``rows`` (SamplingParams), or []
    run: Callable[[list[_Call]], list[Any]]  # runs a merged batch of calls: one output per row
    engine: int  # id() of the BatchingEngine that queued it
    cancel: threading.Event | None  # the caller's cancel event (from `Batcher.client`)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)  # when it entered the queue (monotonic s)


@dataclass
class BatcherStats:
    """Counters since the batcher started (they only grow)."""

    calls: int = 0  # engine calls started (count; a failed merged call and its call-by-call retries each count)
    rows: int = 0  # rows in those calls (rows)
    merged_calls: int = 0  # calls that carried more than one caller's call (count)
    max_rows: int = 0  # most rows in one call (rows)
    cancelled: int = 0  # calls withdrawn because their caller was cancelled (count)
    wait_s: float = 0.0  # seconds callers spent queued, in all (s)
    row_tokens: int = 0  # tokens the rows of merged generate calls produced (tokens)
    slot_tokens: int = 0  # rows x the longest row's tokens, summed over those calls (tokens)
    busy_s: float = 0.0  # seconds the driver spent in engine calls (s)
    passes: int = 0  # decode iterations (forward passes) of the generate calls (passes)
    joined_calls: int = 0  # calls that joined an engine call already running (count)
    peak_rows: int = 0  # most rows decoding in one pass of a generate call (rows)


@dataclass(eq=False)
class _Lane:
    """The calls of one engine: its queue, the call it runs, its driver thread."""

    pending: deque[_Call] = field(default_factory=deque)
    running: list[_Call] = field(default_factory=list)  # the calls of the engine call in progress
    thread: threading.Thread | None = None
    finished_at: float = 0.0  # when its latest engine call ended (monotonic s)


class Batcher:
    """The driver threads that merge concurrent calls to in-process engines (module docstring).

    One per reasoner, shared by every `BatchingEngine` built on it: one lane (queue and driver
    thread) per engine, one count of the clients in flight.
    """

    def __init__(
        self, *, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS, batch_window_s: float = DEFAULT_BATCH_WINDOW_S
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1 (got {max_batch_rows})")
        self.max_batch_rows = max_batch_rows  # most rows of one merged call (rows)
        self.batch_window_s = batch_window_s  # most a picked call waits for busy callers (s)
        self.stats = BatcherStats()
        self._cond = threading.Condition()
        self._lanes: dict[int, _Lane] = {}  # by id() of the BatchingEngine
        self._clients = 0  # generations registered with `client` and not finished
        self._closed = False
        self._local = threading.local()  # this thread's cancel event while it is a client

    # ---- callers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def client(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Register the calling thread's generation while the block runs.

        The driver counts clients to know whether a picked call should wait for more rows, and
        calls made inside the block leave the queue when ``cancel`` is set.
        """
        previous = getattr(self._local, "cancel", None)
        self._local.cancel = cancel if cancel is not None else threading.Event()  # also names the client
        with self._cond:
            self._clients += 1
        try:
            yield
        finally:
            self._local.cancel = previous
            with self._cond:
                self._clients -= 1
                self._cond.notify_all()

    def submit(self, call: _Call) -> list[Any]:
        """Queue ``call``, wait for the engine call that carries it, return its rows' outputs."""
        if call.cancel is not None and call.cancel.is_set():
            raise GenerationCancelled("the generation was cancelled")
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine was shut down")
            lane = self._lane(call.engine)
            lane.pending.append(call)
            self._cond.notify_all()
        while True:
            try:
                return call.future.result(timeout=CANCEL_POLL_S if call.cancel is not None else None)
            except FutureTimeout:
                if call.cancel is not None and call.cancel.is_set() and self._withdraw(lane, call):
                    raise GenerationCancelled("the generation was cancelled while its call waited") from None

    def current_cancel(self) -> threading.Event | None:
        """The cancel event of the calling thread's generation (None outside `client`)."""
        return getattr(self._local, "cancel", None)

    def occupancy(self, engine: int) -> int:
        """Rows the next call of ``engine`` would already carry: its calls waiting now, plus one row
        for every OTHER client that is between calls (it is about to send its next one)."""
        me = 1 if self.current_cancel() is not None else 0  # the asking client is between calls too
        with self._cond:
            lane = self._lanes.get(engine)
            rows = sum(len(c.rows) for c in lane.pending) if lane is not None else 0
            return rows + max(self._busy_clients() - me, 0)

    def _busy_clients(self) -> int:
        """Clients neither waiting in a lane nor in a running call (lock held): working between calls."""
        seen = {
            id(c.cancel) if c.cancel is not None else id(c)
            for lane in self._lanes.values()
            for c in itertools.chain(lane.pending, lane.running)
        }
        return max(self._clients - len(seen), 0)

    def _withdraw(self, lane: _Lane, call: _Call) -> bool:
        with self._cond:
            try:
                lane.pending.remove(call)
            except ValueError:
                return False  # it is running or done: it finishes with its call
            self.stats.cancelled += 1
            self._cond.notify_all()
            return True

    # ---- the driver --------------------------------------------------------------------------

    def _lane(self, engine: int) -> _Lane:
        """The lane of ``engine``, its driver started (lock held)."""
        lane = self._lanes.get(engine)
        if lane is None:
            lane = self._lanes[engine] = _Lane()
        if lane.thread is None or not lane.thread.is_alive():
            lane.thread = threading.Thread(target=self._drive, args=(lane,), name="lookahead-batcher", daemon=True)
            lane.thread.start()
        return lane

    def _drive(self, lane: _Lane) -> None:
        while True:
            batch = self._take(lane)
            if batch is None:
                return
            self._run(lane, batch)

    def _take(self, lane: _Lane) -> list[_Call] | None:
        """The next batch of ``lane``; None when the batcher closed or the lane stayed idle for
        DRIVER_IDLE_S (the thread ends; `_lane` starts another for the next call)."""
        idle_until = time.monotonic() + DRIVER_IDLE_S
        with self._cond:
            while True:
                if self._closed:
                    return None
                batch, wait_s = self._pick(lane)
                if batch:
                    now = time.monotonic()
                    for call in batch:
                        lane.pending.remove(call)
                        self.stats.wait_s += now - call.enqueued
                    lane.running = batch
                    return batch
                if wait_s is None:  # nothing waiting
                    wait_s = idle_until - time.monotonic()
                    if wait_s <= 0:
                        lane.thread = None
                        return None
                self._cond.wait(timeout=wait_s)

    def _pick(self, lane: _Lane) -> tuple[list[_Call], float | None]:
        """The calls of ``lane`` to run now (lock held), or ([], seconds to wait)."""
        self._drop_cancelled(lane)
        if not lane.pending:
            return [], None
        first = lane.pending[0]
        same = [c for c in lane.pending if c.group == first.group]
        rows = sum(len(c.rows) for c in same)
        age = time.monotonic() - max(first.enqueued, lane.finished_at)
        if rows < self.max_batch_rows and age < self.batch_window_s and self._busy_clients() > 0:
            return [], self.batch_window_s - age  # callers between calls: let them join this one
        batch, taken = [], 0
        for call in same:
            if batch and taken + len(call.rows) > self.max_batch_rows:
                break  # first come, first served: later calls wait for the next engine call
            batch.append(call)
            taken += len(call.rows)
        return batch, None

    def _drop_cancelled(self, lane: _Lane) -> None:
        """Fail and remove the waiting calls of ``lane`` whose caller was cancelled (lock held)."""
        for call in [c for c in lane.pending if c.cancel is not None and c.cancel.is_set()]:
            lane.pending.remove(call)
            self.stats.cancelled += 1
            call.future.set_exception(GenerationCancelled("the generation was cancelled while its call waited"))

    def _run(self, lane: _Lane, batch: list[_Call]) -> None:
        rows = sum(len(c.rows) for c in batch)
        start = time.perf_counter()
        with self._cond:  # counted before any caller can see its rows (a joining call hands them out as they end)
            self.stats.calls += 1
            self.stats.rows += rows
            self.stats.merged_calls += int(len(batch) > 1)
            self.stats.max_rows = max(self.stats.max_rows, rows)
        try:
            out = batch[0].run(batch)
            if out is not DELIVERED and len(out) != rows:
                raise RuntimeError(f"the engine returned {len(out)} rows for {rows}")
        except BaseException as exc:  # noqa: BLE001 -- handed to the callers, never lost in this thread
            undelivered = [call for call in batch if not call.future.done()]
            if len(undelivered) > 1:
                for call in undelivered:  # find the call that raises: only its caller gets the error
                    self._run(lane, [call])
            elif undelivered:
                undelivered[0].future.set_exception(exc)
            self._finish(lane, start)
            return
        self._finish(lane, start)
        if out is DELIVERED:
            return
        at = 0
        for call in batch:
            call.future.set_result(out[at : at + len(call.rows)])
            at += len(call.rows)

    def _finish(self, lane: _Lane, start: float) -> None:
        with self._cond:
            self.stats.busy_s += time.perf_counter() - start
            lane.running = []
            lane.finished_at = time.monotonic()
            self._cond.notify_all()

    def join(self, engine: int, group: tuple[Any, ...], live_rows: int, eligible: Callable[[_Call], bool]) -> list[_Call]:
        """Calls that join ``engine``'s running call of ``group`` now: from the FRONT of its queue
        while they are of that group and ``eligible``, up to ``max_batch_rows`` live rows (a call
        of another group at the front stops it: first come, first served)."""
        with self._cond:
            lane = self._lanes.get(engine)
            if lane is None or self._closed:
                return []
            self._drop_cancelled(lane)
            taken: list[_Call] = []
            free = self.max_batch_rows - live_rows
            now = time.monotonic()
            while lane.pending:
                call = lane.pending[0]
                if call.group != group or len(call.rows) > free or not eligible(call):
                    break
                lane.pending.popleft()
                free -= len(call.rows)
                self.stats.wait_s += now - call.enqueued
                self.stats.rows += len(call.rows)
                self.stats.joined_calls += 1
                lane.running.append(call)
                taken.append(call)
            return taken

    def deliver(self, call: _Call, out: list[Any] | BaseException) -> None:
        """Hand ``call`` its rows (or its error) while its engine call goes on for others."""
        if isinstance(out, BaseException):
            call.future.set_exception(out)
        else:
            call.future.set_result(out)
        with self._cond:
            lane = self._lanes.get(call.engine)
            if lane is not None and call in lane.running:
                lane.running.remove(call)
            self._cond.notify_all()

    def requeue(self, calls: Sequence[_Call]) -> None:
        """Put calls that joined a failed engine call back at the front of their queue, in order."""
        with self._cond:
            for call in reversed(calls):
                lane = self._lanes.get(call.engine)
                if lane is None:
                    continue
                if call in lane.running:
                    lane.running.remove(call)
                self.stats.rows -= len(call.rows)
                self.stats.joined_calls -= 1
                lane.pending.appendleft(call)
            self._cond.notify_all()

    def count_tokens(self, row_tokens: int, slot_tokens: int, passes: int = 0, peak_rows: int = 0) -> None:
        """Count one generate call's work: tokens produced (row-passes), rows x its passes at its
        peak (see ``fill``), its decode passes and the most rows one of them carried."""
        with self._cond:
            self.stats.row_tokens += row_tokens
            self.stats.slot_tokens += slot_tokens
            self.stats.passes += passes
            self.stats.peak_rows = max(self.stats.peak_rows, peak_rows)

    def snapshot(self) -> dict[str, Any]:
        """The counters and the queue now (plain JSON types, for /metrics and logs)."""
        with self._cond:
            s = self.stats
            return {
                "calls": s.calls,
                "rows": s.rows,
                "merged_calls": s.merged_calls,
                "mean_rows": round(s.rows / s.calls, 3) if s.calls else 0.0,
                "max_rows": s.max_rows,
                "cancelled": s.cancelled,
                "queue_wait_s": round(s.wait_s, 3),
                # how full the calls' decode passes were: live rows / (passes x the call's peak rows);
                # below 1 when a call's rows end at different times and no caller joins to fill them
                "fill": round(s.row_tokens / s.slot_tokens, 3) if s.slot_tokens else 1.0,
                "row_tokens": s.row_tokens,
                "slot_tokens": s.slot_tokens,
                # rows decoding together, averaged over the decode passes
                "live_rows": round(s.row_tokens / s.passes, 3) if s.passes else 0.0,
                "passes": s.passes,
                "joined_calls": s.joined_calls,
                "peak_rows": s.peak_rows,
                "busy_s": round(s.busy_s, 3),
                "waiting_calls": sum(len(lane.pending) for lane in self._lanes.values()),
                "clients": self._clients,
            }

    def close(self) -> None:
        """Fail the calls still waiting and stop the driver (after its running call). Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = [c for lane in self._lanes.values() for c in lane.pending]
            for lane in self._lanes.values():
                lane.pending.clear()
            self._cond.notify_all()
        for call in pending:
            call.future.set_exception(RuntimeError("the engine was shut down"))
        for lane in self._lanes.values():
            thread = lane.thread  # (None once an idle driver ended)
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=60.0)


_exclusive = itertools.count()  # a fresh group for calls that must run alone
DELIVERED = object()  # what a call's ``run`` returns when it handed every caller its rows itself


class BatchingEngine(EngineBase):
    """A thread-safe `Engine` in front of an in-process one: its calls go through a `Batcher`.

    ``generate`` and ``next_token_logprobs`` calls of concurrent callers are merged; everything
    else that touches the model (``prepare_speculation``) runs alone on the driver thread; the
    text side (``count_tokens``, ``format_chat``) runs in the caller under a lock. Attributes the
    wrapper does not define (``remembered_rows``, ``calls`` of a fake engine ...) are the inner
    engine's.
    """

    thread_safe = True

    def __init__(self, inner: Engine, batcher: Batcher) -> None:
        self.inner = inner  # the wrapped engine (never called from two threads at once)
        self.batcher = batcher
        self.name = inner.name
        self._text_lock = threading.Lock()  # tokenizers are not safe for concurrent calls
        self._costs: dict[int, float] = {}  # EMA by rows: seconds per decode iteration of merged calls

    _OWN = frozenset({"inner", "batcher", "name", "_text_lock", "_costs"})  # attributes of the wrapper itself

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN or hasattr(type(self), name):  # the wrapper's own (a patched method too)
            object.__setattr__(self, name, value)
        else:  # a setting of the engine (a fake's delay, a context length): the inner engine's
            setattr(self.inner, name, value)

    # ---- merged calls ------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        prompts, per_row, stops = merge_key_parts(prompts, params, stop)
        if not prompts:
            return []
        speculate = bool(speculate)

        group = (id(self), "generate", stops, speculate)
        joining = not speculate and callable(getattr(self.inner, "generate_requests", None))

        def run(batch: list[_Call]) -> list[Completion] | object:
            if joining and all(_unseeded(c) for c in batch):
                return self._run_joining(batch, group, stops)
            rows = [p for c in batch for p in c.rows]
            extra = [p for c in batch for p in c.extra]
            start = time.perf_counter()
            if speculate:
                out = self.inner.generate(rows, extra, stop=list(stops), speculate=True)
            else:
                out = self.inner.generate(rows, extra, stop=list(stops))
            self._observe(len(rows), time.perf_counter() - start, out)
            return out

        return self._submit(group, prompts, per_row, run)

    def _run_joining(self, batch: list[_Call], group: tuple[Any, ...], stops: tuple[str, ...]) -> object:
        """One joining decode loop (module docstring): ``batch`` starts it, later calls of
        ``group`` join it, each caller is handed its rows when they end."""
        joined: list[_Call] = []

        def request(call: _Call) -> RowRequest:
            return RowRequest(list(call.rows), list(call.extra), lambda out: self.batcher.deliver(call, out))

        def join(live_rows: int) -> list[RowRequest]:
            calls = self.batcher.join(id(self), group, live_rows, _unseeded)
            joined.extend(calls)
            return [request(c) for c in calls]

        start = time.perf_counter()
        try:
            stats: DecodeStats = self.inner.generate_requests([request(c) for c in batch], stop=list(stops), join=join)
        except BaseException:
            self.batcher.requeue([c for c in joined if not c.future.done()])
            raise
        self.batcher.count_tokens(stats.row_passes, stats.passes * stats.peak_rows, stats.passes, stats.peak_rows)
        if stats.passes and stats.peak_rows:
            self._observe_cost(stats.peak_rows, (time.perf_counter() - start) / stats.passes)
        return DELIVERED

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, max_batch: int = 16
    ) -> list[dict[str, float]]:
        prompts = list(prompts)
        if not prompts:
            return []
        labels = tuple(candidates)

        def run(batch: list[_Call]) -> list[dict[str, float]]:
            rows = [p for c in batch for p in c.rows]
            return self.inner.next_token_logprobs(rows, list(labels), max_batch=max_batch)

        return self._submit((id(self), "logprobs", labels, max_batch), prompts, [], run)

    def prepare_speculation(self) -> None:
        self._alone(self.inner.prepare_speculation)

    def clear_prefix_cache(self) -> bool:
        if not isinstance(self.inner, EngineBase):
            return False
        return bool(self._alone(self.inner.clear_prefix_cache))

    def check_logprob_labels(self, labels: Sequence[str], where: str = "") -> None:
        self._alone(lambda: self.inner.check_logprob_labels(labels, where))

    def _alone(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the driver thread, in no merged call (it may touch the model)."""
        return self._submit((id(self), "alone", next(_exclusive)), [None], [], lambda batch: [fn()])[0]

    def _submit(self, group: tuple[Any, ...], rows: list[Any], extra: list[Any], run: Callable[[list[_Call]], list[Any]]) -> list[Any]:
        call = _Call(group, rows, extra, run, id(self), self.batcher.current_cancel())
        return self.batcher.submit(call)

    # ---- what the adaptive policy reads -------------------------------------------------------

    def cache_usage(self) -> dict[str, int]:
        return self.inner.cache_usage() if isinstance(self.inner, EngineBase) else {}

    def occupancy(self) -> int:
        """Rows the next merged call of this engine would already carry (without the caller's)."""
        return self.batcher.occupancy(id(self))

    @property
    def batch_costs(self) -> list[float] | None:
        """The inner engine's measured curve where it has one, else the observed one (or None)."""
        inner = self.inner.batch_costs if isinstance(self.inner, EngineBase) else None
        return inner if inner is not None else self.observed_costs()

    def observed_costs(self) -> list[float] | None:
        """Seconds per decode iteration of the merged calls by rows (index 0 unused), from 1 row up
        to the most rows seen, filled in linearly where a row count was not seen; None before a
        1-row call was observed."""
        costs = dict(self._costs)
        if 1 not in costs:
            return None
        top = max(costs)
        out = [float("inf")]
        known = sorted(costs)
        for k in range(1, top + 1):
            if k in costs:
                out.append(costs[k])
                continue
            lo = max(n for n in known if n < k)
            hi = min(n for n in known if n > k)
            out.append(costs[lo] + (costs[hi] - costs[lo]) * (k - lo) / (hi - lo))
        return out

    def _observe(self, rows: int, seconds: float, out: Sequence[Completion]) -> None:
        iterations = max((c.completion_tokens for c in out), default=0)
        self.batcher.count_tokens(sum(c.completion_tokens for c in out), rows * iterations, iterations, rows)
        if iterations > 0 and seconds > 0:
            self._observe_cost(rows, seconds / iterations)

    def _observe_cost(self, rows: int, per: float) -> None:
        """One merged call's seconds per decode iteration at ``rows`` rows, into the EMA."""
        if per > 0:
            old = self._costs.get(rows)
            self._costs[rows] = per if old is None else old + COST_EMA * (per - old)

    # ---- the text side and the rest of the protocol --------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._text_lock:
            return self.inner.count_tokens(text)

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        with self._text_lock:
            return self.inner.format_chat(messages)

    def context_length(self) -> int | None:
        return self.inner.context_length()

    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return getattr(self.inner, "tokenizer", None)

    def shutdown(self) -> None:
        self.inner.shutdown()


def _unseeded(call: _Call) -> bool:
    """May ``call`` share a joining loop? Not with a seed: seeding the engine's generator would
    change the other rows' samples (such a call runs in a merged call of its own kind)."""
    return all(getattr(p, "seed", None) is None for p in call.extra)


def unwrapped(engine: Engine) -> Engine:
    """The engine behind a `BatchingEngine` (for code that must reach the model itself, while no
    generation runs: measuring it); any other engine as it is."""
    return engine.inner if isinstance(engine, BatchingEngine) else engine


def batched(engine: Engine, batcher: Batcher) -> Engine:
    """``engine`` as callers may use it from many threads: itself when it is thread-safe (a pool,
    a server client), else behind ``batcher``."""
    if getattr(engine, "thread_safe", False):
        return engine
    return BatchingEngine(engine, batcher)
