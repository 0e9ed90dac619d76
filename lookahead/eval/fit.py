"""Fit the speedup model's inputs on eval records, so a benchmark can show predicted next to measured.

`lookahead.speedup` is the model: pure formulas of α per depth, p, c, b(k), v and f. This module
reads them off the eval harness's JSON records (one line per problem and run; `make_record` in
`lookahead.eval.harness` lists the fields) into a `SpeedupInputs`, which also keeps the measured
speedup of every run. Pipelined and tree runs (``pipeline``, ``width > 1``) overlap or branch,
which the model of a sequential chain round does not describe: they are left out of the shared
fit (`unmodelled`) and not predicted.

**The unit** is one batch-1 target step, measured on the ``ar`` run: its target seconds per
committed token times the tokens per step of the run being described, so runs whose steps differ
in length compare.

Example:
    >>> inputs = from_eval_records(json.loads(line) for line in open("runs/x/records.jsonl"))  # doctest: +SKIP
    >>> inputs.compare()                                                                       # doctest: +SKIP
    [{'run': 'ar', 'mode': 'ar', 'gamma': 0, 'predicted': 1.0, 'measured': 1.0}, ...]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lookahead.errors import DataError
from lookahead.speedup import best_gamma, expected_steps, predicted_speedup, round_cost

Records = list[dict[str, Any]]  # the records of one run


@dataclass
class SpeedupInputs:
    """The model's inputs measured in one benchmark, and the speedups it measured."""

    alpha: list[float]  # conditional acceptance per depth, alpha[i-1] = P(depth i | depths < i) (probability)
    depth_trials: list[int]  # rounds that judged a draft step at depth i with all shallower ones accepted (rounds)
    c: float  # draft step seconds / batch-1 target step seconds (ratio)
    batch_cost: list[float]  # b[k-1]: target call seconds with k rows / with 1 row (ratio); b[0] = 1
    verify_cost: float  # verifier seconds per round with drafts / batch-1 target step seconds (ratio)
    target_step_s: float  # seconds of one batch-1 target step, the cost unit (s)
    tokens_per_step: float  # mean target tokens of a committed step in the ar run (tokens)
    token_speedup: float = 1.0  # sd target seconds per token vs ar (f; 1.0 = no sd run measured)
    draft_token_speedup: float = 1.0  # lr+sd draft seconds per step vs lr (1.0 = not measured)
    draft_complete: float = 1.0  # p: draft calls whose step ended on the delimiter / draft calls (probability)
    measured: dict[str, float] = field(default_factory=dict)  # run label -> ar wall time / run wall time
    per_run: dict[str, dict[str, Any]] = field(default_factory=dict)  # lr / lr+sd run label -> its own alpha, draft_complete, verify_cost (and c)
    runs: dict[str, tuple[str, int]] = field(default_factory=dict)  # run label -> (mode, γ)

    def _factors(self, mode: str) -> tuple[float, float]:
        """(f, f_d): the token-level speedups of the target's and the draft's steps in ``mode``."""
        return (self.token_speedup, self.draft_token_speedup) if mode == "lr+sd" else (1.0, 1.0)

    def predict(self, mode: str, gamma: int) -> float:
        """Predicted speedup of ``mode`` (ar, sd, lr, lr+sd) at depth γ over ``ar``."""
        if mode == "ar":
            return 1.0
        if mode == "sd":
            return self.token_speedup
        f, fd = self._factors(mode)
        return predicted_speedup(self.alpha, gamma, self.c, self.batch_cost, self.verify_cost, f, fd, self.draft_complete)

    def predict_schedule(self, mode: str, schedule: dict[int, int]) -> float:
        """The predicted speedup of a ``mode`` run whose rounds used depth γ ``schedule[γ]`` times
        (adaptive γ): expected steps over expected cost, both summed over its rounds (a single
        γ: `predict`)."""
        f, fd = self._factors(mode)
        p = self.draft_complete
        steps = sum(n * expected_steps(self.alpha, g, p) for g, n in schedule.items())
        costs = {g: round_cost(g, self.c, self.batch_cost, self.verify_cost, f, fd, p) for g in schedule}
        cost = sum(n * costs[g] for g, n in schedule.items())
        return steps / cost if cost > 0 else float("inf")

    def best_gamma(self, max_gamma: int, mode: str = "lr") -> int:
        f, fd = self._factors(mode)
        return best_gamma(self.alpha, self.c, self.batch_cost, self.verify_cost, max_gamma, f, fd, self.draft_complete)

    def for_run(self, label: str) -> SpeedupInputs:
        """These inputs with the run's own acceptance α, share of complete draft steps p and
        verifier cost (they depend on its verifier and settings; b(k), f are shared, and c too
        unless the run drafts with another model, `own_draft`)."""
        own = self.per_run.get(label)
        return dataclasses.replace(self, **own) if own else self

    def compare(self) -> list[dict[str, Any]]:
        """One row per measured run: label, mode, γ, predicted (with the run's own α, p, v) and
        measured speedup over ``ar``."""
        return [
            {"run": label, "mode": mode, "gamma": gamma, "predicted": round(self.for_run(label).predict(mode, gamma), 4),
             "measured": round(self.measured[label], 4) if label in self.measured else None}
            for label, (mode, gamma) in self.runs.items()
        ]


