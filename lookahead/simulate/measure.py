"""``lookahead profile``: measure a cost profile from your own engines, for ``lookahead simulate``.

Everything goes through the engines the config builds (in-process ``hf``, or ``sglang`` /
``openai`` servers), with the calls the loop makes:

- **batch-cost curve** (``decode_s``): one engine call of n rows at two lengths (``--short`` and
  ``--long`` new tokens, no stop string), at every batch size the loop uses (1 .. the rows of a
  round, γ + 1, and the sizes of ``--batch-sizes``); seconds per decode step = the difference of
  the two calls over the difference of their longest rows (prefill and per-call costs cancel).
  The curve is made non-decreasing (an engine pads to the cheapest batch at or above a size);
- **prefill** (``prefill_s_per_token``): a long fresh prompt against a short one, one new token;
- **per-call cost** (``call_s``): the short call less its decode steps;
- **join cost** (``join_s``, an engine with a joining decode loop, the HF engine): what one call
  joining a running loop of n rows costs it (`lookahead.engines.costs.measure_join`);
- the same three for the **draft** (its ratio to the target's step is the draft cost ratio c);
- **judge** (``call_s``, ``pair_s``): the configured verifier on 1 and ``--pairs`` synthetic pairs;
- **workload** (from ``--limit`` problems of ``--task``): an ``ar`` run gives each problem's
  prompt tokens and step lengths (the simulation replays exactly these problems), an ``lr`` run
  at ``--gamma`` the conditional step acceptance per depth and the share of complete draft steps,
  and with ``--token-sd`` an ``sd`` run the target's token acceptance length and the cost of a
  verification pass (relative to a plain decode step, from the ``sd`` and ``ar`` runs' target
  seconds per token), and an ``lr+sd`` run the draft's own token acceptance length.

Every number is written with its source ("measured: ... on <machine>, <date>"). A measured batch
cost is a minimum over ``--repeats`` calls; on a shared machine, rerun when the machine is quiet.

Example:
    >>> profile = measure_profile(load_config("default"), task="gsm8k", limit=3)   # doctest: +SKIP
    >>> save_profile(profile, Path("my-cpu.yaml"))                                   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import platform
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from lookahead.config import LookaheadConfig, configured, uses_token_speculation
from lookahead.engines.costs import CallTimes, filler_words, measure_engine, measure_join
from lookahead.errors import DataError
from lookahead.simulate.profile import EngineCosts, JudgeCosts, Profile, Workload, check_profile
from lookahead.stats import TokenSpecStats
from lookahead.types import Result

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def measure_judge(verifier: Any, pairs: int = 8, repeats: int = 2) -> tuple[float, float]:
    """(seconds per call, seconds per pair) of ``verifier`` on synthetic pairs of different steps."""
    rng = random.Random(1)

    def timed(n: int) -> float:
        best = float("inf")
        for _ in range(repeats):
            drafts = [f"{filler_words(20, rng)}\n\n" for _ in range(n)]
            targets = [f"{filler_words(20, rng)}\n\n" for _ in range(n)]
            start = time.perf_counter()
            verifier.verify([filler_words(60, rng)] * n, drafts, targets)
            best = min(best, time.perf_counter() - start)
        return best

    one, many = timed(1), timed(pairs)
    pair = max((many - one) / max(pairs - 1, 1), 0.0)
    return round(max(one - pair, 0.0), 6), round(pair, 7)


# -- the workload: short runs of the loop on a task ---------------------------------------------
def _solve(reasoner: Any, questions: Sequence[str], mode: str, say: Say, **overrides: Any) -> list[Result]:
    results = []
    for i, question in enumerate(questions):
        say(f"{mode} run: problem {i + 1}/{len(questions)}")
        results.append(reasoner.generate(question, mode=mode, **overrides))
    return results


def depth_acceptance(results: Sequence[Result], gamma: int) -> tuple[list[float], list[int]]:
    """Conditional step acceptance per depth from the traces, and the trials per depth.

    A trial at depth i is a round that judged a draft step at depth i after accepting depths
    1 .. i-1 (the committed accepted steps, then the fallback step that carries the rejecting verdict).
    """
    trials, wins = [0] * gamma, [0] * gamma
    for result in results:
        rounds: dict[int, list[Any]] = {}
        for step in result.steps:
            rounds.setdefault(step.round, []).append(step)
        for steps in rounds.values():
            run = sum(1 for s in steps if s.source == "draft")
            judged = run + (1 if any(s.source == "target" and s.draft_text is not None for s in steps) else 0)
            for depth in range(min(judged, gamma)):
                trials[depth] += 1
                wins[depth] += depth < run
    alpha = [round(w / t, 4) if t else None for w, t in zip(wins, trials, strict=True)]
    known = [a for a in alpha if a is not None]
    fill = known[-1] if known else 0.0
    return [a if a is not None else fill for a in alpha], trials


def _step_lengths(result: Result) -> list[int]:
    return [max(s.tokens, 1) for s in result.steps]


def _incomplete_tokens(lr: Sequence[Result], draft: CallTimes, step_tokens: float) -> int:
    """Mean tokens of an incomplete draft step in the ``lr`` runs, from their draft seconds: all draft
    tokens (draft seconds less the per-call cost, over the draft's step) less the complete steps'
    (judged steps x mean step length), over the incomplete calls. 0 when there were none."""
    calls = sum(r.stats.get("draft_calls", 0) for r in lr)
    judged = sum(r.stats["drafted_steps"] for r in lr)
    seconds = sum(r.stats["draft_s"] for r in lr)
    if calls <= judged or draft.decode_s[1] <= 0:
        return 0
    tokens = max(seconds - calls * draft.call_s, 0.0) / draft.decode_s[1]
    return max(round((tokens - judged * step_tokens) / (calls - judged)), 1)


def measure_workload(reasoner: Any, questions: Sequence[str], gamma: int, token_sd: bool, say: Say = _quiet,
                     draft: CallTimes | None = None) -> tuple[Workload, dict[str, float]]:
    """The workload section from short ``ar`` / ``lr`` (/ ``sd``) runs, and the runs' target seconds per token.

    ``draft``: the draft's measured costs, to estimate how long its incomplete steps run."""
    ar = _solve(reasoner, questions, "ar", say)
    lr = _solve(reasoner, questions, "lr", say, gamma=gamma, adaptive_gamma=False, pipeline=False, width=1)
    alpha, trials = depth_acceptance(lr, gamma)
    drafted = sum(r.stats["drafted_steps"] for r in lr)
    calls = sum(r.stats.get("draft_calls", 0) for r in lr)
    per_token = {"ar": _target_s_per_token(ar)}
    load = Workload(
        prompt_tokens=round(sum(r.prompt_tokens for r in ar) / len(ar)),
        acceptance=alpha,
        problems=[_step_lengths(r) for r in ar],
        draft_complete=round(drafted / calls, 4) if calls else 1.0,
    )
    steps = [t for r in ar for t in _step_lengths(r)]
    if draft is not None and load.draft_complete < 1.0:
        load.draft_incomplete_tokens = _incomplete_tokens(lr, draft, sum(steps) / len(steps))
    when = f"measured: lookahead profile on {platform.node() or 'this machine'}, {dt.date.today().isoformat()}"
    load.sources = {
        "prompt_tokens": f"{when}: mean rendered prompt of the ar run",
        "problems": f"{when}: the target tokens of each committed step of the ar run, {len(ar)} problems",
        "acceptance": f"{when}: lr run at gamma={gamma}, conditional acceptance per depth over {trials} trials",
        "draft_complete": f"{when}: lr run, judged draft steps / draft calls ({drafted}/{calls})",
        "draft_incomplete_tokens": f"{when}: lr run, (draft seconds - calls x call_s) / draft step - judged steps x mean "
        "step tokens, over the incomplete calls",
    }
    if token_sd:
        sd = _solve(reasoner, questions, "sd", say)
        load.target_acceptance_length = _acceptance_length(sd, "spec_") or 1.0
        per_token["sd"] = _target_s_per_token(sd)
        load.sources["target_acceptance_length"] = f"{when}: sd run, (accepted + passes) / passes of the target's calls"
        # the draft speculates tokens in lr+sd only, and copies what it saw more than the target does
        both = _solve(reasoner, questions, "lr+sd", say, gamma=gamma, adaptive_gamma=False, pipeline=False, width=1)
        draft_length = _acceptance_length(both, "spec_draft_calls_")
        if draft_length:
            load.draft_acceptance_length = draft_length
            load.sources["draft_acceptance_length"] = (f"{when}: lr+sd run at gamma={gamma}, (accepted + passes) / passes "
                                                       "of the draft's calls")
        else:
            load.draft_acceptance_length = load.target_acceptance_length
            load.sources["draft_acceptance_length"] = "assumed: the target's (the lr+sd run's draft reported no passes)"
    return load, per_token


def _acceptance_length(results: Sequence[Result], counts: str) -> float:
    """Token acceptance length of one side's calls over ``results``, from their summed stats counts
    (``counts``: ``spec_`` the target's, ``spec_draft_calls_`` the draft's); 0.0 without passes."""
    summed = TokenSpecStats(
        spec_accepted_tokens=sum(r.stats.get(f"{counts}accepted_tokens", 0) for r in results),
        spec_verify_passes=sum(r.stats.get(f"{counts}verify_passes", 0) for r in results),
    )
    return round(summed.acceptance_length, 4)


def _target_s_per_token(results: Sequence[Result]) -> float:
    seconds = sum(r.stats["target_s"] for r in results)
    tokens = sum(r.completion_tokens for r in results)
    return seconds / tokens if tokens else 0.0


# -- the whole profile -----------------------------------------------------------------------------
def loop_sizes(config: LookaheadConfig, gamma: int, extra: Sequence[int] = ()) -> list[int]:
    """The batch sizes the loop's target calls use: 1 .. γ + 1 rows per problem, times the concurrency."""
    sizes = set(range(1, gamma + 2)) | {(gamma + 1) * config.concurrency} | set(extra)
    return sorted(n for n in sizes if 1 <= n <= max(config.target.max_batch_rows, gamma + 1))


def measure_profile(config: LookaheadConfig, questions: Sequence[str], *, task: str, gamma: int = 2,
                    sizes: Sequence[int] = (), token_sd: bool = False, repeats: int = 2, pairs: int = 8,
                    say: Say = _quiet, engines: dict[str, Any] | None = None) -> Profile:
    """A checked `Profile` of the config's engines and verifier on ``questions`` (module docstring).

    ``engines``: ``target`` / ``draft`` engines to measure instead of the config's (library use, tests).
    """
    from lookahead.loop import LookaheadReasoner

    if not questions:
        raise DataError("no problems to measure the workload on; give --limit >= 1")
    config = configured(config, {"mode": "lr", "gamma": max(gamma, 1)})
    when = f"measured: lookahead profile on {platform.node() or 'this machine'} ({platform.machine()}), {dt.date.today().isoformat()}"
    with LookaheadReasoner(config, **(engines or {})) as reasoner:
        say("measuring the draft")
        draft = measure_engine(reasoner.draft, [1, 2], repeats=repeats, seed=1, say=say)
        draft.join_s = measure_join(reasoner.draft, [1, 4, 8], say=say)
        say("measuring the verifier")
        judge_call, judge_pair = measure_judge(reasoner.verifier, pairs, repeats)
        load, per_token = measure_workload(reasoner, questions, gamma, token_sd, say, draft)
        # the target's decode step at the workload's mean context: the prompt plus half a solution
        context = load.prompt_tokens + round(sum(map(sum, load.problems)) / max(len(load.problems), 1) / 2)
        say(f"measuring the target (at a {context}-word context)")
        target = measure_engine(reasoner.target, loop_sizes(config, gamma, sizes), repeats=repeats, say=say,
                                context_words=context)
        target.join_s = measure_join(reasoner.target, [1, *(n for n in target.decode_s if n >= 4)], say=say,
                                     context_words=context)
        spec_cost = 1.0
        if token_sd and per_token.get("sd") and per_token["ar"]:
            spec_cost = max(load.target_acceptance_length * per_token["sd"] / per_token["ar"], 1.0)
        names = (reasoner.target.name, reasoner.draft.name)
    measured = [
        _engine_costs(times, cfg, name, when, repeats, spec_cost, token_sd)
        for times, cfg, name in ((target, config.target, names[0]), (draft, config.draft, names[1]))
    ]
    measured[0].sources["decode_s"] += f", at a {context}-word context (the workload's prompt plus half its mean solution)"
    device = measured[0].device
    judge = JudgeCosts(model=f"verifier {config.verifier.name}", device=device, call_s=judge_call, pair_s=judge_pair,
                       max_batch_rows=config.target.max_batch_rows)
    judge.sources = {"call_s": f"{when}: {config.verifier.name} on 1 synthetic pair", "pair_s": f"{when}: on {pairs} pairs vs 1"}
    profile = Profile(
        name=f"measured-{task}",
        description=f"Measured by lookahead profile: target {names[0]}, draft {names[1]}, verifier {config.verifier.name}.",
        target=measured[0],
        draft=measured[1],
        judge=judge,
        workloads={task: load},
        config=_simulated_config(config, gamma),
        runs=["ar", "sd", f"lr[gamma={gamma}]", f"lr+sd[gamma={gamma}]", f"lr[adaptive_gamma=true,gamma={gamma}]"],
        sources={"config": "the measured config's loop settings"},
    )
    return check_profile(profile)


def _engine_costs(times: CallTimes, cfg: Any, name: str, when: str, repeats: int, spec_cost: float,
                  token_sd: bool) -> EngineCosts:
    """One engine's section: a server is a ``continuous`` device of its own (its URL), an in-process
    engine shares the ``cpu`` (or ``gpu0``) device of the process: ``joined`` for the HF engine (later
    calls join its running decode loop), ``merged`` by the reasoner's batcher for the others."""
    server = cfg.backend in ("sglang", "openai")
    local = "cpu" if cfg.device == "cpu" else "gpu0"
    costs = EngineCosts(
        model=f"{name} ({cfg.backend}, {cfg.dtype}, {cfg.device})",
        device=(cfg.url or cfg.backend) if server else local,
        batching="continuous" if server else ("joined" if cfg.backend == "hf" else "merged"),
        decode_s=times.decode_s,
        prefill_s_per_token=times.prefill_s_per_token,
        call_s=times.call_s,
        max_batch_rows=cfg.max_batch_rows,
        spec_step_cost=round(spec_cost, 4),
        spec_num_tokens=cfg.speculation.num_tokens,
        spec_pass="compute-bound" if not server and cfg.device == "cpu" else "memory-bound",
        join_s=dict(times.join_s),
    )
    costs.sources = {
        "decode_s": f"{when}: one call of n rows, {repeats} tries, (long - short call) / (long - short tokens), made non-decreasing",
        "prefill_s_per_token": f"{when}: a 400-word fresh prompt against a 16-word one, one new token",
        "call_s": f"{when}: the short 1-row call (its prompt cached) less its decode steps",
        "spec_step_cost": (f"{when}: sd run's target s/token x token acceptance length / ar run's s/token"
                           if token_sd else "not measured (give --token-sd): 1.0"),
        **({"join_s": f"{when}: in a loop of n rows, the pass during which one cached row joined less the loop's median "
                      "pass, median of 3 loops"} if times.join_s else {}),
        "spec_pass": (SPEC_PASS_CPU if costs.spec_pass == "compute-bound"
                      else "assumed: a server or a GPU reads the weights and each row's KV cache once per pass"),
    }
    return costs


SPEC_PASS_CPU = (
    "assumed for an in-process engine on a CPU, checked on this project's 2-core VM with SmolLM2-135M at K = 8 "
    "(python scripts/trace_passes.py, docs/benchmarks/simulate-cpu/passes-k8.json): a verification pass over "
    "n rows of 1 + k tokens costs about the decode step of n (1 + k) rows"
)


def _simulated_config(config: LookaheadConfig, gamma: int) -> dict[str, Any]:
    """The measured config's loop settings that a simulation keeps (the engines are modelled)."""
    keys = ("max_step_tokens", "stop_at_final_answer", "adaptive_prior_acceptance", "adaptive_probe_budget")
    out = {k: getattr(config, k) for k in keys}
    out["gamma"] = gamma
    return out


def uses_sd(modes: Sequence[str]) -> bool:
    """Does any of ``modes`` speculate tokens (then the profile needs --token-sd)?"""
    return any(uses_token_speculation(m) for m in modes)
