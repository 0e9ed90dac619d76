"""Modelled engines on a virtual clock: what the real loop talks to during ``lookahead simulate``.

The loop, the scheduler, the round strategies and the adaptive policy run for real, in real
threads; only the engines and the judge are modelled. Two parts:

**Texts** (`Script`): every problem has a scripted target solution (steps of the workload's
lengths, one character = one token; the last step states ``\\boxed{N}`` and ends the sequence).
The target continues any prefix with the script's next step. The draft writes, at lookahead depth
i, the target's step with probability α_i (the workload's conditional acceptance; deeper depths use
the last α) and a different step of the same length otherwise; with probability 1 - p
(``draft_complete``) it writes no delimiter: it runs into the step cap, or ends after
``draft_incomplete_tokens``. The draft knows the depth of a
call from its own history: a prompt that is an earlier draft prompt plus that call's step is one
depth deeper (a prompt it never continued is depth 1). Draws are a stable hash of (seed, problem,
step, depth, sample), so every run of a simulation sees the same drafts.

**Time** (`World`): a virtual clock shared by every device. An engine call becomes work on the
device its profile names (`Device`): ``merged`` devices run one call at a time, the calls of the
same engine and flags waiting when it starts merged into it (the reasoner's batcher and in-process
engines); ``continuous`` devices are servers: rows join the running batch at the next decode step
and leave when done. A call's duration comes from the profile: the fixed cost per call, prefill of
the prompt tokens not in the engine's prefix cache, and one decode step per generated token (per
verification pass with token speculation) at the cost the batch-cost curve gives for the rows in
the batch. The judge's calls cost ``call_s + pair_s * pairs`` on its device.

The clock advances only when no thread can act: every thread is parked (waiting in a modelled call,
on a future, or idle in a pool), so the calls a real deployment would batch together arrive before
the clock moves on. While a simulation runs, ``time.perf_counter`` reads the virtual clock (the loop
times its calls with it, so its stats and the adaptive policy see modelled seconds); the real
Python time of the loop (orchestration) is measured per thread with ``time.thread_time`` between
modelled calls (`World.orchestration_s`).

Target and draft share a device clock only when the profile puts them on the same device (the
single-GPU setting); the reference setting has the target on its own GPUs and the draft and the
judge on one GPU each, so their work overlaps in time.

Example:
    >>> world = World.from_profile(profile)                        # doctest: +SKIP
    >>> script = Script(workload, problems=8, seed=0)              # doctest: +SKIP
    >>> target = ModelledEngine("target", profile.target, world, script)   # doctest: +SKIP
"""

from __future__ import annotations

import collections
import contextlib
import gc
import hashlib
import heapq
import itertools
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lookahead.config import SamplingParams
from lookahead.engines.base import DecodeStats, EngineBase, RowRequest, check_prompts, clean_stops, row_params
from lookahead.engines.fake import scripted_ending
from lookahead.errors import ConfigError, PromptError
from lookahead.simulate.profile import EngineCosts, JudgeCosts, Profile, Workload
from lookahead.types import Completion, Verdict
from lookahead.verifiers.base import VerifierBase

DELIMITER = "\n\n"  # the scripted steps end with it (the simulated config's step delimiter)
POLL_S = 0.0002  # real seconds the clock waits before looking again whether every thread is parked (s)
STALL_S = 0.5  # real seconds with a thread that never parks before the clock moves on anyway (s)
CACHE_ROWS = 24  # texts per problem an engine's prefix cache remembers (rows)
_PROBLEM = re.compile(r"<problem (\d+)>")


