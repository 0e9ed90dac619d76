"""``lookahead eval``: one benchmark set, several runs side by side, a table users can trust.

The work is `lookahead.eval.runner` (the invocation), `lookahead.eval.harness` (jobs, records,
the output folder) and `lookahead.eval.report` (summary and plots); this file parses the options
and prints. `open_records`, `run_evaluation` and `interrupted` are shared with ``lookahead bench``.

Example:
    lookahead eval --task gsm8k --limit 50 --modes ar,lr
    lookahead eval --task math500 --limit 20 --modes 'ar,lr[gamma=1],lr[gamma=4],lr[verifier=numeric]'
    lookahead eval --task jsonl:aime25.jsonl --question-field problem --answer-field answer --samples 4 \\
        --set temperature=0.6 --out runs/aime25      # rerun the same command to resume after Ctrl-C

Writes ``<out>/records.jsonl`` (one line per problem x run x sample), ``run.json`` (the settings),
``summary.json``, ``summary.md`` and three PNG plots; prints the table and, with ``--json``, ends
with one JSON line. ``<out>/.lock`` keeps a second invocation out of the folder while one runs;
secrets (``--set target.api_key=...``) are written as ``***`` everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    QuestionFieldOpt,
    SetOpt,
    TaskOpt,
    console,
    err_console,
    fail,
    json_line,
    progress_bar,
    quiet_libraries,
    terminal_safe,
)
from lookahead.errors import LookaheadError
from lookahead.eval import harness as h
from lookahead.eval import report, runner

if TYPE_CHECKING:
    from lookahead.eval.harness import RecordStore
    from lookahead.eval.runner import Evaluation
    from lookahead.loop import LookaheadReasoner

MODES_HELP = (
    "Runs, comma-separated: a mode (ar, lr, sd, lr+sd) with optional overrides, "
    "e.g. 'ar,lr\\[gamma=1],lr\\[gamma=4],lr\\[verifier=numeric]'. A run overriding an engine "
    "(target.*, draft.*; e.g. 'sd\\[target.speculation.method=draft]') gets its own engines. "
    "Peers: peer:hf-ar, peer:hf-assisted, peer:hf-prompt-lookup\\[prompt_lookup_num_tokens=N], "
    "peer:llamacpp, peer:llamacpp-lookup."
)
JSON_KEYS = ("label", "accuracy", "accuracy_stderr", "speedup", "speedup_median", "tokens_per_s",
             "step_acceptance", "agreement_with_ar", "unparseable", "errors", "finished_rows", "rows")  # fmt: skip
"""Per run, the keys of the final JSON line."""


# -- shared with bench --------------------------------------------------------------------------
def open_records(evaluation: Evaluation, force_new: bool) -> RecordStore:
    """Open the output folder (`runner.open_records`); says so when a torn last line or
    duplicate records were dropped."""
    store = runner.open_records(evaluation, force_new)
    if store.repaired:
        err_console.print(
            f"[yellow]dropped a torn last line ({store.repaired} bytes) of {escape(str(store.path))}; it is rerun[/]"
        )
    if store.duplicates:
        err_console.print(
            f"[yellow]dropped {store.duplicates} duplicate records (same problem, run and sample) from "
            f"{escape(str(store.path))}; the first of each is kept[/]"
        )
    return store


def run_evaluation(
    evaluation: Evaluation,
    store: RecordStore,
    warmup: bool = True,
    on_loaded: Callable[[LookaheadReasoner], None] | None = None,
) -> int:
    """Run the jobs not yet in ``store`` with a progress bar (`runner.run_pending`); returns how
    many were run. ``on_loaded`` sees the reasoner once loaded, before the first job."""
    ev = evaluation
    jobs = runner.pending_jobs(ev, store)
    if not jobs:
        return 0
    if ev.total > len(jobs):
        err_console.print(f"resuming {escape(str(ev.out))}: {ev.total - len(jobs)} of {ev.total} records already there")
    quiet_libraries(ev.config)
    runner.run_pending(ev, store, jobs, warmup=warmup, on_loaded=on_loaded,
                       loading=lambda: console.status("loading models..."),
                       reporting=lambda: _progress(ev, done=ev.total - len(jobs)))  # fmt: skip
    return len(jobs)


@contextmanager
def _progress(evaluation: Evaluation, done: int) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress bar over the evaluation's records; yields the callback that advances it."""
    name = escape(evaluation.source.name)
    with progress_bar() as bar:
        progress = bar.add_task(f"eval {name}", total=evaluation.total, completed=done)

        def on_record(record: dict[str, Any]) -> None:
            mark = "error" if record["status"] == "error" else ("✓" if record["correct"] else "✗")
            label = escape(terminal_safe(f"{record['run']} {mark}"))
            bar.update(progress, advance=1, description=f"eval {name} · {label}")

        yield on_record


