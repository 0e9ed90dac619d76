"""Final-answer extraction from reasoning text.

Order of preference: the last ``\\boxed{...}`` (nested braces allowed), a GSM8K ``#### N`` line,
"final answer is X", and finally the last number in the text.

Example:
    >>> extract_answer("so 3+4 = 7.\\n\\nThe final answer is \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_answer("#### 1,234")
    '1234'
"""

from __future__ import annotations

import re

_HASHES = re.compile(r"####\s*([^\n]+)")
_FINAL = re.compile(r"final answer(?: is)?:?\s*\$?\s*([-+]?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}``, with balanced braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def _clean_number(s: str) -> str:
    s = s.strip().rstrip(".").replace(",", "").replace("$", "")
    return s


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None if there is nothing answer-like."""
    boxed = last_boxed(text)
    if boxed:
        return _clean_number(boxed) if _NUMBER.fullmatch(boxed.replace("$", "")) else boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return _clean_number(hashes[-1])
    final = _FINAL.findall(text)
    if final:
        return _clean_number(final[-1])
    numbers = _NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None