def _uniform(*parts: Any) -> float:
    """A stable draw in [0, 1) from ``parts`` (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


# -- texts -------------------------------------------------------------------------------------
class Script:
    """The scripted problems: each problem's target steps, and the draft's draws (module docstring)."""

    def __init__(self, workload: Workload, problems: int, seed: int = 0) -> None:
        self.workload = workload
        self.seed = seed  # of every draw: problem sizes and the draft's steps
        self.steps: list[list[str]] = [self._solution(j) for j in range(problems)]  # [problem] -> target steps
        self.prompts: list[str] = [self._prompt(j) for j in range(problems)]  # [problem] -> rendered prompt

    def _lengths(self, j: int) -> list[int]:
        """Step lengths of problem j (tokens): measured ones (cycled), else drawn around the means."""
        load = self.workload
        if load.problems:
            return list(load.problems[j % len(load.problems)])
        spread = load.spread
        steps = max(1, round(load.steps * (1 + spread * (2 * _uniform(self.seed, "steps", j) - 1))))
        return [
            max(8, round(load.step_tokens * (1 + spread * (2 * _uniform(self.seed, "len", j, k) - 1)))) for k in range(steps)
        ]

    def _solution(self, j: int) -> list[str]:
        lengths = self._lengths(j)
        steps = [_filled(f"{j}.{k}:", "a", n - len(DELIMITER)) + DELIMITER for k, n in enumerate(lengths[:-1])]
        steps.append(_filled(f"So \\boxed{{{j}}}.", "a", lengths[-1]))  # ends the sequence (eos)
        return steps

    def _prompt(self, j: int) -> str:
        head = f"<problem {j}>"
        return _filled(head, " ", self.workload.prompt_tokens - 1) + "\n"

    def problem_of(self, prompt: str) -> tuple[int, str]:
        """(problem index, completion after its rendered prompt) of an engine prompt."""
        match = _PROBLEM.match(prompt)
        if match is None or int(match.group(1)) >= len(self.steps):
            raise ValueError(f"not a simulated prompt: {prompt[:40]!r}")
        j = int(match.group(1))
        return j, prompt[len(self.prompts[j]) :]

    def target_step(self, j: int, completion: str) -> str:
        """The target's next step after ``completion`` (the script's step at its position)."""
        k = completion.count(DELIMITER)
        steps = self.steps[j]
        return steps[min(k, len(steps) - 1)] if k < len(steps) else ""

    def draft_step(self, j: int, completion: str, depth: int, sample: int, cap: int) -> str:
        """The draft's step at ``depth`` (1-based) after ``completion``; ``sample`` > 0 for repeated sampled calls."""
        k = completion.count(DELIMITER)
        true = self.target_step(j, completion)
        if not true:
            return ""
        load = self.workload
        if _uniform(self.seed, "complete", j, k, depth, sample) >= load.draft_complete:
            # no delimiter: it runs into the cap, or ends (eos) after draft_incomplete_tokens
            length = min(load.draft_incomplete_tokens, cap) if load.draft_incomplete_tokens else cap + 1
            return _filled(f"{j}.{k}?", "z", length)
        alpha = load.acceptance[min(depth, len(load.acceptance)) - 1]
        if _uniform(self.seed, "accept", j, k, depth, sample) < alpha:
            return true
        if true.endswith(DELIMITER):
            return _filled(f"{j}.{k}~{depth}.{sample}:", "b", len(true) - len(DELIMITER)) + DELIMITER
        return _filled(f"{j}.{k}~{depth}.{sample}", "b", len(true))

    @property
    def total_tokens(self) -> int:
        return sum(len(s) for steps in self.steps for s in steps)


def _filled(head: str, filler: str, length: int) -> str:
    """``head`` padded with ``filler`` to ``length`` characters (cut if longer)."""
    return (head + filler * max(length - len(head), 0))[: max(length, 1)]


# -- devices -----------------------------------------------------------------------------------
@dataclass
class Row:
    """One prompt of a modelled call: what it costs to compute."""

    prefill: int  # prompt tokens not in the prefix cache (tokens)
    passes: int  # decode steps after the first token (with token speculation: verification passes)
    left: int = 0  # continuous devices: decode steps still to run
    finish: float | None = None  # virtual time it finished (s)


@dataclass
class Call:
    """One engine (or judge) call waiting on the virtual clock."""

    lane: Lane  # the engine whose costs apply
    rows: list[Row]
    speculate: bool  # token-level speculation: its decode steps are verification passes
    key: tuple[Any, ...]  # calls with equal keys may merge (engine, speculate, stop strings)
    arrival: float  # virtual time it was made (s)
    fixed_s: float | None = None  # a stretch of known length (one pass of a joining loop): runs alone (s)
    hold: object | None = None  # a joining loop's token: once one of its passes ran, the device waits for its next one
    done: threading.Event = field(default_factory=threading.Event)
    finish: float | None = None  # virtual time its last row finished (s)


