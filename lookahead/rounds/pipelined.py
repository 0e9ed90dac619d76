"""Pipelined rounds (``pipeline``, ``lr`` / ``lr+sd``): the parts of a chain round overlap.

Instead of running one after another (`lookahead.rounds.chain`)::

    expand  : t_1 = target(P) starts at once; as soon as d_i exists, t_{i+1} = target(P + d_1 .. d_i)
              starts (one-row calls on a target worker thread; the bonus row by expand's rules)
    propose : d_1, d_2, ..., d_γ in the calling thread while the target rows run (the steps carried
              from the previous round first: no draft call for them)
    judge   : verdict_i = verifier(P + d_1 .. d_{i-1}, d_i, t_i) as soon as d_i and t_i exist; at the
              first rejection (or a t_i not ending on the delimiter) drafting stops, target rows
              not started yet are cancelled, running ones are waited for and discarded
    ahead   : after d_γ, while rows still run and no rejection is known: e_1 = draft(P + d_1 .. d_γ),
              e_2 = draft(P + d_1 .. d_γ + e_1), ... (at most γ steps; none when γ = 1: only e_2.. carry)
    commit  : as in a chain round; when P + d_1 .. d_γ + t_{γ+1} was committed and t_{γ+1} == e_1, the
              next round's prefix is the one e_2, e_3, ... were drafted from: they are carried over

Draft and target calls use the same prompts, caps and stop rules as in a sequential round, and a
round still commits d_1 .. d_j plus t_{j+1}, so greedy decoding with the exact verifier commits
the same text as sequential ``lr`` and ``ar``. An in-process target's rows
run on the problem's own worker thread, in order (a row after a rejection is never started),
and merge with other problems' rows in the reasoner's batcher; the draft runs in the calling
thread (the reasoner runs sequential rounds instead when draft and target are the same engine
object); a target that is thread-safe by itself (`PoolEngine`, a server) gets several workers,
so the rows of a round, and of concurrent problems, run at once. Stats:
``overlap_s`` (`lookahead.stats`) is the time the parts ran at once; ``carried_drafts`` the steps
carried over.

Example:
    >>> proposal = pipelined_round(context, state)   # doctest: +SKIP
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from lookahead.config import SamplingParams
from lookahead.rounds.state import ProblemState, Proposal, RoundContext
from lookahead.types import Completion, Verdict


@dataclass
class RoundInFlight:
    """The bookkeeping of one pipelined round (`run_pipelined`)."""

    prefix: str  # P: the committed text the round starts from
    carried: list[str]  # draft steps carried from the previous round, used before drafting (steps)
    drafts: list[str] = field(default_factory=list)  # d_1..d_k drafted so far, each a complete step
    rows: list[Future] = field(default_factory=list)  # rows[i]: (t_{i+1}, seconds) from P + d_1..d_i
    verdicts: list[Verdict] = field(default_factory=list)  # verdict_i of the pairs judged so far
    ahead: list[str] = field(default_factory=list)  # e_1, e_2, ...: drafted after d_γ (steps)
    left: int = 0  # token budget left after P + d_1..d_k (tokens)
    drafting: bool = True  # may d_{k+1} still be drafted?
    ahead_open: bool = True  # may another step be drafted ahead?
    fallback_at: int | None = None  # depth of the fallback step, once known (first rejection)

    @property
    def drafted(self) -> str:
        """d_1..d_k joined: the draft text after P."""
        return "".join(self.drafts)

    def proposal(self) -> Proposal:
        """The judged draft steps, the target steps up to the one committed after them, and the
        steps drafted ahead (carried by the reasoner if the commit makes them apply)."""
        end = len(self.rows) if self.fallback_at is None else self.fallback_at
        targets = [row.result()[0] for row in self.rows[:end]]  # a failed row raises here
        return Proposal(
            self.drafts[: len(self.verdicts)], targets, list(self.verdicts), self.prefix + self.drafted, list(self.ahead)
        )


def pipelined_round(context: RoundContext, state: ProblemState) -> Proposal:
    """One pipelined round at the configured γ, settled, as a `Proposal`."""
    state.stats.observe_gamma(state.config.gamma)
    return run_pipelined(context, state, state.config.gamma).proposal()


def run_pipelined(context: RoundContext, state: ProblemState, gamma: int) -> RoundInFlight:
    """One round with draft, target and verifier overlapped; returns it settled.

    The calling thread drafts, submits each target row as soon as its prefix exists, and
    judges each pair as soon as both its steps exist; once the fallback depth is known it
    stops. Every row has finished or been cancelled when this returns, also after an error.
    """
    run = RoundInFlight(prefix=state.completion, carried=state.carried_steps)
    state.carried_steps = []
    stats = state.stats
    busy_before = stats.draft_s + stats.target_s + stats.verify_s
    start = time.perf_counter()
    try:
        run.left = state.tokens_left(context.target)
        if run.left > 0:
            _submit_row(context, state, run)  # t_1 from P
        else:
            run.drafting = False  # no budget: nothing to draft or to compute
        while True:
            pending = [row for row in run.rows if not row.done()]  # before judging: none left = all judged
            _judge_ready(context, state, run)
            if run.fallback_at is not None:
                break  # the first rejection (or a capped target step): the round ends there
            if run.drafting:
                _draft_next(context, state, run, gamma)
            elif pending and run.ahead_open and 2 <= gamma == len(run.drafts) and len(run.rows) == gamma + 1:
                # (γ = 1 carries nothing: e_1 only stands for the bonus step, e_2 would be γ + 1 ahead)
                _draft_ahead(context, state, run, gamma)
            elif pending:
                wait(pending, return_when=FIRST_COMPLETED)
            else:
                break  # every row done and every pair judged: all accepted
    finally:
        _settle_rows(state, run)
    wall = time.perf_counter() - start
    stats.overlap_s += max(stats.draft_s + stats.target_s + stats.verify_s - busy_before - wall, 0.0)
    return run


def _submit_row(context: RoundContext, state: ProblemState, run: RoundInFlight) -> None:
    """Start the target row from P + d_1..d_k (k = the draft steps so far), capped as in `expand`."""
    prompt = state.target_prompt + run.prefix + run.drafted
    params = state.step_params(state.config.target_sampling, run.left)
    run.rows.append(context.load_workers().submit(_timed_row, context, state, prompt, params))


def _timed_row(
    context: RoundContext, state: ProblemState, prompt: str, params: SamplingParams
) -> tuple[Completion, float]:
    """One target row (run on a target worker thread: reads ``state``, writes nothing) and its seconds."""
    start = time.perf_counter()
    completion = context.generate(context.target, state, [prompt], params)[0]
    return completion, time.perf_counter() - start


def _draft_next(context: RoundContext, state: ProblemState, run: RoundInFlight, gamma: int) -> None:
    """Add d_{k+1} (a carried step, or one draft call as in `propose`) and start its target row.

    The row after it is left out as `expand` leaves the bonus row out: no budget left, or the
    step states the final answer (drafting stops there too, as in `propose`).
    """
    if run.carried:
        step: str | None = run.carried.pop(0)
        state.stats.carried_drafts += 1
    else:
        start = time.perf_counter()
        step = context.draft_step(state, run.prefix + run.drafted, run.left)
        state.stats.draft_s += time.perf_counter() - start
    if step is None:
        run.drafting = False  # an incomplete draft step can never be accepted
        return
    run.drafts.append(step)
    run.left = state.tokens_left(context.target, run.drafted)
    states_answer = state.states_answer(step)
    if run.left > 0 and not states_answer:
        _submit_row(context, state, run)
    if run.left <= 0 or states_answer or len(run.drafts) >= gamma:
        run.drafting = False


def _draft_ahead(context: RoundContext, state: ProblemState, run: RoundInFlight, gamma: int) -> None:
    """Draft the next step after P + d_1..d_γ + e_1.. (at most γ), by `propose`'s rules."""
    drafted = run.drafted + "".join(run.ahead)
    left = state.tokens_left(context.target, drafted) if run.ahead else run.left
    step = None
    if left > 0:
        start = time.perf_counter()
        step = context.draft_step(state, run.prefix + drafted, left)
        state.stats.draft_s += time.perf_counter() - start
    if step is None:
        run.ahead_open = False
        return
    run.ahead.append(step)
    if len(run.ahead) >= gamma or state.states_answer(step):
        run.ahead_open = False


