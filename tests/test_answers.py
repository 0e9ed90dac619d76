"""Answer extraction and equivalence: the checker behind every accuracy number of `lookahead eval`."""

from __future__ import annotations

import pytest

from lookahead.answers import answers_match, as_number, extract_answer, last_boxed, parse_reference, same_answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so x = 3.\n\nThe final answer is \\boxed{\\frac{a}{b}}.", "\\frac{a}{b}"),  # nested braces kept whole
        ("\\boxed{\\frac{\\sqrt{3}}{2}} and more text", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),  # the last box wins
        ("The answer is \\boxed{\\$18}.", "18"),  # escaped dollar inside the box
        ("\\boxed{-7}", "-7"),
        ("Natalia sold 48\n#### 72", "72"),
        ("Final answer: -3.5", "-3.5"),
        ("it costs 1,000 dollars", "1000"),  # last-number fallback, thousands separator dropped
        ("I do not know.", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_answer_forms(text, answer):
    """Boxed (nested, last one, escaped $), ####, 'final answer', last number, nothing."""
    assert extract_answer(text) == answer


def test_last_boxed_balances_braces():
    """A box holding braces is cut at its own closing brace, not the first '}'."""
    assert last_boxed("x \\boxed{\\frac{1}{2}} y}") == "\\frac{1}{2}"
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{3}{4}", "3/4"),
        ("-\\frac{1}{2}", "-0.5"),
        ("1,000", "1000"),
        ("1,000,000", "1000000"),
        ("\\$18", "18"),
        ("$18", "18"),
        ("18 dollars", "18"),
        ("18\\text{ dollars}", "18"),
        ("12 cm^2", "12"),
        ("30^\\circ", "30"),
        ("10\\%", "10"),
        ("025", "25"),  # AIME references are zero-padded
        ("5.0", "5"),
        ("-3", "-3"),
        ("\u22127", "-7"),  # unicode minus
        ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # MATH-500 LaTeX, via math-verify
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("C", "\\text{(C)}"),
        ("Evelyn", "\\text{Evelyn}"),
        ("x^2+1", "1+x^2"),
    ],
)
def test_equivalent_answers_match(answer, reference):
    """Same value written differently: fractions, separators, units, LaTeX forms."""
    assert answers_match(answer, reference)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("-3", "3"),  # sign matters
        ("2x", "2"),  # a variable is not a unit
        ("0.3333", "\\frac{1}{3}"),  # no rounding leniency
        ("19", "18"),
        ("\\frac{1}{3}", "0.5"),
        (None, "5"),  # no answer is never right
        ("", "5"),
        ("5", None),  # an unparseable reference grades nothing as right
    ],
)
def test_different_answers_do_not_match(answer, reference):
    """Different values, missing answers and missing references never match."""
    assert not answers_match(answer, reference)


def test_as_number_reads_numbers_and_simple_fractions_only():
    """The fast numeric path: plain numbers and integer fractions; anything else goes to math-verify."""
    assert as_number("1,234.5") == pytest.approx(1234.5)
    assert as_number("\\frac{-1}{4}") == pytest.approx(-0.25)
    assert as_number("\\sqrt{2}") is None and as_number("2x") is None and as_number("1/0") is None


@pytest.mark.parametrize(
    ("raw", "reference"),
    [
        ("Janet sells 9 eggs.\nShe makes $18.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("025", "025"),
        (42, "42"),
        ("#### ", None),  # GSM8K-style but empty: unparseable
        ("", None),
        (None, None),
        ({"a": 1}, None),
    ],
)
def test_parse_reference(raw, reference):
    """Dataset answer fields: GSM8K worked solutions, boxed solutions, plain values, junk."""
    assert parse_reference(raw) == reference


def test_same_answer_treats_two_missing_answers_as_agreeing():
    """Agreement with ar: both without an answer agree; one missing does not."""
    assert same_answer(None, None)
    assert not same_answer(None, "3")
    assert same_answer("\\frac{1}{2}", "0.5")