class Lane:
    """One engine's cost model on its device: what a batch of its rows costs (seconds)."""

    def __init__(self, name: str, costs: EngineCosts | JudgeCosts) -> None:
        self.name = name  # "target", "draft" or "judge"
        self.costs = costs
        self.judge = isinstance(costs, JudgeCosts)  # pairs cost pair_s each; no decode steps
        self.busy_s = 0.0  # virtual seconds the device spent on this lane (s)
        self.batches = 0  # batches run: merged calls, or decode steps of a continuous device (count)
        self.batch_rows = 0  # rows summed over those batches (rows)

    def step_s(self, rows: int, speculate: bool) -> float:
        costs = self.costs
        assert isinstance(costs, EngineCosts)
        return costs.verify_s(rows) if speculate else costs.step_s(rows)

    def prefill_s(self, rows: Sequence[Row]) -> float:
        """Seconds of one prefill batch of ``rows`` (a judge on a server: its pairs). A server
        prefills each row's uncached tokens; an in-process engine (``merged``, ``joined``) feeds a
        padded batch, every row as long as the longest uncached suffix (`HFEngine._prefill`)."""
        if isinstance(self.costs, JudgeCosts):
            return self.costs.pair_s * len(rows)
        if self.costs.batching == "continuous":
            return self.costs.prefill_s_per_token * sum(r.prefill for r in rows)
        return self.costs.prefill_s_per_token * len(rows) * max((r.prefill for r in rows), default=0)

    def merged_s(self, rows: Sequence[Row], speculate: bool) -> float:
        """One merged call over ``rows``: call cost, prefill, then decode steps as rows finish."""
        if self.judge:
            costs = self.costs
            assert isinstance(costs, JudgeCosts)
            return costs.call_s + costs.pair_s * len(rows)
        seconds = self.costs.call_s + self.prefill_s(rows)
        passes = sorted(r.passes for r in rows)
        done = 0
        for i, p in enumerate(passes):  # between the (i-1)-th and i-th shortest row, n - i rows are live
            if p > done:
                seconds += (p - done) * self.step_s(len(passes) - i, speculate)
                done = p
        return seconds

    def count(self, rows: int, seconds: float, batches: int = 1) -> None:
        self.busy_s += seconds
        self.batches += batches
        self.batch_rows += rows * batches


def device_kind(batching: str) -> str:
    """How a device with engines of ``batching`` runs: ``continuous``, else ``merged`` (one stretch at
    a time; a ``joined`` engine's loop runs there pass by pass)."""
    return "continuous" if batching == "continuous" else "merged"


