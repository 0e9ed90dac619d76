"""The benchmark: every way to decode, side by side, with the speedup model's prediction.

Why: a speedup is only worth reporting next to the alternatives a user would actually pick, on
the same problems, budget, sampling and machine, in the same invocation. ``lookahead bench``
(`lookahead.cli.bench`) runs the eval harness (`lookahead.eval.runner`, resumable like
``lookahead eval``) over ``ar``, the peers a CPU user would reach for (transformers assisted
generation with the draft model, transformers prompt lookup, llama.cpp and its prompt-lookup
decoding), our ``sd``, ``lr`` at fixed lookahead depth γ = 1, 2, 4, ``lr`` pipelined (γ = 2)
and with adaptive γ, and ``lr+sd``; this module turns the records into one report with, per run:

- speedup vs ``ar`` (summed wall time; and the median per-problem ratio), tokens/s, accuracy,
  answer agreement with ``ar`` (`lookahead.eval.report` defines each);
- step acceptance per lookahead depth, token acceptance length (committed tokens per
  verification pass of token-level speculation, `lookahead.stats`);
- the time split: draft calls, target calls, the verifier, and the rest (orchestration);
- the speedup model's prediction (`lookahead.speedup`, inputs fitted on this run's own records
  by `speedup_model`) next to the measured speedup, with the relative error;

and, once, the target's batch-cost curve: seconds of one decode step at batch 1..8 relative to
batch 1 (`BatchCostCurve`; null with a reason for a target that is not an in-process
transformers model), plus the project's performance targets checked against the runs
(`target_checks`).

Layout of ``--out PATH`` (default ``docs/benchmarks/bench-cpu``): the folder ``PATH/`` is a
``lookahead eval`` output folder (``records.jsonl``, ``run.json``, ``summary.json``,
``summary.md``, ``batch_cost.json``); the report is ``PATH.json`` and its figure ``PATH.png``
beside the folder (`report_paths`).

Example:
    >>> report = build_report(evaluation, summary, records, curve.report(), [], png)  # doctest: +SKIP
    >>> write_figure(report, png)                                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookahead.config import configured, redacted
from lookahead.errors import ConfigError, DataError
from lookahead.eval.report import plot_acceptance_by_depth, plot_time_split
from lookahead.speedup import gpu_projection

if TYPE_CHECKING:
    from lookahead.config import LookaheadConfig
    from lookahead.eval.fit import SpeedupInputs
    from lookahead.eval.runner import Evaluation
    from lookahead.loop import LookaheadReasoner

DEFAULT_RUNS = (
    "ar,peer:hf-assisted,peer:hf-prompt-lookup,sd,lr[gamma=1,adaptive_gamma=false],lr[gamma=2,adaptive_gamma=false],"
    "lr[gamma=4,adaptive_gamma=false],lr[gamma=2,pipeline=true],lr[adaptive_gamma=true,gamma=4],lr+sd,"
    "peer:llamacpp,peer:llamacpp-lookup"
)
"""The default runs: ``ar``, the peers, ``sd``, ``lr`` at γ = 1, 2, 4, pipelined and adaptive, ``lr+sd``."""
DEFAULT_OUT = Path("docs/benchmarks/bench-cpu")
SERVER_BACKENDS = ("openai", "sglang")  # a target there is not a transformers model the hf peers can run
OWN_MODES = ("ar", "sd", "lr", "lr+sd")  # the modes the speedup model describes (peers are not our loop)
PREDICTED_MODES = ("lr", "lr+sd")  # the modes it predicts (ar is its unit, sd's factor is measured)
MAX_BATCH = 8  # the batch-cost curve covers batch sizes 1..MAX_BATCH (rows)
BATCH_COST_FILE = "batch_cost.json"  # in the records folder: the curve, measured once per folder and machine
TRANSFORMERS_PEERS = ("peer:hf-ar", "peer:hf-assisted", "peer:hf-prompt-lookup")  # the "best transformers peer"

Announce = Callable[[str], AbstractContextManager[Any]]
"""Shows a message while a block runs (the command line passes a spinner; default: nothing)."""


def _silent(message: str) -> AbstractContextManager[Any]:
    return nullcontext()


# -- runs ---------------------------------------------------------------------------------------
def default_runs(config: LookaheadConfig | None = None) -> tuple[str, dict[str, str]]:
    """`DEFAULT_RUNS` without the peers that cannot run here, and why each was left out: the
    llama.cpp peers when ``llama_cpp`` cannot be imported, the transformers peers when the
    ``config``'s target is served by another engine (``target.backend`` in `SERVER_BACKENDS`).
    A peer asked for by name in ``--runs`` keeps the harness's ConfigError."""
    from lookahead.eval.harness import split_top_level
    from lookahead.eval.peers import LLAMACPP_HINT, PEERS, import_llama_cpp, peer_name

    try:
        import_llama_cpp()
        llama_cpp_missing = None
    except ConfigError:
        llama_cpp_missing = f"llama-cpp-python is not installed ({LLAMACPP_HINT} to include it)"
    backend = config.target.backend if config is not None else "hf"
    left_out: dict[str, str] = {}
    for spec in split_top_level(DEFAULT_RUNS, "--runs"):
        name = peer_name(spec.split("[")[0])
        if name not in PEERS:
            continue
        if PEERS[name].llama_cpp and llama_cpp_missing:
            left_out[spec] = llama_cpp_missing
        elif not PEERS[name].llama_cpp and backend in SERVER_BACKENDS:
            left_out[spec] = f"it runs transformers in this process and target.backend is {backend!r}"
    kept = [s for s in split_top_level(DEFAULT_RUNS, "--runs") if s not in left_out]
    return ",".join(kept), left_out


