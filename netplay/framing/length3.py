"""Framing of the letter protocol: an incremental decoder and the encoders.

Sans-IO: a :class:`Decoder` is fed whatever bytes arrived
(:meth:`Decoder.receive_data`) and hands back whole messages one at a time
(:meth:`Decoder.next_frame`).  A message may be split at any byte and many
may arrive in one chunk; the result is the same.

Every message starts with one ASCII letter.  ``J`` is followed by a 3-byte
big-endian length and that many bytes of UTF-8 JSON; every other letter has a
fixed length that depends on the direction.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import messages as m

JSON_HEADER_LENGTH = 4  # "J" + 3 length bytes
MAX_JSON_LENGTH_ON_WIRE = (1 << 24) - 1  # what 3 length bytes can say
DEFAULT_MAX_JSON_LENGTH = 4096

# Whole message lengths, letter included.
CLIENT_TO_SERVER_LENGTHS = {"H": 4, "E": 4, "F": 4, "P": 8, "Q": 8, "I": 2, "L": 2, "W": 1}
SERVER_TO_CLIENT_LENGTHS = {
    "H": 1,
    "N": 1,
    "E": 4,
    "P": 121,
    "O": 121,
    "Q": 121,
    "R": 121,
    "I": 2,
    "U": 2,
    "L": 2,
    "W": 1,
}

_J = ord("J")


class Direction(enum.Enum):
    """Which side sends the bytes being decoded."""

    CLIENT_TO_SERVER = "client_to_server"
    SERVER_TO_CLIENT = "server_to_client"


def _text(body: bytes) -> str:
    # Fixed-length bodies are ASCII in every real client; anything else is kept
    # visible (and harmless) rather than rejected here.
    return body.decode("latin-1")


def _client_frame(letter: int, message: bytes) -> m.ClientFrame:
    if letter == 73:  # "I", the per-frame message, first
        return m.INPUTS[message[1]]
    if letter == 70:  # "F"
        return m.Pong(_text(message[1:]))
    if letter == 80 or letter == 81:  # "P", "Q"
        return m.PanelRequest(letter == 81, _text(message[1:2]), _text(message[2:]))
    if letter == 72:  # "H"
        return m.Hello(_text(message[1:]))
    if letter == 69:  # "E"
        return m.ClientPing(_text(message[1:]))
    if letter == 76:  # "L"
        return m.LEVEL_PICKS[message[1]]
    return m.HEARTBEAT  # "W", the only letter left


def _server_frame(letter: int, message: bytes) -> m.ServerFrame:
    if letter == 73:
        return m.INPUTS[message[1]]
    if letter in b"POQR":
        return m.Panels(chr(letter), _text(message[1:]))
    if letter == 69:
        return m.Ping(_text(message[1:]))
    if letter == 72:
        return m.HelloAccepted()
    if letter == 78:
        return m.HelloRefused()
    if letter == 76:
        return m.LEVEL_PICKS[message[1]]
    if letter == 85:  # "U"
        return m.FirstPlayerInput(message)
    return m.HEARTBEAT


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # "1e400" is valid JSON syntax but overflows to infinity, which JSON cannot hold.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:32]} overflows a float")
    return value


def parse_json_body(body: bytes) -> dict[str, Any]:
    """Parse a J frame's body; raise a non-fatal RemoteProtocolError if it is not a JSON object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RemoteProtocolError(
            "json_not_utf8", fatal=False, position=error.start
        ) from None
    try:
        payload = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError, NaN/Infinity and over-long integers.
        raise RemoteProtocolError(
            "json_invalid", fatal=False, detail=str(error)[:120]
        ) from None
    if not isinstance(payload, dict):
        raise RemoteProtocolError(
            "json_not_an_object", fatal=False, json_type=type(payload).__name__
        )
    return payload


def _length_table(lengths: dict[str, int]) -> bytes:
    """Message length by letter byte; 0 for a letter the direction does not have."""
    table = bytearray(256)
    for letter, length in lengths.items():
        table[ord(letter)] = length
    return bytes(table)


# Shared by every decoder: a table per connection would cost memory per connection.
_LENGTH_TABLES = {
    Direction.CLIENT_TO_SERVER: _length_table(CLIENT_TO_SERVER_LENGTHS),
    Direction.SERVER_TO_CLIENT: _length_table(SERVER_TO_CLIENT_LENGTHS),
}


