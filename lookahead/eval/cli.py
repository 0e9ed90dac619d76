"""``lookahead eval``: one benchmark set, several runs side by side, a table users can trust.

Registered by ``lookahead/cli.py`` as ``app.command("eval")(eval_command)``.

Example:
    lookahead eval --task gsm8k --limit 50 --modes ar,lr
    lookahead eval --task math500 --limit 20 --modes 'ar,lr[gamma=1],lr[gamma=4],lr[verifier=numeric]'
    lookahead eval --task jsonl:aime25.jsonl --question-field problem --answer-field answer --samples 4 \\
        --set temperature=0.6 --out runs/aime25      # rerun the same command to resume after Ctrl-C

Writes ``<out>/records.jsonl`` (one line per problem x run x sample), ``run.json`` (the settings),
``summary.json``, ``summary.md`` and three PNG plots; prints the table and, with ``--json``, ends
with one JSON line.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lookahead.errors import LookaheadError


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


def eval_command(
    task: Annotated[
        str, typer.Option(help="gsm8k, aime24, math500, jsonl:PATH (any JSONL file) or hf:NAME[:CONFIG] (online).")
    ] = "gsm8k",
    split: Annotated[str, typer.Option(help="Split: the file <data-dir>/<task>/<split>.jsonl, or the hub split.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Problems to evaluate (from --offset); default: all.")] = None,
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
        Optional[Path], typer.Option("--out", "-o", help="Output folder (default runs/eval-<task>-<time>); rerun to resume.")
    ] = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(help="Folder with gsm8k/, aime24/, math500/ (default: $LOOKAHEAD_DATA_DIR or ../shared/data)."),
    ] = None,
    question_field: Annotated[Optional[str], typer.Option(help="Field holding the question (jsonl default: problem).")] = None,
    answer_field: Annotated[Optional[str], typer.Option(help="Field holding the reference answer (default: answer).")] = None,
    config: Annotated[str, typer.Option("--config", "-c", help="Preset name (default, tiny) or YAML file.")] = "default",
    set_: Annotated[
        Optional[list[str]],
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
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lookahead.cli import _fail, _quiet_libraries, console, err_console
    from lookahead.config import load_config
    from lookahead.eval import harness as h
    from lookahead.eval import report
    from lookahead.eval.answers import require_checker
    from lookahead.eval.tasks import load_problems, resolve_task
    from lookahead.loop import LookaheadReasoner

    reasoner = None
    command = shlex.join(["lookahead", *sys.argv[1:]])
    try:
        if samples < 1:
            raise _fail(f"--samples must be >= 1 (got {samples})")
        if concurrency < 1:
            raise _fail(f"--concurrency must be >= 1 (got {concurrency})")
        require_checker()
        cfg = load_config(config, list(set_ or []))
        if concurrency != 1:
            cfg.concurrency = concurrency
        run_jobs = h.pool_runner(cfg.concurrency) if cfg.concurrency > 1 else h.run_sequential
        source = resolve_task(task, split, data_dir, question_field, answer_field)
        cfg = h.apply_task_prompt(cfg, source)
        runs = h.parse_run_specs(modes, cfg)
        problems = load_problems(source, offset, limit)
        cfg.mode = h.reasoner_mode(runs)  # load the draft up front only if one of our runs drafts; peers load their own
        ar_cfg, eh_applied = h.equal_hardware_config(cfg) if equal_hardware else (cfg, False)
        out = out or Path("runs") / f"eval-{_slug(task)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        settings: dict[str, Any] = {
            "command": command,
            "task": source.name,
            "location": source.location,
            "split": source.split,
            "question_field": source.question_field,
            "answer_field": source.answer_field,
            "config": cfg.to_dict(),
            "equal_hardware": equal_hardware,
            "concurrency": cfg.concurrency,
            "modes": [r.label for r in runs],
            "samples": samples,
            "offset": offset,
            "limit": limit,
        }
        store = h.open_output(out, settings, force_new)
        if store.repaired:
            err_console.print(
                f"[yellow]dropped a torn last line ({store.repaired} bytes) of {escape(str(store.path))}; it is rerun[/]"
            )
        jobs = h.plan_jobs(problems, runs, samples, cfg, source.name, done=store.keys)
        total = len(problems) * len(runs) * samples
        if jobs:
            if total > len(jobs):
                err_console.print(f"resuming {escape(str(out))}: {total - len(jobs)} of {total} records already there")
            _quiet_libraries(cfg)
            with console.status("loading models..."):
                reasoner = LookaheadReasoner.from_config(cfg)
            ar_factory = (lambda: LookaheadReasoner.from_config(ar_cfg)) if eh_applied else None
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=err_console) as bar:
                progress = bar.add_task(f"eval {escape(source.name)}", total=total, completed=total - len(jobs))

                def on_record(record: dict[str, Any]) -> None:
                    mark = "error" if record["status"] == "error" else ("✓" if record["correct"] else "✗")
                    label = escape(f"{record['run']} {mark}")
                    bar.update(progress, advance=1, description=f"eval {escape(source.name)} · {label}")

                h.run_all(reasoner, jobs, store, run_jobs, on_record, ar_reasoner=ar_factory, warmup=warmup)
    except LookaheadError as exc:
        raise _fail(escape(str(exc))) from None  # escaped: run labels like lr[gamma=4] are not markup
    except KeyboardInterrupt:
        if out is None:
            err_console.print("[yellow]interrupted before anything was written[/]")
        else:
            hint = "the same command" + ("" if "--out" in sys.argv or "-o" in sys.argv else f" with --out {out}")
            err_console.print(
                f"[yellow]interrupted: every finished record is saved in {escape(str(out / h.RECORDS_FILE))}; "
                f"resume with {escape(hint)}[/]"
            )
        raise typer.Exit(130) from None
    finally:
        if reasoner is not None:
            reasoner.close()

    if equal_hardware and eh_applied:
        eh_note = (
            f"ar ran with target.replicas = {ar_cfg.target.replicas} (its own + the draft's replicas), "
            "after the other runs, once their engines were freed"
        )
    elif equal_hardware:
        eh_note = "in-process engines (draft.replicas = 0): ar already had the whole device; nothing was added"
    else:
        eh_note = "not requested"
    meta = {
        "command": command,
        "task": source.name,
        "location": source.location,
        "split": source.split,
        "problems": len(problems),
        "samples": samples,
        "offset": offset,
        "limit": limit,
        "machine": _machine(),
        "concurrency": cfg.concurrency,
        "equal_hardware": {"requested": equal_hardware, "applied": eh_applied, "note": eh_note},
        "config": cfg.to_dict(),
        "created": h._now(),
    }
    summary = report.summarize(h.selected_records(store, problems, runs, samples), runs, meta)
    paths = report.write_reports(out, summary, plots=plots)
    from rich.console import Console

    wide = Console(highlight=False, width=max(console.width, report.table_width(summary)))  # never cut a run label
    wide.print(report.rich_table(summary))
    console.print(f"records, summary and plots in {out}/ ({', '.join(p.name for p in paths)})", soft_wrap=True)
    if as_json:
        keys = ("label", "accuracy", "accuracy_stderr", "speedup", "speedup_median", "tokens_per_s",
                "step_acceptance", "agreement_with_ar", "unparseable", "errors", "finished_rows", "rows")  # fmt: skip
        payload = {
            "out": str(out),
            "summary": str(out / report.SUMMARY_JSON),
            "baseline": summary["baseline"],
            "runs": [{k: run[k] for k in keys} for run in summary["runs"]],
        }
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
