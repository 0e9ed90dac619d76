"""The speedup model of Lookahead Reasoning: how many steps a round commits, what it costs.

Why: whether step-level speculation pays depends on four measurable things -- the acceptance per
depth, the draft's cost, how the target's cost grows with the rows of one batched call, and the
verifier's cost. This module turns them into a predicted speedup per mode and a best lookahead
depth γ (used online by `lookahead.adaptive.AdaptiveGamma`, offline to check a benchmark).
Pure functions, no torch. Vocabulary: `lookahead.types`.

**Steps per round.** Let α_i = P(the draft step at depth i is accepted | the draft steps at
depths < i were accepted). A round with depth γ commits the accepted run j plus one target step
(the fallback step, or the bonus step when j = γ), so with P(j >= i) = Π_{k<=i} α_k::

    E[steps | γ] = 1 + Σ_{i=1..γ} Π_{k=1..i} α_k                       (steps)

(with one α for every depth this is the paper's (1 - α^(γ+1)) / (1 - α)).

**Cost per round**, in units of one batch-1 target step (the cost of an ``ar`` round)::

    cost(γ) = γ·c + b(γ+1) + v(γ)          v(0) = 0,  b(1) = 1

- ``c``: seconds of one draft step / seconds of one batch-1 target step (the draft steps run one
  after another);
- ``b(k)``: seconds of one target call with k rows (the prefixes P, P+d_1, ..., P+d_1..d_γ) /
  seconds of a batch-1 call. About 1 on a GPU (decoding is memory-bound), up to k on a busy CPU;
- ``v(γ)``: seconds of the verifier's call on γ pairs / seconds of a batch-1 target step
  (about 0 for the exact verifier, large for an LLM judge).

**Speedup** over ``ar`` (one step per cost 1) is ``S(γ) = E[steps | γ] / cost(γ)``; γ = 0 is an
``ar`` round (S = 1). Token-level speculation (``sd``, ``lr+sd``) divides the target's and the
draft's costs by their measured per-step speedup f (f = ar target seconds per token / sd target
seconds per token), so ``sd`` predicts S = f and ``lr+sd`` ``E / ((γ·c/f_d + b(γ+1)/f) + v)``.

**Incomplete draft steps.** A draft step that does not end on the step delimiter within the
per-step cap can never be accepted, and the round stops looking ahead there. With p = P(a draft
step comes out complete), a round of depth γ makes 1 + p + ... + p^(γ-1) draft calls, has k
complete draft steps with P(k) = p^k (1 - p) for k < γ and p^γ for k = γ, calls the target with
k + 1 rows and the verifier when k >= 1, and commits ``1 + Σ_i Π_{k<=i} p·α_k`` steps. So::

    cost(γ) = c·Σ_{i<γ} p^i + Σ_k P(k)·b(k+1) + p·v(γ)

which is the formula above for p = 1 (the default). On the CPU pair p is about 0.5: measured
rounds are cheaper than "γ complete draft steps" predicts, and so is their gain.

The best γ maximises S(γ) over 0..γ_max. Speculating pays only if the gain of depth 1,
α_1, exceeds its extra cost c + b(2) - 1 + v(1): with α ≈ 0 the best γ is 0 whatever the costs.

`from_eval_records` estimates every input from the eval harness's JSON records (one line per
problem and run), so a benchmark can print predicted next to measured speedup. Pipelined runs
(``pipeline``) overlap draft, target and verifier, which this model of a sequential round does
not describe: they are left out of the fit and not predicted.

**GPU projection.** `gpu_projection` evaluates the same formulas with the figures published for
the reference setting (Qwen3-32B target, Qwen3-1.7B draft, LLM judge) and stated assumptions for
the costs nobody published; it is a projection, labelled as such, not a measurement.

Example:
    >>> expected_steps([0.8, 0.8], 2)
    2.44
    >>> round(predicted_speedup([0.8, 0.8], 2, c=0.1, batch_cost=[1.0, 1.05, 1.1], verify_cost=0.0), 3)
    1.877
    >>> best_gamma([0.0], c=0.2, batch_cost=[1.0, 1.6], verify_cost=0.0, max_gamma=4)
    0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lookahead.errors import DataError

BatchCost = Callable[[int], float] | Sequence[float]
"""``b(k)``: a callable of the row count k, or a list with ``b[k-1]`` (extended linearly past its end)."""

VerifyCost = Callable[[int], float] | float
"""``v(γ)``: a callable of γ, or one number per round with at least one draft step."""


def expected_steps(alpha: Sequence[float], gamma: int, complete: float = 1.0) -> float:
    """Expected steps one round of depth γ commits: 1 + Σ_{j=1..γ} Π_{i<=j} p·α_i (steps).

    ``alpha[i-1]`` is the conditional acceptance at depth i; depths past the end of ``alpha``
    reuse its last value (no value at all: 0). ``complete`` is p, the probability that a draft
    step comes out complete (module docstring).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0 (got {gamma})")
    p = _probability(complete, "complete")
    total, run = 1.0, 1.0
    for depth in range(1, gamma + 1):
        a = alpha[min(depth, len(alpha)) - 1] if alpha else 0.0
        run *= p * min(max(float(a), 0.0), 1.0)
        total += run
    return round(total, 12)