# -- which runs the model describes -------------------------------------------------------------
def is_pipelined(record: dict[str, Any]) -> bool:
    """Was this record's run pipelined (``pipeline`` override)? Its draft, target and verifier
    times overlap and its target rows are separate one-row calls, so the model of a sequential
    round (`lookahead.speedup`) neither describes it nor may be fitted on it."""
    value = (record.get("overrides") or {}).get("pipeline")
    return value is True or str(value).lower() in ("true", "1", "yes", "on")


def unmodelled(record: dict[str, Any]) -> str | None:
    """Why this record's run is outside the model of a sequential chain round (None: it is not).
    Such runs are neither predicted nor used to fit the shared inputs (they keep their own α)."""
    if is_pipelined(record):
        return ("not predicted: the model describes sequential rounds; a pipelined round overlaps "
                "draft, target and verifier (overlap_s) and calls the target row by row")
    width = (record.get("overrides") or {}).get("width")
    if width is not None and int(width) > 1:
        return (f"not predicted: width={width} drafts a tree (up to width^depth steps per depth, one "
                "target row per node); the model describes a chain of one draft step per depth")
    return None


def own_draft(record: dict[str, Any]) -> bool:
    """Does this record's run override the draft engine (``draft=...``, ``draft.model=...``)? Its
    draft costs what that model costs, so it gets its own c and stays out of the shared fit."""
    return any(key == "draft" or key.startswith("draft.") for key in (record.get("overrides") or {}))


# -- counting -----------------------------------------------------------------------------------
def _run_gamma(record: dict[str, Any]) -> int:
    overrides = record.get("overrides") or {}
    if "gamma" in overrides:
        return int(overrides["gamma"])
    depths = record.get("acceptance_by_depth") or []
    return len(depths)