class Device:
    """One device group: runs its lanes' calls on the virtual clock (``merged`` or ``continuous``).

    ``merged``: one call at a time, first come first served; the waiting calls with the same key
    (engine, speculation, stop strings) join it up to ``max_rows`` rows; all its rows end together.
    ``continuous``: per lane a running batch; waiting rows are admitted (one prefill batch) at the
    next step boundary, then decode with the batch, each row leaving when its steps are done. With
    several lanes busy (target and draft on one GPU) the device alternates between them step by
    step. The device works in **stretches**: one merged call, one prefill batch, or decode steps
    with no row finishing or joining in between (ended early, at a step boundary, when work arrives).
    """

    def __init__(self, name: str, batching: str, max_rows: int) -> None:
        self.name = name
        self.batching = device_kind(batching)
        self.max_rows = max_rows  # most rows one batch holds (rows)
        self.queue: list[Call] = []  # calls waiting to start (merged) or to be admitted (continuous)
        self.running: list[Call] = []  # calls started and not finished
        self.batches: dict[Lane, list[Row]] = {}  # continuous: the rows decoding, by lane
        self.until: float | None = None  # virtual time the current stretch ends (None: idle) (s)
        self.started = 0.0  # virtual time the current stretch started (s)
        self.stretch: tuple[str, Lane | None, list[Row]] = ("idle", None, [])  # (kind, lane, rows) of it
        self.step = 0.0  # decode stretch: seconds per step (s)
        self.steps = 0  # decode stretch: steps in it
        self._turn = 0  # continuous: round-robin position over the lanes
        self.held: object | None = None  # merged: the joining loop that holds the device until it ends

    def submit(self, call: Call, now: float) -> None:
        """Queue ``call``; it starts at the next `kick` (a decode stretch in progress ends at its next step)."""
        self.queue.append(call)
        if self.stretch[0] == "decode" and self.steps > 1:
            self._cut(now)

    def kick(self, now: float) -> None:
        """Idle with work queued: start the next stretch now (the world calls it once every thread is
        parked, so every call made at this instant is queued: the batch gathers them all)."""
        if self.until is None and (self.queue or any(self.batches.values())):
            self._start(now)

    def next_event(self) -> float | None:
        return self.until

    def occupancy(self, lane: Lane) -> int:
        """Rows of ``lane`` running or waiting on this device."""
        return sum(len(c.rows) for c in self.running + self.queue if c.lane is lane)

    def advance(self, now: float) -> list[Call]:
        """End the stretch if it ends at or before ``now`` (the next one starts at the next `kick`);
        the calls that finished with it."""
        if self.until is None or self.until > now:
            return []
        end = self.until
        self._end(end)
        self.until, self.stretch, self.steps = None, ("idle", None, []), 0
        done = [c for c in self.running if all(r.finish is not None for r in c.rows)]
        for call in done:
            call.finish = end
        self.running = [c for c in self.running if c.finish is None]
        return done

    def _start(self, now: float) -> None:
        self.until, self.stretch, self.steps = None, ("idle", None, []), 0
        if self.batching == "merged":
            self._start_merged(now)
        else:
            self._start_continuous(now)

    def _end(self, end: float) -> None:
        kind, lane, rows = self.stretch
        if kind == "merged":
            for row in rows:
                row.finish = end
            return
        if kind == "prefill":
            for row in rows:
                row.left = row.passes
            self.batches.setdefault(lane, []).extend(rows)  # type: ignore[arg-type]
        else:
            for row in rows:
                row.left -= self.steps
        for row in self.batches.get(lane, []):  # type: ignore[arg-type]
            if row.left <= 0:
                row.finish = end
        self.batches[lane] = [r for r in self.batches.get(lane, []) if r.finish is None]  # type: ignore[index]

    def _begin(self, kind: str, lane: Lane, rows: list[Row], now: float, seconds: float, batches: int = 1) -> None:
        lane.count(len(rows), seconds, batches)
        self.stretch, self.started, self.until = (kind, lane, rows), now, now + seconds

    def _start_merged(self, now: float) -> None:
        if self.held is not None:  # a joining loop runs: nothing else until it ends (the process's one torch thread)
            first = next((c for c in self.queue if c.hold is self.held), None)
            if first is None:
                return
            self.queue.remove(first)
        elif not self.queue:
            return
        else:
            first = self.queue.pop(0)
        if first.fixed_s is not None:  # one prefill or decode pass of a joining loop (`ModelledEngine.generate_requests`)
            self.held = first.hold
            self.running.append(first)
            self._begin("merged", first.lane, first.rows, now, first.fixed_s)
            return
        group, rows = [first], len(first.rows)
        for call in list(self.queue):
            if call.fixed_s is None and call.key == first.key and rows + len(call.rows) <= self.max_rows:
                group.append(call)
                rows += len(call.rows)
                self.queue.remove(call)
        all_rows = [r for c in group for r in c.rows]
        self.running += group
        self._begin("merged", first.lane, all_rows, now, first.lane.merged_s(all_rows, first.speculate))

    def _lanes(self) -> list[Lane]:
        lanes = list(dict.fromkeys([*self.batches, *(c.lane for c in self.queue)]))
        return [lane for lane in lanes if self.batches.get(lane) or any(c.lane is lane for c in self.queue)]

    def _start_continuous(self, now: float) -> None:
        busy = self._lanes()
        if not busy:
            return
        lane = busy[self._turn % len(busy)]
        self._turn += 1
        running = self.batches.get(lane, [])
        admitted: list[Call] = []
        rows = len(running)
        for call in list(self.queue):
            if call.lane is lane and rows + len(call.rows) <= self.max_rows:
                admitted.append(call)
                rows += len(call.rows)
                self.queue.remove(call)
        if admitted:
            new_rows = [r for c in admitted for r in c.rows]
            self.running += admitted
            self._begin("prefill", lane, new_rows, now, lane.prefill_s(new_rows), batches=0)  # busy, not a decode batch
            return
        speculate = any(c.speculate for c in self.running if c.lane is lane)
        self.step = lane.step_s(len(running), speculate)
        self.steps = 1 if len(busy) > 1 else min(r.left for r in running)
        self._begin("decode", lane, running, now, self.steps * self.step, self.steps)

    def _cut(self, now: float) -> None:
        """Work arrived during a decode stretch: end it at the first step boundary at or after ``now``."""
        done = max(1, math.ceil((now - self.started) / self.step - 1e-9)) if self.step > 0 else 1
        if done < self.steps:
            lane = self.stretch[1]
            assert lane is not None
            lane.count(len(self.stretch[2]), -(self.steps - done) * self.step, -(self.steps - done))
            self.steps = done
            self.until = self.started + done * self.step


