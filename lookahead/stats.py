"""Acceptance statistics of the Lookahead Reasoning loop, first-class and cheap.

Counting convention (per problem, summed over rounds):
- ``drafted[i]``: rounds in which a draft step at depth i (1-based) was proposed and judged.
- ``matched[i]``: of those, how many the verifier accepted on their own (its raw verdicts,
  whatever happened at smaller depths) -- the verifier's acceptance rate per depth.
- ``accepted[i]``: rounds whose accepted run reached depth i (steps 1..i all accepted); these
  steps were committed as the draft wrote them. ``accepted[i] <= matched[i]``.
- ``gamma_rounds[γ]``: rounds of step-level speculation (``lr``, ``lr+sd``) run with lookahead
  depth γ -- the configured γ, or the per-round choice of ``adaptive_gamma`` (0 = an ar round).
  Summary key ``gamma_rounds`` maps str(γ) -> rounds (JSON keys); empty in ``ar`` / ``sd``.
- A round commits ``accepted run + 1`` steps (the fallback or bonus step), unless a stop
  condition (end of sequence, final answer, budget) cut it earlier.
- Pipelined rounds (``pipeline``, `lookahead.rounds.pipelined`) judge draft steps one by one and stop at the
  first rejection, so only the draft steps up to it count as drafted (a sequential round judges
  all of them).

Times: ``draft_s`` / ``target_s`` / ``verify_s`` are the busy seconds of each part (``target_s`` =
the sum of the target calls' durations, also of rows run at the same time). ``overlap_s``: seconds
the parts ran at the same time, ``max(draft_s + target_s + verify_s - round wall time, 0)`` summed
over pipelined rounds (0 in sequential rounds), so the busy wall time is ``draft_s + target_s +
verify_s - overlap_s``. ``carried_drafts``: draft steps a pipelined round drafted ahead for the
next round and that round used instead of drafting them again (their draft calls count in
``draft_calls`` / ``draft_s`` of the round that drafted them).

Token-level speculation (``sd`` / ``lr+sd``), summed over every row of every engine call, kept
apart for the target's and the draft's calls (`RoundStats.observe_tokens`, `TokenSpecStats`), as
the engines report them in `Completion` (rows the round did not commit count too: the engine did
that work):
- ``spec_draft_tokens``: tokens proposed to the engine's verification passes.
- ``spec_accepted_tokens``: of those, tokens the model accepted and the row used (a row ending at a
  stop string, EOS or its cap inside an accepted run does not count the accepted tokens after it).
- ``spec_verify_passes``: verification forward passes (one per decode iteration per row, whether
  or not the row proposed anything; the first token of a call, from the prefill, is not one).
- **token acceptance length** = ``(spec_accepted_tokens + spec_verify_passes) / spec_verify_passes``
  = mean accepted tokens per verification pass + 1: the tokens each target forward pass commits
  (the +1 is the model's own token of every pass: the correction or the bonus token). 1.0 means
  nothing was accepted; 0.0 is reported when no pass was counted (no speculation, or an engine
  that does not report passes).

`RoundStats.summary` keys: the target's calls ``spec_draft_tokens``, ``spec_accepted_tokens``,
``spec_verify_passes``, ``token_acceptance_rate`` (accepted / proposed) and
``token_acceptance_length``; the draft's calls (``lr+sd``) ``spec_draft_calls_draft_tokens``,
``spec_draft_calls_accepted_tokens``, ``spec_draft_calls_verify_passes``,
``draft_token_acceptance_rate`` and ``draft_token_acceptance_length``. Counts start with
``spec_`` and can be summed over problems (the eval harness does); ratios do not.

Example:
    >>> s = RoundStats()
    >>> s.observe_round(drafted=2, matched=[True, False], accepted=1, committed=2)
    >>> s.summary()["acceptance_rate"]
    0.5
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lookahead.types import Completion


@dataclass
class TokenSpecStats:
    """Token-level speculation counts of one side's engine calls (convention: module docstring)."""

    spec_draft_tokens: int = 0  # tokens proposed to verification passes (tokens)
    spec_accepted_tokens: int = 0  # of those, accepted and used by their row (tokens)
    spec_verify_passes: int = 0  # verification forward passes, per row (passes)

    def observe(self, completions: Iterable[Completion]) -> None:
        for c in completions:
            self.spec_draft_tokens += c.spec_draft_tokens
            self.spec_accepted_tokens += c.spec_accepted_tokens
            self.spec_verify_passes += c.spec_verify_passes

    @property
    def acceptance_length(self) -> float:
        """Tokens committed per verification pass (accepted per pass + 1); 0.0 without passes."""
        passes = self.spec_verify_passes
        return (self.spec_accepted_tokens + passes) / passes if passes else 0.0

    def summary(self, side: str) -> dict[str, Any]:
        """Summary keys (module docstring): counts start with ``spec_`` (summable over problems),
        ratios do not; the draft side's keys say ``draft_calls`` / start with ``draft_``."""
        counts = "spec_" if side == "target" else "spec_draft_calls_"
        ratios = "" if side == "target" else "draft_"
        proposed, accepted = self.spec_draft_tokens, self.spec_accepted_tokens
        return {
            f"{counts}draft_tokens": proposed,
            f"{counts}accepted_tokens": accepted,
            f"{counts}verify_passes": self.spec_verify_passes,
            f"{ratios}token_acceptance_rate": accepted / proposed if proposed else 0.0,
            f"{ratios}token_acceptance_length": round(self.acceptance_length, 4),
        }


