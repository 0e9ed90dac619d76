"""Turn eval records into numbers users can trust: summary.json, summary.md, the table rows, plots.

Definitions (per run, over the records of this invocation's problems, runs and samples):
- **accuracy**: per problem, the fraction of its samples graded correct (an error row counts as
  wrong, a row whose reference could not be parsed is not graded); then the mean over problems.
  **stderr** is the standard error of that mean over problems (sample std / sqrt(n)).
- **speedup** (vs the ``ar`` run of the same invocation): summed wall time of ``ar`` over summed
  wall time of the run, over the problems both finished without error (a problem's time is the
  mean over its samples); **median speedup** is the median of the per-problem ratios. Without
  an ``ar`` run both are n/a (None).
- **tokens/s**: completion tokens over wall time, summed over finished rows.
- **step acceptance**: accepted steps / drafted steps, summed over rows; **acceptance by depth**:
  the mean over rows of each row's rate at that depth (the loop reports rates, not counts).
- **agreement with ar**: of the (problem, sample) pairs both finished, the fraction whose
  extracted answers are the same (two missing answers agree).
- **time split**: mean seconds per row in draft calls, target calls, the verifier, and the rest.
- **unparseable**: rows whose completion states no answer, plus rows whose reference could not
  be parsed (both are also listed apart); **errors**: rows whose generation raised.

Example:
    >>> summary = summarize(records, runs, meta)            # doctest: +SKIP
    >>> write_reports(Path("runs/x"), summary)              # doctest: +SKIP
    [PosixPath('runs/x/summary.json'), PosixPath('runs/x/summary.md'), ...]
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lookahead.answers import same_answer
from lookahead.config import redacted
from lookahead.eval.harness import RunSpec, baseline_label

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOTS = ("speedup_vs_accuracy.png", "acceptance_by_depth.png", "time_split.png")
TIME_PARTS = ("draft_s", "target_s", "verify_s", "other_s")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stderr(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def _per_problem_time(rows: Sequence[dict[str, Any]]) -> dict[int, float]:
    times: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        times[r["problem"]].append(float(r["wall_time_s"]))
    return {p: sum(t) / len(t) for p, t in times.items()}


def _token_speculation(ok: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The token-level speculation counts (``spec_*``) summed over rows, and the acceptance rate."""
    spec: Counter[str] = Counter()
    for r in ok:
        for key, value in (r.get("spec") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                spec[key] += value
    summary: dict[str, Any] = dict(spec)
    if spec.get("spec_draft_tokens"):
        summary["token_acceptance_rate"] = spec.get("spec_accepted_tokens", 0) / spec["spec_draft_tokens"]
    return summary


def _run_summary(run: RunSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures over its rows (module docstring: the definitions)."""
    ok = [r for r in rows if r["status"] == "ok"]
    graded = [r for r in rows if r["correct"] is not None]
    by_problem: dict[int, list[bool]] = defaultdict(list)
    for r in graded:
        by_problem[r["problem"]].append(bool(r["correct"]))
    problem_acc = [sum(v) / len(v) for v in by_problem.values()]
    wall = sum(float(r["wall_time_s"]) for r in ok)
    tokens = sum(int(r["completion_tokens"]) for r in ok)
    drafted = sum(int(r["drafted_steps"]) for r in ok)
    accepted = sum(int(r["accepted_steps"]) for r in ok)
    depth_rates: dict[int, list[float]] = defaultdict(list)
    for r in ok:
        for depth, rate in enumerate(r.get("acceptance_by_depth") or [], start=1):
            depth_rates[depth].append(float(rate))
    rounds = sum(int(r["rounds"]) for r in ok)
    committed = sum(int(r.get("committed_steps") or 0) for r in ok)
    no_answer = sum(1 for r in ok if r["answer"] is None)
    bad_reference = sum(1 for r in rows if r["reference"] is None)
    return {
        "label": run.label,
        "mode": run.mode,
        "overrides": redacted(run.overrides),  # secrets as ***
        "rows": len(rows),  # records (problem x sample) of this run
        "finished_rows": len(ok),
        "problems": len({r["problem"] for r in rows}),
        "finished_problems": len({r["problem"] for r in ok}),
        "errors": len(rows) - len(ok),
        "graded": len(graded),
        "correct": sum(1 for r in graded if r["correct"]),
        "accuracy": _mean(problem_acc),
        "accuracy_stderr": _stderr(problem_acc),
        "no_answer": no_answer,
        "bad_reference": bad_reference,
        "unparseable": no_answer + bad_reference,
        "wall_time_s": round(wall, 4),
        "mean_wall_time_s": _mean([float(r["wall_time_s"]) for r in ok]),
        "completion_tokens": tokens,
        "mean_completion_tokens": _mean([int(r["completion_tokens"]) for r in ok]),
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "drafted_steps": drafted,
        "accepted_steps": accepted,
        "step_acceptance": accepted / drafted if drafted else None,
        "acceptance_by_depth": [_mean(depth_rates[d]) for d in sorted(depth_rates)],
        "steps_per_round": committed / rounds if rounds else None,
        "time_split_s": {part: _mean([float(r.get(part) or 0.0) for r in ok]) or 0.0 for part in TIME_PARTS},
        "token_speculation": _token_speculation(ok),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in rows)),
        "fairness_warnings": [
            f"overrides {k} (other budget or sampling than the other runs)" for k in run.changes_fairness()
        ],
        "errors_sample": sorted({r["error"] for r in rows if r["error"]})[:3],
    }


def _compare_with_baseline(
    summary: dict[str, Any], rows: list[dict[str, Any]], base_rows: list[dict[str, Any]] | None
) -> None:
    keys = ("speedup", "speedup_median", "speedup_problems", "agreement_with_ar", "agreement_pairs")
    if base_rows is None:
        summary.update(dict.fromkeys(keys))
        return
    ok = [r for r in rows if r["status"] == "ok"]
    base_ok = [r for r in base_rows if r["status"] == "ok"]
    mine, base = _per_problem_time(ok), _per_problem_time(base_ok)
    common = sorted(set(mine) & set(base))
    run_total = sum(mine[p] for p in common)
    ratios = [base[p] / mine[p] for p in common if mine[p] > 0]
    summary["speedup"] = sum(base[p] for p in common) / run_total if common and run_total > 0 else None
    summary["speedup_median"] = statistics.median(ratios) if ratios else None
    summary["speedup_problems"] = len(common)
    base_answers = {(r["problem"], r["sample"]): r["answer"] for r in base_ok}
    pairs = [(r["answer"], base_answers[(r["problem"], r["sample"])]) for r in ok if (r["problem"], r["sample"]) in base_answers]
    summary["agreement_with_ar"] = sum(same_answer(a, b) for a, b in pairs) / len(pairs) if pairs else None
    summary["agreement_pairs"] = len(pairs)


def summarize(records: Sequence[dict[str, Any]], runs: Sequence[RunSpec], meta: dict[str, Any]) -> dict[str, Any]:
    """The summary of one invocation: ``meta`` (task, command, settings) plus one entry per run."""
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_run[r["run"]].append(r)
    base = baseline_label(runs)
    out_runs = []
    for run in runs:
        rows = by_run.get(run.label, [])
        entry = _run_summary(run, rows)
        _compare_with_baseline(entry, rows, by_run.get(base, []) if base is not None else None)
        out_runs.append(entry)
    problems = {r["problem"] for r in records}
    return {
        **meta,
        "baseline": base,
        "problems_with_records": len(problems),
        "records": len(records),
        "runs": out_runs,
    }


# -- text ---------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


HEADER = ("run", "accuracy", "speedup vs ar", "median speedup", "tokens/s", "step acceptance",
          "agreement with ar", "unparseable", "errors", "rows")  # fmt: skip
SHORT_HEADER = ("run", "accuracy", "speedup", "median", "tok/s", "accept", "agree", "unparsed", "errors", "rows")


def table_rows(summary: dict[str, Any], short: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the runs table (shared by the markdown and the terminal's table,
    `lookahead.cli.eval`)."""
    header = list(SHORT_HEADER if short else HEADER)
    rows = []
    for run in summary["runs"]:
        acc = run["accuracy"]
        accuracy = "n/a" if acc is None else f"{acc:.1%}" + (
            f" ± {run['accuracy_stderr']:.1%}" if run["accuracy_stderr"] is not None else ""
        )
        rows.append(
            [
                run["label"],
                accuracy,
                _fmt(run["speedup"], ".2f", "x"),
                _fmt(run["speedup_median"], ".2f", "x"),
                _fmt(run["tokens_per_s"], ".1f"),
                _fmt(run["step_acceptance"], ".1%"),
                _fmt(run["agreement_with_ar"], ".1%"),
                str(run["unparseable"]),
                str(run["errors"]),
                f"{run['finished_rows']}/{run['rows']}",
            ]
        )
    return header, rows


def _notes(summary: dict[str, Any]) -> list[str]:
    notes = []
    if summary["baseline"] is None:
        notes.append("no `ar` run in this invocation: speedup and agreement are n/a (add ar to --modes).")
    eh = summary.get("equal_hardware") or {}
    if eh.get("requested"):
        notes.append(f"equal hardware: {eh.get('note', '')}")
    for run in summary["runs"]:
        for warning in run["fairness_warnings"]:
            notes.append(f"`{run['label']}` {warning}.")
        if run["bad_reference"]:
            notes.append(f"`{run['label']}`: {run['bad_reference']} rows have a reference that could not be parsed (not graded).")
        for error in run["errors_sample"]:
            notes.append(f"`{run['label']}` error: {error}")
    return notes


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: the command, the setting, the runs table, the per-run time split, the plots."""
    header, rows = table_rows(summary)
    lines = [
        f"# Evaluation: {summary.get('task')} ({summary.get('split')})",
        "",
        f"`{summary.get('command', '')}`",
        "",
        (
            f"- problems: {summary['problems_with_records']} with records (of {summary.get('problems')} selected), "
            f"samples per problem: {summary.get('samples')}, baseline: {summary['baseline'] or 'none'}"
        ),
        f"- machine: {summary.get('machine', '')}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows),
        "",
        "| run | mean wall (s) | draft (s) | target (s) | verify (s) | other (s) | steps/round | acceptance by depth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        split = run["time_split_s"]
        depth = ", ".join(f"d{i}={_fmt(a, '.0%')}" for i, a in enumerate(run["acceptance_by_depth"], start=1)) or "-"
        lines.append(
            f"| {run['label'].replace('|', chr(92) + '|')} | {_fmt(run['mean_wall_time_s'], '.3f')} | "
            + " | ".join(f"{split[p]:.3f}" for p in TIME_PARTS)
            + f" | {_fmt(run['steps_per_round'], '.2f')} | {depth} |"
        )
    notes = _notes(summary)
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    plots = [p for p in PLOTS if p in summary.get("plots", [])]
    if plots:
        lines += ["", *(f"![{p}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def table_width(summary: dict[str, Any]) -> int:
    """Columns the rich table needs to show every cell whole (labels must never be cut)."""
    header, rows = table_rows(summary, short=True)
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    return sum(widths) + 3 * len(widths) + 1


# -- plots --------------------------------------------------------------------------------------
def plot_time_split(ax: Any, runs: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    """Mean seconds per generation, stacked draft / target / verify / other, one bar per run."""
    left = [0.0] * len(runs)
    for part, colour in zip(TIME_PARTS, ("tab:green", "tab:blue", "tab:orange", "tab:grey"), strict=True):
        values = [r["time_split_s"][part] for r in runs]
        ax.barh(labels, values, left=left, color=colour, label=part.removesuffix("_s"))
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()


def plot_acceptance_by_depth(ax: Any, runs: Sequence[dict[str, Any]]) -> None:
    """Step acceptance per lookahead depth, one line per run that drafted steps (matplotlib ``ax``)."""
    drawn = False
    for r in runs:
        rates = r["acceptance_by_depth"]
        if rates:
            ax.plot(range(1, len(rates) + 1), rates, marker="o", label=r["label"])
            drawn = True
    if drawn:
        ax.legend(fontsize="small")
        ax.set_xlabel("lookahead depth")
        ax.set_ylabel("step acceptance (mean over problems)")
        ax.set_ylim(-0.05, 1.05)
    else:
        ax.text(0.5, 0.5, "no run drafted steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("step acceptance by depth")


def write_plots(summary: dict[str, Any], out: Path) -> list[str]:
    """Three PNGs in ``out`` (matplotlib, Agg backend); returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    labels = [r["label"] for r in runs]

    fig, ax = plt.subplots(figsize=(6, 4.5))
    has_base = summary["baseline"] is not None
    for r in runs:
        x = r["speedup"] if has_base else r["tokens_per_s"]
        if x is None or r["accuracy"] is None:
            continue
        ax.errorbar([x], [r["accuracy"]], yerr=[r["accuracy_stderr"] or 0.0], fmt="o", capsize=4)
        ax.annotate(r["label"], (x, r["accuracy"]), textcoords="offset points", xytext=(6, 6))
    if has_base:
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("speedup vs ar (summed wall time)" if has_base else "tokens/s (no ar run: no speedup)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{summary.get('task')}: speed and accuracy per run")
    fig.tight_layout()
    fig.savefig(out / PLOTS[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    plot_acceptance_by_depth(ax, runs)
    fig.tight_layout()
    fig.savefig(out / PLOTS[1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(runs) + 2.2))
    plot_time_split(ax, runs, labels)
    ax.set_xlabel("mean seconds per generation (problem x sample)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=len(TIME_PARTS), fontsize="small")
    ax.set_title("time split per run")
    fig.tight_layout()
    fig.savefig(out / PLOTS[2], dpi=110)
    plt.close(fig)
    return list(PLOTS)


def write_reports(out: Path, summary: dict[str, Any], plots: bool = True) -> list[Path]:
    """Write the plots, summary.json and summary.md into ``out``; returns the paths written."""
    written = []
    if plots:
        summary["plots"] = write_plots(summary, out)
        written += [out / p for p in summary["plots"]]
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / SUMMARY_MD).write_text(markdown(summary), encoding="utf-8")
    return [out / SUMMARY_JSON, out / SUMMARY_MD, *written]
