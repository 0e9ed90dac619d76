"""The `Verifier` protocol: judge (draft step, target step) pairs, one batched call a round.

Example:
    >>> from lookahead.verifiers import create_verifier
    >>> from lookahead.config import VerifierConfig
    >>> v = create_verifier(VerifierConfig(name="exact"))
    >>> [x.accepted for x in v.verify(["ctx", "ctx"], ["a\\n\\n", "b\\n\\n"], ["a\\n\\n", "c\\n\\n"])]
    [True, False]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from lookahead.types import Verdict


@runtime_checkable
class Verifier(Protocol):
    name: str  # registry name, recorded in every verdict

    def verify(
        self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]
    ) -> list[Verdict]:
        """One verdict per pair, in input order. ``contexts[i]`` is the text before both steps."""
        ...