def batch_cost_at(batch_cost: BatchCost, rows: int) -> float:
    """``b(rows)`` from a callable or a list ``b[k-1]`` (linear past its end from the last two points)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1 (got {rows})")
    if callable(batch_cost):
        return float(batch_cost(rows))
    curve = [float(b) for b in batch_cost] or [1.0]
    if rows <= len(curve):
        return curve[rows - 1]
    if len(curve) == 1:
        return curve[0] * rows  # nothing to extrapolate from: cost proportional to rows
    slope = curve[-1] - curve[-2]
    return curve[-1] + slope * (rows - len(curve))


def _probability(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1] (got {value})")
    return value


def round_cost(gamma: int, c: float, batch_cost: BatchCost, verify_cost: VerifyCost,
               token_speedup: float = 1.0, draft_token_speedup: float | None = None,
               complete: float = 1.0) -> float:
    """Cost of one round of depth γ in batch-1 target steps: γ·c + b(γ+1) + v(γ) (v(0) = 0).

    ``token_speedup`` (f >= 1 speeds up) divides the target's cost, ``draft_token_speedup``
    (default: the same f) the draft's -- token-level speculation inside the engine calls.
    ``complete`` (p < 1: draft steps that come out incomplete end the lookahead) takes the
    expectation over the complete draft steps k (module docstring).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0 (got {gamma})")
    f_target = float(token_speedup)
    f_draft = f_target if draft_token_speedup is None else float(draft_token_speedup)
    if f_target <= 0 or f_draft <= 0:
        raise ValueError("token speedup factors must be > 0")
    p = _probability(complete, "complete")
    verify = 0.0
    if gamma > 0:
        verify = float(verify_cost(gamma)) if callable(verify_cost) else float(verify_cost)
    if p == 1.0:
        return gamma * c / f_draft + batch_cost_at(batch_cost, gamma + 1) / f_target + verify
    draft_calls = sum(p**i for i in range(gamma))
    rows = [(p**k * (1 - p) if k < gamma else p**gamma, k + 1) for k in range(gamma + 1)]
    target = sum(prob * batch_cost_at(batch_cost, n) for prob, n in rows)
    return draft_calls * c / f_draft + target / f_target + (p * verify if gamma > 0 else 0.0)


def predicted_speedup(alpha: Sequence[float], gamma: int, c: float, batch_cost: BatchCost,
                      verify_cost: VerifyCost, token_speedup: float = 1.0,
                      draft_token_speedup: float | None = None, complete: float = 1.0) -> float:
    """Expected steps per unit of cost vs ``ar`` (1 step per batch-1 target step): E / cost.

    ``gamma=0`` with ``token_speedup=f`` is the ``sd`` prediction (f); ``gamma>0`` with f is ``lr+sd``.
    """
    cost = round_cost(gamma, c, batch_cost, verify_cost, token_speedup, draft_token_speedup, complete)
    if cost <= 0:
        return math.inf
    return expected_steps(alpha, gamma, complete) / cost