@dataclass
class RoundStats:
    """Running counters of one problem's rounds (see the module docstring for the convention)."""

    rounds: int = 0  # rounds run
    drafted: list[int] = field(default_factory=list)  # [depth-1] -> draft steps judged at that depth
    matched: list[int] = field(default_factory=list)  # [depth-1] -> verifier accepts at that depth
    accepted: list[int] = field(default_factory=list)  # [depth-1] -> accepted runs reaching depth
    committed_steps: int = 0  # steps committed (accepted + fallback/bonus)
    draft_s: float = 0.0  # seconds spent in draft calls
    target_s: float = 0.0  # seconds spent in target calls
    verify_s: float = 0.0  # seconds spent in the verifier
    verifier_failures: int = 0  # verifier calls that raised (counted as rejections)
    target_prompt_tokens: int = 0  # prompt tokens sent to the target, all rows of all calls
    target_cached_tokens: int = 0  # of those, tokens whose KV cache an earlier call had computed
    target_tokens: TokenSpecStats = field(default_factory=TokenSpecStats)  # token SD in target calls
    draft_tokens: TokenSpecStats = field(default_factory=TokenSpecStats)  # token SD in draft calls
    gamma_rounds: dict[int, int] = field(default_factory=dict)  # lookahead depth γ -> rounds run with it
    draft_calls: int = 0  # draft engine calls, complete draft steps or not (calls)
    overlap_s: float = 0.0  # seconds draft, target and verifier ran at the same time (pipelined rounds)
    carried_drafts: int = 0  # draft steps drafted ahead in one round and used by the next (steps)

    def _grow(self, depth: int) -> None:
        for counts in (self.drafted, self.matched, self.accepted):
            counts.extend([0] * (depth - len(counts)))

    def observe_round(self, drafted: int, matched: list[bool], accepted: int, committed: int) -> None:
        """Record one round: ``drafted`` draft steps judged, the raw verdicts, the accepted run."""
        self.rounds += 1
        self._grow(drafted)
        for depth in range(drafted):
            self.drafted[depth] += 1
            self.matched[depth] += bool(matched[depth])
            if depth < accepted:
                self.accepted[depth] += 1
        self.committed_steps += committed

    def observe_gamma(self, gamma: int) -> None:
        """Record the lookahead depth γ one round of step-level speculation used (0 = an ar round)."""
        self.gamma_rounds[gamma] = self.gamma_rounds.get(gamma, 0) + 1

    def observe_tokens(self, side: str, completions: Iterable[Completion]) -> None:
        """Add the token-level speculation counts of one engine call (``side``: target or draft)."""
        if side not in ("target", "draft"):
            raise ValueError(f"side must be 'target' or 'draft' (got {side!r})")
        if side == "draft":
            self.draft_calls += 1
        (self.target_tokens if side == "target" else self.draft_tokens).observe(completions)

    def observe_target_call(self, completions: Sequence[Completion], seconds: float) -> None:
        """Record one target call (or one pipelined row): its seconds, token speculation and prompt tokens."""
        self.target_s += seconds
        self.observe_tokens("target", completions)
        self.target_prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.target_cached_tokens += sum(c.cached_tokens for c in completions)

    def summary(self) -> dict[str, Any]:
        drafted = sum(self.drafted)
        accepted = sum(self.accepted)
        tokens = {**self.target_tokens.summary("target"), **self.draft_tokens.summary("draft")}
        return {
            "rounds": self.rounds,
            "drafted_steps": drafted,
            "accepted_steps": accepted,
            "committed_steps": self.committed_steps,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "acceptance_by_depth": [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted, strict=True)],
            "verifier_accept_by_depth": [m / d if d else 0.0 for m, d in zip(self.matched, self.drafted, strict=True)],
            "accepted_per_round": accepted / self.rounds if self.rounds else 0.0,
            "steps_per_round": self.committed_steps / self.rounds if self.rounds else 0.0,
            "draft_s": round(self.draft_s, 4),
            "target_s": round(self.target_s, 4),
            "verify_s": round(self.verify_s, 4),
            "overlap_s": round(self.overlap_s, 4),
            "carried_drafts": self.carried_drafts,
            "verifier_failures": self.verifier_failures,
            "gamma_rounds": {str(g): n for g, n in sorted(self.gamma_rounds.items())},
            "draft_calls": self.draft_calls,
            "target_prompt_tokens": self.target_prompt_tokens,
            "target_cached_tokens": self.target_cached_tokens,
            **tokens,
        }
