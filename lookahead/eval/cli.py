"""``lookahead eval``: one benchmark set, several runs side by side, a table users can trust.

Registered by ``lookahead/cli.py`` as ``app.command("eval")(eval_command)``. The steps of an
invocation (`prepare_evaluation`, `open_records`, `run_evaluation`, `interrupted`) are shared with
``lookahead bench`` (`lookahead.bench`), which runs the same harness and adds its own report.

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

import datetime as _dt
import platform
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lookahead.errors import LookaheadError

if TYPE_CHECKING:
    from lookahead.config import LookaheadConfig
    from lookahead.eval.harness import RecordStore, RunSpec
    from lookahead.eval.tasks import Problem, TaskSource
    from lookahead.loop import LookaheadReasoner


DATA_DIR_HELP = (
    "Folder with gsm8k/, aime24/, math500/ (<task>/<split>.jsonl); overrides every other source, as does "
    "$LOOKAHEAD_DATA_DIR. Default: the test splits shipped inside the package (lookahead/data/); other splits "
    "(gsm8k train) from a shared/data folder beside the working directory or the repository, else the hub when online."
)
"""--data-dir of the commands that read benchmark problems (solve, eval, bench)."""
TRAIN_DATA_HELP = (
    "JSONL file of questions. Default: GSM8K train (not shipped in the package): gsm8k/train.jsonl in "
    "$LOOKAHEAD_DATA_DIR, else in a shared/data folder beside the working directory or the repository, "
    "else the hub when online. Never a test split."
)
"""--data of the commands that read GSM8K *train* questions (distill, calibrate)."""


def _slug(task: str) -> str:
    kind, sep, rest = task.partition(":")
    name = Path(rest).name.split(".")[0] if kind == "jsonl" and sep else (rest if sep else task)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{kind}-{name}" if sep else name).strip("-") or "task"


def _machine() -> str:
    """Where the times were measured (absolute times only mean something with their machine)."""
    text = f"{platform.platform()}, {platform.machine()}, python {platform.python_version()}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return text


def command_line() -> str:
    """The command as typed, for run.json and the reports (``lookahead ...``), secret values as ***."""
    from lookahead.config import redact_text

    return redact_text(shlex.join(["lookahead", *sys.argv[1:]]))


@dataclass
class Evaluation:
    """One invocation of the harness, validated and ready to run (shared by ``eval`` and ``bench``)."""

    command: str  # the command line as typed (recorded in run.json and the summary)
    config: LookaheadConfig  # the config every run starts from (task prompt applied, mode = reasoner_mode)
    ar_config: LookaheadConfig  # the config of the ar runs (more replicas under --equal-hardware)
    equal_hardware: bool  # --equal-hardware was asked for
    equal_hardware_applied: bool  # ... and gave the ar runs more hardware (replicas >= 1)
    source: TaskSource  # where the problems come from
    runs: list[RunSpec]  # the runs side by side, in the order given
    problems: list[Problem]  # the selected problems (from --offset, at most --limit)
    samples: int  # samples per problem and run (count)
    offset: int  # problems skipped first (count)
    limit: int | None  # problems asked for (None: all)
    out: Path  # the output folder (records.jsonl, run.json, summary.*)

    def settings(self) -> dict[str, Any]:
        """run.json: what must match to resume (`harness.RESUME_IDENTITY`) and what selects the jobs."""
        return {
            "command": self.command,
            "task": self.source.name,
            "location": self.source.location,
            "split": self.source.split,
            "question_field": self.source.question_field,
            "answer_field": self.source.answer_field,
            "config": self.config.public_dict(),  # secrets as ***
            "equal_hardware": self.equal_hardware,
            "concurrency": self.config.concurrency,
            "modes": [r.label for r in self.runs],
            "samples": self.samples,
            "offset": self.offset,
            "limit": self.limit,
        }

    def meta(self) -> dict[str, Any]:
        """The invocation's part of summary.json: task, selection, machine, config."""
        from lookahead.eval.harness import _now

        if self.equal_hardware and self.equal_hardware_applied:
            eh_note = (
                f"ar ran with target.replicas = {self.ar_config.target.replicas} (its own + the draft's replicas), "
                "after the other runs, once their engines were freed"
            )
        elif self.equal_hardware:
            eh_note = "in-process engines (draft.replicas = 0): ar already had the whole device; nothing was added"
        else:
            eh_note = "not requested"
        return {
            "command": self.command,
            "task": self.source.name,
            "location": self.source.location,
            "split": self.source.split,
            "problems": len(self.problems),
            "samples": self.samples,
            "offset": self.offset,
            "limit": self.limit,
            "machine": _machine(),
            "concurrency": self.config.concurrency,
            "equal_hardware": {
                "requested": self.equal_hardware, "applied": self.equal_hardware_applied, "note": eh_note
            },
            "config": self.config.public_dict(),  # secrets as ***
            "created": _now(),
        }

    def records(self, store: RecordStore) -> list[dict[str, Any]]:
        """The stored records this invocation asks for (its problems, runs and samples)."""
        from lookahead.eval import harness as h

        return h.selected_records(store, self.problems, self.runs, self.samples)