# -- the clock ---------------------------------------------------------------------------------
class World:
    """The virtual clock, the devices, and the bookkeeping of real (orchestration) time."""

    def __init__(self, devices: dict[str, Device]) -> None:
        self.devices = devices  # by name
        self.now = 0.0  # virtual seconds since the simulation started (s)
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set when work arrives
        self._in_flight = 0  # calls submitted and not finished
        self._clock: threading.Thread | None = None
        self._foreign: frozenset[int | None] = frozenset()  # threads that were running before (see `running`)
        self._stop = False
        self._cpu_mark: dict[int, float] = {}  # thread -> thread_time when it last left a modelled call (s)
        self.orchestration_s = 0.0  # real CPU seconds of the loop's Python between modelled calls, all threads (s)
        self._returns: list[tuple[float, int, Call]] = []  # (virtual time, order, call): finished, not yet returned
        self._order = itertools.count()  # ties in _returns: first finished, first returned
        self.events = 0  # times the clock moved (count)
        self.forced = 0  # times it moved on although a thread never parked (count; STALL_S)
        self.error: BaseException | None = None  # what stopped the clock thread, if anything

    @classmethod
    def from_profile(cls, profile: Profile) -> World:
        """One `Device` per device group the profile names; a judge on an engine's device batches its way."""
        devices: dict[str, Device] = {}
        for costs in (profile.target, profile.draft):
            device = devices.setdefault(costs.device, Device(costs.device, costs.batching, costs.max_batch_rows))
            if device.batching != device_kind(costs.batching):
                raise ConfigError(
                    f"device {costs.device!r} is both {device.batching} and {costs.batching}: one device batches one way; "
                    "give target and draft the same batching, or different devices"
                )
        judge = profile.judge
        devices.setdefault(judge.device, Device(judge.device, "merged", judge.max_batch_rows))
        return cls(devices)

    # -- the virtual clock as time.perf_counter ----------------------------------------------
    def perf_counter(self) -> float:
        return self.now

    @contextlib.contextmanager
    def running(self) -> Iterator[World]:
        """While the block runs: the clock thread ticks and ``time.perf_counter`` reads virtual time."""
        real = time.perf_counter
        self._stop = False
        # threads already running belong to the host process (a server's event loop, another
        # library's monitor): they never take part, and one that never parks must not stall the clock
        self._foreign = frozenset(t.ident for t in threading.enumerate() if t is not threading.current_thread())
        self._clock = threading.Thread(target=self._tick, name="simulate-clock", daemon=True)
        self._clock.start()
        time.perf_counter = self.perf_counter  # type: ignore[assignment]
        try:
            yield self
        finally:
            time.perf_counter = real  # type: ignore[assignment]
            self._stop = True
            self._wake.set()
            self._clock.join()

    # -- calls -----------------------------------------------------------------------------------
    def run(self, lane: Lane, device: str, rows: list[Row], speculate: bool, key: tuple[Any, ...],
            seconds: float | None = None, hold: object | None = None) -> Call:
        """Submit one call and wait (in real time) until the virtual clock reaches its end.
        ``seconds``: a stretch of that length that merges with no other call (a joining loop's pass);
        ``hold``: the loop's token: from its first pass on, the device runs only its passes until `release`."""
        with self._lock:
            call = Call(lane, rows, speculate, key, self.now, seconds, hold)
            self._in_flight += 1
            self.devices[device].submit(call, self.now)
        self._wake.set()
        call.done.wait()
        if self.error is not None:
            raise RuntimeError(f"the simulator's clock failed: {self.error!r}") from self.error
        return call

    def release(self, device: str, hold: object) -> None:
        """A joining loop ended: its device takes other calls again."""
        with self._lock:
            if self.devices[device].held is hold:
                self.devices[device].held = None
        self._wake.set()

    def others_waiting(self, device: str, hold: object) -> bool:
        """Does a call other than ``hold``'s loop wait for ``device`` (`lookahead.engines.torch_thread.waiting`)?"""
        with self._lock:
            return any(c.hold is not hold for c in self.devices[device].queue)

    def occupancy(self, lane: Lane, device: str) -> int:
        with self._lock:
            return self.devices[device].occupancy(lane)

    def enter(self) -> None:
        """A thread enters a modelled call: its Python time since it left the last one is orchestration."""
        tid = threading.get_ident()
        mark = self._cpu_mark.get(tid)
        if mark is not None:
            self.orchestration_s += time.thread_time() - mark

    def leave(self) -> None:
        """A thread leaves a modelled call (or starts / ends a problem): start counting its Python time."""
        self._cpu_mark[threading.get_ident()] = time.thread_time()

    def touch(self) -> None:
        """Count the calling thread's Python time up to now, and go on counting."""
        self.enter()
        self.leave()

    # -- the clock thread ----------------------------------------------------------------------
    def _tick(self) -> None:
        """The clock thread: a failure ends every waiting call with it (never a silent hang)."""
        try:
            self._ticking()
        except BaseException as exc:  # noqa: BLE001 -- handed to every caller by `run`
            with self._lock:
                self.error = exc
                waiting = [c for d in self.devices.values() for c in d.queue + d.running] + [c for _, _, c in self._returns]
            for call in waiting:
                call.done.set()

    def _ticking(self) -> None:
        stalled_since: float | None = None
        while not self._stop:
            if not self._in_flight:
                self._wake.wait(0.05)
                self._wake.clear()
                stalled_since = None
                continue
            if not all_parked(ignore=self._foreign):
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since < STALL_S:
                    time.sleep(POLL_S)
                    continue
                self.forced += 1
            stalled_since = None
            self._advance()
            time.sleep(0)  # let the released threads run before looking again

    def _advance(self) -> None:
        """Start the idle devices' work, move the clock to the next event, hand back what ended there.

        A call ends when its device finished it, plus, on a ``continuous`` device (a server), the
        engine's ``call_s`` (the request's round trip: it delays the caller, not the device).
        """
        with self._lock:
            for device in self.devices.values():
                device.kick(self.now)
            times = [t for t in (d.next_event() for d in self.devices.values()) if t is not None]
            if self._returns:
                times.append(self._returns[0][0])
            if not times:
                return
            self.now = max(self.now, min(times))
            for device in self.devices.values():
                for call in device.advance(self.now):
                    delay = call.lane.costs.call_s if device.batching == "continuous" else 0.0
                    heapq.heappush(self._returns, (call.finish + delay, next(self._order), call))  # type: ignore[operator]
            returned = []
            while self._returns and self._returns[0][0] <= self.now:
                when, _, call = heapq.heappop(self._returns)
                call.finish = when
                returned.append(call)
            self._in_flight -= len(returned)
            self.events += 1
        for call in returned:
            call.done.set()


