"""``lookahead bench``: every way to decode, side by side, in one run, with the model's prediction.

The runs go through the eval harness (resumable like ``lookahead eval``); the report, the batch-cost
curve, the speedup model and the target checks are `lookahead.eval.bench`. This file parses the
options and prints.

Example:
    lookahead bench --limit 30                       # gsm8k, every run, docs/benchmarks/bench-cpu.{json,png}
    lookahead bench --task math500 --limit 10 --runs 'ar,lr[gamma=2],peer:hf-prompt-lookup' --out runs/b
    lookahead bench --offset 100 --limit 20 --runs ar,lr    # held-out rows: problems 100..119
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lookahead.cli.common import (
    ConfigOpt,
    DataDirOpt,
    ForceNewOpt,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    OutOpt,
    SetOpt,
    TaskOpt,
    console,
    err_console,
    fail,
    json_line,
    terminal_safe,
)
from lookahead.cli.eval import interrupted, open_records, run_evaluation
from lookahead.errors import ConfigError, LookaheadError
from lookahead.eval import bench as eb
from lookahead.eval import report as eval_report
from lookahead.eval import runner

if TYPE_CHECKING:
    from lookahead.eval.harness import RecordStore
    from lookahead.eval.runner import Evaluation

RUNS_HELP = (
    "Runs, comma-separated, as in `lookahead eval --modes` (default: ar, the hf peers, sd, "
    "lr\\[gamma=1|2|4,adaptive_gamma=false], lr\\[gamma=2,pipeline=true], lr\\[adaptive_gamma=true,gamma=4], lr+sd, the llama.cpp "
    "peers when installed)."
)
JSON_KEYS = ("label", "speedup", "tokens_per_s", "accuracy", "agreement_with_ar", "token_acceptance_length", "model")
"""Per run, the keys of the final JSON line."""


# -- running ------------------------------------------------------------------------------------
def _runs(runs: str | None, config: str, set_: list[str] | None) -> tuple[str, list[str]]:
    """The runs to make, and the default runs left out (each reason printed once, its runs named)."""
    from lookahead.config import load_config

    if runs is not None:
        return runs, []
    runs, left_out = eb.default_runs(load_config(config, list(set_ or [])))
    for reason in dict.fromkeys(left_out.values()):
        named = ", ".join(spec for spec, why in left_out.items() if why == reason)
        err_console.print(f"[yellow]leaving out {escape(named)}: {escape(reason)}[/]")
    return runs, list(left_out)


def _measure_runs(evaluation: Evaluation, store: RecordStore) -> eb.BatchCostCurve:
    """Run what is not recorded yet, measuring the batch-cost curve once the target is loaded (or
    on a target of its own when nothing was left to run and the folder has no curve yet)."""
    curve = eb.BatchCostCurve(evaluation.out, evaluation.config, runner.machine())
    run_evaluation(evaluation, store, on_loaded=lambda reasoner: curve.measure(reasoner, console.status))
    curve.measure_alone(evaluation.config, console.status)
    return curve


def _write(evaluation: Evaluation, store: RecordStore, curve: eb.BatchCostCurve, dropped: list[str],
           json_path: Path, png_path: Path) -> dict[str, Any]:
    """Summarize the records (the folder stays a complete eval folder), build and write the report."""
    records = evaluation.records(store)
    summary = eval_report.summarize(records, evaluation.runs, evaluation.meta())
    eval_report.write_reports(evaluation.out, summary, plots=False)
    report = eb.build_report(evaluation, summary, records, curve.report(), dropped, png_path)
    try:
        eb.write_report(report, json_path, png_path)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    return report


# -- printing -----------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def report_table(report: dict[str, Any]) -> Table:
    """The runs of the report for the terminal: speed, accuracy, acceptance, prediction."""
    source = (report.get("speedup_model") or {}).get("batch_cost_source") or "fitted"
    table = Table(
        title=f"bench {report['task']}: {report['problems_with_records']} problems",
        caption="speedup: summed wall time vs ar; tok len: tokens per verification pass; "
        f"predicted: the speedup model with the {source} batch-cost curve (error = predicted / measured - 1)",
    )
    header = ("run", "speedup", "tok/s", "accuracy", "agree", "step accept", "tok len", "predicted", "error", "rows")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for r in report["runs"]:
        model = r["model"] or {}
        predicted = model.get("predicted") if r["mode"] in eb.PREDICTED_MODES else None
        table.add_row(
            Text(terminal_safe(r["label"])),
            _fmt(r["speedup"], ".2f", "x"),
            _fmt(r["tokens_per_s"], ".1f"),
            _fmt(r["accuracy"], ".1%"),
            _fmt(r["agreement_with_ar"], ".1%"),
            _fmt(r["step_acceptance"], ".1%"),
            _fmt(r["token_acceptance_length"], ".2f"),
            _fmt(predicted, ".2f", "x"),
            _fmt(model.get("error"), "+.1%"),
            f"{r['finished_rows']}/{r['rows']}",
        )
    return table


def _print_report(report: dict[str, Any], json_path: Path, png_path: Path, out: Path, as_json: bool) -> None:
    Console(highlight=False, width=max(console.width, 140)).print(report_table(report))
    curve = report["batch_cost"]
    curve_text = (
        ", ".join(f"{b:.2f}" for b in curve["relative"]) if curve["relative"] else f"not measured ({curve['reason']})"
    )
    console.print(f"target batch cost b(1..{eb.MAX_BATCH}): {escape(curve_text)}", soft_wrap=True)
    for t in report["targets"]:
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]not measured[/]"}[t["met"]]
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        sign = "≥" if t["at_least"] else "≤"
        console.print(f"target {escape(t['target'])}: {value} ({sign} {t['threshold']}) {mark}", soft_wrap=True)
    console.print(f"report {escape(str(json_path))} and {escape(str(png_path))}; records in {escape(str(out))}/", soft_wrap=True)
    if as_json:
        payload = {
            "json": str(json_path),
            "png": str(png_path),
            "records": report["records"],
            "baseline": report["baseline"],
            "runs": [{k: r[k] for k in JSON_KEYS} for r in report["runs"]],
        }
        sys.stdout.write(json_line(payload))


# -- the command --------------------------------------------------------------------------------
def bench_command(
    task: TaskOpt = "gsm8k",
    limit: LimitOpt = 30,
    offset: OffsetOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = "default",
    set_: SetOpt = None,
    out: OutOpt = eb.DEFAULT_OUT,
    runs: Annotated[str | None, typer.Option(help=RUNS_HELP)] = None,
    force_new: ForceNewOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Every method side by side on the same problems: speedup, accuracy, acceptance, costs, the model.

    --out is a records folder (a `lookahead eval` folder, plus batch_cost.json); the report is
    <out>.json and its figure <out>.png beside it.
    """
    assert out is not None  # it has a default; typer never passes None
    evaluation = store = None
    try:
        try:
            json_path, png_path = eb.report_paths(out)
            runs, dropped = _runs(runs, config, set_)
            evaluation = runner.prepare_evaluation(
                task=task, modes=runs, config=config, set_=set_, limit=limit, offset=offset, out=out, data_dir=data_dir
            )
            store = open_records(evaluation, force_new)
            curve = _measure_runs(evaluation, store)
        except LookaheadError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise interrupted(evaluation.out if evaluation is not None else out) from None
        report = _write(evaluation, store, curve, dropped, json_path, png_path)
    finally:
        if store is not None:
            store.close()  # the folder's lock: the next invocation may write there
    _print_report(report, json_path, png_path, out, as_json)
