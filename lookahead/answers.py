"""Final answers: extraction from reasoning text, and equivalence with a reference answer.

Extraction, in order of preference: the last ``\\boxed{...}`` (nested braces allowed), a GSM8K
``#### N`` line, "final answer is X", and finally the last number in the text.

Equivalence (`answers_match`), cheapest check first:
1. both sides are plain numbers or simple fractions once dollar signs, thousands separators,
   percent signs, degree marks and trailing unit words are stripped (``"$18"``, ``"18 dollars"``,
   ``"1,000"``, ``"\\frac{1}{2}"``, ``"-0.5"``): compare the values (relative tolerance 1e-6);
2. otherwise `math-verify` parses both as LaTeX and compares them symbolically (expressions,
   intervals, sets, tuples, ``\\text{(C)}`` vs ``C``);
3. finally a normalised string comparison (spaces, ``\\left``/``\\right``, ``\\dfrac``, ``\\text``).

A number followed by a bare word is only read as "number + unit" when a space or ``\\text{}``
separates them and the word has two letters or more, so ``2x`` never equals ``2``.

Example:
    >>> extract_answer("so 3+4 = 7.\\n\\nThe final answer is \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_answer("#### 1,234")
    '1234'
    >>> answers_match("\\\\frac{1}{2}", "0.5"), answers_match("18 dollars", "18"), answers_match("2x", "2")
    (True, True, False)
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction
from typing import Any

from lookahead.errors import ConfigError

_HASHES = re.compile(r"####\s*([^\n]+)")
_FINAL = re.compile(r"final answer(?: is)?:?\s*\$?\s*([-+]?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")

MATH_VERIFY_HINT = "pip install 'math-verify[antlr4_13_2]==0.9.0'"
"""How to install the symbolic checker (`answers_match` step 2)."""

MATH_VERIFY_TIMEOUT_S = 5  # seconds per math-verify parse/compare (main thread only: it uses SIGALRM)
RELATIVE_TOLERANCE = 1e-6  # numeric answers match when |a - b| <= tol * max(1, |b|)


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
    s = s.strip().rstrip(".").replace(",", "").replace("\\$", "").replace("$", "")
    return s


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None if there is nothing answer-like."""
    boxed = last_boxed(text)
    if boxed:
        return _clean_number(boxed) if _NUMBER.fullmatch(boxed.replace("\\$", "").replace("$", "")) else boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return _clean_number(hashes[-1])
    final = _FINAL.findall(text)
    if final:
        return _clean_number(final[-1])
    numbers = _NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


def parse_reference(raw: Any) -> str | None:
    """The final answer held in a dataset's answer field, or None if there is none.

    A GSM8K-style worked solution yields what follows its last ``####``; a solution with a
    ``\\boxed{}`` yields the boxed content; anything else is taken as the answer itself.
    """
    if raw is None or isinstance(raw, (dict, list, bool)):
        return None
    text = str(raw).strip()
    if "####" in text:
        text = _clean_number(text.rsplit("####", 1)[-1]) if _HASHES.search(text) else ""
    elif "\\boxed{" in text or "\\fbox{" in text:
        text = last_boxed(text) or ""
    return text or None


# -- equivalence -------------------------------------------------------------------------------
_UNIT_TAIL = re.compile(
    r"""\s*(?:\\(?:text|mbox|mathrm|textbf)\s*\{[^{}]*\}   # 18\text{ dollars}
        |\s[A-Za-z][A-Za-z.]+(?:\s+[A-Za-z][A-Za-z.]*)*)  # 18 dollars, 3 sq. ft
        \s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*$                 # cm^2
    """,
    re.VERBOSE,
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_LATEX_FRACTION = re.compile(r"([-+]?)\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*([-+]?\d+)\s*\}")
_SLASH_FRACTION = re.compile(r"([-+]?\d+)\s*/\s*([-+]?\d+)")


def _strip_decorations(s: str) -> str:
    """Drop what never changes a value: dollar signs, ``\\!``/``\\,`` spacing, percent, degrees, units."""
    s = s.strip().replace("\u2212", "-")  # unicode minus
    s = re.sub(r"\\[!,;: ]", "", s)
    s = s.replace("\\$", "").replace("$", "").strip()
    s = re.sub(r"^\\text\{\s*([^{}]*?)\s*\}$", r"\1", s)  # \text{18}
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)  # 30^\circ
    s = re.sub(r"\\?%$", "", s.strip())
    s = s.strip().rstrip(".").strip()
    if re.match(r"[-+]?[\d.]", s):
        s = _UNIT_TAIL.sub("", s)
    return _THOUSANDS.sub("", s).strip()


def as_number(s: str) -> Fraction | float | None:
    """The value of a plain number or a simple fraction (after `_strip_decorations`), else None."""
    s = _strip_decorations(s)
    if _PLAIN_NUMBER.fullmatch(s):
        try:
            return Fraction(s)
        except ValueError:
            return float(s)
    for pattern in (_LATEX_FRACTION, _SLASH_FRACTION):
        m = pattern.fullmatch(s)
        if m:
            groups = m.groups()
            sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
            num, den = int(groups[-2]), int(groups[-1])
            return Fraction(sign * num, den) if den else None
    return None


def _normalize_text(s: str) -> str:
    s = _strip_decorations(s)
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", "", s).lower()


def _math_verify() -> Any:
    try:
        import math_verify
    except ImportError:
        raise ConfigError(f"answer checking needs the math-verify package; {MATH_VERIFY_HINT}") from None
    return math_verify


def require_checker() -> None:
    """Fail early (before any generation) when the symbolic checker is not installed."""
    _math_verify()


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _symbolic(s: str) -> tuple[Any, ...]:
    mv = _math_verify()
    text = s.replace("$", "")
    return tuple(mv.parse(f"${text}$", parsing_timeout=_timeout()))


def answers_match(answer: str | None, reference: str | None) -> bool:
    """Is ``answer`` (extracted from a completion) the same value as ``reference``?

    None on either side never matches. See the module docstring for the order of checks.
    """
    if answer is None or reference is None or not answer.strip() or not reference.strip():
        return False
    a, r = as_number(answer), as_number(reference)
    if a is not None and r is not None:
        return abs(float(a) - float(r)) <= RELATIVE_TOLERANCE * max(1.0, abs(float(r)))
    gold, pred = _symbolic(_strip_decorations(reference)), _symbolic(_strip_decorations(answer))
    if gold and pred and _math_verify().verify(list(gold), list(pred), timeout_seconds=_timeout()):
        return True
    return _normalize_text(answer) == _normalize_text(reference)


def same_answer(a: str | None, b: str | None) -> bool:
    """Do two completions state the same answer? (Two missing answers agree.)"""
    if a is None or b is None:
        return a is None and b is None
    return answers_match(a, b)