def interrupted(out: Path | None) -> typer.Exit:
    """Say what Ctrl-C kept and how to resume; the exit (code 130) to raise."""
    if out is None:
        err_console.print("[yellow]interrupted before anything was written[/]")
    else:
        hint = "the same command" + ("" if "--out" in sys.argv or "-o" in sys.argv else f" with --out {out}")
        err_console.print(
            f"[yellow]interrupted: every finished record is saved in {escape(str(out / h.RECORDS_FILE))}; "
            f"resume with {escape(hint)}[/]"
        )
    return typer.Exit(130)


# -- printing -----------------------------------------------------------------------------------
def summary_table(summary: dict[str, Any]) -> Table:
    """The runs table for the terminal (`report.table_rows`, short header)."""
    header, rows = report.table_rows(summary, short=True)
    table = Table(
        title=f"{summary.get('task')}: {summary['problems_with_records']} problems × {summary.get('samples')} samples",
        caption="speedup: summed wall time vs ar; median: per-problem ratio; accept: accepted/drafted steps; "
        "agree: same answer as ar",
    )
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(terminal_safe(cell)) for cell in row))  # plain text: "lr[gamma=4]" is not markup
    return table


def _print_summary(summary: dict[str, Any], out: Path, paths: list[Path], as_json: bool) -> None:
    wide = Console(highlight=False, width=max(console.width, report.table_width(summary)))  # never cut a run label
    wide.print(summary_table(summary))
    console.print(
        Text(f"records, summary and plots in {out}/ ({', '.join(p.name for p in paths)})"), soft_wrap=True
    )
    if as_json:
        payload = {
            "out": str(out),
            "summary": str(out / report.SUMMARY_JSON),
            "baseline": summary["baseline"],
            "runs": [{k: run[k] for k in JSON_KEYS} for run in summary["runs"]],
        }
        sys.stdout.write(json_line(payload))


# -- the command --------------------------------------------------------------------------------
def eval_command(
    task: TaskOpt = "gsm8k",
    split: Annotated[str, typer.Option(help="Split: the file <data-dir>/<task>/<split>.jsonl, or the hub split.")] = "test",
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    modes: Annotated[str, typer.Option(help=MODES_HELP)] = "ar,lr",
    samples: Annotated[int, typer.Option(help="Samples per problem and run (seed + sample when temperature > 0).")] = 1,
    out: OutOpt = None,
    data_dir: DataDirOpt = None,
    question_field: QuestionFieldOpt = None,
    answer_field: Annotated[str | None, typer.Option(help="Field holding the reference answer (default: answer).")] = None,
    config: ConfigOpt = "default",
    set_: SetOpt = None,
    equal_hardware: Annotated[
        bool,
        typer.Option(
            help="Give ar the draft's hardware too (with replicas >= 1: target.replicas += draft.replicas; recorded)."
        ),
    ] = False,
    concurrency: Annotated[int, typer.Option(help="Problems in flight at once (K). Each run is timed as its own block of K in flight, one run after another; the in-process batcher, a Ray pool or a server shares the engines' batches among them.")] = 1,
    force_new: ForceNewOpt = False,
    warmup: Annotated[bool, typer.Option(help="One short untimed generation per mode before timing.")] = True,
    plots: Annotated[bool, typer.Option(help="Write the PNG plots.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate several runs (modes, overrides) on the same problems: accuracy, speedup vs ar, acceptance.

    --out (default runs/eval-<task>-<time>) gets records.jsonl, run.json, summary.json, summary.md
    and the plots.
    """
    evaluation = store = None
    try:
        try:
            evaluation = runner.prepare_evaluation(
                task=task, modes=modes, config=config, set_=set_, split=split, limit=limit, offset=offset,
                samples=samples, out=out, data_dir=data_dir, question_field=question_field,
                answer_field=answer_field, equal_hardware=equal_hardware, concurrency=concurrency,
            )  # fmt: skip
            store = open_records(evaluation, force_new)
            run_evaluation(evaluation, store, warmup=warmup)
        except LookaheadError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise interrupted(evaluation.out if evaluation is not None else out) from None
        summary = report.summarize(evaluation.records(store), evaluation.runs, evaluation.meta())
        paths = report.write_reports(evaluation.out, summary, plots=plots)
    finally:
        if store is not None:
            store.close()  # the folder's lock: the next invocation may write there
    _print_summary(summary, evaluation.out, paths, as_json)