_THREADING = threading.__file__
_FUTURES_THREAD = sys.modules["concurrent.futures.thread"].__file__ if "concurrent.futures.thread" in sys.modules else None


def all_parked(ignore: Collection[int | None] = ()) -> bool:
    """Is every other thread (but those in ``ignore``) parked, i.e. unable to act before a modelled call finishes?

    Parked: waiting in a `threading.Condition` that has not notified it (an Event, a future, a
    queue, a modelled call), joining a thread, or an idle worker of a thread pool with no work
    queued. Anything else (running Python, waiting for a plain lock, sleeping) counts as able to act.
    """
    me = threading.get_ident()
    collecting = gc.isenabled()
    gc.disable()  # a collection inside sys._current_frames (it holds the runtime's thread lock) can deadlock
    try:
        frames = sys._current_frames()
    finally:
        if collecting:
            gc.enable()
    for thread in threading.enumerate():  # a thread just started has no Python frame yet: it is about to act
        if thread.ident != me and thread.ident not in frames and thread.ident not in ignore:
            return False
    for tid, frame in frames.items():
        if tid != me and tid not in ignore and not _parked(frame):
            return False
    return True


def _parked(frame: Any) -> bool:
    code = frame.f_code
    if code.co_filename == _THREADING:
        if code.co_name == "wait":
            local = frame.f_locals
            condition, waiter = local.get("self"), local.get("waiter")
            return waiter is not None and waiter in getattr(condition, "_waiters", ())
        return code.co_name == "_wait_for_tstate_lock"
    if code.co_name == "_worker" and code.co_filename == _futures_thread():
        queue = frame.f_locals.get("work_queue")
        return queue is not None and queue.empty()
    return False


def _futures_thread() -> str | None:
    global _FUTURES_THREAD
    if _FUTURES_THREAD is None and "concurrent.futures.thread" in sys.modules:
        _FUTURES_THREAD = sys.modules["concurrent.futures.thread"].__file__
    return _FUTURES_THREAD