def best_gamma(alpha: Sequence[float], c: float, batch_cost: BatchCost, verify_cost: VerifyCost,
               max_gamma: int, token_speedup: float = 1.0, draft_token_speedup: float | None = None,
               complete: float = 1.0) -> int:
    """The γ in 0..max_gamma with the highest predicted speedup (ties: the smaller γ; 0 = ``ar`` round)."""
    best, best_s = 0, -math.inf
    for gamma in range(max_gamma + 1):
        s = predicted_speedup(alpha, gamma, c, batch_cost, verify_cost, token_speedup, draft_token_speedup, complete)
        if s > best_s * (1 + 1e-9) + 1e-12:
            best, best_s = gamma, s
    return best


# --------------------------------------------------------------------------------------------
# Inputs estimated from eval records


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

    def predict(self, mode: str, gamma: int) -> float:
        """Predicted speedup of ``mode`` (ar, sd, lr, lr+sd) at depth γ over ``ar``."""
        if mode == "ar":
            return 1.0
        if mode == "sd":
            return self.token_speedup
        f = self.token_speedup if mode == "lr+sd" else 1.0
        fd = self.draft_token_speedup if mode == "lr+sd" else 1.0
        return predicted_speedup(self.alpha, gamma, self.c, self.batch_cost, self.verify_cost, f, fd, self.draft_complete)

    def best_gamma(self, max_gamma: int, mode: str = "lr") -> int:
        f = self.token_speedup if mode == "lr+sd" else 1.0
        fd = self.draft_token_speedup if mode == "lr+sd" else 1.0
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


def is_pipelined(record: dict[str, Any]) -> bool:
    """Was this record's run pipelined (``pipeline`` override)? Its draft, target and verifier
    times overlap and its target rows are separate one-row calls, so the model of a sequential
    round (this module) neither describes it nor may be fitted on it."""
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