def report_paths(out: Path) -> tuple[Path, Path]:
    """``<out>.json`` and ``<out>.png`` beside the records folder ``out``."""
    if not out.name or out.name in (".", ".."):
        raise ConfigError(f"--out {out}: give a folder name, e.g. --out docs/benchmarks/bench-cpu")
    return out.with_name(out.name + ".json"), out.with_name(out.name + ".png")


# -- the speedup model against the measurement --------------------------------------------------
def _gamma_rounds(records: Sequence[dict[str, Any]]) -> Counter[int]:
    """Rounds per lookahead depth γ of a run, from the per-record ``gamma_rounds`` counts."""
    counts: Counter[int] = Counter()
    for r in records:
        for gamma, n in ((r.get("stats") or {}).get("gamma_rounds") or {}).items():
            counts[int(gamma)] += int(n)
    return counts


def is_adaptive(run_records: Sequence[dict[str, Any]]) -> bool:
    """Whether a run chose γ per round: its records carry the policy's estimates (``stats.adaptive``,
    also when the preset turned it on) or it asked for ``adaptive_gamma`` itself (older records)."""
    first = run_records[0] if run_records else {}
    return "adaptive" in (first.get("stats") or {}) or bool((first.get("overrides") or {}).get("adaptive_gamma"))


def _model_row(row: dict[str, Any], run_records: Sequence[dict[str, Any]], inputs: SpeedupInputs,
               fitted: SpeedupInputs) -> dict[str, Any]:
    """One run's row of `speedup_model`: ``row`` (from `SpeedupInputs.compare`) with its
    prediction, error and note filled in."""
    from lookahead.eval.fit import unmodelled

    schedule = Counter({row["gamma"]: 1})
    if is_adaptive(run_records):
        used = _gamma_rounds(run_records)
        if used:
            schedule = used
            row["gamma"] = used.most_common(1)[0][0]
            row["gamma_rounds"] = {str(g): n for g, n in sorted(used.items())}
            row["predicted"] = round(inputs.for_run(row["run"]).predict_schedule(row["mode"], used), 4)
            row["note"] = "adaptive: predicted over the γ its rounds used (gamma_rounds)"
    if run_records and unmodelled(run_records[0]):
        row["predicted"] = None
        row["note"] = unmodelled(run_records[0])
    elif row["mode"] not in PREDICTED_MODES:
        row["note"] = "not a prediction: ar is the unit and sd's factor f is measured from this run"
        if row["mode"] == "sd" and (run_records[0].get("overrides") or {}):
            row["predicted"] = None  # f is read from the plain sd run; this one has other engines
            row["note"] = "not predicted: the model's f is the plain sd run's"
    else:
        row["predicted"] = round(inputs.for_run(row["run"]).predict_schedule(row["mode"], schedule), 4)
        if row["measured"]:
            row["error"] = round(row["predicted"] / row["measured"] - 1, 4)
        if inputs is not fitted:
            row["predicted_fitted_b"] = round(fitted.for_run(row["run"]).predict_schedule(row["mode"], schedule), 4)
            if row["measured"]:
                row["error_fitted_b"] = round(row["predicted_fitted_b"] / row["measured"] - 1, 4)
    return row


