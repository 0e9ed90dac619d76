"""One invocation of the evaluation harness: validated settings, the output folder, the jobs run.

``lookahead eval`` and ``lookahead bench`` (`lookahead.cli.eval`, `lookahead.cli.bench`) both
go through here: `prepare_evaluation` turns their options into an `Evaluation` (every user
mistake surfaces there, as a `LookaheadError`, before anything is written or loaded),
`open_records` opens its output folder and `run_pending` runs the jobs not yet recorded. The
command files add the progress bar and the printing.

Example:
    >>> ev = prepare_evaluation(task="gsm8k", modes="ar,lr", config="tiny", limit=2)  # doctest: +SKIP
    >>> with open_records(ev, force_new=False) as store:                              # doctest: +SKIP
    ...     run_pending(ev, store, pending_jobs(ev, store))
"""

from __future__ import annotations

import datetime as dt
import platform
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookahead.eval import harness as h

if TYPE_CHECKING:
    from lookahead.config import LookaheadConfig
    from lookahead.eval.harness import Job, RecordStore, RunSpec
    from lookahead.eval.tasks import Problem, TaskSource
    from lookahead.loop import LookaheadReasoner


def task_slug(task: str) -> str:
    """A task spec as a folder-name part: ``jsonl:data/aime25.jsonl`` -> ``jsonl-aime25``."""
    kind, sep, rest = task.partition(":")
    name = Path(rest).name.split(".")[0] if kind == "jsonl" and sep else (rest if sep else task)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{kind}-{name}" if sep else name).strip("-") or "task"


def machine() -> str:
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

    def equal_hardware_note(self) -> str:
        """What --equal-hardware did, in one sentence for the summary."""
        if self.equal_hardware and self.equal_hardware_applied:
            return (
                f"ar ran with target.replicas = {self.ar_config.target.replicas} (its own + the draft's replicas), "
                "after the other runs, once their engines were freed"
            )
        if self.equal_hardware:
            return "in-process engines (draft.replicas = 0): ar already had the whole device; nothing was added"
        return "not requested"

    def meta(self) -> dict[str, Any]:
        """The invocation's part of summary.json: task, selection, machine, config."""
        return {
            "command": self.command,
            "task": self.source.name,
            "location": self.source.location,
            "split": self.source.split,
            "problems": len(self.problems),
            "samples": self.samples,
            "offset": self.offset,
            "limit": self.limit,
            "machine": machine(),
            "concurrency": self.config.concurrency,
            "prefix_caches": (
                "cleared before each run's block of concurrent problems (where the engine can clear its cache)"
                if self.config.concurrency > 1 else "kept: the run that goes first rotates from problem to problem"
            ),
            "equal_hardware": {
                "requested": self.equal_hardware, "applied": self.equal_hardware_applied,
                "note": self.equal_hardware_note(),
            },
            "config": self.config.public_dict(),  # secrets as ***
            "created": h.now(),
        }

    def records(self, store: RecordStore) -> list[dict[str, Any]]:
        """The stored records this invocation asks for (its problems, runs and samples)."""
        return h.selected_records(store, self.problems, self.runs, self.samples)

    @property
    def total(self) -> int:
        """Records this invocation asks for: problems x runs x samples (count)."""
        return len(self.problems) * len(self.runs) * self.samples


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
    from lookahead.answers import require_checker
    from lookahead.config import load_config
    from lookahead.errors import ConfigError
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
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
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
        out=out or Path("runs") / f"{out_prefix}-{task_slug(task)}-{stamp}",
    )


def open_records(evaluation: Evaluation, force_new: bool) -> RecordStore:
    """Open (resume, refuse, or with ``force_new`` start over in) the evaluation's output folder.
    The store says whether a torn last line (``repaired``) or duplicates were dropped."""
    return h.open_output(evaluation.out, evaluation.settings(), force_new)


def pending_jobs(evaluation: Evaluation, store: RecordStore) -> list[Job]:
    """The jobs of this invocation whose records are not in ``store`` yet."""
    ev = evaluation
    return h.plan_jobs(ev.problems, ev.runs, ev.samples, ev.config, ev.source.name, done=store.keys)


def run_pending(
    evaluation: Evaluation,
    store: RecordStore,
    jobs: Sequence[Job],
    *,
    warmup: bool = True,
    on_loaded: Callable[[LookaheadReasoner], None] | None = None,
    loading: Callable[[], AbstractContextManager[Any]] = nullcontext,
    reporting: Callable[[], AbstractContextManager[h.OnRecord | None]] = nullcontext,
) -> None:
    """Run ``jobs`` (`pending_jobs`), storing each record before anyone sees it.

    Loads the reasoner (inside ``loading()``, e.g. a spinner) only if there is something to run;
    ``on_loaded`` sees it once loaded, before the first job (``bench`` measures the target's batch
    costs there). The jobs then run inside ``reporting()``, which yields the callback that sees
    each stored record (e.g. a progress bar's). The reasoner is closed on return, Ctrl-C included.
    """
    from lookahead.loop import LookaheadReasoner

    ev = evaluation
    if not jobs:
        return
    run_jobs = h.pool_runner(ev.config.concurrency) if ev.config.concurrency > 1 else h.run_sequential
    reasoner = None
    try:
        with loading():
            reasoner = LookaheadReasoner.from_config(ev.config)
        if on_loaded is not None:
            on_loaded(reasoner)
        ar_factory = (lambda: LookaheadReasoner.from_config(ev.ar_config)) if ev.equal_hardware_applied else None
        with reporting() as on_record:
            h.run_all(reasoner, jobs, store, run_jobs, on_record, ar_reasoner=ar_factory, warmup=warmup)
    finally:
        if reasoner is not None:
            reasoner.close()
