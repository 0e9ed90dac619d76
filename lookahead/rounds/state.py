"""The state a round reads and writes: one problem (`ProblemState`), what a round proposes before
committing (`Proposal`), and what it may call (`RoundContext`: engines, verifier, worker threads).

The arithmetic every round repeats lives here once: the tokens left after a prefix
(`ProblemState.tokens_left`), the sampling parameters of a step capped there
(`ProblemState.step_params`), the final-answer check (`ProblemState.states_answer`), and one
engine call with its timing and stats (`RoundContext.target_steps`, `draft_step`, `verify`).

Example:
    >>> proposal = Proposal(drafts=["A.\\n\\n"], targets=[], verdicts=[])
    >>> accepted_run(proposal)      # no target step to compare with: nothing is accepted
    0
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lookahead.config import LookaheadConfig, SamplingParams, uses_token_speculation
from lookahead.errors import GenerationCancelled
from lookahead.prompts import Messages
from lookahead.stats import RoundStats
from lookahead.steps import is_complete_step
from lookahead.types import Completion, StepRecord, Verdict
from lookahead.verifiers.base import Verifier, is_failure

if TYPE_CHECKING:
    from lookahead.adaptive import AdaptiveGamma
    from lookahead.engines.base import Engine


@dataclass
class ProblemState:
    """One problem's state, advanced round by round."""

    config: LookaheadConfig  # the effective config of this request (defaults + its overrides)
    mode: str  # "ar", "lr", "sd" or "lr+sd" (see lookahead.config.MODES)
    final_answer: re.Pattern[str]  # compiled config.final_answer_pattern
    messages: Messages  # the chat messages of the question
    target_prompt: str  # messages rendered with the target's chat template
    draft_prompt: str  # messages rendered with the draft's chat template ("" in ar / sd mode)
    token_limit: int  # budget for the completion (tokens): min(max_total_tokens, context left)
    prompt_tokens: int  # tokens of target_prompt (tokens)
    completion: str = ""  # the committed steps, joined
    tokens: int = 0  # target tokens of `completion` (tokens)
    steps: list[StepRecord] = field(default_factory=list)  # the trace
    rounds: int = 0  # rounds run so far (rounds)
    finish_reason: str | None = None  # set once a stop rule fires
    stats: RoundStats = field(default_factory=RoundStats)
    draft_tokens: int = 0  # tokens the draft generated so far, all its calls (tokens)
    # pipeline: draft steps e_2, e_3, ... the previous round drafted ahead from exactly the text
    # committed now; this round takes them as its first draft steps without drafting them again
    carried_steps: list[str] = field(default_factory=list)
    # set from any thread to stop: a call of it waiting in a batch leaves, the rounds end ("cancelled")
    cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def speculates(self) -> bool:
        """Do this problem's engine calls use token-level speculation (``sd`` / ``lr+sd``)?"""
        return uses_token_speculation(self.mode)

    def tokens_left(self, target: Engine, drafted: str = "") -> int:
        """Budget left (tokens) after the committed text plus ``drafted`` (counted by the target)."""
        used = target.count_tokens(self.completion + drafted) if drafted else self.tokens
        return self.token_limit - used

    def step_params(self, sampling: SamplingParams, left: int) -> SamplingParams:
        """``sampling`` for one step with ``left`` tokens of budget: capped at the step cap and the budget."""
        return dataclasses.replace(sampling, max_new_tokens=min(self.config.max_step_tokens, left))

    def states_answer(self, step: str) -> bool:
        """Does ``step`` state a final answer that ends the problem (``stop_at_final_answer``)?"""
        return bool(self.config.stop_at_final_answer and self.final_answer.search(step))

    def judge_context(self) -> str:
        """What a judge reads before the steps: the question (the last user message), then the
        committed steps (the draft steps before depth i follow)."""
        question = next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")
        return f"{question}\n\n{self.completion}" if question else self.completion


@dataclass
class Proposal:
    """What one round produced before committing."""

    drafts: list[str]  # d_1..d_k (k <= γ), each a complete step
    targets: list[Completion]  # t_1..t_{k+1}; the bonus row is missing when no budget is left
    verdicts: list[Verdict]  # verdict_i for (d_i, t_i), i = 1..k
    # pipelined rounds: draft steps e_1, e_2, ... drafted after P + d_1..d_γ (`ahead_of`); the next
    # round starts with e_2, e_3, ... when this round commits exactly ahead_of + e_1 (`carry_ahead`)
    ahead_of: str = ""
    ahead: list[str] = field(default_factory=list)


def accepted_run(proposal: Proposal) -> int:
    """Length of the longest run of accepted draft steps from depth 1 (the draft steps committed).

    A draft step counts only if its verdict accepted it and the target step it was compared with
    ended on the delimiter (a capped target step is never matched).
    """
    drafts, targets, verdicts = proposal.drafts, proposal.targets, proposal.verdicts
    accepted = 0
    while (
        accepted < len(drafts)
        and accepted < len(targets)
        and verdicts[accepted].accepted
        and targets[accepted].finish_reason == "stop"
    ):
        accepted += 1
    return accepted


