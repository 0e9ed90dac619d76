"""Adaptive lookahead depth: choose γ per round from live acceptance and measured costs.

Why: a fixed γ is right for one (acceptance, cost) pair only. When the draft's steps are rarely
accepted every round pays γ draft steps and a bigger target call for one committed step (``lr``
slower than ``ar``); when they are often accepted a deeper lookahead pays. `AdaptiveGamma` keeps
online estimates of the inputs of `lookahead.speedup` and picks, each round, the γ in
0..max_gamma with the highest predicted speedup; γ = 0 is a plain ``ar`` round (no draft call).

Estimates (one instance is shared by every problem of a reasoner and by the scheduler's worker
threads; a lock guards them):
- **α_i** (conditional acceptance at depth i): Beta posterior mean
  ``(accepted_i + w·m_i) / (trials_i + w)`` with prior weight ``w`` = `PRIOR_WEIGHT` pseudo-rounds;
  depth 1's prior mean m_1 is the configured one, depth i's is α_{i-1} (a deeper depth with no
  trials yet looks like the one before it, so a high depth-1 acceptance invites deeper rounds).
  A trial at depth i is a round that judged a draft step at depth i after accepting 1..i-1.
  Counts decay with horizon `HORIZON` rounds, so the estimates follow a change of workload.
- **costs**, EMA (weight `EMA`): draft seconds per draft token, target call seconds per mean row
  token *by rows in the call* (batch-1 is the unit), tokens per target step, verifier seconds per
  call. Normalising by tokens keeps long and short steps comparable; then c = draft s/token ÷
  batch-1 target s/token, b(k) = target(k rows) ÷ target(1 row), v = verifier s ÷ (batch-1 s/token
  × tokens per step). A row count never measured is extrapolated from the engine's own batch-cost
  curve when it has one (`HFEngine.batch_costs`), else linearly from the measured ones.

Warm-up: the first rounds use γ = 1 until the draft cost is measured (with a 2-row target call
when the draft step came out complete), then γ = 0 until a batch-1 target call is: γ = 1 is the cheapest round that measures every cost
term and depth-1 acceptance (a wrong guess costs the least, about c + b(2) - 1 target steps), and
the configured γ would pay γ·c for nothing when acceptance is 0.

Probing: while the choice is 0 no acceptance is observed, so every ``interval`` ar rounds one
γ = 1 round (a probe) is run instead. A probe commits one step like the ar round it replaces and
costs about ``extra = c + b(2) - 1 + v`` target steps more, so over ``interval`` rounds the
overhead is ``extra / interval`` of ar time. With ``interval >= extra / probe_budget`` the
overhead stays at most ``probe_budget`` (default 2%, well under the 5% target). Once probes have
run, ``extra`` is at least their measured cost (seconds over an ar round's, an EMA): the model
leaves out that a 2-row call lasts as long as its longer row, and bench-default measured probes
at about twice its figure. Each failed probe (nothing accepted) doubles the interval, up to
``2**MAX_PROBE_BACKOFF`` times the budget's interval; an accepted one halves it: one accepted
probe at a low acceptance is no sign that acceptance rose, several in a row are. The backoff is
capped because probes are the only way back from γ = 0: at acceptance 0.5 (paper profile,
`lookahead simulate`) five unlucky probes had put the depth-1 estimate under break-even, and an
uncapped interval (up to 1024 rounds) never let later probes lift it, so the policy ran `ar`
rounds where γ = 1-2 would pay 1.1x. At the cap, probes cost at most a quarter of the budget.

Load: ``choose(load=n, batch_costs=curve)`` is given the rows of other problems that the round's
target call would share its batch with (`lookahead.engines.base.EngineBase.occupancy`) and the
engine's measured decode cost by rows. With n > 0 it maximises the speedup AT THAT LOAD
(`lookahead.speedup.predicted_speedup_at_load`, SmartSpec's goodput argument): a drafted row takes
a batch slot that costs what a row of another problem costs, so under full batches (or on a CPU,
where every row costs) the choice falls to γ = 0 on its own, and comes back when the load falls.
Probes still run at their interval.

Example:
    >>> policy = AdaptiveGamma(max_gamma=4)
    >>> gamma = policy.choose()            # 1 during warm-up
    >>> policy.learn(RoundOutcome(gamma, accepted_run=0, verdicts=[False], draft_s=0.02, target_s=0.15,
    ...                           target_rows=2, verify_s=0.0))
    >>> policy.snapshot()["rounds_by_gamma"]
    {1: 1}
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lookahead.speedup import batch_cost_at, predicted_speedup, predicted_speedup_at_load

PRIOR_WEIGHT = 2.0  # pseudo-rounds behind the prior acceptance of each depth (rounds)
HORIZON = 200.0  # trials per depth after which old rounds fade (rounds)
EMA = 0.1  # weight of a new measurement in the cost averages
MIN_PROBE_INTERVAL = 8  # fewest ar rounds between two probes (rounds)
MAX_PROBE_INTERVAL = 1024  # most ar rounds between two probes, after backoff (rounds)
MAX_PROBE_BACKOFF = 2  # failed probes in a row that still lengthen the interval: at most 4x the budget's (count)


@dataclass(frozen=True)
class RoundOutcome:
    """What one finished round accepted and cost: what `AdaptiveGamma.learn` learns from.

    Without ``draft_tokens`` / ``target_tokens`` the costs are per call instead of per token.
    """

    gamma: int  # the lookahead depth the round used (0 = an ar round) (steps)
    accepted_run: int  # draft steps committed: the accepted run from depth 1 (steps)
    verdicts: Sequence[Any]  # one per judged draft step, in depth order (`Verdict` or bool)
    draft_s: float  # seconds of the round's draft calls (s)
    target_s: float  # seconds of the round's target call (s)
    target_rows: int  # rows in that target call (rows)
    verify_s: float  # seconds of the round's verifier call (s)
    draft_tokens: int | None = None  # tokens the draft generated in the round (tokens)
    target_tokens: int | None = None  # completion tokens over the target call's rows (tokens)


class AdaptiveGamma:
    """Per-round choice of the lookahead depth γ in 0..max_gamma (thread-safe; module docstring)."""

    def __init__(
        self,
        max_gamma: int,
        prior_acceptance: float = 0.5,
        probe_budget: float = 0.02,
        *,
        batch_cost_prior: Sequence[float] | None = None,
        token_speedup: float = 1.0,
    ) -> None:
        if max_gamma < 1:
            raise ValueError(f"max_gamma must be >= 1 (got {max_gamma})")
        if not 0.0 < prior_acceptance < 1.0:
            raise ValueError(f"prior_acceptance must be in (0, 1) (got {prior_acceptance})")
        if not 0.0 < probe_budget <= 1.0:
            raise ValueError(f"probe_budget must be in (0, 1] (got {probe_budget})")
        self.max_gamma = max_gamma  # largest γ a round may use (steps)
        self.prior_acceptance = prior_acceptance  # prior mean of the depth-1 acceptance (probability)
        self.probe_budget = probe_budget  # share of ar time probes may cost (fraction)
        self.token_speedup = token_speedup  # engines speculate tokens: costs are already measured with it
        # b[k-1] relative to batch 1, from the engine's measured curve (None: extrapolate linearly)
        self._prior_curve = list(batch_cost_prior) if batch_cost_prior else None
        self._lock = threading.Lock()
        self._trials: list[float] = []  # [depth-1] -> decayed trials at that depth (rounds)
        self._wins: list[float] = []  # [depth-1] -> decayed accepted trials (rounds)
        self._draft_tok_s: float | None = None  # EMA: draft seconds per draft token (s)
        self._call_tok_s: dict[int, float] = {}  # EMA by rows: target call seconds per mean row token (s)
        self._step_tokens: float | None = None  # EMA: target tokens per step (tokens)
        self._verify_s: float | None = None  # EMA: verifier seconds per call (s)
        self._rounds: dict[int, int] = {}  # rounds observed at each γ (rounds)
        self._last: int | None = None  # the latest choice
        self._since_probe = 0  # ar rounds chosen since the last probe (rounds)
        self._probe_failures = 0  # failed probes in a row (backoff exponent)
        self._probes_pending = 0  # probes chosen and not yet observed
        self._probes = 0  # probes chosen so far (rounds)
        self._probe_extra: float | None = None  # EMA: a probe's seconds over an ar round's, less 1 (ar rounds)
        self._load = 0  # rows of other problems in the call the latest choice would join (rows)

    # -- estimates (call with the lock held) ---------------------------------------------------
    def _alpha(self) -> list[float]:
        alpha, prior = [], self.prior_acceptance
        for depth in range(self.max_gamma):
            n = self._trials[depth] if depth < len(self._trials) else 0.0
            k = self._wins[depth] if depth < len(self._wins) else 0.0
            prior = (k + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT)
            alpha.append(prior)
        return alpha

    def _batch_cost(self, rows: int) -> float:
        """b(rows): a target call of ``rows`` rows in batch-1 calls. Never below 1 for rows >= 1:
        more rows cannot cost less than one, but on a loaded machine a slow batch-1 call can make
        a 2-row call look cheaper, and a b(2) < 1 would make every draft look free."""
        return max(self._raw_batch_cost(rows), 1.0)

    def _raw_batch_cost(self, rows: int) -> float:
        unit = self._call_tok_s[1]
        if rows in self._call_tok_s:
            return self._call_tok_s[rows] / unit
        known = sorted(self._call_tok_s)
        if self._prior_curve is not None and rows <= len(self._prior_curve):
            top = known[-1]  # scale the engine's curve to the largest measured row count
            base = batch_cost_at(self._prior_curve, top)
            return batch_cost_at(self._prior_curve, rows) * (self._call_tok_s[top] / unit) / base
        if len(known) == 1:
            return float(rows)  # no slope known yet: assume cost proportional to rows
        lo, hi = max((k for k in known if k < rows), default=known[0]), min((k for k in known if k > rows), default=known[-1])
        if lo == hi:  # past the end: the slope of the last two measured points
            lo, hi = known[-2], known[-1]
        b_lo, b_hi = self._call_tok_s[lo] / unit, self._call_tok_s[hi] / unit
        return max(b_lo + (b_hi - b_lo) * (rows - lo) / (hi - lo), 0.0)

    def _costs(self) -> tuple[float, float] | None:
        """(c, v) once the draft, a batch-1 target call and a tokens-per-step value are known."""
        if self._draft_tok_s is None or 1 not in self._call_tok_s or not self._step_tokens:
            return None
        unit = self._call_tok_s[1]
        if unit <= 0:
            return None
        c = self._draft_tok_s / unit
        v = (self._verify_s or 0.0) / (unit * self._step_tokens)
        return c, v

    def _speedups(self, load: int = 0, batch_costs: Sequence[float] | None = None) -> list[float] | None:
        costs = self._costs()
        if costs is None:
            return None
        c, v = costs
        alpha = self._alpha()
        gammas = range(self.max_gamma + 1)
        if load <= 0:
            return [predicted_speedup(alpha, g, c, self._batch_cost, v) for g in gammas]
        curve = load_curve(batch_costs)
        b = self._batch_cost if curve is None else curve
        return [predicted_speedup_at_load(alpha, g, c, b, v, load) for g in gammas]

    def _probe_interval(self) -> int:
        costs = self._costs()
        extra = 1.0
        if costs is not None:
            c, v = costs
            extra = max(c + self._batch_cost(2) - 1.0 + v, 0.0)
        if self._probe_extra is not None:
            # what probes really cost: the model's c + b(2) - 1 + v leaves out that a 2-row call
            # lasts as long as its longer row (bench-default measured about twice the model's figure)
            extra = max(extra, self._probe_extra)
        base = max(MIN_PROBE_INTERVAL, math.ceil(extra / self.probe_budget))
        return min(base * 2**self._probe_failures, max(MAX_PROBE_INTERVAL, base))

    def _learn_probe_cost(self, seconds: float) -> None:
        """A probe's extra cost over the ar round it replaced, in ar rounds (seconds / ar round - 1)."""
        if 1 in self._call_tok_s and self._step_tokens:
            ar_round_s = self._call_tok_s[1] * self._step_tokens
            if ar_round_s > 0:
                self._probe_extra = _ema(self._probe_extra, max(seconds / ar_round_s - 1.0, 0.0))

    # -- the policy ----------------------------------------------------------------------------
    def choose(self, load: int = 0, batch_costs: Sequence[float] | None = None) -> int:
        """γ for the next round (0 = an ar round), maximising the predicted speedup.

        ``load``: rows of other problems the round's target call would share its batch with;
        ``batch_costs``: the engine's seconds per decode step by rows (index 0 unused), for b(k)
        at that load (module docstring, "Load"); without it the policy's own estimates are used.
        """
        with self._lock:
            self._load = max(int(load), 0)
            if self._draft_tok_s is None:
                gamma = 1  # warm-up: measure the draft, a 2-row target call and depth-1 acceptance
            elif 1 not in self._call_tok_s:
                gamma = 0  # warm-up: measure the unit, a batch-1 target call
            else:
                speedups = self._speedups(self._load, batch_costs)
                assert speedups is not None
                gamma = max(range(len(speedups)), key=lambda g: (speedups[g], -g))
                if gamma == 0:
                    self._since_probe += 1
                    if self._since_probe >= self._probe_interval():
                        self._since_probe = 0
                        self._probes += 1
                        self._probes_pending += 1
                        gamma = 1
                else:
                    self._since_probe = 0
            self._last = gamma
            return gamma

    def observe(
        self,
        gamma: int,
        accepted_run: int,
        verdicts: Sequence[Any],
        draft_s: float,
        target_s: float,
        target_rows: int,
        verify_s: float,
        *,
        draft_tokens: int | None = None,
        target_tokens: int | None = None,
    ) -> None:
        """Learn from one finished round, given field by field (`RoundOutcome` says what each is)."""
        self.learn(
            RoundOutcome(
                gamma, accepted_run, verdicts, draft_s, target_s, target_rows, verify_s, draft_tokens, target_tokens
            )
        )

    def learn(self, outcome: RoundOutcome) -> None:
        """Learn from one finished round: its acceptance per depth, then its costs."""
        judged = len(outcome.verdicts)
        run = outcome.accepted_run
        with self._lock:
            self._rounds[outcome.gamma] = self._rounds.get(outcome.gamma, 0) + 1
            # acceptance: depths 1..run accepted, depth run+1 judged and rejected
            for depth in range(1, min(judged, run + 1) + 1):
                self._count(depth, depth <= run)
            if outcome.gamma > 0 and self._probes_pending > 0:
                self._probes_pending -= 1
                self._learn_probe_cost(outcome.draft_s + outcome.target_s + outcome.verify_s)
                # a failed probe doubles the interval; an accepted one halves it (one accepted
                # probe at a low acceptance is no sign that acceptance rose; several in a row are)
                self._probe_failures = (min(self._probe_failures + 1, MAX_PROBE_BACKOFF) if run == 0
                                        else max(self._probe_failures - 1, 0))
            self._learn_costs(outcome)

    def _learn_costs(self, outcome: RoundOutcome) -> None:
        """Update the cost averages from one round (call with the lock held)."""
        judged = len(outcome.verdicts)
        if outcome.gamma > 0 and outcome.draft_s > 0:
            tokens = outcome.draft_tokens if outcome.draft_tokens is not None else max(judged, 1)
            if tokens > 0:
                self._draft_tok_s = _ema(self._draft_tok_s, outcome.draft_s / tokens)
        rows = outcome.target_rows
        if rows > 0 and outcome.target_s > 0:
            row_tokens = (outcome.target_tokens / rows) if outcome.target_tokens is not None else 1.0
            if row_tokens > 0:
                self._call_tok_s[rows] = _ema(self._call_tok_s.get(rows), outcome.target_s / row_tokens)
                self._step_tokens = _ema(self._step_tokens, row_tokens)
        if judged > 0:
            self._verify_s = _ema(self._verify_s, outcome.verify_s)

    def _count(self, depth: int, accepted: bool) -> None:
        while len(self._trials) < depth:
            self._trials.append(0.0)
            self._wins.append(0.0)
        i = depth - 1
        keep = 1.0 - 1.0 / HORIZON
        self._trials[i] = self._trials[i] * keep + 1.0
        self._wins[i] = self._wins[i] * keep + (1.0 if accepted else 0.0)

    def snapshot(self) -> dict[str, Any]:
        """The current estimates and counts, for stats and logs (plain JSON types)."""
        with self._lock:
            costs = self._costs()
            speedups = self._speedups()
            return {
                "gamma": self._last,  # the latest choice
                "load": self._load,  # rows of other problems the latest choice's target call shared
                "alpha": [round(a, 4) for a in self._alpha()],  # conditional acceptance per depth
                "depth_trials": [round(t, 2) for t in self._trials],  # decayed trials per depth
                "c": None if costs is None else round(costs[0], 4),  # draft / batch-1 target step cost
                "batch_cost": (
                    {k: round(self._batch_cost(k), 4) for k in sorted(self._call_tok_s)} if 1 in self._call_tok_s else {}
                ),  # measured b(k) by rows
                "verify_cost": None if costs is None else round(costs[1], 4),  # per round, in target steps
                "predicted_speedup": None if speedups is None else [round(s, 4) for s in speedups],  # by γ
                "rounds_by_gamma": dict(sorted(self._rounds.items())),  # rounds observed at each γ
                "probes": self._probes,  # γ = 1 rounds run while the choice was 0
                "probe_interval": self._probe_interval() if costs is not None else None,  # ar rounds per probe now
            }


def load_curve(batch_costs: Sequence[float] | None) -> Callable[[int], float] | None:
    """b(k), relative to one row, from an engine's seconds per decode step by rows (index 0
    unused); None when there is no usable curve.

    The curve is made non-decreasing from the right (an engine pads to a cheaper larger batch, so
    k rows never cost more than k + 1: `lookahead.engines.hf.batch_costs.plan_batch`); past its
    end every row costs the average row of its last point (b(k) = b(m)·k/m): a flat extension
    would make rows beyond the measured ones look free.
    """
    if not batch_costs or len(batch_costs) < 3:
        return None
    seconds = [float(x) for x in list(batch_costs)[1:]]
    if not all(0 < x < math.inf for x in seconds):
        return None
    for i in range(len(seconds) - 2, -1, -1):
        seconds[i] = min(seconds[i], seconds[i + 1])
    relative = [max(x / seconds[0], 1.0) for x in seconds]
    top = len(relative)

    def b(k: int) -> float:
        return relative[k - 1] if k <= top else relative[-1] * k / top

    return b


def _ema(old: float | None, new: float) -> float:
    return new if old is None else old + EMA * (new - old)
