"""``lookahead simulate``: the real reasoner and scheduler over modelled engines, per run and load.

For every run (a mode with config overrides, written as in ``lookahead eval --modes``: ``ar``,
``sd``, ``lr[gamma=2]``, ``lr[adaptive_gamma=true,gamma=4]``, ...) and every load K (problems in
flight), `simulate_run` builds fresh modelled engines on a fresh virtual clock
(`lookahead.simulate.modelled`), hands them to a `LookaheadReasoner`, and solves the workload's
problems with `lookahead.scheduler.run_many` at concurrency K. Everything but the engines is the
code a deployment runs: the rounds, the adaptive policy (it sees modelled seconds), the verifier
plumbing, the scheduler's threads.

Figures per run and K (all virtual seconds unless named real):

- ``throughput_problems_s`` / ``throughput_tokens_s``: problems / completion tokens per virtual
  second, from the first problem's start to the last one's end (the makespan);
- ``latency_p50_s`` / ``latency_p99_s``: per-problem latency (start on a worker to result);
- ``speedup``: this run's token throughput / ``ar``'s at the same K (the same problems, so also
  the ratio of makespans);
- ``orchestration_s_per_round``: real CPU seconds of the loop's Python (every thread, between
  modelled calls; `World.orchestration_s`) per round, and ``orchestration_share``: those seconds
  over the virtual makespan -- at a real deployment's time scale the share of wall time the Python
  side is busy (its threads share one interpreter lock, so the sum is what counts);
- ``gamma_rounds``: rounds per lookahead depth (adaptive runs: the policy's choices);
- per device lane (target, draft, judge): busy share of the makespan and mean rows per batch.

`simulate` runs the grid and adds, per K, the reference implementation's configuration against
the best of ours (``reference_vs_ours``: the profile's ``reference_run`` and ``our_runs``) and,
per run, the smallest K at which it no longer beats ``ar`` (``stops_paying_at_k``). Every figure
is labelled as a simulation, with the profile's inputs and their sources beside it.

Example:
    >>> report = simulate(load_profile("paper-qwen3-32b-h100"), runs="ar,lr", ks=[1, 4])  # doctest: +SKIP
    >>> write_report(report, Path("docs/benchmarks/simulate-paper.json"))                 # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lookahead.config import LookaheadConfig, config_from_dict, configured
from lookahead.errors import ConfigError
from lookahead.eval.harness import BASELINE, RunSpec, parse_run_specs
from lookahead.loop import LookaheadReasoner
from lookahead.rounds.state import ProblemState
from lookahead.scheduler import Job, run_many
from lookahead.simulate.modelled import DELIMITER, ModelledEngine, ModelledJudge, Script, World, percentile
from lookahead.simulate.profile import Profile, Workload
from lookahead.types import Result

LABEL = "SIMULATION: the real loop and scheduler over modelled engines (lookahead simulate); not a measurement"
DEFAULT_KS = (1, 4, 16, 64)
DEFAULT_RUNS = "ar,sd,lr,lr+sd,lr[adaptive_gamma=true]"
FIXED_KEYS = ("verifier", "step_delimiter", "concurrency", "mode")  # a run cannot override these here
DEFINITIONS = {
    "throughput_tokens_s": "completion tokens of all problems / virtual makespan (first start to last end)",
    "speedup": "throughput_tokens_s / the ar run's at the same K (same problems and texts)",
    "latency_p50_s": "median virtual seconds from a problem's start on a worker to its result",
    "orchestration_s_per_round": "real CPU seconds of the loop's Python between modelled calls (all threads) / rounds",
    "orchestration_share": "real orchestration CPU seconds / virtual makespan: the share of a deployment's wall time "
    "the Python side is busy (its threads share the interpreter lock)",
    "lanes.busy_share": "virtual seconds the device spent on this engine's batches / makespan",
    "lanes.mean_rows": "rows per batch of this engine: per merged call, or per decode step on a continuous device "
    "(prefill batches not counted)",
    "stops_paying_at_k": "smallest simulated K whose speedup is <= 1 (null: it pays at every K simulated)",
    "reference_vs_ours": "best throughput among our_runs / the reference_run's, at the same K",
}


class SimulatedReasoner(LookaheadReasoner):
    """A `LookaheadReasoner` that tells the virtual world when a problem starts and ends, so the
    Python time between two problems on a worker thread counts as orchestration too."""

    def __init__(self, config: LookaheadConfig, world: World, **engines: Any) -> None:
        super().__init__(config, **engines)
        self.world = world

    def start(self, prompt: Any, mode: str | None = None, config: LookaheadConfig | None = None) -> ProblemState:
        self.world.touch()
        return super().start(prompt, mode, config)

    def result(self, state: ProblemState, wall_time_s: float) -> Result:
        out = super().result(state, wall_time_s)
        self.world.touch()
        return out


def base_config(profile: Profile, script: Script, overrides: Sequence[str] = ()) -> LookaheadConfig:
    """The config of every simulated run: the profile's ``config`` over the dataclass defaults, a
    step cap above the longest scripted step and a budget above the longest problem (unless set)."""
    longest_step = max(len(s) for steps in script.steps for s in steps)
    longest_problem = max(sum(len(s) for s in steps) for steps in script.steps)
    data: dict[str, Any] = {
        "mode": "lr",
        "target": {"backend": "fake"},
        "draft": {"backend": "fake"},
        "max_step_tokens": longest_step + 1,
        "max_total_tokens": longest_problem + 1,
        "prompt_template": "{question}",
        **profile.config,
    }
    try:
        cfg = config_from_dict(data)
        cfg = configured(cfg, dict(_pairs(overrides)))
    except ConfigError as exc:
        raise ConfigError(f"profile {profile.name!r} config: {exc}") from None
    if cfg.step_delimiter != DELIMITER:
        raise ConfigError(f"config.step_delimiter must be {DELIMITER!r} in a simulation (the scripted steps end with it)")
    return cfg


def _pairs(items: Sequence[str]) -> list[tuple[str, Any]]:
    from lookahead.config import parse_override

    return [parse_override(item) for item in items]


def parse_runs(text: str, config: LookaheadConfig) -> list[RunSpec]:
    """Run specs as in ``lookahead eval --modes``; peers and overrides of the engines or the
    verifier (modelled by the profile) are refused with the fix."""
    try:
        runs = parse_run_specs(text, config)
    except ConfigError as exc:  # the same syntax as eval's --modes, under simulate's option name
        raise ConfigError(str(exc).replace("--modes", "--runs")) from None
    for run in runs:
        if run.peer is not None:
            raise ConfigError(f"--runs: {run.label!r}: peers are not simulated; use ar, sd, lr or lr+sd runs")
        for key in run.overrides:
            root = key.split(".")[0]
            if root in ("target", "draft") or root in FIXED_KEYS:
                raise ConfigError(
                    f"--runs: {run.label!r}: {key!r} cannot change per simulated run (the engines and the judge come from "
                    "the profile); edit the profile instead"
                )
    return runs


def simulate_run(profile: Profile, workload: Workload, run: RunSpec, k: int, problems: int,
                 config: LookaheadConfig, seed: int = 0, batcher: bool = False) -> dict[str, Any]:
    """Solve ``problems`` scripted problems with ``run`` at concurrency ``k`` on fresh modelled engines.

    ``batcher``: engines on ``merged`` devices (in-process engines) go behind the reasoner's real
    batcher (`lookahead.engines.batching`), which merges their concurrent calls as in a deployment,
    instead of the world modelling its merges (first come first served, the calls of one virtual
    instant merged). Its gathering window runs on real time: pipelined runs through it vary by about
    1 % from one simulation to the next; everything else is the same on every run.
    """
    world = World.from_profile(profile)
    script = Script(workload, problems, seed)
    target = ModelledEngine("target", profile.target, world, script, through_batcher=batcher,
                            target_acceptance_length=workload.target_acceptance_length)
    draft = ModelledEngine("draft", profile.draft, world, script, through_batcher=batcher,
                           draft_acceptance_length=workload.draft_acceptance_length)
    judge = ModelledJudge(profile.judge, world)
    cfg = configured(config, {**run.overrides, "mode": run.mode, "concurrency": k})
    jobs = [Job(f"<problem {j}>", run.mode) for j in range(problems)]
    started = time.monotonic()
    with SimulatedReasoner(cfg, world, target=target, draft=draft, verifier=judge) as reasoner, world.running():
        outcomes = run_many(reasoner, jobs, concurrency=k)
    real_s = time.monotonic() - started
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"simulated run {run.label} at K={k}: problem {failed[0].index} failed: {failed[0].error!r}")
    results = [o.result for o in outcomes if o.result is not None]
    return _figures(run, k, world, results, [o.latency_s for o in outcomes], real_s, (target, draft, judge))


def _figures(run: RunSpec, k: int, world: World, results: list[Result], latencies: list[float], real_s: float,
             parts: Sequence[Any]) -> dict[str, Any]:
    makespan = world.now
    tokens = sum(r.completion_tokens for r in results)
    rounds = sum(r.rounds for r in results)
    gammas: collections.Counter[int] = collections.Counter()
    drafted: list[int] = []
    accepted: list[int] = []
    for r in results:
        gammas.update({int(g): n for g, n in (r.stats.get("gamma_rounds") or {}).items()})
        for i, a in enumerate(r.stats.get("acceptance_by_depth") or []):
            while len(drafted) <= i:
                drafted.append(0)
                accepted.append(0)
            # acceptance_by_depth = accepted[i] / drafted[i] per problem: weight by the problem's rounds
            drafted[i] += r.rounds
            accepted[i] += round(a * r.rounds)
    lanes = {
        p.lane.name: {
            "busy_share": round(p.lane.busy_s / makespan, 4) if makespan else None,
            "mean_rows": round(p.lane.batch_rows / p.lane.batches, 2) if p.lane.batches else None,
        }
        for p in parts
    }
    return {
        "run": run.label,
        "mode": run.mode,
        "k": k,
        "problems": len(results),
        "makespan_s": round(makespan, 4),
        "throughput_problems_s": round(len(results) / makespan, 6) if makespan else None,
        "throughput_tokens_s": round(tokens / makespan, 3) if makespan else None,
        "latency_mean_s": round(statistics.fmean(latencies), 4) if latencies else None,
        "latency_p50_s": round(percentile(latencies, 50), 4),
        "latency_p99_s": round(percentile(latencies, 99), 4),
        "completion_tokens": tokens,
        "rounds": rounds,
        "steps_per_round": round(sum(r.stats.get("committed_steps", 0) for r in results) / rounds, 4) if rounds else None,
        "gamma_rounds": {str(g): n for g, n in sorted(gammas.items())},
        "orchestration_s": round(world.orchestration_s, 4),
        "orchestration_s_per_round": round(world.orchestration_s / rounds, 7) if rounds else None,
        "orchestration_share": round(world.orchestration_s / makespan, 6) if makespan else None,
        "lanes": lanes,
        "clock_events": world.events,
        "clock_forced": world.forced,
        "real_s": round(real_s, 3),
    }


def simulate(profile: Profile, runs: str | None = None, ks: Sequence[int] = DEFAULT_KS, problems: int | None = None,
             workload: str | None = None, seed: int = 0, overrides: Sequence[str] = (), batcher: bool = True,
             acceptance: Sequence[float] | None = None,
             on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every run at every K (``ar`` first at each K: the speedups' baseline); the report (module docstring).

    ``problems``: problems per (run, K); default max(8, 2K), so the K workers stay busy past the start.
    ``batcher``: engines on ``merged`` devices (in-process) go behind the reasoner's real batcher
    (`simulate_run`). ``acceptance``: what-if step acceptance per depth instead of the workload's
    (reported as the source of that input). ``on_run`` is called with each run's figures as it finishes.
    """
    name, load = profile.workload(workload)
    if acceptance:
        for i, a in enumerate(acceptance):
            if not 0.0 <= a <= 1.0:
                raise ConfigError(f"--acceptance[{i}] must be a probability in [0, 1] (got {a})")
        load = dataclasses.replace(load, acceptance=list(acceptance),
                                   sources={**load.sources, "acceptance": "what-if: given with --acceptance, not the profile's"})
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"--k must list loads >= 1, e.g. 1,4,16,64 (got {list(ks)})")
    if problems is not None and problems < 1:
        raise ConfigError(f"--problems must be >= 1 (got {problems})")
    probe = Script(load, max(problems or 1, 8), seed)
    config = base_config(profile, probe, overrides)
    specs = parse_runs(runs or ",".join(profile.runs) or DEFAULT_RUNS, config)
    extra = [s for s in ([profile.reference_run] if profile.reference_run else []) + profile.our_runs
             if s not in {r.label for r in specs}]
    if extra and runs is None:
        specs += parse_runs(",".join(extra), config)
    if not any(r.mode == "ar" and not r.overrides for r in specs):
        specs = parse_runs("ar", config) + specs  # the baseline of every speedup
    rows = []
    for k in ks:
        n = problems or max(8, 2 * k)
        script = Script(load, n, seed)
        cfg = base_config(profile, script, overrides)
        for run in sorted(specs, key=lambda r: r.mode != "ar" or bool(r.overrides)):
            figures = simulate_run(profile, load, run, k, n, cfg, seed, batcher)
            rows.append(figures)
            if on_run is not None:
                on_run(figures)
    _speedups(rows)
    return {
        "label": LABEL,
        "profile": profile.name,
        "description": profile.description,
        "workload": name,
        "seed": seed,
        "ks": list(ks),
        "overrides": list(overrides),
        "batcher": batcher,
        "inputs": _inputs(profile, name, load),
        "definitions": dict(DEFINITIONS),
        "runs": rows,
        "stops_paying_at_k": _stops_paying(rows),
        "reference_vs_ours": _reference_vs_ours(rows, profile),
        "published": profile.published,
    }


