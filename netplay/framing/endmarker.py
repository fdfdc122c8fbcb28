"""The end-marker framing of the 2023–2025 clients (network versions 003–005).  Sans-IO.

Every message starts with one ASCII letter.  A few letters have a fixed
length (the client's ``H`` + 3 digits, the server's one-byte ``H``, ``N`` and
``E``, the client's one-byte ``E``); every other letter (``J`` JSON, ``I``
inputs, ``U`` player 1's inputs to a spectator) is followed by a UTF-8 body
that ends with the marker ``←J←`` (``E2 86 90 4A E2 86 90``).  The body may
not contain the marker itself, so the first marker after the letter ends it.

:class:`Decoder` has the interface of ``length3.Decoder``: fed any split of
the byte stream, it hands back the same messages.  A body that grows past
``max_body_length`` without its marker is a fatal error raised as soon as the
bytes are seen, so a peer that never ends a message costs a bounded buffer.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import length3
from netplay.framing import messages as m
from netplay.framing.length3 import DEFAULT_MAX_JSON_LENGTH, Direction, parse_json_body

MARKER = "←J←".encode("utf-8")
_MARKER_LENGTH = len(MARKER)

# Whole lengths of the fixed-size messages, letter included.
CLIENT_FIXED_LENGTHS = {"H": 4, "E": 1}
SERVER_FIXED_LENGTHS = {"H": 1, "N": 1, "E": 1}
CLIENT_MARKED_LETTERS = frozenset("JI")
SERVER_MARKED_LETTERS = frozenset("JIU")

_J, _I, _U, _H, _E, _N = (ord(letter) for letter in "JIUHEN")


@attrs.frozen
class MarkedInput:
    """``I`` (or ``U``) + an input body + the marker: one or more frames of a player's input.

    ``raw`` is the whole message as received, relayed to the opponent as is;
    ``body`` is the input text between the letter and the marker.
    """

    raw: bytes

    @property
    def letter(self) -> str:
        return chr(self.raw[0])

    @property
    def body(self) -> bytes:
        return self.raw[1:-_MARKER_LENGTH]


def _table(fixed: dict[str, int], marked: frozenset[str]) -> bytes:
    """Per letter byte: its whole length, 255 for a marked letter, 0 for an unknown one."""
    table = bytearray(256)
    for letter, length in fixed.items():
        table[ord(letter)] = length
    for letter in marked:
        table[ord(letter)] = 255
    return bytes(table)


_TABLES = {
    Direction.CLIENT_TO_SERVER: _table(CLIENT_FIXED_LENGTHS, CLIENT_MARKED_LETTERS),
    Direction.SERVER_TO_CLIENT: _table(SERVER_FIXED_LENGTHS, SERVER_MARKED_LETTERS),
}
_MARKED = 255
PONG = m.Pong("")


def _fixed_frame(direction: Direction, letter: int, message: bytes) -> Any:
    if direction is Direction.CLIENT_TO_SERVER:
        if letter == _H:
            return m.Hello(message[1:].decode("latin-1"))
        return PONG  # "E": the answer to the server's ping
    if letter == _H:
        return m.HelloAccepted()
    if letter == _N:
        return m.HelloRefused()
    return m.Ping("")


class Decoder:
    """Incremental decoder for one direction of one end-marker connection.

    Raises RemoteProtocolError from :meth:`next_frame`: fatal for an unknown
    letter or a body longer than ``max_body_length`` (the decoder then refuses
    further use); non-fatal, with the message consumed, for a J body that is
    not a UTF-8 JSON object or an input body that is not UTF-8.
    """

    __slots__ = (
        "_buffer", "_start", "_scanned", "_table", "_direction", "_max_body_length",
        "_broken", "last_letter", "last_length",
    )

    def __init__(
        self,
        direction: Direction = Direction.CLIENT_TO_SERVER,
        *,
        max_body_length: int = DEFAULT_MAX_JSON_LENGTH,
    ) -> None:
        if max_body_length < 0:
            raise LocalProtocolError(f"max_body_length {max_body_length} is negative")
        self._direction = direction
        self._table = _TABLES[direction]
        self._buffer = bytearray()
        self._start = 0
        # Where the search for the current message's marker resumes, so that a
        # body arriving a byte at a time is scanned once, not once per byte.
        self._scanned = 0
        self._max_body_length = max_body_length
        self._broken: RemoteProtocolError | None = None
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
            self._scanned = 0
        self._buffer += data

    def next_frame(self) -> Any:
        """Return the next whole message, or None when more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        buffer = self._buffer
        start = self._start
        available = len(buffer) - start
        if available <= 0:
            return None
        letter = buffer[start]
        length = self._table[letter]
        if length == 0:
            self._broken = RemoteProtocolError(
                "unknown_letter", fatal=True, letter=repr(chr(letter))
            )
            raise self._broken
        if length != _MARKED:
            if available < length:
                return None
            end = start + length
            message = bytes(buffer[start:end])
            self._consume(end)
            return _fixed_frame(self._direction, letter, message)
        search_from = max(self._scanned, start + 1)
        found = buffer.find(MARKER, search_from)
        if found < 0:
            body_so_far = len(buffer) - start - 1
            # A marker split across reads may have begun in the last bytes.
            self._scanned = max(start + 1, len(buffer) - _MARKER_LENGTH + 1)
            if body_so_far > self._max_body_length + _MARKER_LENGTH - 1:
                self._too_long(letter, body_so_far)
            return None
        body_length = found - start - 1
        if body_length > self._max_body_length:
            self._too_long(letter, body_length)
        end = found + _MARKER_LENGTH
        message = bytes(buffer[start:end])
        self._consume(end)
        if letter == _J:
            return m.Json(parse_json_body(message[1:-_MARKER_LENGTH]))
        try:
            message[1:-_MARKER_LENGTH].decode("utf-8")
        except UnicodeDecodeError as error:
            raise RemoteProtocolError(
                "input_not_utf8", fatal=False, position=error.start
            ) from None
        return MarkedInput(message)

    def _too_long(self, letter: int, length: int) -> None:
        reason = "json_frame_too_long" if letter == _J else "message_too_long"
        self._broken = RemoteProtocolError(
            reason, fatal=True, letter=chr(letter), length=length, limit=self._max_body_length
        )
        raise self._broken

    def take_buffered(self) -> bytes:
        """Hand over the bytes not yet decoded, leaving none."""
        rest = bytes(self._buffer[self._start:])
        self._buffer.clear()
        self._start = 0
        self._scanned = 0
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
        self._scanned = 0
        if end == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        else:
            self._start = end
            if end > 65536:  # keep a long-lived buffer from holding old bytes
                del self._buffer[:end]
                self._start = 0