def _judge_ready(context: RoundContext, state: ProblemState, run: RoundInFlight) -> None:
    """Judge, in depth order, every pair (d_i, t_i) whose two steps exist; note the fallback depth.

    A target step that did not end on the delimiter ends the round at its depth whatever the
    verdict (it is never matched; `accepted_run`), even before its draft step exists.
    """
    while run.fallback_at is None:
        i = len(run.verdicts)  # pair i + 1 is next
        if i >= len(run.rows) or not run.rows[i].done():
            return
        target = run.rows[i].result()[0]
        capped = target.finish_reason != "stop"
        if i < len(run.drafts):
            text = state.judge_context() + "".join(run.drafts[:i])
            verdict = context.verify(state, [text], [run.drafts[i]], [target])[0]
            run.verdicts.append(verdict)
            if capped or not verdict.accepted:
                run.fallback_at = i + 1
        elif capped:
            run.fallback_at = i + 1  # whatever d_{i+1} would be, t_{i+1} is the fallback step
        else:
            return  # d_{i+1} does not exist (yet)
    run.drafting = run.ahead_open = False


def _settle_rows(state: ProblemState, run: RoundInFlight) -> None:
    """Cancel the rows not started, wait for the running ones, count every row that ran."""
    for row in run.rows:
        row.cancel()  # only rows still queued are cancelled
    wait(run.rows)
    for row in run.rows:
        if row.cancelled() or row.exception() is not None:
            continue  # a failed row needed by the round raises in `RoundInFlight.proposal`
        completion, seconds = row.result()
        state.stats.observe_target_call([completion], seconds)