def _inputs(profile: Profile, name: str, load: Workload) -> list[dict[str, Any]]:
    """The profile's inputs with their sources, the workload as simulated (a what-if acceptance included)."""
    return [
        {**i, "value": load.acceptance, "source": load.sources.get("acceptance", i["source"])}
        if i["input"] == f"workloads.{name}.acceptance" else i
        for i in profile.inputs(name)
    ]


def _speedups(rows: list[dict[str, Any]]) -> None:
    base = {r["k"]: r["throughput_tokens_s"] for r in rows if r["run"] == "ar"}
    for r in rows:
        ar = base.get(r["k"])
        r["speedup"] = round(r["throughput_tokens_s"] / ar, 4) if ar and r["throughput_tokens_s"] else None


def _stops_paying(rows: list[dict[str, Any]]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for r in sorted(rows, key=lambda r: r["k"]):
        if r["run"] == "ar":
            continue
        out.setdefault(r["run"], None)
        if out[r["run"]] is None and r["speedup"] is not None and r["speedup"] <= 1.0:
            out[r["run"]] = r["k"]
    return out


def _reference_vs_ours(rows: list[dict[str, Any]], profile: Profile) -> list[dict[str, Any]]:
    if not profile.reference_run or not profile.our_runs:
        return []
    out = []
    for k in sorted({r["k"] for r in rows}):
        at_k = {r["run"]: r for r in rows if r["k"] == k}
        reference = at_k.get(profile.reference_run)
        ours = [at_k[s] for s in profile.our_runs if s in at_k]
        if reference is None or not ours:
            continue
        best = max(ours, key=lambda r: r["throughput_tokens_s"] or 0.0)
        out.append({
            "k": k,
            "reference": reference["run"],
            "reference_tokens_s": reference["throughput_tokens_s"],
            "best": best["run"],
            "best_tokens_s": best["throughput_tokens_s"],
            "ratio": round(best["throughput_tokens_s"] / reference["throughput_tokens_s"], 4)
            if reference["throughput_tokens_s"] else None,
        })
    return out


def pool_benches(benches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several evals (or benches) of the same runs at one K as one: per run label, the mean of their
    ``mean_wall_time_s``, the pooled speedup (the mean ``ar`` seconds over the run's mean, as the
    eval's summed wall times give it, the same problems in each), and the spread of both across them
    (``mean_wall_time_s_range``, ``speedup_range``, ``evals``). Runs missing from one are left out."""
    first = benches[0]
    labels = [r["label"] for r in first.get("runs", []) if r.get("mean_wall_time_s")]
    tables = [{r["label"]: r for r in b.get("runs", [])} for b in benches]
    seconds = {label: [t[label]["mean_wall_time_s"] for t in tables if t.get(label, {}).get("mean_wall_time_s")] for label in labels}
    seconds = {label: s for label, s in seconds.items() if len(s) == len(benches)}
    runs = []
    ar = seconds.get(BASELINE)
    for label, values in seconds.items():
        speedups = [t[label].get("speedup") for t in tables]
        runs.append({
            "label": label,
            "mean_wall_time_s": sum(values) / len(values),
            "speedup": (sum(ar) / sum(values)) if ar else None,
            "mean_wall_time_s_range": [min(values), max(values)],
            "speedup_range": [min(speedups), max(speedups)] if all(x is not None for x in speedups) else None,
            "evals": len(values),
        })
    return {"runs": runs, "concurrency": first.get("concurrency"), "machine": first.get("machine"),
            "command": " ; ".join(str(b.get("command")) for b in benches)}


def compare_measured(report: dict[str, Any], bench: dict[str, Any], k: int | None = None) -> list[dict[str, Any]]:
    """The simulated runs at ``k`` next to real runs of the same runs and problems: a ``lookahead bench``
    report or a ``lookahead eval`` summary.json (both list ``runs`` with ``label``, ``mean_wall_time_s``, ``speedup``).

    ``k`` defaults to the real runs' ``concurrency`` (an eval summary records it), else 1. Per run
    (matched by label): mean seconds per problem (``mean_wall_time_s`` against the simulated mean
    latency) and the speedup over ``ar``, each with error = simulated / measured - 1. Both speedups
    are the same quantity: the eval's (``ar``'s summed wall time over the run's, on the problems
    both finished) against the simulated mean latency of ``ar`` over the run's (at K = 1 that is
    the tokens/s ratio; under load it is the latency ratio, which is what an eval measures).
    The rows are added to ``report["measured"]`` (one call per compared file, each at its K).
    """
    k = int(bench.get("concurrency") or 1) if k is None else k
    measured = {r["label"]: r for r in bench.get("runs", [])}
    at_k = [r for r in report["runs"] if r["k"] == k]
    ar = next((r["latency_mean_s"] for r in at_k if r["run"] == "ar"), None)
    rows = []
    for r in at_k:
        real = measured.get(r["run"])
        if real is None or not real.get("mean_wall_time_s"):
            continue
        speedup = round(ar / r["latency_mean_s"], 4) if ar and r["latency_mean_s"] else None
        rows.append({
            "run": r["run"],
            "k": k,
            "simulated_s": r["latency_mean_s"],
            "measured_s": real["mean_wall_time_s"],
            "error": round(r["latency_mean_s"] / real["mean_wall_time_s"] - 1, 4),
            "simulated_speedup": speedup,
            "measured_speedup": real.get("speedup"),
            "speedup_error": round(speedup / real["speedup"] - 1, 4) if real.get("speedup") and speedup else None,
            **{key: real[key] for key in ("mean_wall_time_s_range", "speedup_range", "evals") if key in real},
        })
    previous = report.get("measured") or {}
    every = [*previous.get("runs", []), *rows]
    benches = [*previous.get("benches", []), {"k": k, "command": bench.get("command"), "machine": bench.get("machine")}]
    report["measured"] = {
        "benches": benches, "runs": every,
        "max_abs_error": max((abs(x["error"]) for x in every), default=None),
        "max_abs_speedup_error": max((abs(x["speedup_error"]) for x in every if x["speedup_error"] is not None), default=None),
    }
    return rows


# -- output ------------------------------------------------------------------------------------
def write_report(report: dict[str, Any], path: Path, command: str = "") -> Path:
    """``path`` (JSON, the command on top) and its figure beside it (``.png``); returns the figure's path."""
    if command:
        report = {"command": command, **report}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    png = path.with_suffix(".png")
    plot_report(report, png)
    return png


def plot_report(report: dict[str, Any], png: Path) -> None:
    """Throughput and speedup vs K, one line per run, titled as a simulation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    by_run: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in report["runs"]:
        by_run[r["run"]].append(r)
    for run, rows in by_run.items():
        rows.sort(key=lambda r: r["k"])
        ks = [r["k"] for r in rows]
        left.plot(ks, [r["throughput_tokens_s"] for r in rows], marker="o", label=run)
        right.plot(ks, [r["speedup"] for r in rows], marker="o", label=run)
    for ax, title in ((left, "throughput (tokens/s, simulated)"), (right, "speedup vs ar at the same K (simulated)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K: problems in flight")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    right.axhline(1.0, color="grey", lw=0.8)
    left.legend(fontsize=8)
    fig.suptitle(f"SIMULATION - profile {report['profile']}, workload {report['workload']} (modelled engines, not measured)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
