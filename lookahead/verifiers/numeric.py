"""Numeric-consistency verifier: a drafted math step is accepted if it states the same numbers.

GSM8K-style steps differ in wording far more often than in arithmetic, and a wrong number is what
changes the answer. This verifier extracts the numbers of both steps (``1,200`` = ``1200``,
``5.00`` = ``5``, ``3/4`` = ``0.75``, percentages kept as written) and compares the sets of
distinct numbers -- sets, not counts, because a paraphrase often restates a result ("= 9 ... so 9
eggs are left"). The score is their Jaccard similarity, accepted at ``threshold`` (default 1.0:
exactly the same numbers). Steps without any number fall back to the normalized-text comparison.
Both steps are compared without the step delimiter (`step_body`).

Example:
    >>> v = NumericVerifier(delimiter="\\n\\n")
    >>> v.verify([""], ["She sells 16 - 3 - 4 = 9 eggs.\\n\\n"], ["9 eggs are left: 16 - 3 - 4 = 9.\\n\\n"])[0].accepted
    True
    >>> v.verify([""], ["9 * 2 = 18 dollars\\n\\n"], ["9 * 2 = 16 dollars\\n\\n"])[0].accepted
    False
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from lookahead.steps import DEFAULT_STEP_DELIMITER
from lookahead.types import Verdict
from lookahead.verifiers.base import VerifierBase, number_option, step_body
from lookahead.verifiers.exact import normalize_step

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?%?")


def step_numbers(text: str) -> set[str]:
    """The distinct numbers stated in ``text``, as canonical strings."""
    found: set[str] = set()
    for raw in _NUMBER.findall(text):
        token = raw.replace(",", "").replace(" ", "")
        percent = token.endswith("%")
        token = token.rstrip("%")
        try:
            if "/" in token:
                num, den = token.split("/")
                value = Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
            else:
                value = Fraction(token)
        except (ValueError, ZeroDivisionError):
            continue
        if value is None:
            continue
        canonical = str(value.numerator) if value.denominator == 1 else f"{float(value):.10g}"
        found.add(canonical + ("%" if percent else ""))
    return found


class NumericVerifier(VerifierBase):
    """Accept when the two steps state the same numbers (Jaccard of the number sets >= threshold)."""

    name = "numeric"

    def __init__(self, threshold: float = 1.0, delimiter: str = DEFAULT_STEP_DELIMITER, **options: Any) -> None:
        if options:
            raise ValueError(f"unknown options {sorted(options)}; the numeric verifier takes 'threshold'")
        threshold = number_option(threshold, "threshold", "1.0")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (got {threshold})")
        super().__init__(delimiter)
        self.threshold = threshold  # minimum Jaccard similarity of the two number sets

    def verify(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        return [self._judge(d, t) for d, t in zip(drafts, targets, strict=True)]

    def _judge(self, draft: str, target: str) -> Verdict:
        draft, target = step_body(draft, self.delimiter), step_body(target, self.delimiter)
        a, b = step_numbers(draft), step_numbers(target)
        if not a and not b:
            same = bool(normalize_step(draft)) and normalize_step(draft) == normalize_step(target)
            return Verdict(same, 1.0 if same else 0.0, self.name, reason="no numbers: normalized text compared")
        score = len(a & b) / len(a | b)
        return Verdict(score >= self.threshold, score, self.name)
