"""The 2022 client's per-frame input strings and their run-length form.

Each frame of a player's input is one character of :data:`INPUT_ALPHABET`
(its index is the bit set of the buttons held).  Replays and a spectator's
catch-up data carry a match's inputs as one string, optionally run-length
compressed the way the client does it: a letter (or ``+`` / ``/``) followed by
its decimal repeat count, and a run of a digit input written out in full inside
parentheses, e.g. ``"A579g77"`` or ``"A3(1111)"``.

The client decides whether a string is compressed by a heuristic (two adjacent
non-digit characters mean "not compressed"), which misreads some strings in
either form; :func:`encode_for_catch_up` picks the form the client will read
back exactly.
"""

from __future__ import annotations

import re

INPUT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz1234567890+/"
INPUT_BYTES = frozenset(INPUT_ALPHABET.encode("ascii"))

_NOT_DIGIT = r"[A-Za-z+/]"
_TWO_NON_DIGITS = re.compile(_NOT_DIGIT + _NOT_DIGIT)
_COMPRESSED_CHUNK = re.compile(_NOT_DIGIT + r"\d+\(?\d*\)?")
_PARENTHESISED = re.compile(r"\(\d+\)")
_RUN = re.compile(r"(.)\1*", re.DOTALL)
# The client reads a digit run back only after a non-digit run: the run-length
# form is lost when the inputs start with a digit or change from one digit to
# another.
_UNREADABLE_COMPRESSED = re.compile(r"^\d|(\d)(?!\1)\d")


def compress(inputs: str) -> str:
    """Run-length form of ``inputs``, as the client's ``compress_input_string``.

    Like the client, a string that already looks compressed (it holds a
    parenthesised digit run, or no two adjacent non-digits) is returned as is.
    """
    if _PARENTHESISED.search(inputs) or not _TWO_NON_DIGITS.search(inputs):
        return inputs
    return "".join(_compress_run(match.group()) for match in _RUN.finditer(inputs))


def _compress_run(run: str) -> str:
    if run[0].isdigit():
        return f"({run})"
    return f"{run[0]}{len(run)}"


def uncompress(inputs: str) -> str:
    """What the client's ``uncompress_input_string`` makes of ``inputs``."""
    if _TWO_NON_DIGITS.search(inputs):
        return inputs
    pieces = []
    for chunk in _COMPRESSED_CHUNK.finditer(inputs):
        text = chunk.group()
        count = re.search(r"\d+", text)
        assert count is not None
        pieces.append(text[0] * int(count.group()))
        digits = _PARENTHESISED.search(text)
        if digits is not None:
            pieces.append(digits.group()[1:-1])
    return "".join(pieces)


def encode_for_catch_up(inputs: str) -> str | None:
    """The shortest form of ``inputs`` that the client reads back unchanged, or None.

    The run-length form when it reads back exactly (it usually does, and is far
    shorter), else the plain string when the client recognises it as plain.
    None only for strings no form can carry (two digit-input runs in a row, or a
    leading one, with no two adjacent non-digits), which a match almost never
    produces.
    """
    if not inputs:
        return inputs
    if not _UNREADABLE_COMPRESSED.search(inputs):
        return "".join(_compress_run(match.group()) for match in _RUN.finditer(inputs))
    if _TWO_NON_DIGITS.search(inputs):
        return inputs
    return None