def from_eval_records(records: Iterable[dict[str, Any]]) -> SpeedupInputs:
    """Estimate α per depth, c, b(k), v and the token-level factors from eval JSON records.

    Needs ``ar`` records (they define the unit, a batch-1 target step; with several ``ar`` runs,
    the one without ``[overrides]``). Per run, costs are per
    committed token times the run's tokens per step, so runs whose steps differ in length compare.
    ``b(k)`` is read from each ``lr`` run's target seconds per round at its mean rows per call,
    1 + drafted steps per round (rounds whose draft step came out incomplete call the target with
    fewer rows), and interpolated linearly between runs (b[0..8] returned). ``c`` is per draft
    call and p (``draft_complete``) = drafted steps / draft calls (`_draft_calls`). Measured speedups
    are paired: summed ``ar`` wall time over the problems both runs finished / the run's own.
    """
    ok = [r for r in records if r.get("status", "ok") == "ok" and r.get("rounds")]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        by_run.setdefault(str(r["run"]), []).append(r)
    ar_runs = [rs for rs in by_run.values() if rs[0].get("mode") == "ar"]
    # the unit is one ar run: the plain one (no [overrides]) when there is one, so an ar run over
    # other engines or options (e.g. ar[target.options.cache_prompt=false]) is a run it measures
    ar = next((rs for rs in ar_runs if not rs[0].get("overrides")), ar_runs[0] if ar_runs else [])
    if not ar:
        raise DataError("the records hold no finished 'ar' run: the speedup model needs it as the unit; "
                        "run the eval with --modes ar,lr,...")

    def per_token(rs: list[dict[str, Any]], key: str) -> float:
        tokens = sum(r["completion_tokens"] for r in rs)
        return sum(r[key] for r in rs) / tokens if tokens else 0.0

    u_tok = per_token(ar, "target_s")  # s per committed token at batch 1
    if u_tok <= 0:
        raise DataError("the 'ar' records have no target time or no completion tokens; re-run the eval")
    ar_tokens_per_step = sum(r["completion_tokens"] for r in ar) / max(sum(r["committed_steps"] for r in ar), 1)

    def unit(rs: list[dict[str, Any]]) -> float:  # s of one batch-1 target step at this run's step length
        steps = sum(r["committed_steps"] for r in rs)
        return u_tok * sum(r["completion_tokens"] for r in rs) / steps if steps else u_tok * ar_tokens_per_step

    # the shared inputs come from sequential chain rounds only (`unmodelled`); pipelined and tree
    # runs still get their own α, p and v in per_run
    # ... and from runs on the config's own draft: a run over another draft model has its own c
    spec_step = [r for r in ok if r.get("mode") in ("lr", "lr+sd") and not unmodelled(r) and not own_draft(r)]
    trials, wins = _depth_counts(spec_step)
    alpha = [w / t if t else 0.0 for w, t in zip(wins, trials)]

    lr_runs = {label: rs for label, rs in by_run.items() if rs[0].get("mode") == "lr" and not unmodelled(rs[0])}
    points: dict[float, list[float]] = {1.0: [1.0]}
    c_num = c_den = 0.0
    v_num = v_den = 0.0
    p_num = p_den = 0.0
    for rs in lr_runs.values():
        rounds = sum(r["rounds"] for r in rs)
        drafted = sum(r.get("drafted_steps", 0) for r in rs)
        gamma = max(_run_gamma(rs[0]), 1)
        u = unit(rs)
        rows = 1 + drafted / rounds if rounds else 1.0
        if rows > 1:
            points.setdefault(round(rows, 6), []).append(sum(r["target_s"] for r in rs) / rounds / u)
        if own_draft(rs[0]):
            continue  # its target rows still measure b(k); its draft is not the config's
        calls = _draft_calls(rs, drafted, rounds, gamma)
        c_num += sum(r["draft_s"] for r in rs) / u
        c_den += calls
        p_num += drafted
        p_den += calls
        v_num += sum(r["verify_s"] for r in rs) / u
        v_den += sum(r["rounds"] for r in rs if r.get("drafted_steps", 0))
    batch_cost = _fill_linear({k: sum(v) / len(v) for k, v in points.items()}, max_rows=9)

    per_run: dict[str, dict[str, Any]] = {}
    for label, rs in by_run.items():
        if rs[0].get("mode") not in ("lr", "lr+sd"):
            continue
        run_trials, run_wins = _depth_counts(rs)
        rounds = sum(r["rounds"] for r in rs)
        drafted = sum(r.get("drafted_steps", 0) for r in rs)
        calls = _draft_calls(rs, drafted, rounds, max(_run_gamma(rs[0]), 1))
        judged_rounds = sum(r["rounds"] for r in rs if r.get("drafted_steps", 0))
        per_run[label] = {
            "alpha": [w / t if t else 0.0 for w, t in zip(run_wins, run_trials)],
            "draft_complete": min(drafted / calls, 1.0) if calls else 1.0,
            "verify_cost": sum(r["verify_s"] for r in rs) / unit(rs) / judged_rounds if judged_rounds else 0.0,
        }
        if own_draft(rs[0]) and calls:
            per_run[label]["c"] = sum(r["draft_s"] for r in rs) / unit(rs) / calls

    f = 1.0
    sd = [r for r in ok if r.get("mode") == "sd"]
    plain_sd = [r for r in sd if not r.get("overrides")]
    sd = plain_sd or sd  # the factor of lr+sd's own engines: the sd run without engine overrides
    if sd and per_token(sd, "target_s") > 0:
        f = u_tok / per_token(sd, "target_s")
    fd = 1.0
    lrsd = [r for r in ok if r.get("mode") == "lr+sd" and not unmodelled(r)]
    lr_all = [r for rs in lr_runs.values() for r in rs]
    if lrsd and lr_all and c_den:
        d_lr = sum(r["draft_s"] for r in lr_all) / max(sum(r.get("drafted_steps", 0) for r in lr_all), 1)
        d_lrsd = sum(r["draft_s"] for r in lrsd) / max(sum(r.get("drafted_steps", 0) for r in lrsd), 1)
        fd = d_lr / d_lrsd if d_lrsd > 0 else 1.0

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
    return SpeedupInputs(
        alpha=alpha,
        depth_trials=trials,
        c=c_num / c_den if c_den else 0.0,
        batch_cost=batch_cost,
        verify_cost=v_num / v_den if v_den else 0.0,
        target_step_s=u_tok * ar_tokens_per_step,
        tokens_per_step=ar_tokens_per_step,
        token_speedup=f,
        draft_token_speedup=fd,
        draft_complete=min(p_num / p_den, 1.0) if p_den else 1.0,
        measured=measured,
        runs=runs,
        per_run=per_run,
    )


