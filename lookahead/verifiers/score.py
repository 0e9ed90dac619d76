"""Self-score verifier (SpecReason-style): the target rates the drafted step's utility from 0 to 9.

SpecReason (arXiv 2504.07891) accepts a speculated step when the base model, reading it in
context, scores it high enough. Here the judge (by default the target itself) reads the solution
so far and the draft step -- not the target step: the question is "is this step good?", not "is
it the same?" -- and one batched forward pass gives the log-probabilities of the ten digit tokens
as the next token (see `lookahead.verifiers.logits`). With ``p_d`` = P(digit d) renormalised over
the ten digits:

- ``rule: expected`` (default): score = sum_d d * p_d, the expected rating, accepted when
  score >= ``threshold`` (default 7, as in SpecReason's main setting: 7 of 9);
- ``rule: tail``: score = P(rating >= threshold) = sum_{d >= threshold} p_d, accepted when > 0.5.

Templates: ``templates/score.txt`` (plain completion prompt ending "Score (0-9):"; the digit labels
are " 0".." 9" where those are single tokens, else a space is appended to the prompt and "0".."9"
are read) and ``templates/score_chat.txt`` (user message through the engine's chat template; the
answer's first token is the digit). Engine, template, timeout and failure handling as in
`LLMJudgeVerifier`.

Example:
    >>> v = create_verifier(VerifierConfig(name="score"), {"target": lambda: reasoner.target},
    ...                     step_delimiter="\\n\\n")  # doctest: +SKIP
    >>> v.verify(["16 - 3 = 13 eggs are left.\\n\\n"], ["13 - 4 = 9 eggs go to market.\\n\\n"], ["..."])[0].score  # doctest: +SKIP
    7.8
"""

from __future__ import annotations

import math
from typing import Any

from lookahead.types import Verdict
from lookahead.verifiers.base import number_option
from lookahead.verifiers.llm_judge import LogitJudge

DIGITS = [str(d) for d in range(10)]
RULES = ("expected", "tail")


class ScoreVerifier(LogitJudge):
    """Accept a draft step the judge rates >= threshold (expected 0-9 rating, or its tail mass)."""

    name = "score"
    template_stem = "score"

    def __init__(self, threshold: float = 7.0, rule: str = "expected", **options: Any) -> None:
        known = {"engines", "engine", "template", "max_context_chars", "max_batch", "delimiter", "timeout_s"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown options {unknown}; the score verifier takes threshold, rule, {', '.join(sorted(known - {'engines'}))}"
            )
        threshold = number_option(threshold, "threshold", "7")
        if not isinstance(rule, str) or rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)} (got {rule!r})")
        if not 0.0 <= threshold <= 9.0:
            raise ValueError(f"threshold must be a rating in [0, 9] (got {threshold})")
        super().__init__(**options)
        self.threshold = float(threshold)  # minimum rating (0-9) of an accepted draft step
        self.rule = rule  # "expected" (mean rating) or "tail" (P(rating >= threshold) > 0.5)
        self.top_score = 9.0 if rule == "expected" else 1.0

    def default_labels(self, engine: Any, variant: str) -> tuple[list[str], str]:
        if variant != "generic":
            return list(DIGITS), ""
        spaced = [" " + d for d in DIGITS]
        tokenizer = engine.tokenizer
        if tokenizer is not None and any(len(tokenizer(s, add_special_tokens=False).input_ids) != 1 for s in spaced):
            return list(DIGITS), " "  # e.g. SmolLM2: " 7" is " " + "7", so read "7" after the space
        return spaced, ""

    def judge(self, logprobs: list[float], draft: str, target: str) -> Verdict:
        top = max(logprobs)
        if top == -math.inf:
            return Verdict(False, 0.0, self.name, reason="the judge gave no digit any probability")
        weights = [math.exp(x - top) for x in logprobs]
        total = sum(weights)
        probs = [w / total for w in weights]
        mass = sum(math.exp(x) for x in logprobs)  # how much of the next token the digits hold
        expected = sum(d * p for d, p in enumerate(probs))
        if self.rule == "expected":
            score, accepted = expected, expected >= self.threshold
        else:
            score = sum(p for d, p in enumerate(probs) if d >= self.threshold)
            accepted = score > 0.5
        reason = f"expected rating {expected:.2f}; digits hold {mass:.0%} of the next token"
        return Verdict(accepted, score, self.name, reason=reason)
