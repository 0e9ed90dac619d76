"""``lookahead calibrate``: rate verifiers against an oracle on (draft step, target step) pairs.

The phases (collect, label, report) are `lookahead.calibrate`; this file parses the options,
shows the progress and prints the table.

Example:
    lookahead calibrate --limit 20 --verifiers exact,numeric,embedding --out runs/calibrate
    lookahead calibrate --config tiny --limit 3 --json
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from lookahead import calibrate as cal
from lookahead.cli.common import (
    AllowTestSplitOpt,
    ConfigOpt,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    OutOpt,
    QuestionFieldOpt,
    SetOpt,
    TrainDataOpt,
    console,
    err_console,
    fail,
    json_line,
    quiet_transformers,
)
from lookahead.errors import LookaheadError


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _table(reports: Sequence[cal.VerifierReport], aligned: int, total: int, oracle: str) -> Table:
    table = Table(title=f"{total} pairs · {aligned} aligned by the {oracle} oracle", title_justify="left")
    for column in ("verifier", "accept", "precision", "recall", "FPR", "AUC", "pairs/s", "failures"):
        table.add_column(column, justify="left" if column == "verifier" else "right")
    for r in reports:
        if r.error:
            table.add_row(r.name, "[red]error[/]", "", "", "", "", "", "")
            continue
        table.add_row(
            r.name, f"{r.acceptance_rate:.0%}", _fmt(r.precision), _fmt(r.recall), _fmt(r.false_accept_rate),
            _fmt(r.auc), f"{r.pairs_per_s:.0f}", str(r.failures),
        )
    return table


def _collect(run: cal.CalibrationRun, reasoner: Any) -> None:
    """Phase 1 with a spinner that counts the questions run."""
    todo = run.todo()
    if not todo:
        return
    with err_console.status(f"running lr on {todo} questions...") as status:
        counter = [0]

        def tick(n: int) -> None:
            counter[0] += n
            status.update(f"running lr: {counter[0]}/{todo} questions")

        cal.collect_pairs(reasoner, run.questions, run.pairs_path, tick)


def _print_report(run: cal.CalibrationRun, payload: dict[str, Any], reports: Sequence[cal.VerifierReport],
                  as_json: bool) -> None:
    console.print(_table(reports, payload["aligned"], payload["pairs"], payload["oracle"]))
    for r in reports:
        if r.error:
            console.print(Text(f"{r.name}: {r.error}", style="red"))
    report_path, plot_path = run.out / cal.REPORT_FILE, run.out / cal.PLOT_FILE
    console.print(f"report: {report_path}"
                  + (f" · plot: {plot_path}" if payload["plot"] else " · (no plot: pip install matplotlib)"))  # fmt: skip
    if as_json:
        sys.stdout.write(json_line({k: v for k, v in payload.items() if k != "config"}))


def calibrate_command(
    out: OutOpt = Path("runs/calibrate"),
    data: TrainDataOpt = None,
    question_field: QuestionFieldOpt = "question",
    limit: LimitOpt = 50,
    offset: OffsetOpt = 0,
    verifiers: Annotated[str, typer.Option(help="Comma-separated verifiers to rate.")] = cal.DEFAULT_VERIFIERS,
    oracle: Annotated[
        str, typer.Option(help="Who labels the pairs: numeric+normalized (model-free) or llm_judge.")
    ] = cal.ORACLES[0],
    oracle_model: Annotated[
        str | None, typer.Option(help="llm_judge oracle: an HF model path to judge with (default: the config's target).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per verify call.")] = 64,
    allow_test_split: AllowTestSplitOpt = False,
    config: ConfigOpt = "default",
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rate verifiers against an oracle on (draft step, target step) pairs from lr runs on train questions.

    --out gets pairs.jsonl, calibration.json and calibration.png.
    """
    from lookahead.config import load_config

    assert out is not None  # it has a default; typer never passes None
    if (limit is not None and limit < 1) or offset < 0 or batch_size < 1:
        raise fail("--limit and --batch-size must be >= 1 and --offset >= 0")
    try:
        names = cal.verifier_names(verifiers)
        cal.check_oracle(oracle)
    except LookaheadError as exc:
        raise fail(str(exc)) from None
    try:
        cfg = load_config(config, [*(set_ or []), "mode=lr"])
        run = cal.prepare_run(cfg, out, data, question_field, offset, limit, allow_test_split)
        quiet_transformers()  # model loading, also the embedding verifier's
        with run.reasoner() as reasoner:
            _collect(run, reasoner)
            pairs = run.pairs()
            labels, reports = run.rate(reasoner, pairs, names, oracle, oracle_model, batch_size)
    except LookaheadError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted: rerun the same command to resume from {out}[/]")
        raise typer.Exit(130) from None
    payload = run.write_report(pairs, labels, reports, oracle, oracle_model)
    _print_report(run, payload, reports, as_json)
