"""The `Verifier` protocol: judge (draft step, target step) pairs, one batched call a round.

Every verifier is built by `lookahead.verifiers.create_verifier` with the configured step
delimiter (`LookaheadConfig.step_delimiter`), kept on `VerifierBase.delimiter`: the verifiers that
compare step bodies strip it (`step_body`), ``exact`` compares whole steps, delimiter included.

Model-based verifiers (embedding, llm_judge, score) can fail (a server down, out of memory) or be
slow. They never raise such a failure into the loop: `GuardedVerifier` runs the batch, and on an
exception or after ``timeout_s`` seconds it rejects every pair of the batch -- the target step is
then committed, which is always safe -- counts the failure on the verifier (``failures``,
``timeouts``) and says so in each verdict's ``reason``: ``"failed: ..."`` or ``"timeout: ..."``
(see `is_failure`). Mistakes the user must fix (a bad option, a label that is not one token)
still raise their `LookaheadError`.

Example:
    >>> from lookahead.verifiers import create_verifier
    >>> from lookahead.config import VerifierConfig
    >>> v = create_verifier(VerifierConfig(name="exact"), step_delimiter="\\n\\n")
    >>> [x.accepted for x in v.verify(["ctx", "ctx"], ["a\\n\\n", "b\\n\\n"], ["a\\n\\n", "c\\n\\n"])]
    [True, False]
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from lookahead.errors import LookaheadError
from lookahead.steps import DEFAULT_STEP_DELIMITER
from lookahead.types import Verdict

FAILURE_PREFIXES = ("failed:", "timeout")
"""A verdict whose ``reason`` starts with one of these is a rejection caused by a failure."""


@runtime_checkable
class Verifier(Protocol):
    name: str  # registry name, recorded in every verdict

    def verify(
        self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]
    ) -> list[Verdict]:
        """One verdict per pair, in input order.

        ``contexts[i]`` is what precedes both steps: the question (the last user message), a blank
        line, then the committed steps and the draft steps before depth i.
        """
        ...


def is_failure(verdict: Verdict) -> bool:
    """Was this rejection caused by a failing or timed-out verifier (not by its judgement)?"""
    return bool(verdict.reason) and verdict.reason.startswith(FAILURE_PREFIXES)


def rejections(n: int, verifier: str, reason: str) -> list[Verdict]:
    """``n`` rejecting verdicts with the same reason (the target step is committed instead)."""
    return [Verdict(accepted=False, score=0.0, verifier=verifier, reason=reason) for _ in range(n)]


def step_body(step: str, delimiter: str = DEFAULT_STEP_DELIMITER) -> str:
    """The step without its trailing delimiter and surrounding whitespace (what a model compares)."""
    body = step.strip()
    if delimiter.strip():
        while body.endswith(delimiter.strip()):
            body = body[: -len(delimiter.strip())].rstrip()
    return body


def trivial_verdict(draft: str, target: str, verifier: str, top: float = 1.0) -> Verdict | None:
    """The verdict on step bodies no model needs to see: both empty (accept), one empty (reject),
    identical (accept); None for every other pair. ``top`` is the verifier's highest score."""
    if not draft and not target:
        return Verdict(True, top, verifier, reason="both steps empty")
    if not draft or not target:
        return Verdict(False, 0.0, verifier, reason="one step is empty")
    if draft == target:
        return Verdict(True, top, verifier, reason="identical steps")
    return None


# Option checks: a verifier's options come from YAML or --set, so any type can arrive. Each check
# raises a TypeError (ValueError for NaN / infinity) naming the option and the type it wants
# (create_verifier turns it into a ConfigError with the verifier's name), instead of the bare
# TypeError of the first comparison that trips over it.


def number_option(value: Any, name: str, example: str = "0.9") -> float:
    """``options.<name>`` as a finite float; TypeError / ValueError naming the option and the type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"options.{name} must be a number, e.g. {example} (got {value!r})")
    if not math.isfinite(value):
        raise ValueError(f"options.{name} must be a finite number (got {value!r})")
    return float(value)


def int_option(value: Any, name: str, example: str = "16") -> int:
    """``options.<name>`` as an int (a whole float such as 16.0 passes), or TypeError."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"options.{name} must be an integer, e.g. {example} (got {value!r})")
    return value


