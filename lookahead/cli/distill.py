"""``lookahead distill``: a small draft for the config's target, from the target's own solutions.

The phases, the draft's shape and the model card are `lookahead.distill`; this file parses the
options, shows the progress bars and prints where the draft went.

Example:
    lookahead distill --out runs/draft --limit 1000          # generate + train + save
    lookahead distill --out runs/draft --phase train --epochs 2
    lookahead solve --example gsm8k:0 --set draft=runs/draft/model
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TextColumn

from lookahead import distill as d
from lookahead.cli.common import (
    AllowTestSplitOpt,
    ConfigOpt,
    LimitOpt,
    OffsetOpt,
    OutOpt,
    QuestionFieldOpt,
    SetOpt,
    TrainDataOpt,
    console,
    err_console,
    fail,
    finite_options,
    progress_bar,
    quiet_libraries,
)
from lookahead.errors import LookaheadError

PHASES = ("all", "generate", "train")


def _target_layers(text: str | None) -> tuple[int, ...]:
    """``--target-layers 0,1,29`` -> (0, 1, 29); empty when not given."""
    try:
        return tuple(int(x) for x in text.split(",")) if text else ()
    except ValueError:
        raise fail(f"--target-layers must be layer numbers separated by commas, e.g. 0,1,29 (got {text!r})") from None


def _generate(run: d.DistillRun, batch_size: int) -> None:
    """Phase 1 with a progress bar over the run's questions (already solved ones counted as done)."""
    with progress_bar() as bar:
        task = bar.add_task("target solves questions", total=len(run.questions), completed=run.solved())
        run.generate(batch_size, progress=lambda n: bar.advance(task, n))


def _train(run: d.DistillRun, shape: d.DraftShape, settings: d.TrainSettings) -> None:
    """Phases 2 and 3 with a progress bar (steps, loss), then where the draft went and its figures."""
    with progress_bar(TextColumn("loss {task.fields[loss]:.3f}")) as bar:
        task = bar.add_task("training the draft", total=None, loss=float("nan"))

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss)

        dest, report = run.train(shape, settings, progress=on_step)
    console.print(
        f"draft saved to {dest} · {report.parameters / 1e6:.1f} M parameters · {report.steps} steps "
        f"in {report.seconds:.0f} s · held-out loss {report.valid_loss} · top-1 agreement {report.valid_accuracy:.3f} "
        f"· held-out steps written token for token {report.valid_step_match:.3f} "
        f"({report.valid_step_match_copy:.3f} with --set draft.copy=true)"
    )
    console.print(f"use it: lookahead solve --example gsm8k:0 --set draft={dest}")


def distill_command(
    out: OutOpt = Path("runs/distill"),
    data: TrainDataOpt = None,
    question_field: QuestionFieldOpt = "question",
    limit: LimitOpt = 1000,
    offset: OffsetOpt = 0,
    phase: Annotated[str, typer.Option(help="all, generate (target solutions only) or train (on what exists).")] = "all",
    batch_size: Annotated[int, typer.Option(help="Questions the target solves per batch.")] = 16,
    epochs: Annotated[float, typer.Option(help="Passes over the solutions.")] = 4.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 3e-3,
    batch_tokens: Annotated[int, typer.Option(help="Padded tokens per optimizer step.")] = 4096,
    hidden_size: Annotated[int, typer.Option(help="Draft width.")] = 256,
    layers: Annotated[int, typer.Option(help="Draft decoder layers.")] = 4,
    target_layers: Annotated[
        str | None,
        typer.Option(help="Cut the draft from the target instead: these of its decoder layers, e.g. 0,1,29 "
                          "(its weights as the start, its embeddings frozen; --hidden-size/--layers ignored)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of data order, initialisation and negatives.")] = 0,
    allow_test_split: AllowTestSplitOpt = False,
    config: ConfigOpt = "default",
    set_: SetOpt = None,
) -> None:
    """Distil a small draft for the config's target from the target's own solutions.

    Phase 1 lets the target solve --limit questions (greedy, batched; resumable: rerun the same
    command after an interruption). Phase 2 trains a small Llama with the target's tokenizer on
    them (resumable from checkpoint.pt). The draft lands in OUT/model with a model card; use it
    with --set draft=OUT/model. --out gets data.jsonl, checkpoint.pt and model/.
    """
    finite_options(epochs=epochs, lr=lr)
    from lookahead.config import load_config

    assert out is not None  # it has a default; typer never passes None
    if phase not in PHASES:
        raise fail(f"--phase must be all, generate or train (got {phase!r})")
    if (limit is not None and limit < 1) or offset < 0 or batch_size < 1:
        raise fail("--limit and --batch-size must be >= 1 and --offset >= 0")
    if epochs <= 0 or lr <= 0 or batch_tokens < 1 or hidden_size < 1 or layers < 1:
        raise fail("--epochs and --lr must be > 0; --batch-tokens, --hidden-size and --layers >= 1")
    shape = d.draft_shape(hidden_size, layers, _target_layers(target_layers))
    settings = d.TrainSettings(epochs=epochs, lr=lr, batch_tokens=batch_tokens, seed=seed)
    try:
        cfg = load_config(config, list(set_ or []))
        run = d.prepare_run(cfg, out, data, question_field, offset, limit, allow_test_split)
        quiet_libraries(cfg)
        if phase in ("all", "generate"):
            _generate(run, batch_size)
        if phase in ("all", "train"):
            _train(run, shape, settings)
    except LookaheadError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted: rerun the same command to resume from {out}[/]")
        raise typer.Exit(130) from None