def _depth_counts(records: Iterable[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(trials, successes) per depth from the traces: per round, the accepted run j (draft steps
    committed) and whether depth j+1 was judged and rejected (its fallback step has a draft)."""
    trials: list[int] = []
    wins: list[int] = []

    def bump(counts: list[int], depth: int) -> None:
        counts.extend([0] * (depth - len(counts)))
        counts[depth - 1] += 1

    for record in records:
        rounds: dict[int, list[dict[str, Any]]] = {}
        for step in record.get("trace") or []:
            rounds.setdefault(int(step["round"]), []).append(step)
        for steps in rounds.values():
            run = sum(1 for s in steps if s.get("source") == "draft")
            for depth in range(1, run + 1):
                bump(trials, depth)
                bump(wins, depth)
            fallback = next((s for s in steps if s.get("source") == "target"), None)
            if fallback is not None and fallback.get("draft") is not None:
                bump(trials, run + 1)
                wins.extend([0] * (len(trials) - len(wins)))
    wins.extend([0] * (len(trials) - len(wins)))
    return trials, wins


def _acceptance(records: Iterable[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """(α per depth, trials per depth) over ``records``' traces."""
    trials, wins = _depth_counts(records)
    return [w / t if t else 0.0 for w, t in zip(wins, trials, strict=True)], trials


def _draft_calls(records: Records, drafted: int, rounds: int, gamma: int) -> float:
    """Draft engine calls of a run: counted (``stats.draft_calls``) in records that have it, else
    estimated as the drafted steps plus one incomplete call per round that drafted fewer than γ
    (about ``rounds - drafted / γ``)."""
    counted = [(r.get("stats") or {}).get("draft_calls") for r in records]
    if all(isinstance(n, int) for n in counted):
        return float(sum(counted))  # type: ignore[arg-type]
    return drafted + max(rounds - drafted / gamma, 0.0)


def _fill_linear(points: dict[float, float], max_rows: int) -> list[float]:
    """A list b[k-1] for k = 1..max_rows, piecewise linear through the (mean rows, cost) points
    and extended linearly past the last one (the first and last segments' slopes)."""
    xs = sorted(points)
    out = []
    for k in range(1, max_rows + 1):
        if len(xs) == 1:
            out.append(points[xs[0]] * k)  # only batch 1 known: cost proportional to rows
            continue
        hi = next((i for i, x in enumerate(xs) if x >= k), len(xs) - 1)
        hi = max(hi, 1)
        x0, x1 = xs[hi - 1], xs[hi]
        y0, y1 = points[x0], points[x1]
        out.append(y0 + (y1 - y0) * (k - x0) / (x1 - x0))
    return out


# -- the fit ------------------------------------------------------------------------------------
def _per_token(records: Records, key: str) -> float:
    """Seconds of ``key`` (e.g. ``target_s``) per committed token, summed over ``records``."""
    tokens = sum(r["completion_tokens"] for r in records)
    return sum(r[key] for r in records) / tokens if tokens else 0.0


@dataclass
class _CostUnit:
    """The model's unit, one batch-1 target step, from the ``ar`` run."""

    token_s: float  # the ar run's target seconds per committed token (s)
    tokens_per_step: float  # its mean tokens per committed step (tokens)

    @classmethod
    def of(cls, ar: Records) -> _CostUnit:
        token_s = _per_token(ar, "target_s")  # s per committed token at batch 1
        if token_s <= 0:
            raise DataError("the 'ar' records have no target time or no completion tokens; re-run the eval")
        tokens_per_step = sum(r["completion_tokens"] for r in ar) / max(sum(r["committed_steps"] for r in ar), 1)
        return cls(token_s, tokens_per_step)

    def step_s(self, records: Records) -> float:
        """Seconds of one batch-1 target step at this run's step length."""
        steps = sum(r["committed_steps"] for r in records)
        if not steps:
            return self.token_s * self.tokens_per_step
        return self.token_s * sum(r["completion_tokens"] for r in records) / steps


def _unit_run(by_run: dict[str, Records]) -> Records:
    """The ar run that defines the unit: the plain one (no [overrides]) when there is one, so an
    ar run over other engines or options (e.g. ``ar[target.options.cache_prompt=false]``) is a
    run it measures."""
    ar_runs = [rs for rs in by_run.values() if rs[0].get("mode") == "ar"]
    ar = next((rs for rs in ar_runs if not rs[0].get("overrides")), ar_runs[0] if ar_runs else [])
    if not ar:
        raise DataError("the records hold no finished 'ar' run: the speedup model needs it as the unit; "
                        "run the eval with --modes ar,lr,...")
    return ar


@dataclass
class _SharedCosts:
    """c, b(k), v and p fitted over the sequential ``lr`` runs (`_shared_costs`)."""

    batch_cost: list[float]  # b[k-1] for k = 1..9 (ratio)
    c: float  # draft seconds per draft call / unit (ratio)
    verify_cost: float  # verifier seconds per round that judged / unit (ratio)
    draft_complete: float  # p (probability)
    draft_calls: float  # draft calls behind c (0: no lr run on the config's own draft)


def _shared_costs(lr_runs: dict[str, Records], unit: _CostUnit) -> _SharedCosts:
    """``b(k)`` from each ``lr`` run's target seconds per round at its mean rows per call (1 +
    drafted steps per round; rounds whose draft step came out incomplete call the target with
    fewer rows), interpolated linearly between runs; ``c`` per draft call and p = drafted steps /
    draft calls (`_draft_calls`) over the runs on the config's own draft; ``v`` per round that
    judged a draft step."""
    points: dict[float, list[float]] = {1.0: [1.0]}
    c_num = c_den = v_num = v_den = p_num = p_den = 0.0
    for rs in lr_runs.values():
        rounds = sum(r["rounds"] for r in rs)
        drafted = sum(r.get("drafted_steps", 0) for r in rs)
        u = unit.step_s(rs)
        rows = 1 + drafted / rounds if rounds else 1.0
        if rows > 1:
            points.setdefault(round(rows, 6), []).append(sum(r["target_s"] for r in rs) / rounds / u)
        if own_draft(rs[0]):
            continue  # its target rows still measure b(k); its draft is not the config's
        calls = _draft_calls(rs, drafted, rounds, max(_run_gamma(rs[0]), 1))
        c_num += sum(r["draft_s"] for r in rs) / u
        c_den += calls
        p_num += drafted
        p_den += calls
        v_num += sum(r["verify_s"] for r in rs) / u
        v_den += sum(r["rounds"] for r in rs if r.get("drafted_steps", 0))
    return _SharedCosts(
        batch_cost=_fill_linear({k: sum(v) / len(v) for k, v in points.items()}, max_rows=9),
        c=c_num / c_den if c_den else 0.0,
        verify_cost=v_num / v_den if v_den else 0.0,
        draft_complete=min(p_num / p_den, 1.0) if p_den else 1.0,
        draft_calls=c_den,
    )


def _per_run_inputs(by_run: dict[str, Records], unit: _CostUnit) -> dict[str, dict[str, Any]]:
    """Each ``lr`` / ``lr+sd`` run's own α, p and v (and c when it drafts with its own model)."""
    per_run: dict[str, dict[str, Any]] = {}
    for label, rs in by_run.items():
        if rs[0].get("mode") not in ("lr", "lr+sd"):
            continue
        alpha, _ = _acceptance(rs)
        rounds = sum(r["rounds"] for r in rs)
        drafted = sum(r.get("drafted_steps", 0) for r in rs)
        calls = _draft_calls(rs, drafted, rounds, max(_run_gamma(rs[0]), 1))
        judged_rounds = sum(r["rounds"] for r in rs if r.get("drafted_steps", 0))
        per_run[label] = {
            "alpha": alpha,
            "draft_complete": min(drafted / calls, 1.0) if calls else 1.0,
            "verify_cost": sum(r["verify_s"] for r in rs) / unit.step_s(rs) / judged_rounds if judged_rounds else 0.0,
        }
        if own_draft(rs[0]) and calls:
            per_run[label]["c"] = sum(r["draft_s"] for r in rs) / unit.step_s(rs) / calls
    return per_run


def _token_factors(ok: Records, unit: _CostUnit, lr_runs: dict[str, Records], drafts_fitted: bool) -> tuple[float, float]:
    """(f, f_d): ar target seconds per token / the plain ``sd`` run's (f: the factor of lr+sd's own
    engines, so the sd run without engine overrides), and ``lr`` draft seconds per drafted step /
    ``lr+sd``'s (f_d; only with a fitted c). 1.0 where not measured."""
    f = 1.0
    sd = [r for r in ok if r.get("mode") == "sd"]
    sd = [r for r in sd if not r.get("overrides")] or sd
    if sd and _per_token(sd, "target_s") > 0:
        f = unit.token_s / _per_token(sd, "target_s")
    fd = 1.0
    lrsd = [r for r in ok if r.get("mode") == "lr+sd" and not unmodelled(r)]
    lr_all = [r for rs in lr_runs.values() for r in rs]
    if lrsd and lr_all and drafts_fitted:
        d_lr = sum(r["draft_s"] for r in lr_all) / max(sum(r.get("drafted_steps", 0) for r in lr_all), 1)
        d_lrsd = sum(r["draft_s"] for r in lrsd) / max(sum(r.get("drafted_steps", 0) for r in lrsd), 1)
        fd = d_lr / d_lrsd if d_lrsd > 0 else 1.0
    return f, fd


def _measured(by_run: dict[str, Records], ar: Records) -> tuple[dict[str, float], dict[str, tuple[str, int]]]:
    """Per run, the measured speedup (summed ``ar`` wall time over the problems both runs finished
    / the run's own) and its (mode, γ)."""
    ar_wall = {(r["problem"], r.get("sample", 0)): r["wall_time_s"] for r in ar}
    measured: dict[str, float] = {}
    runs: dict[str, tuple[str, int]] = {}
    for label, rs in by_run.items():
        mode = str(rs[0].get("mode"))
        runs[label] = (mode, _run_gamma(rs[0]) if mode in ("lr", "lr+sd") else 0)
        paired = [r for r in rs if (r["problem"], r.get("sample", 0)) in ar_wall]
        own = sum(r["wall_time_s"] for r in paired)
        if own > 0:
            measured[label] = sum(ar_wall[(r["problem"], r.get("sample", 0))] for r in paired) / own
    return measured, runs


def from_eval_records(records: Iterable[dict[str, Any]]) -> SpeedupInputs:
    """Estimate α per depth, c, b(k), v and the token-level factors from eval JSON records.

    Needs ``ar`` records (they define the unit, a batch-1 target step; with several ``ar`` runs,
    the one without ``[overrides]``: `_unit_run`). The shared α and costs come from sequential
    chain rounds on the config's own draft (`unmodelled`, `own_draft`); every ``lr`` / ``lr+sd``
    run also keeps its own (`SpeedupInputs.per_run`). Measured speedups are paired (`_measured`).
    """
    ok = [r for r in records if r.get("status", "ok") == "ok" and r.get("rounds")]
    by_run: dict[str, Records] = {}
    for r in ok:
        by_run.setdefault(str(r["run"]), []).append(r)
    ar = _unit_run(by_run)
    unit = _CostUnit.of(ar)
    alpha, trials = _acceptance(
        r for r in ok if r.get("mode") in ("lr", "lr+sd") and not unmodelled(r) and not own_draft(r)
    )
    lr_runs = {label: rs for label, rs in by_run.items() if rs[0].get("mode") == "lr" and not unmodelled(rs[0])}
    shared = _shared_costs(lr_runs, unit)
    f, fd = _token_factors(ok, unit, lr_runs, drafts_fitted=bool(shared.draft_calls))
    measured, runs = _measured(by_run, ar)
    return SpeedupInputs(
        alpha=alpha,
        depth_trials=trials,
        c=shared.c,
        batch_cost=shared.batch_cost,
        verify_cost=shared.verify_cost,
        target_step_s=unit.token_s * unit.tokens_per_step,
        tokens_per_step=unit.tokens_per_step,
        token_speedup=f,
        draft_token_speedup=fd,
        draft_complete=shared.draft_complete,
        measured=measured,
        runs=runs,
        per_run=_per_run_inputs(by_run, unit),
    )

