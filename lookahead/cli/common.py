"""What every ``lookahead`` command shares: the consoles, the one-line error, safe printing, the
library quieting, and the options several commands take, declared once.

A shared option is an ``Annotated`` type: a command declares ``config: ConfigOpt = "default"``
and gets the same flag, short name and help as every other command that takes it; only the
default is the command's own. Command files hold argument parsing and printing only; the work
is done by the library (`lookahead.eval`, `lookahead.distill`, `lookahead.calibrate`, ...), which
never imports from here.

Example:
    from lookahead.cli.common import ConfigOpt, SetOpt, fail

    def my_command(config: ConfigOpt = "default", set_: SetOpt = None) -> None:
        if not set_:
            raise fail("give at least one --set KEY=VALUE")
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(highlight=False)
"""Standard output: the human summary (and the final JSON line, written to sys.stdout directly)."""
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
"""Standard error: progress, warnings and errors."""

# -- shared options -----------------------------------------------------------------------------
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

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Preset name (default, tiny) or YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set gamma=3 --set temperature=0 (eval, bench: for every run)."),
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)]
TrainDataOpt = Annotated[Path | None, typer.Option("--data", help=TRAIN_DATA_HELP)]
TaskOpt = Annotated[
    str, typer.Option("--task", help="gsm8k, aime24, math500, jsonl:PATH (any JSONL file) or hf:NAME[:CONFIG] (online).")
]
OffsetOpt = Annotated[int, typer.Option("--offset", help="Skip this many rows (problems or questions) first.")]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="How many rows (problems, or questions of distill/calibrate) to take from --offset (eval default: all).")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output folder (its files: see above); rerun the same command to resume."),
]
QuestionFieldOpt = Annotated[
    str | None,
    typer.Option(
        "--question-field", help="Field of each JSONL row holding the question (unset in eval: the task's own; jsonl: problem)."
    ),
]
AllowTestSplitOpt = Annotated[
    bool,
    typer.Option(
        "--allow-test-split/--no-allow-test-split", help="Allow a file whose name says 'test' (you will not be able to evaluate on it)."
    ),
]
ForceNewOpt = Annotated[
    bool, typer.Option("--force-new/--no-force-new", help="Start over in --out: move its earlier files into out/previous-<time>/.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="End with one JSON line a machine can parse (the result).")]


# -- printing -----------------------------------------------------------------------------------
# Control characters a terminal would act on (escape sequences, bell, carriage return, C1 codes)
# and the bidirectional overrides that reorder what is shown; newline and tab stay as they are.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every control character but newline and tab written as an escape (``\\x1b``).

    For everything printed to the terminal that came from a user, a data file or a model (the
    question, the steps, answers, error messages): none of it can move the cursor, retitle the
    window or hide text.
    """
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def json_line(payload: Any) -> str:
    """One JSON line: ``json.dumps`` (non-ASCII kept), with the control characters JSON leaves raw
    (DEL, C1, line separators, bidi overrides) written as ``\\uXXXX`` too. Parses to the same value."""
    text = json.dumps(payload, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: MESSAGE`` (plain text, never markup; control characters escaped) and return the exit.

    Usage: ``raise fail("--limit must be >= 1")``; exit code 2 means a mistake in the input.
    """
    line = " ".join(str(message).splitlines())  # one line, whatever the exception said
    err_console.print(Text.assemble(("error:", "bold red"), " ", terminal_safe(line)))
    return typer.Exit(code)


def finite_options(**options: float | None) -> None:
    """Refuse NaN and infinity in float options (typer accepts ``inf`` and ``nan``), naming the option."""
    for name, value in options.items():
        if value is not None and not math.isfinite(value):
            flag = "--" + name.replace("_", "-")
            raise fail(f"{flag} must be a finite number (got {value}); NaN and infinity are not allowed")


def progress_bar(*extra: ProgressColumn) -> Progress:
    """The progress bar of the long commands, on stderr: description, bar, N/M, time left, ``extra``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, *extra, console=err_console)


# -- libraries ----------------------------------------------------------------------------------
def quiet_transformers() -> None:
    """transformers' progress bars and warnings off (model loading prints nothing); no-op without it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def quiet_libraries(cfg: Any) -> None:
    """For configs that load transformers models: our own INFO messages (e.g. the one-time model
    conversion) on stderr, the libraries' progress bars and warnings off."""
    import logging

    if "hf" not in (cfg.target.backend, cfg.draft.backend):
        return

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("lookahead")
    if not log.handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    quiet_transformers()
