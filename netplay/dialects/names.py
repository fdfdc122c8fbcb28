"""The rule for player names."""

from __future__ import annotations

import unicodedata

DEFAULT_MAX_NAME_LENGTH = 32


def name_problem(name: object, max_length: int = DEFAULT_MAX_NAME_LENGTH) -> str | None:
    """Why ``name`` cannot be a player name, or None when it can.

    A name is a string of 1 to ``max_length`` characters that is not only
    spaces (of any kind) and holds no control, format, surrogate, private-use
    or unassigned character and no line or paragraph separator.  Names are
    compared exactly.
    """
    if not isinstance(name, str):
        return "not_a_string"
    if not name:
        return "empty"
    if len(name) > max_length:
        return "too_long"
    if not name.strip():  # any whitespace: a name of only no-break spaces is just as blank
        return "blank"
    for character in name:
        category = unicodedata.category(character)
        if category[0] == "C" or category in ("Zl", "Zp"):
            return "control_character"
    return None
