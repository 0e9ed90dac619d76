"""Plain data exchanged between the engines, the verifiers and the loop (no torch here).

Vocabulary (used everywhere in the code, docs and tests):
- **step**: a piece of reasoning text that ends with the step delimiter (default ``"\\n\\n"``)
  included, or that stopped at the per-step token cap, end of sequence or the token budget.
- **round**: one iteration of the Lookahead Reasoning loop: draft γ steps, let the target write
  its own step from each drafted prefix, verify, commit.
- **lookahead depth γ** (``gamma``): how many steps the draft proposes in one round.
- **draft step** ``d_i``: the draft model's proposal at depth ``i`` (1-based), written from the
  committed prefix plus ``d_1..d_{i-1}``.
- **target step** ``t_i``: the target model's own step written from the same prefix as ``d_i``.
  ``t_{γ+1}``, written after all γ draft steps, is the **bonus step**.
- **accepted step**: a draft step whose verdict accepted it and all draft steps before it; it is
  committed as the draft wrote it.
- **fallback step**: the target step committed at the first rejection (or the bonus step when all
  γ were accepted), so every round commits at least one target-quality step.

Token-level speculation, a second layer inside every engine call (modes: ``ar`` = the target
alone, step by step; ``lr`` = step-level speculation as above; ``sd`` = ``ar`` with token-level
speculative decoding in every target call; ``lr+sd`` = ``lr`` with it in every draft and target
call):
- **proposed tokens**: tokens guessed ahead (by n-gram lookup or a small draft model) and checked
  by the model in one **verification pass** (one forward pass over all of them).
- **accepted tokens**: the proposed tokens the model agreed with (greedy: equal to its argmax;
  sampled: kept by rejection sampling); each pass also commits one token of the model's own.
- **token acceptance length**: tokens committed per verification pass (accepted per pass + 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "eos"]
"""Why a completion ended: ``stop`` = a stop string (the step delimiter) was produced,
``length`` = the token cap of the call was reached, ``eos`` = the model ended the sequence."""

StepSource = Literal["draft", "target"]
"""Which model's text was committed for a step."""


@dataclass
class Completion:
    """One continuation returned by an engine for one prompt."""

    text: str  # generated text; a matched stop string is kept at its end
    prompt_tokens: int  # tokens in the prompt, in this engine's tokenizer
    completion_tokens: int  # tokens generated, up to and including the one completing the stop
    finish_reason: FinishReason
    matched_stop: str | None = None  # the stop string that ended the text, if any
    latency_s: float = 0.0  # seconds from the call's start until this row finished
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused instead of recomputed
    spec_draft_tokens: int = 0  # token-level speculation: tokens proposed (0 = none)
    spec_accepted_tokens: int = 0  # token-level speculation: proposed tokens accepted and used
    spec_verify_passes: int = 0  # token-level speculation: target forward passes that verified (passes)


@dataclass
class Verdict:
    """A verifier's judgement of one (draft step, target step) pair."""

    accepted: bool  # does the draft step say the same thing as the target step?
    score: float  # verifier-specific similarity or confidence; 1.0/0.0 for exact checks
    verifier: str  # name of the verifier that decided
    reason: str | None = None  # short human-readable explanation (failures, rules)


@dataclass
class StepRecord:
    """One committed step with everything that led to it, as stored in a `Result` trace."""

    index: int  # 0-based position of the step in the completion
    round: int  # 0-based round that committed it
    depth: int  # 1-based lookahead depth in its round (the bonus step has depth γ+1)
    text: str  # the committed text
    source: StepSource  # "draft" for an accepted step, "target" for a fallback/AR step
    tokens: int  # tokens of the committed text (target tokenizer)
    draft_text: str | None = None  # the draft step at this depth (None in `ar` mode / bonus)
    target_text: str | None = None  # the target step at this depth
    verdict: Verdict | None = None  # the verifier's verdict on (draft_text, target_text)
    seconds: float = 0.0  # wall time of the round that committed it, split over its steps


@dataclass
class Result:
    """The outcome of one `LookaheadReasoner.generate` call."""

    text: str  # the whole completion (all committed steps joined)
    mode: str  # "ar", "lr", "sd" or "lr+sd" (see the module docstring)
    steps: list[StepRecord]  # the trace, one record per committed step
    prompt_tokens: int  # tokens of the rendered prompt (target tokenizer)
    completion_tokens: int  # tokens of `text` (target tokenizer)
    finish_reason: str  # "eos", "length" (token budget), "answer" (final answer) or "stop"
    wall_time_s: float  # seconds for the whole generation
    rounds: int  # number of rounds (in `ar`: number of target steps)
    stats: dict[str, Any] = field(default_factory=dict)  # `RoundStats.summary()`
    answer: str | None = None  # extracted final answer, if any

    @property
    def drafted_steps(self) -> int:
        return int(self.stats.get("drafted_steps", 0))

    @property
    def accepted_steps(self) -> int:
        return int(self.stats.get("accepted_steps", 0))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drafted_steps"] = self.drafted_steps
        out["accepted_steps"] = self.accepted_steps
        return out