def _draft_calls(records: list[dict[str, Any]], drafted: int, rounds: int, gamma: int) -> float:
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


# ---------------------------------------------------------------------------------------------
# GPU projection from published figures


@dataclass(frozen=True)
class Figure:
    """One input of a projection: its value and where it comes from."""

    value: float
    source: str  # "published: ..." or "assumed: ..." with the reasoning


GPU_REFERENCE: dict[str, Figure] = {
    "alpha": Figure(0.45, "published: step acceptance about 0.4-0.5 with the LLM judge (Qwen2.5-7B-Instruct), "
                          "Qwen3-32B target, Qwen3-1.7B draft (Lookahead Reasoning paper, arXiv 2506.19830, "
                          "and the reference README); the middle of the range, at every depth"),
    "token_speedup": Figure(1.4, "published: token-level speculative decoding alone gives about 1.4x on GSM8K "
                                 "(paper abstract), used as f for the target's and the draft's steps"),
    "c": Figure(0.1, "assumed: 1.7B / 32B parameters = 0.053 (decoding is memory-bound), doubled for the "
                     "draft's fixed per-token costs (kernel launches, its own scheduler)"),
    "batch_cost_slope": Figure(0.03, "assumed: b(k) = 1 + 0.03 (k - 1); k <= 5 decode rows of a 32B model on "
                                     "H100s stay memory-bound, each extra row adds KV reads only"),
    "verify_cost": Figure(0.05, "assumed: the 7B judge prefills one pair (~200 tokens) and writes one token per "
                                "depth, batched: about 1/20 of a 32B target step of ~50 tokens"),
}
"""The reference GPU setting: published figures where there are some, assumptions otherwise."""

GPU_PUBLISHED_SPEEDUPS: dict[str, Figure] = {
    "lr (AIME24)": Figure(1.19, "published: reference README, Qwen3-32B / Qwen3-1.7B, AIME24"),
    "lr+sd (AIME24)": Figure(1.58, "published: reference README, Qwen3-32B / Qwen3-1.7B, AIME24"),
    "lr+sd (GSM8K)": Figure(2.1, "published: paper abstract, GSM8K"),
}
"""Speedups the reference reports, to set the projection against."""


def gpu_projection(
    figures: dict[str, Figure] | None = None, max_gamma: int = 4, alphas: Sequence[float] = (0.4, 0.45, 0.5)
) -> dict[str, Any]:
    """Predicted ``lr`` / ``lr+sd`` speedups at GPU scale, per γ and per step acceptance α.

    Uses `predicted_speedup` with ``figures`` (default `GPU_REFERENCE`; every complete draft
    step, p = 1). Returns a JSON-ready dict: the label, the inputs with their sources, a row per
    (α, γ), the best γ per α and mode, and the published speedups beside the projection.
    """
    figures = dict(GPU_REFERENCE if figures is None else figures)
    slope = figures["batch_cost_slope"].value
    c, v, f = figures["c"].value, figures["verify_cost"].value, figures["token_speedup"].value

    def batch_cost(k: int) -> float:
        return 1.0 + slope * (k - 1)

    rows, best = [], {}
    for alpha in alphas:
        for gamma in range(1, max_gamma + 1):
            depths = [alpha] * gamma
            rows.append({
                "alpha": alpha,
                "gamma": gamma,
                "lr": round(predicted_speedup(depths, gamma, c, batch_cost, v), 3),
                "lr+sd": round(predicted_speedup(depths, gamma, c, batch_cost, v, f, f), 3),
            })
        depths = [alpha] * max_gamma
        best[str(alpha)] = {
            "lr": best_gamma(depths, c, batch_cost, v, max_gamma),
            "lr+sd": best_gamma(depths, c, batch_cost, v, max_gamma, f, f),
        }
    return {
        "label": "PROJECTION from published figures and stated assumptions; not a measurement",
        "inputs": {name: dataclasses.asdict(figure) for name, figure in figures.items()},
        "sd": f,
        "rows": rows,
        "best_gamma": best,
        "published": {name: dataclasses.asdict(figure) for name, figure in GPU_PUBLISHED_SPEEDUPS.items()},
    }
