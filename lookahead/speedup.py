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

**Under load** (SmartSpec's goodput argument, arXiv 2406.14066): when the round's target call
shares its batch with ``n`` rows of other problems (continuous batching: each of them commits
one step per call), a round of depth γ makes the whole batch commit ``n + E[steps | γ]`` steps
for ``γ·c + b(n+γ+1) + v``, and an ``ar`` round ``n + 1`` for ``b(n+1)``. The speedup at load n
is the ratio of the two (`predicted_speedup_at_load`); n = 0 is S(γ). On a GPU under capacity
b is flat and drafting still pays; once extra rows cost what they carry (a full batch, a CPU)
the extra γ rows earn less than they cost and the best γ falls to 0.

The best γ maximises S(γ) over 0..γ_max. Speculating pays only if the gain of depth 1,
α_1, exceeds its extra cost c + b(2) - 1 + v(1): with α ≈ 0 the best γ is 0 whatever the costs.

`lookahead.eval.fit.from_eval_records` estimates every input from the eval harness's JSON
records (one line per problem and run), so a benchmark can print predicted next to measured
speedup; this module is the model alone and reads no records. Pipelined runs (``pipeline``)
overlap draft, target and verifier, which this model of a sequential round does not describe.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


def predicted_speedup_at_load(alpha: Sequence[float], gamma: int, c: float, batch_cost: BatchCost,
                              verify_cost: VerifyCost, load: int = 0, token_speedup: float = 1.0,
                              draft_token_speedup: float | None = None, complete: float = 1.0) -> float:
    """Steps per unit of cost of a batch shared with ``load`` rows of other problems, over an ``ar``
    round in the same batch (module docstring, "Under load"); ``load=0`` is `predicted_speedup`."""
    if load < 0:
        raise ValueError(f"load must be >= 0 (got {load})")
    if load == 0:
        return predicted_speedup(alpha, gamma, c, batch_cost, verify_cost, token_speedup, draft_token_speedup, complete)

    def shifted(k: int) -> float:  # the call's cost with the load's rows in it
        return batch_cost_at(batch_cost, load + k)

    cost = round_cost(gamma, c, shifted, verify_cost, token_speedup, draft_token_speedup, complete)
    ar_cost = round_cost(0, c, shifted, verify_cost, token_speedup, draft_token_speedup, complete)
    if cost <= 0:
        return math.inf
    return ((load + expected_steps(alpha, gamma, complete)) / cost) / ((load + 1) / ar_cost)


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