class Decoder:
    """Incremental decoder for one direction of one connection.

    ``max_json_length`` bounds the body of a J frame: a longer announced length
    is a fatal error raised as soon as the 4-byte header is seen, before any of
    the body is buffered.  After a fatal error the decoder refuses further use.
    """

    __slots__ = (
        "_buffer", "_start", "_lengths", "_make", "_max_json_length", "_broken",
        "last_letter", "last_length",
    )

    def __init__(
        self,
        direction: Direction = Direction.CLIENT_TO_SERVER,
        *,
        max_json_length: int = DEFAULT_MAX_JSON_LENGTH,
    ) -> None:
        if not 0 <= max_json_length <= MAX_JSON_LENGTH_ON_WIRE:
            raise LocalProtocolError(f"max_json_length {max_json_length} cannot be framed")
        self._lengths = _LENGTH_TABLES[direction]
        self._make = _client_frame if direction is Direction.CLIENT_TO_SERVER else _server_frame
        self._buffer = bytearray()
        self._start = 0
        self._max_json_length = max_json_length
        self._broken: RemoteProtocolError | None = None
        # The letter and whole length of the last message consumed (returned,
        # or refused as a non-fatal error): what the server counts per letter.
        self.last_letter = 0
        self.last_length = 0

    @property
    def buffered(self) -> int:
        """How many received bytes do not yet form a whole message."""
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the peer; call :meth:`next_frame` until it returns None."""
        if self._start and self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        self._buffer += data

    def next_frame(self) -> Any:
        """Return the next whole message, or None when more bytes are needed.

        Raises RemoteProtocolError: fatal for an unknown letter or an oversized
        J frame; non-fatal (the frame is consumed, decoding may go on) for a J
        frame whose body is not a UTF-8 JSON object.
        """
        if self._broken is not None:
            raise self._broken
        buffer = self._buffer
        start = self._start
        available = len(buffer) - start
        if available <= 0:
            return None
        letter = buffer[start]
        if letter == _J:
            if available < JSON_HEADER_LENGTH:
                return None
            length = int.from_bytes(buffer[start + 1 : start + 4], "big")
            if length > self._max_json_length:
                self._broken = RemoteProtocolError(
                    "json_frame_too_long",
                    fatal=True,
                    length=length,
                    limit=self._max_json_length,
                )
                raise self._broken
            end = start + JSON_HEADER_LENGTH + length
            if len(buffer) < end:
                return None
            body = bytes(buffer[start + JSON_HEADER_LENGTH : end])
            self._consume(end)
            return m.Json(parse_json_body(body))
        length = self._lengths[letter]
        if length == 0:
            self._broken = RemoteProtocolError(
                "unknown_letter", fatal=True, letter=repr(chr(letter))
            )
            raise self._broken
        end = start + length
        if len(buffer) < end:
            return None
        message = bytes(buffer[start:end])
        self._consume(end)
        return self._make(letter, message)

    def peek(self, size: int) -> bytes:
        """Up to ``size`` of the bytes not yet decoded, leaving them buffered."""
        return bytes(self._buffer[self._start : self._start + size])

    def take_buffered(self) -> bytes:
        """Hand over the bytes not yet decoded (to another decoder), leaving none."""
        rest = bytes(self._buffer[self._start:])
        self._buffer.clear()
        self._start = 0
        return rest

    def frames(self) -> list[Any]:
        """Every whole message buffered now; raises like :meth:`next_frame`."""
        result = []
        while (frame := self.next_frame()) is not None:
            result.append(frame)
        return result

    def _consume(self, end: int) -> None:
        self.last_letter = self._buffer[self._start]
        self.last_length = end - self._start
        if end == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        else:
            self._start = end
            if end > 65536:  # keep a long-lived buffer from holding old bytes
                del self._buffer[:end]
                self._start = 0


# ---------------------------------------------------------------------------
# Encoding


def encode_json(payload: dict[str, Any]) -> bytes:
    """``J`` + 3-byte big-endian length + compact UTF-8 JSON."""
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as error:  # NaN or Infinity, which no JSON parser accepts
        raise LocalProtocolError(f"cannot encode as JSON: {error}") from None
    body = text.encode("utf-8")
    if len(body) > MAX_JSON_LENGTH_ON_WIRE:
        raise LocalProtocolError(f"JSON body of {len(body)} bytes cannot be framed")
    return b"J" + len(body).to_bytes(3, "big") + body


def _fixed(letter: str, body: str, length: int) -> bytes:
    try:
        data = (letter + body).encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{letter!r} message must be ASCII, got {body!r}") from None
    if len(data) != length:
        raise LocalProtocolError(f"{letter!r} message must be {length} bytes, got {data!r}")
    return data


def encode(frame: Any) -> bytes:
    """Bytes of any frame in either direction (see ``messages``)."""
    match frame:
        case m.Input(raw) | m.LevelPick(raw) | m.FirstPlayerInput(raw):
            letter = {m.Input: b"I", m.LevelPick: b"L", m.FirstPlayerInput: b"U"}[type(frame)]
            if len(raw) != 2 or raw[:1] != letter:
                raise LocalProtocolError(f"{letter!r} message must be 2 bytes, got {raw!r}")
            return raw
        case m.Json(payload):
            return encode_json(payload)
        case m.Panels(letter, digits):
            if letter not in ("P", "O", "Q", "R"):  # not `in "POQR"`: "" and "PO" are in it
                raise LocalProtocolError(f"{letter!r} is not a panel letter")
            return _fixed(letter, digits, 121)
        case m.Ping(token):
            return _fixed("E", token, 4)
        case m.Pong(token):
            return _fixed("F", token, 4)
        case m.ClientPing(token):
            return _fixed("E", token, 4)
        case m.Hello(version):
            return _fixed("H", version, 4)
        case m.HelloAccepted():
            return b"H"
        case m.HelloRefused():
            return b"N"
        case m.Heartbeat():
            return b"W"
        case m.PanelRequest(garbage, ncolors, top_row):
            if len(ncolors) != 1:
                raise LocalProtocolError(f"ncolors must be one character, got {ncolors!r}")
            return _fixed("Q" if garbage else "P", ncolors + top_row, 8)
    raise LocalProtocolError(f"cannot encode {frame!r}")