def prepare_evaluation(
    *,
    task: str,
    modes: str,
    config: str,
    set_: list[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    offset: int = 0,
    samples: int = 1,
    out: Path | None = None,
    data_dir: Path | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    equal_hardware: bool = False,
    concurrency: int = 1,
    command: str | None = None,
    out_prefix: str = "eval",
) -> Evaluation:
    """Load the config, the task and its problems, parse the runs: every user mistake surfaces
    here, as a `LookaheadError`, before anything is written or loaded. ``out`` defaults to
    ``runs/<out_prefix>-<task>-<time>``."""
    from lookahead.config import load_config
    from lookahead.errors import ConfigError
    from lookahead.eval import harness as h
    from lookahead.eval.answers import require_checker
    from lookahead.eval.tasks import load_problems, resolve_task

    if samples < 1:
        raise ConfigError(f"--samples must be >= 1 (got {samples})")
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1 (got {concurrency})")
    require_checker()
    cfg = load_config(config, list(set_ or []))
    if concurrency != 1:
        cfg.concurrency = concurrency
    source = resolve_task(task, split, data_dir, question_field, answer_field)
    cfg = h.apply_task_prompt(cfg, source)
    runs = h.parse_run_specs(modes, cfg)
    problems = load_problems(source, offset, limit)
    cfg.mode = h.reasoner_mode(runs)  # load the draft up front only if one of our runs drafts; peers load their own
    ar_cfg, eh_applied = h.equal_hardware_config(cfg) if equal_hardware else (cfg, False)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Evaluation(
        command=command or command_line(),
        config=cfg,
        ar_config=ar_cfg,
        equal_hardware=equal_hardware,
        equal_hardware_applied=eh_applied,
        source=source,
        runs=runs,
        problems=problems,
        samples=samples,
        offset=offset,
        limit=limit,
        out=out or Path("runs") / f"{out_prefix}-{_slug(task)}-{stamp}",
    )


def open_records(evaluation: Evaluation, force_new: bool) -> RecordStore:
    """Open (resume, refuse, or with ``force_new`` start over in) the output folder; says so when
    a torn last line was dropped."""
    from rich.markup import escape

    from lookahead.cli import err_console
    from lookahead.eval import harness as h

    store = h.open_output(evaluation.out, evaluation.settings(), force_new)
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
    """Run the jobs not yet in ``store`` with a progress bar; returns how many were run.

    Loads the reasoner only if there is something to run; ``on_loaded`` sees it once loaded,
    before the first job (``bench`` measures the target's batch costs there). The reasoner is
    closed on return, Ctrl-C included.
    """
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from lookahead.cli import _quiet_libraries, console, err_console, terminal_safe
    from lookahead.eval import harness as h
    from lookahead.loop import LookaheadReasoner

    ev = evaluation
    cfg = ev.config
    jobs = h.plan_jobs(ev.problems, ev.runs, ev.samples, cfg, ev.source.name, done=store.keys)
    total = len(ev.problems) * len(ev.runs) * ev.samples
    if not jobs:
        return 0
    if total > len(jobs):
        err_console.print(f"resuming {escape(str(ev.out))}: {total - len(jobs)} of {total} records already there")
    run_jobs = h.pool_runner(cfg.concurrency) if cfg.concurrency > 1 else h.run_sequential
    _quiet_libraries(cfg)
    reasoner = None
    try:
        with console.status("loading models..."):
            reasoner = LookaheadReasoner.from_config(cfg)
        if on_loaded is not None:
            on_loaded(reasoner)
        ar_factory = (lambda: LookaheadReasoner.from_config(ev.ar_config)) if ev.equal_hardware_applied else None
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console) as bar:
            progress = bar.add_task(f"eval {escape(ev.source.name)}", total=total, completed=total - len(jobs))

            def on_record(record: dict[str, Any]) -> None:
                mark = "error" if record["status"] == "error" else ("✓" if record["correct"] else "✗")
                label = escape(terminal_safe(f"{record['run']} {mark}"))
                bar.update(progress, advance=1, description=f"eval {escape(ev.source.name)} · {label}")

            h.run_all(reasoner, jobs, store, run_jobs, on_record, ar_reasoner=ar_factory, warmup=warmup)
    finally:
        if reasoner is not None:
            reasoner.close()
    return len(jobs)