# -- the engines -------------------------------------------------------------------------------
class PrefixCache:
    """Which prompt tokens an engine computed before (per problem: its recent prompt + output texts)."""

    def __init__(self) -> None:
        self._texts: dict[int, collections.deque[tuple[int, int]]] = {}  # problem -> (length, hash) of texts
        self._lock = threading.Lock()

    def cached(self, problem: int, prompt: str) -> int:
        """Tokens of ``prompt`` whose keys and values an earlier call computed (the longest known prefix)."""
        with self._lock:
            known = sorted(self._texts.get(problem, ()), reverse=True)
        for length, digest in known:
            if length <= len(prompt) and hash(prompt[:length]) == digest:
                return length
        return 0

    def remember(self, problem: int, text: str) -> None:
        with self._lock:
            self._texts.setdefault(problem, collections.deque(maxlen=CACHE_ROWS)).append((len(text), hash(text)))


class ModelledEngine(EngineBase):
    """A target or draft engine whose texts follow the `Script` and whose calls take modelled time.

    Thread-safe: the `World` batches concurrent calls by its devices' rules, as a server does.
    ``through_batcher=True`` (an in-process engine: ``merged`` or ``joined``) declares it not
    thread-safe instead, so the reasoner puts it behind its real batcher
    (`lookahead.engines.batching`), which then merges the concurrent calls and hands this engine
    one merged call at a time. A ``joined`` engine behind the batcher also has `generate_requests`,
    the HF engine's joining decode loop, pass by pass on the virtual clock (the batcher lets later
    calls join it between passes); without the batcher ``joined`` runs as ``merged``.
    """

    thread_safe = True

    def __init__(self, role: str, costs: EngineCosts, world: World, script: Script, draft_acceptance_length: float = 1.0,
                 target_acceptance_length: float = 1.0, through_batcher: bool = False) -> None:
        if through_batcher:
            self.thread_safe = costs.batching == "continuous"  # an in-process engine: the reasoner's batcher merges its calls
            if costs.batching == "joined":
                self.generate_requests = self._generate_requests  # the batcher joins calls into a running loop
        self.role = role  # "target" or "draft"
        self.name = f"modelled:{role}"
        self.costs = costs
        self.world = world
        self.script = script
        self.lane = Lane(role, costs)
        self.acceptance_length = target_acceptance_length if role == "target" else draft_acceptance_length
        self.batch_costs = costs.batch_costs() if role == "target" else None
        self.cache = PrefixCache()
        self._depth: dict[int, int] = {}  # draft: hash(prompt + step) -> the depth that step was drafted at
        self._samples: dict[int, int] = {}  # draft, sampled: hash(prompt) -> calls so far
        self._lock = threading.Lock()

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        match = _PROBLEM.search(question)
        if match is None:
            raise ValueError("a simulated question names its problem: '<problem N>'")
        return self.script.prompts[int(match.group(1))]

    def count_tokens(self, text: str) -> int:
        return len(text)

    def context_length(self) -> int | None:
        return None

    def shutdown(self) -> None:
        pass

    def clear_prefix_cache(self) -> bool:
        self.cache = PrefixCache()
        return True

    def occupancy(self) -> int:
        """Rows of this engine running or waiting on its device now (rows)."""
        return self.world.occupancy(self.lane, self.costs.device)

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        self.world.enter()
        prompts = check_prompts(prompts)
        per_row = row_params(params, len(prompts))
        completions, rows = [], []
        for prompt, p in zip(prompts, per_row, strict=True):
            completion, row = self._row(prompt, p, stop, speculate)
            completions.append(completion)
            rows.append(row)
        call = self.world.run(self.lane, self.costs.device, rows, speculate, (self.role, speculate, tuple(stop)))
        for completion in completions:
            completion.latency_s = (call.finish or call.arrival) - call.arrival
        self.world.leave()
        return completions

    def _generate_requests(self, requests: Sequence[RowRequest], stop: Sequence[str] = (),
                           join: Callable[[int], list[RowRequest]] | None = None) -> DecodeStats:
        """`HFEngine.generate_requests` on the virtual clock: a prefill, then one decode pass at a time
        over the live rows; between passes ``join(live_rows)`` may add requests (a join costs the
        loop ``join_s`` at its live rows, measured, or else ``call_s``, plus the padded prefill), and
        each request is delivered the moment its last row ends."""
        self.world.enter()
        stops = clean_stops(stop)
        stats = DecodeStats()
        live: list[list[Any]] = []  # [request, completions, steps left per row, arrival]
        key = (self.role, "joined")
        hold = object()  # the real loop runs on the process's one torch thread (`lookahead.engines.torch_thread`)

        def admit(batch: Sequence[RowRequest]) -> None:
            rows: list[Row] = []
            before = live_rows()  # 0: the loop's start (a call); else the requests join a running loop
            for request in batch:
                try:
                    prompts = check_prompts(request.prompts)
                    made = [self._row(q, p, stops, False) for q, p in zip(prompts, row_params(request.params, len(prompts)), strict=True)]
                except (PromptError, TypeError, ValueError) as exc:  # this caller's input: its error alone, as the HF engine does
                    request.deliver(exc)
                    continue
                live.append([request, [c for c, _ in made], [r.passes for _, r in made], self.world.now])
                rows += [r for _, r in made]
            if rows:
                fixed = self.costs.join_cost(before) if before else self.costs.call_s
                self.world.run(self.lane, self.costs.device, rows, False, key, fixed + self.lane.prefill_s(rows), hold)

        def live_rows() -> int:
            return sum(1 for e in live for n in e[2] if n)

        def deliver_ended() -> None:
            for entry in [e for e in live if not any(e[2])]:
                live.remove(entry)
                request, completions, _, arrival = entry
                for completion in completions:
                    completion.latency_s = self.world.now - arrival
                request.deliver(completions)

        try:
            admit(requests)
            while True:
                if join is not None and not self.world.others_waiting(self.costs.device, hold):
                    # the real loop takes no new callers while another model's call waits: it drains first
                    admit(join(live_rows()))  # a join is a forward pass of its own
                deliver_ended()
                rows = live_rows()
                if not rows:
                    break
                stats.passes += 1
                stats.row_passes += rows
                stats.peak_rows = max(stats.peak_rows, rows)
                self.world.run(self.lane, self.costs.device, [Row(0, 1) for _ in range(rows)], False, key,
                               self.lane.step_s(rows, False), hold)
                for entry in live:
                    entry[2] = [max(n - 1, 0) for n in entry[2]]
        finally:
            self.world.release(self.costs.device, hold)
        self.world.leave()
        return stats

    def _row(self, prompt: str, params: SamplingParams, stop: Sequence[str], speculate: bool) -> tuple[Completion, Row]:
        j, done = self.script.problem_of(prompt)
        text, finish, matched = scripted_ending(self._continuation(prompt, j, done, params), stop, params.max_new_tokens)
        if self.role == "draft":
            with self._lock:
                self._depth[hash(prompt + text)] = self._depth.get(hash(prompt), 0) + 1
        cached = self.cache.cached(j, prompt)
        self.cache.remember(j, prompt + text)
        n = len(text)
        passes = max(n - 1, 0)
        completion = Completion(text, len(prompt), n, finish, matched, cached_tokens=cached)  # type: ignore[arg-type]
        if speculate and passes:
            passes = math.ceil(passes / self.acceptance_length)
            completion.spec_verify_passes = passes
            completion.spec_accepted_tokens = max(n - 1 - passes, 0)
            completion.spec_draft_tokens = self.costs.spec_num_tokens * passes
        return completion, Row(prefill=len(prompt) - cached, passes=passes)

    def _continuation(self, prompt: str, j: int, done: str, params: SamplingParams) -> str:
        if self.role == "target":
            return self.script.target_step(j, done)
        with self._lock:
            depth = self._depth.get(hash(prompt), 0) + 1
            sample = 0
            if params.temperature > 0:
                sample = self._samples.get(hash(prompt), 0)
                self._samples[hash(prompt)] = sample + 1
        return self.script.draft_step(j, done, depth, sample, params.max_new_tokens)


class ModelledJudge(VerifierBase):
    """The verifier: an exact comparison of the scripted steps, charged the profile's judge cost."""

    name = "modelled-judge"

    def __init__(self, costs: JudgeCosts, world: World) -> None:
        super().__init__(DELIMITER)
        self.costs = costs
        self.world = world
        self.lane = Lane("judge", costs)

    def verify(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        self.world.enter()
        rows = [Row(prefill=0, passes=0) for _ in drafts]
        if rows:
            self.world.run(self.lane, self.costs.device, rows, False, ("judge",))
        verdicts = [Verdict(d == t, 1.0 if d == t else 0.0, self.name) for d, t in zip(drafts, targets, strict=True)]
        self.world.leave()
        return verdicts


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, nearest rank (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


__all__ = ["Device", "Lane", "device_kind", "ModelledEngine", "ModelledJudge", "PrefixCache", "Script", "World", "all_parked", "percentile"]
