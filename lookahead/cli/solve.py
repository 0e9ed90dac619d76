"""``lookahead solve``: one problem, each step shown as it is committed, then the answer and a summary.

Example:
    lookahead solve --example gsm8k:0                     # Lookahead Reasoning, default models
    lookahead solve "What is 17 * 23?" --mode ar          # the target alone (baseline)
    lookahead solve --example gsm8k:3 --set gamma=3 --set temperature=0 --json
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from lookahead.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    SetOpt,
    console,
    err_console,
    fail,
    json_line,
    quiet_libraries,
    terminal_safe,
)
from lookahead.config import (
    LookaheadConfig,
    uses_step_speculation,
    uses_token_speculation,
)
from lookahead.errors import LookaheadError


def _step_text(record: Any) -> Text:
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


# -- why some rounds did not speculate ----------------------------------------------------------
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
    if b2 is None:  # no 2-row call measured yet: the policy priced it from a prior; its predicted speedups say why
        return None
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


# -- the summary --------------------------------------------------------------------------------
def _same_answer(answer: str | None, reference: str) -> bool:
    from lookahead.answers import answers_match

    return answers_match(answer, reference)


def _speculation_rows(table: Table, result: Any, split: RoundSplit | None) -> None:
    """The summary's rows about speculation: rounds that speculated, step and token acceptance."""
    stats = result.stats
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


def _time_split(result: Any) -> str:
    """Where the time went: draft, target, verify, other (and overlap when pipelined)."""
    stats = result.stats
    step_spec = uses_step_speculation(result.mode)
    parts = [f"draft {stats['draft_s']:.2f} s"] if step_spec else []
    parts.append(f"target {stats['target_s']:.2f} s")
    if step_spec:
        parts.append(f"verify {stats['verify_s']:.3f} s")
    parts.append(f"other {stats['other_s']:.3f} s")
    if stats.get("overlap_s"):
        parts.append(f"overlapped {stats['overlap_s']:.2f} s (pipeline)")
    return ", ".join(parts)


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
    _speculation_rows(table, result, split)
    table.add_row("time split", _time_split(result))
    if stats["target_prompt_tokens"]:
        table.add_row(
            "prefix cache",
            f"{stats['target_cached_tokens']}/{stats['target_prompt_tokens']} target prompt tokens reused from earlier calls",
        )
    return table


# -- the command --------------------------------------------------------------------------------
def _question(question: str | None, example: str | None, data_dir: Any) -> tuple[str, str | None]:
    """The problem text and its reference answer (None for a typed question)."""
    from lookahead.eval.tasks import load_example, parse_example_spec

    if (question is None) == (example is None):
        raise fail("give either a QUESTION or --example TASK:N (e.g. --example gsm8k:0)")
    reference = None
    if example is not None:
        ex = load_example(*parse_example_spec(example), data_dir=data_dir)
        question, reference = ex.question, ex.reference
    assert question is not None
    if not question.strip():
        raise fail("the question is empty; pass the problem text or --example TASK:N")
    return question, reference


def _print_header(cfg: LookaheadConfig, reasoner: Any, question: str) -> None:
    """The question, then one dim line: mode, target, draft, γ, verifier, token SD."""
    step_spec = uses_step_speculation(cfg.mode)
    console.print(Text(f"question: {terminal_safe(question.strip())}", style="bold"))
    console.print(
        Text(
            f"mode {cfg.mode} · target {terminal_safe(reasoner.target.name)}"
            + (f" · draft {terminal_safe(reasoner.draft.name)} · γ={cfg.gamma} · verifier {cfg.verifier.name}"
               if step_spec else "")
            + (f" · token SD {cfg.target.speculation.method}" if uses_token_speculation(cfg.mode) else ""),
            style="dim",
        )
    )
    if step_spec and cfg.draft == cfg.target:
        console.print(
            "[yellow]note: the draft is the same model as the target (no distilled draft yet), "
            "so lr shows the mechanics, not a speedup[/]"
        )


def _solve(cfg: LookaheadConfig, question: str, quiet: bool) -> tuple[Any, RoundSplit]:
    """Load the reasoner, stream the steps (Ctrl-C stops there) and explain the rounds."""
    from lookahead.loop import LookaheadReasoner

    quiet_libraries(cfg)
    with console.status("loading models..."):
        reasoner = LookaheadReasoner.from_config(cfg)
    _print_header(cfg, reasoner, question)
    stream = reasoner.stream(question)
    try:
        for record in stream:
            if not quiet:
                console.print(_step_text(record))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: showing the steps committed so far[/]")
    result = stream.result
    assert result is not None
    adaptive = cfg.adaptive_gamma and uses_step_speculation(result.mode)
    policy = result.stats.get("adaptive") or (reasoner.policy_for(cfg, result.mode).snapshot() if adaptive else None)
    split = round_split(result, adaptive, policy)
    reasoner.close()
    return result, split


def solve_command(
    question: Annotated[str | None, typer.Argument(help="The problem to solve (or use --example).")] = None,
    example: Annotated[
        str | None, typer.Option("--example", "-e", help="TASK:N = 0-based row N of gsm8k, aime24 or math500.")
    ] = None,
    data_dir: DataDirOpt = None,
    mode: Annotated[
        str | None,
        typer.Option(help="ar (target alone), lr (Lookahead Reasoning), sd (token-level speculation) or lr+sd (both)."),
    ] = None,
    config: ConfigOpt = "default",
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the steps as they are committed.")] = False,
) -> None:
    """Solve one problem, showing each step as it is committed, then the answer and a summary."""
    from lookahead.config import load_config

    overrides = list(set_ or [])
    if mode is not None:
        overrides.append(f"mode={mode}")
    try:
        cfg = load_config(config, overrides)
        text, reference = _question(question, example, data_dir)
        result, split = _solve(cfg, text, quiet)
    except LookaheadError as exc:
        raise fail(str(exc)) from None
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
