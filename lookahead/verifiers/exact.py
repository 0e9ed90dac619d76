"""Exact and normalized string verifiers: the cheapest, strictest check of a drafted step.

``exact`` accepts only byte-identical steps, the step delimiter included: with greedy decoding
it makes Lookahead Reasoning lossless (the output equals the target-only output).
``normalized`` compares the step bodies (the delimiter stripped, `step_body`) and forgives
whitespace, case and number formatting (``1,000`` = ``1000``, ``5.0`` = ``5``): cheap, a little
more permissive.

Example:
    >>> NormalizedVerifier(delimiter="\\n\\n").verify([""], ["Total: 1,000 apples\\n\\n"], ["total:  1000 apples\\n\\n"])[0].accepted
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lookahead.steps import DEFAULT_STEP_DELIMITER
from lookahead.types import Verdict
from lookahead.verifiers.base import VerifierBase, step_body

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_TRAILING_ZEROS = re.compile(r"(\d+)\.0+(?!\d)")
_DECIMAL_ZEROS = re.compile(r"(\d+\.\d*?[1-9])0+(?!\d)")
_SPACES = re.compile(r"\s+")


def normalize_step(text: str) -> str:
    """Lower-case, collapse whitespace, drop thousands separators and trailing decimal zeros."""
    text = _THOUSANDS.sub("", text)
    text = _TRAILING_ZEROS.sub(r"\1", text)
    text = _DECIMAL_ZEROS.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip().casefold()


class ExactVerifier(VerifierBase):
    """Accept a draft step only if it is byte-identical to the target step (delimiter included)."""

    name = "exact"

    def __init__(self, delimiter: str = DEFAULT_STEP_DELIMITER, **options: Any) -> None:
        if options:
            raise ValueError(f"the {self.name} verifier takes no options (got {sorted(options)})")
        super().__init__(delimiter)

    def same(self, draft: str, target: str) -> bool:
        """Do the two steps count as the same?"""
        return draft == target

    def verify(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        verdicts = []
        for draft, target in zip(drafts, targets, strict=True):
            same = self.same(draft, target)
            verdicts.append(Verdict(accepted=same, score=1.0 if same else 0.0, verifier=self.name))
        return verdicts


class NormalizedVerifier(ExactVerifier):
    """Accept a draft step if its body equals the target step's after `normalize_step` (and is not empty)."""

    name = "normalized"

    def same(self, draft: str, target: str) -> bool:
        normalized = normalize_step(step_body(draft, self.delimiter))
        return bool(normalized) and normalized == normalize_step(step_body(target, self.delimiter))