def _max_abs(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    return max((abs(r[key]) for r in rows if r.get(key) is not None), default=None)


def speedup_model(records: Sequence[dict[str, Any]], batch_cost: Sequence[float] | None = None) -> dict[str, Any]:
    """Predicted vs measured speedup per run of our own modes, and the model's fitted inputs.

    The inputs (α per depth, p, c, b(k), v, f; `lookahead.eval.fit.SpeedupInputs`) are estimated
    from ``records`` by `lookahead.eval.fit.from_eval_records` (needs a finished ``ar`` run:
    DataError otherwise); peer runs are left out. Per run: ``predicted``, ``measured`` (paired
    ``ar`` wall time / the run's) and ``error`` = predicted / measured - 1 for ``lr`` and
    ``lr+sd`` (``ar`` is the unit and ``sd``'s factor f is read from the ``sd`` run itself: no
    prediction). An adaptive run (``adaptive_gamma``) is predicted over the depths its rounds
    used (``gamma_rounds``: rounds per γ; ``gamma``: the one used most).

    b(k) comes from ``batch_cost`` when given (measured directly, b(1) = 1; ``batch_cost_source``
    "measured"): a curve taken apart from the runs it predicts, at whole row counts. Without it,
    b(k) is fitted from the ``lr`` runs' own target times (``"fitted"``): one point per run at its
    mean row count, joined linearly, which is circular and extrapolates badly past the last
    point. With a measured curve each row also keeps the fitted-curve figures as
    ``predicted_fitted_b`` / ``error_fitted_b`` (and ``max_abs_error_fitted_b``) for comparison.
    """
    from lookahead.eval.fit import from_eval_records

    own = [r for r in records if r.get("mode") in OWN_MODES]
    fitted = from_eval_records(own)
    inputs = dataclasses.replace(fitted, batch_cost=list(batch_cost)) if batch_cost else fitted
    rows = [_model_row(row, [r for r in own if r["run"] == row["run"]], inputs, fitted) for row in inputs.compare()]
    fields = dataclasses.asdict(inputs)
    fields.pop("measured")
    fields.pop("runs")
    report: dict[str, Any] = {
        "inputs": fields,
        "batch_cost_source": "fitted" if inputs is fitted else "measured",
        "runs": rows,
        "max_abs_error": _max_abs(rows, "error"),
    }
    if inputs is not fitted:
        report["fitted_batch_cost"] = fitted.batch_cost
        report["max_abs_error_fitted_b"] = _max_abs(rows, "error_fitted_b")
    return report


# -- the target's batch-cost curve --------------------------------------------------------------
def batch_cost_unmeasurable(config: LookaheadConfig) -> str | None:
    """Why the batch-cost curve cannot be measured for this config's target (None: it can)."""
    target = config.target
    if target.backend not in ("hf", *SERVER_BACKENDS):
        return f"target.backend is {target.backend!r}: the curve is measured on a transformers target or a server"
    if target.replicas >= 1:
        return (
            f"target.replicas = {target.replicas}: the target runs in Ray actors, not in this process; "
            "measure with target.replicas=0"
        )
    return None


def measure_batch_cost(engine: Any, max_batch: int = MAX_BATCH) -> dict[str, Any]:
    """One decode step of ``engine``'s model at batch 1..max_batch: seconds and relative to batch 1.

    An in-process transformers target: its model's forward pass is timed. Any other engine (a
    vLLM, SGLang or llama.cpp server): the curve as the loop sees it, through the engine's calls
    (`lookahead.engines.costs.measure_engine`: k rows on one prompt at two lengths).
    """
    from lookahead.engines.batching import unwrapped
    from lookahead.engines.hf import HFEngine, measure_batch_costs

    inner = unwrapped(engine)  # the reasoner's target sits behind its batcher
    if isinstance(inner, HFEngine):
        if inner.model is None:
            raise ConfigError(f"the target engine {inner.name!r} has no loaded model")
        seconds = measure_batch_costs(inner.model, max_batch=max_batch)[1:]
        method = "measure_batch_costs: random 96-token context, 4 decode steps, best of 3, sizes round-robin"
    else:
        from lookahead.engines.costs import measure_engine

        times = measure_engine(engine, range(1, max_batch + 1), repeats=3)
        seconds = [times.decode_s[k] for k in range(1, max_batch + 1)]
        method = ("measure_engine, through the engine's calls: k rows on one 40-word prompt, 4 and 24 new tokens, "
                  "best of 3; seconds per token of the longest row (the difference of the two calls); made non-decreasing")
    return {
        "target": inner.name,
        "batch_sizes": list(range(1, max_batch + 1)),
        "seconds": [round(s, 6) for s in seconds],  # one decode step at batch k (s)
        "relative": [round(s / seconds[0], 4) for s in seconds],  # b(k) = seconds(k) / seconds(1)
        "method": method,
        "reason": None,
    }


class BatchCostCurve:
    """The target's batch-cost curve of one bench folder: measured once per folder and machine
    (``<folder>/batch_cost.json``), reused on resume, or unmeasurable with a reason."""

    def __init__(self, folder: Path, config: LookaheadConfig, machine: str) -> None:
        self.path = folder / BATCH_COST_FILE  # where the measurement is kept
        self.identity = {"machine": machine, "target": redacted(dataclasses.asdict(config.target))}  # where it holds (secrets as ***)
        self.reason = batch_cost_unmeasurable(config)  # None: measurable
        self.value: dict[str, Any] | None = self._stored()  # the curve, once known

    def _stored(self) -> dict[str, Any] | None:
        if self.reason is not None or not self.path.is_file():
            return None
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable: measured again
        if stored.get("identity") != json.loads(json.dumps(self.identity, default=str)):
            return None  # another machine or target: measured again
        return stored.get("curve")

    @property
    def needed(self) -> bool:
        return self.reason is None and self.value is None

    def measure(self, reasoner: LookaheadReasoner, announce: Announce = _silent) -> None:
        """Measure on the reasoner's target (loaded) unless known; kept in the folder."""
        if not self.needed:
            return
        with announce(f"measuring the target's decode step at batch 1..{MAX_BATCH}..."):
            self.value = measure_batch_cost(reasoner.target)
        payload = {"identity": self.identity, "curve": self.value}
        self.path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")

    def measure_alone(self, config: LookaheadConfig, announce: Announce = _silent) -> None:
        """Measure with a target of its own (``config`` in ``ar`` mode) when no run loaded one,
        e.g. a resume with nothing left to run; nothing to do when the curve is known."""
        if not self.needed:
            return
        from lookahead.loop import LookaheadReasoner

        with LookaheadReasoner(configured(config, {"mode": "ar"})) as reasoner:
            self.measure(reasoner, announce)

    def report(self) -> dict[str, Any]:
        if self.value is not None:
            return self.value
        return {"relative": None, "seconds": None, "reason": self.reason or "not measured"}


# -- the report ---------------------------------------------------------------------------------
def _acceptance_length(spec: dict[str, Any], prefix: str) -> float | None:
    """Committed tokens per verification pass, from summed counts (None: no pass)."""
    passes = spec.get(f"{prefix}verify_passes") or 0
    return round((spec.get(f"{prefix}accepted_tokens", 0) + passes) / passes, 4) if passes else None


RUN_KEYS = ("label", "mode", "overrides", "speedup", "speedup_median", "speedup_problems", "tokens_per_s",
            "accuracy", "accuracy_stderr", "agreement_with_ar", "agreement_pairs", "step_acceptance",
            "acceptance_by_depth", "steps_per_round", "mean_wall_time_s", "mean_completion_tokens",
            "time_split_s", "rows", "finished_rows", "errors", "unparseable", "fairness_warnings",
            "errors_sample")  # fmt: skip
"""The keys of a summary run (`lookahead.eval.report.summarize`) a report run keeps."""

DEFINITIONS = {
    "speedup": "summed ar wall time / summed run wall time over the problems both finished",
    "speedup_median": "median of the per-problem ratios",
    "agreement_with_ar": "share of (problem, sample) pairs whose extracted answers equal ar's",
    "acceptance_by_depth": "mean over rows of the step acceptance rate at lookahead depth 1, 2, ...",
    "token_acceptance_length": "(accepted + verification passes) / verification passes, target calls",
    "time_split_s": "mean seconds per row in draft calls, target calls, the verifier, the rest "
    "(other_s: orchestration overhead)",
    "batch_cost.relative": "b(k): seconds of one target decode step at batch k / at batch 1",
    "model.error": "predicted / measured - 1",
}
"""The report's ``definitions``: what each figure means."""


def run_entry(run: dict[str, Any], model_rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One run of the report: the summary's figures, token acceptance, time shares, the model's row."""
    entry = {k: run[k] for k in RUN_KEYS}
    spec = run["token_speculation"]
    entry["token_acceptance_length"] = _acceptance_length(spec, "spec_")
    entry["token_acceptance_rate"] = spec.get("token_acceptance_rate")
    entry["draft_token_acceptance_length"] = _acceptance_length(spec, "spec_draft_calls_")
    total = sum(run["time_split_s"].values())
    entry["time_share"] = {k: round(v / total, 4) if total > 0 else None for k, v in run["time_split_s"].items()}
    row = model_rows.get(run["label"])
    entry["model"] = {k: v for k, v in row.items() if k not in ("run", "mode")} if row else None
    return entry


def build_report(
    evaluation: Evaluation,
    summary: dict[str, Any],
    records: Sequence[dict[str, Any]],
    curve: dict[str, Any],
    dropped: Sequence[str],
    png: Path,
) -> dict[str, Any]:
    """``<out>.json``: the command, the machine, the config, per run the figures, the batch-cost
    curve and the speedup model (predicted vs measured, fitted inputs)."""
    try:
        model: dict[str, Any] = speedup_model(records, curve.get("relative"))
        model["reason"] = None
    except DataError as exc:
        model = {"inputs": None, "runs": [], "max_abs_error": None, "reason": str(exc)}
    rows = {r["run"]: r for r in model["runs"]}
    entries = [run_entry(run, rows) for run in summary["runs"]]
    copied = ("command", "created", "machine", "task", "location", "split", "problems", "problems_with_records", "limit")
    return {
        **{key: summary[key] for key in copied},
        "records": str(evaluation.out / "records.jsonl"),
        "png": png.name,
        "baseline": summary["baseline"],
        "left_out": list(dropped),
        "config": summary["config"],
        "definitions": dict(DEFINITIONS),
        "runs": entries,
        "batch_cost": curve,
        "speedup_model": model,
        "targets": target_checks(entries, model),
        "gpu_projection": gpu_projection(),
    }


# -- the performance targets --------------------------------------------------------------------
def _target(name: str, value: float | None, threshold: float, at_least: bool, note: str) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if at_least else value <= threshold)
    return {"target": name, "value": None if value is None else round(value, 4), "threshold": threshold,
            "at_least": at_least, "met": met, "note": note}  # fmt: skip


def target_checks(runs: Sequence[dict[str, Any]], model: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the runs against the project's performance targets (set in issue 10): each target
    with the measured value, the threshold and whether it is met (None: a run it needs is
    missing). Speedups are vs ``ar``; tokens/s compare runs of this bench."""
    by_label = {r["label"]: r for r in runs}
    own = [r for r in runs if r["mode"] in OWN_MODES and r["finished_rows"]]
    speed = {r["label"]: r["speedup"] for r in runs if r.get("speedup") is not None}
    tok_s = {r["label"]: r["tokens_per_s"] for r in runs if r.get("tokens_per_s")}
    lr_sd = speed.get("lr+sd")
    by_mode: dict[str, float] = {}  # a peer's tokens/s by its name (its first run), whatever its [overrides]
    for r in runs:
        if r["label"] in tok_s:
            by_mode.setdefault(str(r["mode"]), tok_s[r["label"]])
    peers = [by_mode[p] for p in TRANSFORMERS_PEERS if p in by_mode]
    fixed_labels = [f"lr[gamma={g}{extra}]" for g in (1, 2, 4) for extra in ("", ",adaptive_gamma=false")]
    fixed = [speed[label] for label in fixed_labels if label in speed]
    adaptive = next((speed[r["label"]] for r in runs if r["label"] in speed and r["mode"] == "lr"
                     and (str((r.get("overrides") or {}).get("adaptive_gamma")).lower() == "true"
                          or "gamma_rounds" in (r.get("model") or {}))), None)  # fmt: skip
    # (an adaptive run's model row lists the γ its rounds used: also when the preset turned it on)
    llamacpp = by_mode.get("peer:llamacpp")
    # our speculative modes only: ar over a llama.cpp server runs at that server's own speed
    best_own = max((tok_s[r["label"]] for r in own if r["label"] in tok_s and r["mode"] != "ar"), default=None)
    overheads = [r["time_split_s"]["other_s"] / r["mean_wall_time_s"] for r in own if r.get("mean_wall_time_s")]
    lr_sd_tok = tok_s.get("lr+sd")
    return [
        _target("lr+sd speedup over ar", lr_sd, 2.5, True, "run lr+sd"),
        _target("lr+sd tokens/s over the best transformers peer", lr_sd_tok / max(peers) if lr_sd_tok and peers else None,
                1.5, True, f"peers: {', '.join(p for p in TRANSFORMERS_PEERS if p in by_mode) or 'none run'}"),
        _target("adaptive lr speedup / best fixed-γ lr speedup", adaptive / max(fixed) if adaptive and fixed else None,
                0.95, True, "never slower than the best fixed γ by more than 5%"),
        _target("adaptive lr speedup over ar", adaptive, 0.95, True, "never slower than ar by more than 5%"),
        _target("best lookahead tokens/s / llama.cpp ar tokens/s", best_own / llamacpp if best_own and llamacpp else None,
                1.0, True, "best of our sd / lr / lr+sd runs vs peer:llamacpp" if llamacpp
                else "llama.cpp not run (pip install '.[llamacpp]')"),
        _target("orchestration overhead (other_s / wall time), worst of our runs", max(overheads) if overheads else None,
                0.03, False, "other_s: wall time outside draft, target and verifier calls"),
        _target("speedup model error, worst |predicted / measured - 1|", model.get("max_abs_error"), 0.10, False,
                "over the lr and lr+sd runs it predicts"),
    ] if by_label else []


def write_report(report: dict[str, Any], json_path: Path, png_path: Path) -> None:
    """The figure and ``<out>.json``; a file that cannot be written is a one-line `ConfigError`."""
    try:
        write_figure(report, png_path)
        json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        out = json_path.with_suffix("")
        raise ConfigError(
            f"--out {out}: cannot write the report beside it ({exc.strerror or exc}); give a folder you can write to"
        ) from None


# -- the figure ---------------------------------------------------------------------------------
def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _panel_speed(ax: Any, report: dict[str, Any], labels: list[str]) -> None:
    """Speedup per run (tokens/s without ar), accuracy and agreement written beside each bar."""
    runs = report["runs"]
    has_base = report["baseline"] is not None
    values = [(r["speedup"] if has_base else r["tokens_per_s"]) or 0.0 for r in runs]
    ax.barh(labels, values, color=["tab:grey" if r["mode"].startswith("peer:") else "tab:blue" for r in runs])
    for y, (r, v) in enumerate(zip(runs, values, strict=True)):
        acc, agree = r["accuracy"], r["agreement_with_ar"]
        text = f" acc {'n/a' if acc is None else f'{acc:.0%}'} · agree {'n/a' if agree is None else f'{agree:.0%}'}"
        if r["errors"]:
            text += f" · {r['errors']} errors"
        ax.text(v, y, text, va="center", fontsize="small")
    if has_base:
        ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("speedup vs ar (summed wall time)" if has_base else "tokens/s (no ar run)")
    ax.set_xlim(0, max(values + [1.0]) * 1.6)
    ax.invert_yaxis()
    ax.set_title("speed per run (grey: peers)")


def _panel_time_and_tokens(ax_time: Any, ax_tokens: Any, runs: list[dict[str, Any]], labels: list[str]) -> None:
    """The time split per run, and the token acceptance length per run."""
    plot_time_split(ax_time, runs, labels)
    ax_time.set_yticklabels([])
    ax_time.set_xlabel("mean seconds per generation")
    ax_time.legend(loc="lower right", ncol=2, fontsize="x-small", framealpha=0.8)
    ax_time.set_title("time split: draft / target / verify / other")

    lengths = [r["token_acceptance_length"] or 0.0 for r in runs]
    ax_tokens.barh(labels, lengths, color="tab:purple")
    ax_tokens.invert_yaxis()
    ax_tokens.set_xlabel("tokens per verification pass (0: no token speculation)")
    ax_tokens.set_title("token acceptance length")


def _panel_batch_cost(ax: Any, report: dict[str, Any]) -> None:
    """The measured b(k) (or why not), the fitted one beside it, and the b = 1 and b = k lines."""
    curve = report["batch_cost"]
    if curve.get("relative"):
        ks = list(range(1, len(curve["relative"]) + 1))
        ax.plot(ks, curve["relative"], marker="o", label="measured b(k)")
        ax.plot(ks, ks, color="grey", ls=":", label="b(k) = k (no batching gain)")
        ax.axhline(1.0, color="grey", ls="--", lw=0.8, label="b(k) = 1 (free rows)")
    else:
        ax.text(0.5, 0.6, "not measured:\n" + _wrap(curve.get("reason") or "", 50), ha="center",
                va="center", transform=ax.transAxes, fontsize="small")  # fmt: skip
    model = report["speedup_model"] or {}
    fitted = model.get("fitted_batch_cost") or (
        (model.get("inputs") or {}).get("batch_cost") if model.get("batch_cost_source") != "measured" else None)
    if fitted:
        fitted = fitted[:MAX_BATCH]
        ax.plot(range(1, len(fitted) + 1), fitted, ls="--", marker="x",
                label="fitted from lr runs (not used when measured)" if model.get("fitted_batch_cost")
                else "fitted from lr runs")  # fmt: skip
    ax.set_xlabel("rows in one target call (k)")
    ax.set_ylabel("cost relative to batch 1")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.set_title("target batch-cost curve")


def _panel_model(ax: Any, report: dict[str, Any]) -> None:
    """Predicted vs measured speedup of the lr and lr+sd runs, on the diagonal when right."""
    points = [(r["label"], r["model"]["predicted"], r["model"]["measured"]) for r in report["runs"]
              if r["mode"] in PREDICTED_MODES and r["model"] and r["model"].get("measured")
              and r["model"].get("predicted") is not None]  # fmt: skip
    if points:
        top = max(max(p, m) for _, p, m in points) * 1.15
        ax.plot([0, top], [0, top], color="grey", ls="--", lw=0.8)
        for label, predicted, measured in points:
            ax.scatter([measured], [predicted])
            ax.annotate(label, (measured, predicted), textcoords="offset points", xytext=(5, 5), fontsize="small")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
    else:
        reason = (report["speedup_model"] or {}).get("reason") or "no lr or lr+sd run measured"
        ax.text(0.5, 0.5, _wrap(reason, 50), ha="center", va="center", transform=ax.transAxes,
                fontsize="small")  # fmt: skip
    ax.set_xlabel("measured speedup vs ar")
    ax.set_ylabel("predicted by the speedup model")
    ax.set_title("speedup model: predicted vs measured")


def write_figure(report: dict[str, Any], path: Path) -> None:
    """Six panels: speedup (accuracy and agreement annotated), time split, acceptance by depth,
    token acceptance length, the batch-cost curve, predicted vs measured speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    labels = [r["label"] for r in runs]
    fig, axes = plt.subplots(2, 3, figsize=(17, 4.0 + 0.45 * len(runs)))
    (ax_speed, ax_time, ax_depth), (ax_tokens, ax_batch, ax_model) = axes
    _panel_speed(ax_speed, report, labels)
    _panel_time_and_tokens(ax_time, ax_tokens, runs, labels)
    plot_acceptance_by_depth(ax_depth, runs)
    _panel_batch_cost(ax_batch, report)
    _panel_model(ax_model, report)
    fig.suptitle(f"lookahead bench: {report['task']}, {report['problems_with_records']} problems\n"
                 f"{_wrap(report['machine'], 140)}", fontsize="medium")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