def carry_ahead(state: ProblemState, ahead_of: str, ahead: Sequence[str]) -> None:
    """After a commit: keep e_2, e_3, ... for the next round if the committed text is ahead_of + e_1.

    They were drafted from exactly that text, with the budget it leaves, so they are the draft
    steps the next round would draft (with a greedy draft) -- it uses them instead.
    """
    if ahead and state.finish_reason is None and state.completion == ahead_of + ahead[0]:
        state.carried_steps = list(ahead[1:])


@dataclass
class RoundContext:
    """What a round may call besides its problem: the engines, the verifier, the target's threads.

    The reasoner builds one for each problem it advances, so the round strategies
    (`lookahead.rounds`) reach the models without importing the reasoner. The draft, the verifier
    and the worker threads are created on first use: ``ar`` / ``sd`` rounds never load the draft.
    Every engine call of a round goes through the methods below, which time it and count it in
    the problem's stats.
    """

    target: Engine  # the target engine
    load_draft: Callable[[], Engine]  # the draft engine (loaded by the first call)
    load_verifier: Callable[[], Verifier]  # the verifier of the problem's config (created by the first call)
    load_workers: Callable[[], ThreadPoolExecutor]  # pipelined rounds: the threads running target rows
    policy: AdaptiveGamma | None = None  # chain rounds: chooses γ per round; None = config.gamma

    @property
    def draft(self) -> Engine:
        return self.load_draft()

    def generate(
        self, engine: Engine, state: ProblemState, prompts: list[str], params: SamplingParams | list[SamplingParams]
    ) -> list[Completion]:
        """One engine call whose rows end at the step delimiter.

        ``speculate=True`` is passed only in token-speculation modes: the protocol's default is
        off, and engines written without the keyword keep working in the other modes.
        """
        stop = [state.config.step_delimiter]
        if state.speculates:
            return engine.generate(prompts, params, stop=stop, speculate=True)
        return engine.generate(prompts, params, stop=stop)

    def target_steps(self, state: ProblemState, rows: Sequence[tuple[str, int]]) -> list[Completion]:
        """The target's own step after each ``(drafted, left)`` row, in ONE batched call.

        ``drafted``: the draft text after the committed text; ``left``: the budget left there
        (tokens, > 0). Timed and counted as a target call.
        """
        cfg = state.config
        prompts = [state.target_prompt + state.completion + drafted for drafted, _ in rows]
        params = [state.step_params(cfg.target_sampling, left) for _, left in rows]
        start = time.perf_counter()
        targets = self.generate(self.target, state, prompts, params) if prompts else []
        state.stats.observe_target_call(targets, time.perf_counter() - start)
        return targets

    def draft_step(self, state: ProblemState, text: str, left: int) -> str | None:
        """One draft call after committed-plus-drafted ``text`` with ``left`` > 0 tokens of budget
        left there; the draft step, or None when it is not complete (then it can never be accepted).

        A draft step longer than the budget left could never match: the target's step from the
        same prefix is capped there. (Counted in draft tokens: exact for a shared tokenizer.)
        """
        cfg = state.config
        params = state.step_params(cfg.draft_sampling, left)
        step = self.generate(self.draft, state, [state.draft_prompt + text], params)[0]
        state.stats.observe_tokens("draft", [step])
        state.draft_tokens += step.completion_tokens
        if step.finish_reason != "stop" or not is_complete_step(step.text, cfg.step_delimiter):
            return None
        return step.text

    def verify(
        self, state: ProblemState, contexts: list[str], drafts: list[str], targets: list[Completion]
    ) -> list[Verdict]:
        """One verifier call on the pairs (d_i, t_i) with their contexts; timed, failures rejected."""
        start = time.perf_counter()
        verifier = self.load_verifier()
        try:
            verdicts = verifier.verify(contexts, drafts, [t.text for t in targets])
            if len(verdicts) != len(drafts):
                raise ValueError(f"verifier returned {len(verdicts)} verdicts for {len(drafts)} pairs")
            if any(is_failure(v) for v in verdicts):  # it failed or timed out and rejected on its own
                state.stats.verifier_failures += 1
        except GenerationCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 -- a broken verifier must not kill the run: reject, count, go on
            state.stats.verifier_failures += 1
            verdicts = [Verdict(accepted=False, score=0.0, verifier=verifier.name, reason=f"failed: {exc}") for _ in drafts]
        state.stats.verify_s += time.perf_counter() - start
        return verdicts


RoundStrategy = Callable[[RoundContext, ProblemState], Proposal]
"""One round of one problem: from the committed text to a `Proposal` (`lookahead.rounds.ROUNDS`)."""
