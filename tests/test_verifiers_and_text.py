"""Exact/normalized verifiers, step splitting and answer extraction."""

from __future__ import annotations

import pytest

from lookahead import ConfigError, VerifierConfig
from lookahead.answers import extract_answer
from lookahead.steps import DEFAULT_STEP_DELIMITER, is_complete_step, split_steps
from lookahead.verifiers import create_verifier
from lookahead.verifiers.exact import normalize_step

STEP = DEFAULT_STEP_DELIMITER  # the step delimiter of these pairs


def test_registry_raises_on_unknown_names_with_the_list():
    """No silent fallback to some default verifier."""
    with pytest.raises(ConfigError, match="exact, normalized"):
        create_verifier(VerifierConfig(name="nope"), step_delimiter=STEP)  # message lists exact, normalized, numeric


def test_exact_is_byte_exact_and_keeps_order():
    """exact rejects a whitespace difference; verdicts come back in input order."""
    v = create_verifier(VerifierConfig(name="exact"), step_delimiter=STEP)
    verdicts = v.verify(["", "", ""], ["a\n\n", "b \n\n", "c\n\n"], ["a\n\n", "b\n\n", "x\n\n"])
    assert [x.accepted for x in verdicts] == [True, False, False]
    assert all(x.verifier == "exact" for x in verdicts)


@pytest.mark.parametrize(
    ("draft", "target", "same"),
    [
        ("So the total is 1,200 apples.\n\n", "so the total is  1200 apples.\n\n", True),
        ("It costs $5.00.\n\n", "It costs $5.\n\n", True),
        ("It costs 2.50 dollars\n\n", "It costs 2.5 dollars\n\n", True),
        ("It costs 25 dollars\n\n", "It costs 2.5 dollars\n\n", False),
        ("48 / 2 = 24\n\n", "48 / 2 = 23\n\n", False),
        ("\n\n", "\n\n", False),  # an empty step is never accepted
    ],
)
def test_normalized_forgives_format_not_content(draft, target, same):
    """normalized accepts formatting differences and rejects different numbers."""
    v = create_verifier(VerifierConfig(name="normalized"), step_delimiter=STEP)
    assert v.verify([""], [draft], [target])[0].accepted is same


def test_normalize_keeps_long_numbers_and_ranges():
    """Thousands separators only go between digit groups of three."""
    assert normalize_step("1,2,3 and 12,345") == "1,2,3 and 12345"


def test_verifier_options_are_checked():
    """Unknown options are a ConfigError, not a TypeError."""
    with pytest.raises(ConfigError, match="takes no options"):
        create_verifier(VerifierConfig(name="exact", options={"threshold": 0.9}), step_delimiter=STEP)


def test_split_steps_roundtrip_and_completeness():
    """Steps keep their delimiter and join back to the text."""
    text = "a\n\nb\n\n\nc"
    steps = split_steps(text, "\n\n")
    assert "".join(steps) == text and steps[0] == "a\n\n"
    assert is_complete_step("a\n\n", "\n\n") and not is_complete_step("\n\n", "\n\n")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The final answer is \\boxed{72}.", "72"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("so \\boxed{1,000}", "1000"),
        ("#### 18", "18"),
        ("Final answer: 42", "42"),
        ("she has 3 apples and 5 pears", "5"),
        ("no numbers here", None),
    ],
)
def test_extract_answer(text, answer):
    """Boxed, #### and 'final answer' forms, then the last number."""
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("draft", "target", "same"),
    [
        ("She sells 16 - 3 - 4 = 9 eggs.\n\n", "9 eggs are left: 16 - 3 - 4 = 9.\n\n", True),  # paraphrase
        ("9 * 2 = 18 dollars\n\n", "9 * 2 = 16 dollars\n\n", False),  # a different number
        ("Total: 1,200 apples\n\n", "In total 1200.00 apples\n\n", True),  # number formatting
        ("Half is 1/2 of it\n\n", "Half is 0.5 of it\n\n", True),  # fraction = decimal
        ("A 50% discount\n\n", "A 50 discount\n\n", False),  # a percentage is not a plain number
        ("3 + 3 = 6\n\n", "3 + 6 = 9\n\n", False),  # one number more
        ("Let us think.\n\n", "let us  think.\n\n", True),  # no numbers: normalized text
        ("\n\n", "\n\n", False),  # an empty step is never accepted
        ("x " * 2000 + "= 7\n\n", "x " * 1999 + "= 7\n\n", True),  # very long steps stay cheap
    ],
)
def test_numeric_verifier_compares_stated_numbers(draft, target, same):
    """numeric accepts reworded steps with the same numbers and rejects any changed number."""
    v = create_verifier(VerifierConfig(name="numeric"), step_delimiter=STEP)
    assert v.verify([""], [draft], [target])[0].accepted is same


def test_numeric_threshold_and_bad_options():
    """A lower threshold accepts partial overlap; bad options are a ConfigError."""
    loose = create_verifier(VerifierConfig(name="numeric", options={"threshold": 0.5}), step_delimiter=STEP)
    verdict = loose.verify([""], ["2 + 3 = 5\n\n"], ["2 + 3 = 6\n\n"])[0]  # {2,3,5} vs {2,3,6}
    assert verdict.accepted and verdict.score == 0.5
    with pytest.raises(ConfigError, match="threshold"):
        create_verifier(VerifierConfig(name="numeric", options={"threshold": 0}), step_delimiter=STEP)
    with pytest.raises(ConfigError, match="unknown options"):
        create_verifier(VerifierConfig(name="numeric", options={"tau": 1}), step_delimiter=STEP)
