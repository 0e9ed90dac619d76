"""Acceptance statistics of the Lookahead Reasoning loop, first-class and cheap.

Counting convention (per problem, summed over rounds):
- ``drafted[i]``: rounds in which a draft step at depth i (1-based) was proposed and judged.
- ``matched[i]``: of those, how many the verifier accepted on their own (its raw verdicts,
  whatever happened at smaller depths) -- the verifier's acceptance rate per depth.
- ``accepted[i]``: rounds whose accepted run reached depth i (steps 1..i all accepted); these
  steps were committed as the draft wrote them. ``accepted[i] <= matched[i]``.
- A round commits ``accepted run + 1`` steps (the fallback or bonus step), unless a stop
  condition (end of sequence, final answer, budget) cut it earlier.

Example:
    >>> s = RoundStats()
    >>> s.observe_round(drafted=2, matched=[True, False], accepted=1, committed=2)
    >>> s.summary()["acceptance_rate"]
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    def summary(self) -> dict[str, Any]:
        drafted = sum(self.drafted)
        accepted = sum(self.accepted)
        return {
            "rounds": self.rounds,
            "drafted_steps": drafted,
            "accepted_steps": accepted,
            "committed_steps": self.committed_steps,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "acceptance_by_depth": [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted)],
            "verifier_accept_by_depth": [m / d if d else 0.0 for m, d in zip(self.matched, self.drafted)],
            "accepted_per_round": accepted / self.rounds if self.rounds else 0.0,
            "steps_per_round": self.committed_steps / self.rounds if self.rounds else 0.0,
            "draft_s": round(self.draft_s, 4),
            "target_s": round(self.target_s, 4),
            "verify_s": round(self.verify_s, 4),
            "verifier_failures": self.verifier_failures,
            "target_prompt_tokens": self.target_prompt_tokens,
            "target_cached_tokens": self.target_cached_tokens,
        }
