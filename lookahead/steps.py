"""Step delimiter handling: where a step ends, splitting text into steps and back.

A **step** is text up to and including the first occurrence of the delimiter. Text after the
last delimiter is an incomplete trailing step. ``"".join(split_steps(t, d)) == t`` always holds.
The engines cut generated text at the delimiter themselves (it is their stop string).

Example:
    >>> split_steps("a\\n\\nb\\n\\nc", "\\n\\n")
    ['a\\n\\n', 'b\\n\\n', 'c']
    >>> is_complete_step("b\\n\\n", "\\n\\n")
    True
"""

from __future__ import annotations

DEFAULT_STEP_DELIMITER = "\n\n"
"""Where a step ends unless configured otherwise (`LookaheadConfig.step_delimiter`): a blank line."""


def split_steps(text: str, delimiter: str) -> list[str]:
    """Split ``text`` into steps, each keeping its delimiter; the last one may be incomplete."""
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    steps: list[str] = []
    start = 0
    while True:
        end = text.find(delimiter, start)
        if end < 0:
            break
        steps.append(text[start : end + len(delimiter)])
        start = end + len(delimiter)
    if start < len(text):
        steps.append(text[start:])
    return steps


def is_complete_step(text: str, delimiter: str) -> bool:
    """True if ``text`` ends with the delimiter (and is not only the delimiter)."""
    return text.endswith(delimiter) and len(text) > len(delimiter)

