"""Sequential rounds over a chain of draft steps: the paper's round, and the ``ar`` round (γ = 0).

One chain round for one problem, with lookahead depth γ (vocabulary: `lookahead.types`)::

    propose : d_1 = draft(P), d_2 = draft(P + d_1), ..., d_γ            (sequential, cheap)
    expand  : t_i = target(P + d_1 .. d_{i-1}) for i = 1..γ+1           (ONE batched call)
    judge   : verdict_i = verifier(P + d_1 .. d_{i-1}, d_i, t_i)        (one batched call)

then the reasoner commits (`lookahead.loop.LookaheadReasoner.commit`). With ``adaptive_gamma``
the context's `AdaptiveGamma` policy chooses γ in 0..gamma before the round and learns from it
afterwards (γ = 0: no draft call, one target row -- an ``ar`` round).

Example:
    >>> proposal = chain_round(context, state)     # doctest: +SKIP
    >>> proposal.drafts, [t.text for t in proposal.targets], proposal.verdicts  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lookahead.adaptive import RoundOutcome
from lookahead.rounds.state import ProblemState, Proposal, RoundContext, accepted_run
from lookahead.types import Completion, Verdict


def propose(context: RoundContext, state: ProblemState, gamma: int) -> list[str]:
    """Draft up to γ complete steps, one after another (each from the previous ones).

    Drafting stops early when no budget is left after the prefix, at an incomplete draft step
    (it can never be accepted), and after a step that states the final answer.
    """
    drafts: list[str] = []
    start = time.perf_counter()
    for _ in range(gamma):
        left = state.tokens_left(context.target, "".join(drafts))
        if left <= 0:
            break  # no budget left for a target step after this prefix
        step = context.draft_step(state, state.completion + "".join(drafts), left)
        if step is None:
            break  # an incomplete draft step can never be accepted: stop looking ahead
        drafts.append(step)
        if state.states_answer(step):
            break  # the problem ends here if this step is accepted
    state.stats.draft_s += time.perf_counter() - start
    return drafts


def expand(context: RoundContext, state: ProblemState, drafts: list[str]) -> list[Completion]:
    """The target's own step from P, P+d_1, ..., P+d_1..d_k: one batched call.

    The bonus row (after all k drafts) is left out when no budget is left after them or the
    last draft states the final answer.
    """
    rows: list[tuple[str, int]] = []  # (drafted text after P, tokens left there)
    for i in range(len(drafts) + 1):
        drafted = "".join(drafts[:i])
        left = state.tokens_left(context.target, drafted)
        is_bonus = 0 < i == len(drafts)
        if left <= 0 or (is_bonus and state.states_answer(drafts[-1])):
            break
        rows.append((drafted, left))
    return context.target_steps(state, rows)


def judge(context: RoundContext, state: ProblemState, drafts: list[str], targets: list[Completion]) -> list[Verdict]:
    """Verdicts for (d_i, t_i); a verifier failure rejects every pair and is counted."""
    if not drafts:
        return []
    contexts, text = [], state.judge_context()
    for draft in drafts:
        contexts.append(text)
        text += draft
    return context.verify(state, contexts, drafts, targets[: len(drafts)])


def ar_round(context: RoundContext, state: ProblemState) -> Proposal:
    """The target alone: its next step (``ar`` / ``sd``; no draft, no verifier)."""
    return Proposal(drafts=[], targets=expand(context, state, []), verdicts=[])


def chain_round(context: RoundContext, state: ProblemState) -> Proposal:
    """One sequential round: propose, expand, judge (γ chosen by the adaptive policy, if any)."""
    policy = context.policy
    gamma = state.config.gamma
    if policy is not None:  # under load, the rows the target call would share decide too
        gamma = policy.choose(load=context.target.occupancy(), batch_costs=context.target.batch_costs)
    state.stats.observe_gamma(gamma)
    spent = _Spent.since(state)
    drafts = propose(context, state, gamma)  # gamma = 0: no draft call, an ar round
    targets = expand(context, state, drafts)
    proposal = Proposal(drafts, targets, judge(context, state, drafts, targets))
    if policy is not None:  # learn before committing: a stream closed mid-round still counts
        policy.learn(spent.outcome(state, gamma, proposal))
    return proposal


@dataclass
class _Spent:
    """The problem's cost counters when a round started, to measure what the round spent."""

    draft_s: float  # seconds in draft calls so far (s)
    target_s: float  # seconds in target calls so far (s)
    verify_s: float  # seconds in the verifier so far (s)
    draft_tokens: int  # tokens the draft generated so far (tokens)

    @classmethod
    def since(cls, state: ProblemState) -> _Spent:
        stats = state.stats
        return cls(stats.draft_s, stats.target_s, stats.verify_s, state.draft_tokens)

    def outcome(self, state: ProblemState, gamma: int, proposal: Proposal) -> RoundOutcome:
        """What the round that started at this snapshot accepted and cost, for the adaptive policy."""
        stats = state.stats
        return RoundOutcome(
            gamma=gamma,
            accepted_run=accepted_run(proposal),
            verdicts=proposal.verdicts,
            draft_s=stats.draft_s - self.draft_s,
            target_s=stats.target_s - self.target_s,
            target_rows=len(proposal.targets),
            verify_s=stats.verify_s - self.verify_s,
            draft_tokens=state.draft_tokens - self.draft_tokens,
            target_tokens=sum(t.completion_tokens for t in proposal.targets),
        )