FIRST_MARKED_JSON = b"J{"
# The network versions that only end-marker clients send (the older clients'
# run from 004): after their hello, end markers from the next byte on.
MARKED_ONLY_VERSIONS = frozenset({"003"})
# The one ping this server sends in 3-byte framing; any other ``E`` is the
# one-byte ping of end-marker framing.
_LENGTH3_PING = b"ELOL"


class EitherDecoder:
    """Decodes a recorded stream of either framing: 3-byte lengths until a message starts ``J{``.

    On one port, the end-marker clients and the older ones both begin with
    ``H`` + 3 digits; the first JSON message tells them apart (``J{`` cannot
    begin a 3-byte length we accept).  From that message on, this decoder
    reads end markers.  So it does after an ``H003`` hello, which no older
    client sends, and, from the server, at an ``E`` that is not ``ELOL``: the
    one-byte ping such a client may get before its first message.  For tools reading both directions of a recording;
    the server itself chooses with ``core``.
    """

    __slots__ = ("_inner", "_direction", "_max_length", "marked")

    def __init__(
        self,
        direction: Direction = Direction.CLIENT_TO_SERVER,
        *,
        max_length: int = length3.MAX_JSON_LENGTH_ON_WIRE,
    ) -> None:
        self._direction = direction
        self._max_length = max_length
        self._inner: length3.Decoder | Decoder = length3.Decoder(
            direction, max_json_length=max_length
        )
        self.marked = False

    @property
    def buffered(self) -> int:
        return self._inner.buffered

    def receive_data(self, data: bytes) -> None:
        self._inner.receive_data(data)

    def next_frame(self) -> Any:
        inner = self._inner
        if not isinstance(inner, length3.Decoder):
            return inner.next_frame()
        head = inner.peek(4)
        if head[:2] == FIRST_MARKED_JSON or (
            # A server that pinged an H003 client before its first message.
            self._direction is Direction.SERVER_TO_CLIENT
            and head[:1] == b"E" and len(head) > 1 and not _LENGTH3_PING.startswith(head)
        ):
            self._use_end_markers()
            return self._inner.next_frame()
        frame = inner.next_frame()
        if type(frame) is m.Hello and frame.version in MARKED_ONLY_VERSIONS:
            self._use_end_markers()
        return frame

    def _use_end_markers(self) -> None:
        assert isinstance(self._inner, length3.Decoder)
        rest = self._inner.take_buffered()
        self._inner = Decoder(self._direction, max_body_length=self._max_length)
        self._inner.receive_data(rest)
        self.marked = True

    def frames(self) -> list[Any]:
        result = []
        while (frame := self.next_frame()) is not None:
            result.append(frame)
        return result


# ---------------------------------------------------------------------------
# Encoding


def encode_json(payload: dict[str, Any]) -> bytes:
    """``J`` + compact UTF-8 JSON + the marker."""
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as error:
        raise LocalProtocolError(f"cannot encode as JSON: {error}") from None
    body = text.encode("utf-8")
    if MARKER in body:
        # Only inside a string can it appear; escaping its arrows keeps the frame intact.
        body = text.replace("←", "\\u2190").encode("utf-8")
    return b"J" + body + MARKER


def encode_marked(letter: bytes, body: bytes) -> bytes:
    """``letter`` + ``body`` + the marker, for ``I`` and ``U``."""
    if MARKER in body:
        raise LocalProtocolError("a message body cannot hold the end marker")
    return letter + body + MARKER


def encode(frame: Any, direction: Direction = Direction.SERVER_TO_CLIENT) -> bytes:
    """Bytes of a frame in either direction (used by tests and tools)."""
    match frame:
        case m.Json(payload):
            return encode_json(payload)
        case MarkedInput(raw):
            return raw
        case m.Hello(version):
            if len(version) != 3 or not version.isascii():
                raise LocalProtocolError(f"version must be 3 ASCII characters, got {version!r}")
            return b"H" + version.encode("ascii")
        case m.HelloAccepted():
            return b"H"
        case m.HelloRefused():
            return b"N"
        case m.Ping() | m.Pong():
            return b"E"
    raise LocalProtocolError(f"cannot encode {frame!r}")


PING = b"E"
