"""Cascade verifier: cheap checks first, a model only for the pairs they cannot decide.

Most (draft step, target step) pairs are easy: identical, or stating different numbers. A stage
decides a pair when it is confident -- its score is >= ``accept_at`` (accept) or <= ``reject_at``
(reject) -- and passes the rest, and only the rest, to the next stage, in one batched call per
stage. The last stage decides every pair left by its own ``accepted``. Each verdict names the
stage that decided (``verifier="cascade/embedding"``) and carries that stage's score.

Default stages (``options: {stages: [...]}`` replaces them; a stage entry is ``{name, options,
accept_at, reject_at, timeout_s}``; an omitted ``accept_at``/``reject_at`` takes the default of
that stage name below, an explicit ``null`` means "never decides that way")::

    exact      accept_at 1.0                  (identical steps)
    numeric    accept_at 1.0, reject_at 0.0   (same numbers / no number in common)
    embedding  accept_at 0.99, reject_at 0.6  (near-identical wording / clearly different)
    llm_judge  last stage: its own verdict    (the reasoner's target as judge)

The numeric stage abstains (passes the pair on) when neither step states a number and their
normalized texts differ: it has nothing to judge there. Embedding's accept_at is high on
purpose: a step that changes one number can still reach a cosine of 0.98 (see
`lookahead.verifiers.embedding`).

A stage that raises (even a `LookaheadError`, e.g. a judge engine without log-probabilities),
reports failed verdicts, or runs past its ``timeout_s`` leaves its pairs
undecided (counted in ``stage_failures``) and they go to the next stage; if the last stage fails
they are rejected (the target step is committed) with the failure as reason.

Example:
    >>> v = CascadeVerifier(stages=[{"name": "exact"}, {"name": "numeric"}], delimiter="\\n\\n")
    >>> [x.verifier for x in v.verify(["", ""], ["a 1\\n\\n", "b 2\\n\\n"], ["a 1\\n\\n", "b 3\\n\\n"])]
    ['cascade/exact', 'cascade/numeric']
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lookahead.errors import LookaheadError
from lookahead.steps import DEFAULT_STEP_DELIMITER
from lookahead.types import Verdict
from lookahead.verifiers.base import (
    GuardedVerifier,
    Verifier,
    VerifierBase,
    check_timeout,
    is_failure,
    rejections,
)

DEFAULT_STAGES: list[dict[str, Any]] = [
    {"name": "exact", "accept_at": 1.0, "reject_at": None},
    {"name": "numeric", "accept_at": 1.0, "reject_at": 0.0},
    {"name": "embedding", "accept_at": 0.99, "reject_at": 0.6},
    {"name": "llm_judge", "accept_at": None, "reject_at": None},
]
_DEFAULT_BOUNDS = {s["name"]: (s["accept_at"], s["reject_at"]) for s in DEFAULT_STAGES}
STAGE_KEYS = ("name", "options", "accept_at", "reject_at", "timeout_s")


class _StageCall(GuardedVerifier):
    """Runs one stage's verifier under the stage's own timeout; failures become failed verdicts."""

    def __init__(self, name: str, verifier: Verifier, timeout_s: float | None) -> None:
        super().__init__(timeout_s)
        self.name = f"cascade/{name}"
        self.verifier = verifier

    def _verify_batch(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        try:
            return self.verifier.verify(contexts, drafts, targets)
        except LookaheadError as exc:  # inside a cascade even a misconfigured stage only passes its pairs on
            raise RuntimeError(str(exc)) from None


@dataclass
class Stage:
    """One stage of the cascade."""

    name: str  # verifier registry name
    verifier: Verifier  # the stage's verifier
    accept_at: float | None  # accept a pair whose score >= this; None = never accepts early
    reject_at: float | None  # reject a pair whose score <= this; None = never rejects early
    call: _StageCall  # the verifier under the stage's timeout

    def decide(self, verdict: Verdict) -> bool | None:
        """True/False when this stage is confident about the pair, None to pass it on."""
        if is_failure(verdict):
            return None
        if self.name == "numeric" and not verdict.accepted and (verdict.reason or "").startswith("no numbers"):
            return None  # no number on either side: nothing for a numeric check to judge
        if self.accept_at is not None and verdict.score >= self.accept_at:
            return True
        if self.reject_at is not None and verdict.score <= self.reject_at:
            return False
        return None


class CascadeVerifier(VerifierBase):
    """Run the stages in order; each sees only the pairs the previous ones left undecided.

    Every stage gets the cascade's step delimiter (unless its own options name one).
    """

    name = "cascade"
    needs_engines = True

    def __init__(
        self,
        stages: Sequence[Mapping[str, Any]] | None = None,
        engines: Mapping[str, Callable[[], Any]] | None = None,
        delimiter: str = DEFAULT_STEP_DELIMITER,
        **options: Any,
    ) -> None:
        if options:
            raise ValueError(f"unknown options {sorted(options)}; the cascade verifier takes 'stages'")
        super().__init__(delimiter)
        specs = DEFAULT_STAGES if stages is None else stages
        if isinstance(specs, (str, Mapping)) or not specs:
            raise ValueError("stages must be a non-empty list of {name: ..., options: ..., accept_at: ..., reject_at: ...}")
        self.stages = [self._build(i, spec, engines or {}, self.delimiter) for i, spec in enumerate(specs)]
        self.stage_failures: Counter[str] = Counter()  # stage name -> batches it failed (pairs passed on)
        self.decided_by: Counter[str] = Counter()  # stage name -> pairs it decided

    @property
    def failures(self) -> int:
        """Stage batches that failed or timed out (their pairs went to the next stage or were rejected)."""
        return sum(self.stage_failures.values())

    @staticmethod
    def _build(i: int, spec: Any, engines: Mapping[str, Callable[[], Any]], delimiter: str) -> Stage:
        from lookahead.config import VerifierConfig
        from lookahead.verifiers import create_verifier

        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"stages[{i}] must be a mapping with a 'name' (got {spec!r})")
        unknown = sorted(set(spec) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(f"stages[{i}] has unknown keys {unknown}; a stage takes {', '.join(STAGE_KEYS)}")
        name = str(spec["name"])
        if name == "cascade":
            raise ValueError(f"stages[{i}]: a cascade cannot contain a cascade")
        options = spec.get("options") or {}
        if not isinstance(options, Mapping):
            raise TypeError(f"stages[{i}].options must be a mapping (got {options!r})")
        accept_at, reject_at = _DEFAULT_BOUNDS.get(name, (None, None))
        accept_at = spec.get("accept_at", accept_at)
        reject_at = spec.get("reject_at", reject_at)
        for key, value in (("accept_at", accept_at), ("reject_at", reject_at)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise ValueError(f"stages[{i}].{key} must be a finite number or null (got {value!r})")
        if accept_at is not None and reject_at is not None and reject_at >= accept_at:
            raise ValueError(f"stages[{i}] ({name}): reject_at ({reject_at}) must be below accept_at ({accept_at})")
        timeout_s = check_timeout(spec.get("timeout_s"))
        verifier = create_verifier(VerifierConfig(name=name, options=dict(options)), engines, step_delimiter=delimiter)
        return Stage(name, verifier, accept_at, reject_at, _StageCall(name, verifier, timeout_s))

    def verify(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        n = len(drafts)
        if not (len(contexts) == n == len(targets)):
            raise ValueError(f"got {len(contexts)} contexts, {n} drafts and {len(targets)} targets; need one each per pair")
        final: list[Verdict | None] = [None] * n
        undecided = list(range(n))
        for k, stage in enumerate(self.stages):
            if not undecided:
                break
            last = k == len(self.stages) - 1
            verdicts = stage.call.verify(
                [contexts[i] for i in undecided], [drafts[i] for i in undecided], [targets[i] for i in undecided]
            )
            if any(is_failure(v) for v in verdicts):
                self.stage_failures[stage.name] += 1
            left = []
            for i, verdict in zip(undecided, verdicts, strict=True):
                decision = verdict.accepted if last and not is_failure(verdict) else stage.decide(verdict)
                if decision is None:
                    if last:  # the last stage failed on this pair: the target step is used
                        final[i] = Verdict(False, 0.0, f"cascade/{stage.name}", reason=verdict.reason or "failed")
                    else:
                        left.append(i)
                    continue
                final[i] = Verdict(decision, verdict.score, f"cascade/{stage.name}", reason=verdict.reason)
                self.decided_by[stage.name] += 1
            undecided = left
        for i in undecided:  # unreachable with >= 1 stage; kept so no pair is ever without a verdict
            final[i] = rejections(1, self.name, "failed: no stage decided")[0]
        return [v for v in final if v is not None]