def str_option(value: Any, name: str, example: str) -> str:
    """``options.<name>`` as a string, or TypeError naming the option and the type."""
    if not isinstance(value, str):
        raise TypeError(f"options.{name} must be a string, e.g. {example} (got {value!r})")
    return value


def check_timeout(timeout_s: float | None) -> float | None:
    """Validate a ``timeout_s`` option: None (no limit) or a positive, finite number of seconds."""
    if timeout_s is None:
        return None
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise ValueError(f"timeout_s must be a number of seconds > 0 or null (got {timeout_s!r})")
    return float(timeout_s)


class VerifierBase:
    """Base of the verifiers: what `create_verifier` and the loop read from every one of them."""

    name: str  # registry name, recorded in every verdict
    needs_engines = False  # True: `create_verifier` hands it ``engines=`` (the reasoner's target and draft)

    def __init__(self, delimiter: str = DEFAULT_STEP_DELIMITER) -> None:
        self.delimiter = str_option(delimiter, "delimiter", repr(DEFAULT_STEP_DELIMITER))  # where a step ends


class GuardedVerifier(VerifierBase):
    """Base of the model-based verifiers: batch in a worker thread, reject on failure or timeout.

    Subclasses implement `_verify_batch` (same contract as `Verifier.verify`) and set ``name``.
    A batch that times out keeps running in its thread (Python threads cannot be killed); until it
    ends, further batches are rejected at once with reason ``"timeout: previous batch still
    running"`` instead of piling up more work.
    """

    name = "guarded"

    def __init__(self, timeout_s: float | None = None, delimiter: str = DEFAULT_STEP_DELIMITER) -> None:
        super().__init__(delimiter)
        self.timeout_s = check_timeout(timeout_s)  # seconds per verify call; None = no limit
        self.failures = 0  # verify calls that raised or timed out (their pairs were rejected)
        self.timeouts = 0  # of those, calls that ran past timeout_s
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: concurrent.futures.Future | None = None  # the batch still in the worker
        self._lock = threading.Lock()

    def _verify_batch(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        raise NotImplementedError

    def verify(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        n = len(drafts)
        if not (len(contexts) == n == len(targets)):
            raise ValueError(f"got {len(contexts)} contexts, {n} drafts and {len(targets)} targets; need one each per pair")
        if n == 0:
            return []
        try:
            if self.timeout_s is None:
                verdicts = self._verify_batch(contexts, drafts, targets)
            else:
                verdicts = self._run_with_timeout(contexts, drafts, targets)
                if verdicts is None:
                    return rejections(n, self.name, self._timeout_reason)
            if len(verdicts) != n:
                raise RuntimeError(f"{self.name} returned {len(verdicts)} verdicts for {n} pairs")
            return verdicts
        except LookaheadError:
            raise  # the user's mistake (bad option, bad label): say so instead of rejecting forever
        except Exception as exc:  # noqa: BLE001 -- any runtime failure rejects the batch, counted
            self.failures += 1
            return rejections(n, self.name, f"failed: {type(exc).__name__}: {exc}")

    def _run_with_timeout(
        self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]
    ) -> list[Verdict] | None:
        """The batch's verdicts, or None when it timed out (counted, reason in `_timeout_reason`)."""
        with self._lock:
            if self._running is not None and not self._running.done():
                self.failures += 1
                self.timeouts += 1
                self._timeout_reason = "timeout: previous batch still running"
                return None
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"verifier-{self.name}")
            future = self._executor.submit(self._verify_batch, list(contexts), list(drafts), list(targets))
            self._running = future
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self.failures += 1
            self.timeouts += 1
            self._timeout_reason = f"timeout: no verdict within {self.timeout_s:g} s"
            return None

    _timeout_reason = "timeout"