def interrupted(out: Path | None) -> typer.Exit:
    """Say what Ctrl-C kept and how to resume; the exit (code 130) to raise."""
    from rich.markup import escape

    from lookahead.cli import err_console
    from lookahead.eval import harness as h

    if out is None:
        err_console.print("[yellow]interrupted before anything was written[/]")
    else:
        hint = "the same command" + ("" if "--out" in sys.argv or "-o" in sys.argv else f" with --out {out}")
        err_console.print(
            f"[yellow]interrupted: every finished record is saved in {escape(str(out / h.RECORDS_FILE))}; "
            f"resume with {escape(hint)}[/]"
        )
    return typer.Exit(130)


def eval_command(
    task: Annotated[
        str, typer.Option(help="gsm8k, aime24, math500, jsonl:PATH (any JSONL file) or hf:NAME[:CONFIG] (online).")
    ] = "gsm8k",
    split: Annotated[str, typer.Option(help="Split: the file <data-dir>/<task>/<split>.jsonl, or the hub split.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Problems to evaluate (from --offset); default: all.")] = None,
    offset: Annotated[int, typer.Option(help="Skip this many problems first.")] = 0,
    modes: Annotated[
        str,
        typer.Option(
            help="Runs, comma-separated: a mode (ar, lr, sd, lr+sd) with optional overrides, "
            "e.g. 'ar,lr\\[gamma=1],lr\\[gamma=4],lr\\[verifier=numeric]'. A run overriding an engine "
            "(target.*, draft.*; e.g. 'sd\\[target.speculation.method=draft]') gets its own engines. "
            "Peers: peer:hf-ar, peer:hf-assisted, peer:hf-prompt-lookup\\[prompt_lookup_num_tokens=N], "
            "peer:llamacpp, peer:llamacpp-lookup."
        ),
    ] = "ar,lr",
    samples: Annotated[int, typer.Option(help="Samples per problem and run (seed + sample when temperature > 0).")] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default runs/eval-<task>-<time>); rerun to resume.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help=DATA_DIR_HELP),
    ] = None,
    question_field: Annotated[str | None, typer.Option(help="Field holding the question (jsonl default: problem).")] = None,
    answer_field: Annotated[str | None, typer.Option(help="Field holding the reference answer (default: answer).")] = None,
    config: Annotated[str, typer.Option("--config", "-c", help="Preset name (default, tiny) or YAML file.")] = "default",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key for every run, e.g. --set max_total_tokens=1024."),
    ] = None,
    equal_hardware: Annotated[
        bool,
        typer.Option(
            help="Give ar the draft's hardware too (with replicas >= 1: target.replicas += draft.replicas; recorded)."
        ),
    ] = False,
    concurrency: Annotated[int, typer.Option(help="Problems in flight at once; > 1 needs the Ray pool.")] = 1,
    force_new: Annotated[
        bool, typer.Option(help="Start over in --out: move its earlier files into out/previous-<time>/.")
    ] = False,
    warmup: Annotated[bool, typer.Option(help="One short untimed generation per mode before timing.")] = True,
    plots: Annotated[bool, typer.Option(help="Write the PNG plots.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the summary.")] = False,
) -> None:
    """Evaluate several runs (modes, overrides) on the same problems: accuracy, speedup vs ar, acceptance."""
    from rich.text import Text

    from lookahead.cli import _fail, console, json_line
    from lookahead.eval import report

    evaluation = store = None
    try:
        try:
            evaluation = prepare_evaluation(
                task=task, modes=modes, config=config, set_=set_, split=split, limit=limit, offset=offset,
                samples=samples, out=out, data_dir=data_dir, question_field=question_field,
                answer_field=answer_field, equal_hardware=equal_hardware, concurrency=concurrency,
            )  # fmt: skip
            store = open_records(evaluation, force_new)
            run_evaluation(evaluation, store, warmup=warmup)
        except LookaheadError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise interrupted(evaluation.out if evaluation is not None else out) from None

        out = evaluation.out
        summary = report.summarize(evaluation.records(store), evaluation.runs, evaluation.meta())
        paths = report.write_reports(out, summary, plots=plots)
    finally:
        if store is not None:
            store.close()  # the folder's lock: the next invocation may write there
    from rich.console import Console

    wide = Console(highlight=False, width=max(console.width, report.table_width(summary)))  # never cut a run label
    wide.print(report.rich_table(summary))
    console.print(
        Text(f"records, summary and plots in {out}/ ({', '.join(p.name for p in paths)})"), soft_wrap=True
    )
    if as_json:
        keys = ("label", "accuracy", "accuracy_stderr", "speedup", "speedup_median", "tokens_per_s",
                "step_acceptance", "agreement_with_ar", "unparseable", "errors", "finished_rows", "rows")  # fmt: skip
        payload = {
            "out": str(out),
            "summary": str(out / report.SUMMARY_JSON),
            "baseline": summary["baseline"],
            "runs": [{k: run[k] for k in keys} for run in summary["runs"]],
        }
        sys.stdout.write(json_line(payload))
