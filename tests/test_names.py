"""The rule for player names."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netplay.dialects.names import DEFAULT_MAX_NAME_LENGTH, name_problem


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "a",
        "Texxxtonixxx",
        "x" * DEFAULT_MAX_NAME_LENGTH,
        "two words",
        " padded ",  # names are compared exactly; spaces around letters are allowed
        "\u00e9l\u00e8ve",
        "\u30d1\u30cd\u30eb",
        "\U0001f600",  # an astral character counts as one character
        "[PA] x_y-z.123",
    ],
)
def test_name_accepted(name):
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (None, "not_a_string"),
        (7, "not_a_string"),
        (b"alice", "not_a_string"),
        (["alice"], "not_a_string"),
        ("", "empty"),
        ("x" * (DEFAULT_MAX_NAME_LENGTH + 1), "too_long"),
        (" ", "blank"),
        ("    ", "blank"),
        ("\u00a0", "blank"),  # no-break space
        ("\u3000\u3000", "blank"),  # ideographic space
        (" \u2003 ", "blank"),  # em space
        ("al\x00ice", "control_character"),
        ("alice\n", "control_character"),
        ("a\tb", "control_character"),
        ("a\x7fb", "control_character"),
        ("a\x85b", "control_character"),  # C1 control
        ("a\u200bb", "control_character"),  # zero-width space (format)
        ("a\u202eb", "control_character"),  # right-to-left override (format)
        ("a\ufeffb", "control_character"),  # byte-order mark (format)
        ("a\ud800b", "control_character"),  # lone surrogate
        ("a\ue000b", "control_character"),  # private use
        ("a\U000f0000b", "control_character"),  # supplementary private use
        ("a\u0378b", "control_character"),  # unassigned
        ("a\u2028b", "control_character"),  # line separator
        ("a\u2029b", "control_character"),  # paragraph separator
    ],
)
def test_name_refused_with_its_problem(name, problem):
    assert name_problem(name) == problem


def test_length_limit_is_configurable_and_counts_characters():
    assert name_problem("abcd", max_length=4) is None
    assert name_problem("abcde", max_length=4) == "too_long"
    assert name_problem("\u00e9" * 4, max_length=4) is None  # 8 UTF-8 bytes, 4 characters


def test_too_long_is_judged_before_the_characters_are_scanned():
    assert name_problem("\x00" * (DEFAULT_MAX_NAME_LENGTH + 1)) == "too_long"


_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=DEFAULT_MAX_NAME_LENGTH))
def test_name_accepted_exactly_when_it_follows_the_rule(name):
    expected_ok = (
        bool(name)
        and not name.isspace()
        and not any(unicodedata.category(c) in _BAD_CATEGORIES for c in name)
    )
    assert (name_problem(name) is None) == expected_ok


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1))
def test_problem_is_always_one_of_the_documented_reasons(name):
    assert name_problem(name) in {None, "empty", "too_long", "blank", "control_character"}
