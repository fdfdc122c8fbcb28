"""Replaying a session file against a server and checking what it sends.

Theory of operation
-------------------
A session file (see ``recording``) lists, in the order they happened, what
each client sent (``recv``), what the server sent it (``send``), and when
connections opened and ended.  Given its settings and seed, and the same
client bytes in the same order at the same times, the server sends the same
bytes.  A replay plays the client side of the file and checks the server side.

Client events (``connect``, ``recv``, ``eof``, ``close``) are played in file
order across every connection.  Before each one the replay waits until every
connection has received what the file shows the server sent before it
(causality): a message that one client's event triggers for another reaches
that other before it acts, as it did when the session was recorded.

* :func:`replay_in_process` runs a fresh :class:`~netplay.server.Server` on
  trio's virtual clock over memory streams.  Each client event happens at
  its recorded time, after the server has settled; the bytes the server
  writes to each connection must equal the recorded bytes exactly,
  heartbeats included.  A session of minutes replays in milliseconds.
* :func:`replay_live` talks TCP to any running server.  Real time can only be
  approximated: the replay keeps at least the recorded gap between two
  client events, compares message by message (JSON parsed, any other
  message byte for byte) and skips heartbeat pings (``E``+3, ``W``), whose
  timing a live socket cannot reproduce.

Both stop at the first divergence and describe it: the connection (its id
in the file), the index of the message among those the server sent that
connection, what was expected and what arrived.  A recording ends where its
host began shutting down (the first ``close`` with a reason in
``recording.SHUTDOWN_REASONS``): what follows depends on shutdown timing and
is not compared.
"""

from __future__ import annotations

import bisect
import json
import time
from typing import Any, Callable

import attrs
import trio
import trio.testing

from netplay.accounts import storage
from netplay.dialects.v046 import NEW_USER_ID_REQUEST
from netplay.errors import RemoteProtocolError
from netplay.framing import endmarker
from netplay.framing import messages as m
from netplay.framing.length3 import Direction
from netplay.recording.record import SHUTDOWN_REASONS, Event, Session, config_for_replay
from netplay.server import Server

# In process: how long (virtual seconds) a client event may wait for server
# messages recorded before it.  Recorded times are rounded to the
# microsecond, so a timer's message and the client's answer to it may land
# a hair apart in either order; anything longer is a divergence.
IN_PROCESS_TOLERANCE = 0.0001
# How close (seconds) two recorded events must be to count as simultaneous:
# a few wake-ups of the server's poller, as a proxy busy relaying sees them.
SIMULTANEOUS_SECONDS = 0.005
# How late a loaded server's heartbeat may have run: a ping the replay sends
# (its timers are exact) that the recording lacks, because the connection
# spoke or ended this soon after the ping was due, is the same story.
LATE_TIMER_SECONDS = 0.05
# After the last event, how long the lobby lists may take to reach the state
# the recording ends with (beyond the snapshot delay, in process).
FINAL_LOBBY_SECONDS = 0.2
# Live: after the last event, how long to listen for messages nobody expects.
LIVE_SETTLE_SECONDS = 0.1
RECEIVE_SIZE = 65536
CLIENT_EVENTS = frozenset({"connect", "recv", "eof", "close"})


class ReplayError(Exception):
    """The replay could not be run at all (no seed, server unreachable)."""


# ---------------------------------------------------------------------------
# Messages of the server-to-client byte stream


class MessageSplitter:
    """Splits a server-to-client byte stream into whole raw messages.

    Either framing: 3-byte lengths, or end markers from the first message
    that starts ``J{`` (``endmarker.EitherDecoder``).  Bytes that cannot be
    framed (an unknown letter) end the splitting; they stay in :attr:`rest`
    and :attr:`broken` is set.
    """

    def __init__(self) -> None:
        self._decoder = endmarker.EitherDecoder(Direction.SERVER_TO_CLIENT)
        self._pending = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the messages they complete, in order."""
        self._pending += data
        if self.broken:
            return []
        decoder, pending = self._decoder, self._pending
        decoder.receive_data(data)
        messages = []
        start = 0
        while True:
            try:
                frame = decoder.next_frame()
            except RemoteProtocolError as error:
                if error.fatal:
                    self.broken = True
                    break
                frame = error  # a J frame whose body is not JSON: still one message
            if frame is None:
                break
            end = len(pending) - decoder.buffered
            messages.append(bytes(pending[start:end]))
            start = end
        del pending[:start]
        return messages

    @property
    def rest(self) -> bytes:
        """Bytes not part of a whole message: incomplete, or unframeable if broken."""
        return bytes(self._pending)


def split_messages(data: bytes) -> list[bytes]:
    """Whole server messages in ``data``; an incomplete or unframeable rest comes last."""
    splitter = MessageSplitter()
    messages = splitter.feed(data)
    if splitter.rest:
        messages.append(splitter.rest)
    return messages


# ---------------------------------------------------------------------------
# The player database a replay needs


def players_for_replay(session: Session) -> storage.SqliteStorage:
    """An in-memory player database under which ``session`` replays exactly.

    Player ids are random, so the server under replay hands out the ids the
    recorded server did, in the same order; ids that clients brought from
    before the recording are stored beforehand under the name they had.
    """
    handed_out: list[str] = []
    brought: dict[str, str] = {}
    client_decoders: dict[int, endmarker.EitherDecoder] = {}
    server_splitters: dict[int, MessageSplitter] = {}
    names: dict[int, str] = {}
    asked: dict[int, str] = {}  # connection -> the id its login_request named
    for event in session.events:
        if event.kind == "recv":
            decoder = client_decoders.setdefault(event.connection, endmarker.EitherDecoder())
            decoder.receive_data(event.data)
            try:
                frames = decoder.frames()
            except RemoteProtocolError:
                continue
            for frame in frames:
                if not isinstance(frame, m.Json):
                    continue
                payload = frame.payload
                if isinstance(payload.get("name"), str):
                    names.setdefault(event.connection, payload["name"])
                user_id = payload.get("user_id")
                if payload.get("login_request") is True and isinstance(user_id, str) \
                        and user_id != NEW_USER_ID_REQUEST:
                    asked[event.connection] = user_id
        elif event.kind == "send":
            splitter = server_splitters.setdefault(event.connection, MessageSplitter())
            for raw in splitter.feed(event.data):
                reply = _login_approval(_json_body(raw))
                if reply is None:
                    continue
                if isinstance(reply.get("new_user_id"), str):
                    handed_out.append(reply["new_user_id"])
                    continue
                user_id = asked.get(event.connection)
                name = reply.get("old_name") if reply.get("name_changed") else names.get(
                    event.connection
                )
                if user_id and isinstance(name, str) and user_id not in handed_out:
                    brought.setdefault(user_id, name)
    ids = iter(handed_out)
    database = storage.SqliteStorage(
        storage.MEMORY, make_user_id=lambda: next(ids, None) or storage.new_user_id()
    )
    database.execute([storage.ImportPlayer(i, name) for i, name in brought.items()])
    return database


def _login_approval(reply: Any) -> dict[str, Any] | None:
    """A login's approval in the words of the 2013-2022 and 2025 (004) replies.

    A 005 ``loginResponse`` is read into the same keys.
    """
    if not isinstance(reply, dict):
        return None
    if reply.get("type") == "loginResponse" and isinstance(reply.get("content"), dict):
        content = reply["content"]
        if content.get("approved") is not True:
            return None
        return {
            "login_successful": True, "new_user_id": content.get("newUserId"),
            "name_changed": content.get("nameChanged"), "old_name": content.get("oldName"),
        }
    return reply if reply.get("login_successful") is True else None


def is_heartbeat(raw: bytes) -> bool:
    """A server ping: ``E`` + 3 characters (2013-2022 clients), ``E`` alone (2025), ``W``."""
    return (len(raw) == 4 and raw[:1] == b"E") or raw == b"E" or raw == b"W"


def _json_text(raw: bytes) -> bytes | None:
    """The JSON text of a ``J`` message of either framing, or None."""
    if raw[:2] == endmarker.FIRST_MARKED_JSON and raw.endswith(endmarker.MARKER):
        return raw[1:-len(endmarker.MARKER)]
    if raw[:1] != b"J" or len(raw) < 4 or int.from_bytes(raw[1:4], "big") != len(raw) - 4:
        return None
    return raw[4:]


def _json_body(raw: bytes) -> Any:
    text = _json_text(raw)
    if text is None:
        return None
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def messages_equal(expected: bytes, actual: bytes) -> bool:
    """JSON messages compare parsed (key order and spacing do not matter), others exactly."""
    if expected == actual:
        return True
    expected_json, actual_json = _json_body(expected), _json_body(actual)
    return expected_json is not None and expected_json == actual_json


def describe_message(raw: bytes | None) -> str:
    """A message as one readable line: ``J`` frames as their JSON text, others as letters."""
    if raw is None:
        return "(nothing)"
    text = _json_text(raw)
    if text is not None:
        return "J" + text.decode("utf-8", "backslashreplace")
    # End-marker messages are UTF-8; everything else is read byte by byte.
    text = raw.decode("utf-8", "backslashreplace") if raw.endswith(endmarker.MARKER) \
        else raw.decode("latin-1")
    if text.isprintable():
        return text
    return json.dumps(text)[1:-1]


def first_difference(expected: bytes, actual: bytes) -> int | None:
    for index, (a, b) in enumerate(zip(expected, actual)):
        if a != b:
            return index
    if len(expected) != len(actual):
        return min(len(expected), len(actual))
    return None


# ---------------------------------------------------------------------------
# Results


@attrs.frozen
class Divergence:
    """The first place where the server did not send what the session recorded."""

    connection: int  # the connection's id in the session file
    message_index: int  # among the server's messages to that connection, from 0
    expected: bytes | None  # None: the recording has no further message
    actual: bytes | None  # None: nothing arrived
    time: float  # seconds since the replay started (in process: session time)
    reason: str  # message_differs, unexpected_message, message_missing, ...
    expected_time: float | None = None  # when the expected message was recorded

    def describe(self) -> str:
        when = f"at {self.time:.6f} s"
        if self.expected_time is not None:
            when += f" (expected message recorded at {self.expected_time:.6f} s)"
        lines = [
            f"divergence on connection {self.connection}, message index {self.message_index}: "
            f"{self.reason.replace('_', ' ')}",
            f"  {when}",
            f"  expected: {describe_message(self.expected)}",
            f"  actual:   {describe_message(self.actual)}",
        ]
        if self.expected is not None and self.actual is not None:
            position = first_difference(self.expected, self.actual)
            if position is not None:
                lines.append(f"  first differing byte: {position}")
        return "\n".join(lines)


@attrs.frozen
class ReplayResult:
    mode: str  # "in_process" or "live"
    connections: int
    client_events: int  # client events played
    messages: int  # server messages that matched
    session_seconds: float  # recorded time covered
    real_seconds: float  # how long the replay took
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def report(self) -> str:
        summary = (
            f"{self.mode.replace('_', '-')} replay: {self.connections} connections, "
            f"{self.client_events} client events, {self.messages} server messages matched, "
            f"{self.session_seconds:.3f} s of session in {self.real_seconds:.3f} s"
        )
        if self.divergence is None:
            return "OK: " + summary
        return "DIVERGED: " + summary + "\n" + self.divergence.describe()


# ---------------------------------------------------------------------------
# What the session expects


# Keys of a JSON message that carry the lobby list: state, compared as such.
LOBBY_KEYS = frozenset({"unpaired", "lobby_state", "spectatable", "players"})


def _lobby_view(body: Any) -> Any:
    """A message's own keys; a 005 ``lobbyState`` is read as its content."""
    if isinstance(body, dict) and body.get("type") == "lobbyState":
        content = body.get("content")
        if isinstance(content, dict):
            return content
    return body


def lobby_keys(raw: bytes) -> frozenset[str]:
    """The lobby keys of a ``J`` message (none for any other message)."""
    body = _lobby_view(_json_body(raw))
    return LOBBY_KEYS.intersection(body) if isinstance(body, dict) else frozenset()


def is_lobby_list(raw: bytes) -> bool:
    """A lobby snapshot: a ``J`` message that holds nothing but the lobby list."""
    body = _lobby_view(_json_body(raw))
    return isinstance(body, dict) and bool(body) and LOBBY_KEYS.issuperset(body)


def same_event(expected: bytes, actual: bytes, *, exact: bool) -> bool:
    """Whether ``actual`` is the recorded message, leaving aside any lobby list it carries.

    ``exact``: messages without a lobby list must be equal byte for byte;
    otherwise ``J`` messages compare parsed.
    """
    if expected == actual:
        return True
    expected_json, actual_json = _json_body(expected), _json_body(actual)
    if expected_json is None or actual_json is None:
        return False
    if isinstance(expected_json, dict) and isinstance(actual_json, dict):
        if LOBBY_KEYS.intersection(expected_json) or LOBBY_KEYS.intersection(actual_json):
            # A leave_room carries the lobby of its moment: compared as state.
            return _without_lobby(expected_json) == _without_lobby(actual_json)
    return not exact and expected_json == actual_json


def _without_lobby(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in LOBBY_KEYS}


@attrs.frozen
class _Message:
    raw: bytes
    time: float  # when it was recorded
    index: int  # among the messages recorded for its connection


@attrs.define(eq=False)
class _Expected:
    """What the recording shows the server sent one connection.

    Lobby lists are apart from the other messages: how many lists a client
    gets, and when, depends on where the snapshot timer fell between client
    events (see docs/recording.md, "Lobby lists are state").
    """

    messages: list[_Message] = attrs.Factory(list)  # every message but the lobby lists
    lists: list[_Message] = attrs.Factory(list)
    count: int = 0  # every message
    # The lobby this connection was last shown, when the recording ends settled
    # with the connection still open in the lobby: the replay must end there too.
    final_list: _Message | None = None
    # When the client did something (sent, half-closed, closed), in order.
    client_times: list[float] = attrs.Factory(list)

    def add(self, raw: bytes, moment: float) -> None:
        message = _Message(raw, moment, self.count)
        self.count += 1
        (self.lists if is_lobby_list(raw) else self.messages).append(message)


# Per connection: (messages other than lobby lists, lobby lists) received.
Needed = dict[int, tuple[int, int]]


@attrs.define(eq=False)
class _Plan:
    """A session's client events with, for each, what must have arrived before it."""

    expected: dict[int, _Expected]
    client_events: list[Event]
    needed_before: list[Needed]
    needed_at_end: Needed


def plan(events: tuple[Event, ...], *, heartbeats: bool) -> _Plan:
    """Split the recorded server bytes into messages and note the causality waits.

    ``heartbeats``: whether pings are expected (in process) or skipped (live).
    Before a client event, a connection must have received every message
    other than a lobby list recorded before it, and a lobby list if one was
    recorded before it (the answer to a registration is one).
    """
    splitters: dict[int, MessageSplitter] = {}
    expected: dict[int, _Expected] = {}
    client_events: list[Event] = []
    needed_before: list[Needed] = []
    closed: set[int] = set()
    last_client_event = -1
    last_list_at: dict[int, int] = {}

    def needed() -> Needed:
        return {
            connection: (len(recorded.messages), min(1, len(recorded.lists)))
            for connection, recorded in expected.items()
        }

    for position, event in enumerate(events):
        if event.kind == "send":
            splitter = splitters.setdefault(event.connection, MessageSplitter())
            recorded = expected.setdefault(event.connection, _Expected())
            for raw in splitter.feed(event.data):
                if heartbeats or not is_heartbeat(raw):
                    recorded.add(raw, event.time)
                    if lobby_keys(raw):
                        last_list_at[event.connection] = position
        elif event.kind in CLIENT_EVENTS:
            needed_before.append(needed())
            client_events.append(event)
            last_client_event = position
            expected.setdefault(event.connection, _Expected()).client_times.append(event.time)
            if event.kind == "close":
                closed.add(event.connection)
    for connection, recorded in expected.items():
        ends_in_lobby = recorded.lists and (
            not recorded.messages or recorded.messages[-1].index < recorded.lists[-1].index
        )
        if (
            ends_in_lobby
            and connection not in closed
            and last_list_at.get(connection, -1) > last_client_event
        ):
            recorded.final_list = recorded.lists[-1]
    # A message cut short where the recording ends is not expected.
    return _Plan(expected, client_events, needed_before, needed())


@attrs.define(eq=False)
class _Received:
    """What one connection has received in the replay, checked as it arrives."""

    connection: int  # its id in the session file
    expected: _Expected
    exact: bool  # in process: byte for byte
    splitter: MessageSplitter = attrs.Factory(MessageSplitter)
    matched: int = 0  # messages other than lobby lists, as recorded
    lists: int = 0  # lobby lists received
    lists_matched: int = 0  # of which equal to a recorded one, in recorded order
    _next_list: int = 0
    latest_list: bytes | None = None  # the lobby this connection was last shown
    # Recorded messages that arrived ahead of an earlier one of the same instant.
    _early: set[int] = attrs.Factory(set)
    early_matches: int = 0
    late_pings: int = 0  # pings a loaded recorded server had not sent yet (LATE_TIMER_SECONDS)

    def check(self, raw: bytes, now: float) -> Divergence | None:
        """Compare one whole message; return the divergence if it is one."""
        if is_lobby_list(raw):
            self._lobby(raw)
            return None
        messages = self.expected.messages
        while self.matched in self._early:
            self._early.discard(self.matched)
            self.matched += 1
        if self.matched >= len(messages):
            if self._ping_overtaken(raw, now):
                return None
            return Divergence(self.connection, self.expected.count, None, raw, now,
                              "unexpected_message")
        expected = messages[self.matched]
        if not same_event(expected.raw, raw, exact=self.exact):
            later = self._simultaneous_match(raw)
            if later is None:
                if self._ping_overtaken(raw, now):
                    return None
                return Divergence(self.connection, expected.index, expected.raw, raw, now,
                                  "message_differs", expected.time)
            self._early.add(later)
            self.early_matches += 1
            return None
        if lobby_keys(raw):
            self._lobby(raw)
        self.matched += 1
        while self.matched in self._early:
            self._early.discard(self.matched)
            self.matched += 1
        return None

    def _ping_overtaken(self, raw: bytes, now: float) -> bool:
        """A ping due just before the client spoke or left, in the recording
        after it: the recorded server's heartbeat ran late, and the client's
        event came first.  Anything else unexpected stays a divergence."""
        if not is_heartbeat(raw):
            return False
        times = self.expected.client_times
        position = bisect.bisect_left(times, now)
        if position < len(times) and times[position] - now <= LATE_TIMER_SECONDS:
            self.late_pings += 1
            return True
        return False

    def _simultaneous_match(self, raw: bytes) -> int | None:
        """A later recorded message equal to ``raw`` and recorded at the same instant
        as the one expected now: two causes (this client's own request and its
        opponent's, say) whose answers a recording cannot order."""
        messages = self.expected.messages
        first = messages[self.matched].time
        for position in range(self.matched + 1, len(messages)):
            message = messages[position]
            if message.time - first > SIMULTANEOUS_SECONDS:
                break
            if position not in self._early and same_event(message.raw, raw, exact=self.exact):
                return position
        return None

    def _lobby(self, raw: bytes) -> None:
        self.lists += 1
        self.latest_list = raw
        recorded = self.expected.lists
        for position in range(self._next_list, len(recorded)):
            if messages_equal(recorded[position].raw, raw):
                self.lists_matched += 1
                self._next_list = position + 1
                return

    def short_of(self, needed: tuple[int, int]) -> bool:
        return self.matched < needed[0] or self.lists < needed[1]

    @property
    def messages_matched(self) -> int:
        return self.matched + len(self._early) + self.lists_matched

    def missing(self, now: float, reason: str) -> Divergence:
        """The divergence of a connection still waiting for a recorded message."""
        if self.matched < len(self.expected.messages):
            message = self.expected.messages[self.matched]
        else:
            message = self.expected.lists[0]
        return Divergence(self.connection, message.index, message.raw, None, now, reason,
                          message.time)

    @property
    def lobby_settled(self) -> bool:
        """Whether the lobby it was last shown is the one the recording ends with."""
        final = self.expected.final_list
        return final is None or (
            self.latest_list is not None and messages_equal(final.raw, self.latest_list)
        )

    def lobby_divergence(self, now: float) -> Divergence:
        final = self.expected.final_list
        assert final is not None
        return Divergence(self.connection, final.index, final.raw, self.latest_list, now,
                          "lobby_differs_at_the_end", final.time)


def played_events(session: Session) -> tuple[Event, ...]:
    """The events a replay plays and checks: up to the host's shutdown, if any."""
    for index, event in enumerate(session.events):
        if event.kind == "close" and event.text in SHUTDOWN_REASONS:
            return session.events[:index]
    return session.events


# ---------------------------------------------------------------------------
# In process, on the virtual clock


class _Observer:
    """The replayed server's recorder: checks each message as the server writes it."""

    def __init__(self, expected: dict[int, _Expected], base: float, stop: Callable[[], None]):
        self.expected = expected
        self.base = base
        self._stop = stop
        self.recorded_id: dict[int, int] = {}  # the replayed server's id -> id in the file
        self.next_recorded_id: int | None = None
        self.connections: dict[int, _Received] = {}
        # At most one per connection; several can happen at the same instant.
        self.divergences: dict[int, Divergence] = {}
        self.progress = trio.Event()

    @property
    def divergence(self) -> Divergence | None:
        """The earliest divergence; at the same instant, the lowest connection id."""
        if not self.divergences:
            return None
        return min(self.divergences.values(), key=lambda d: (d.time, d.connection))

    def connected(self, connection_id: int, peer: str, now: float) -> None:
        recorded = self.next_recorded_id
        if recorded is not None:
            self.recorded_id[connection_id] = recorded
            self.connections[recorded] = _Received(
                recorded, self.expected.get(recorded) or _Expected(), exact=True
            )
            self.next_recorded_id = None

    def sent(self, connection_id: int, data: bytes, now: float) -> None:
        recorded = self.recorded_id.get(connection_id)
        if recorded is None or recorded in self.divergences:
            return
        received = self.connections[recorded]
        messages = received.splitter.feed(data)
        if received.splitter.broken:
            messages.append(received.splitter.rest)
        for raw in messages:
            divergence = received.check(raw, now - self.base)
            if divergence is not None:
                self.divergences[recorded] = divergence
                self._stop()
                break
        self.progress.set()

    def received(self, connection_id: int, data: bytes, now: float) -> None:
        pass

    def end_of_stream(self, connection_id: int, now: float) -> None:
        pass

    def closed(self, connection_id: int, reason: str, now: float) -> None:
        pass

    def missing(self, needed: Needed) -> int | None:
        """A connection that has not yet received what it ``needed``, if any."""
        for connection, counts in needed.items():
            received = self.connections.get(connection)
            if received is None or received.short_of(counts):
                return connection
        return None

    async def wait_for(self, needed: Needed, timeout: float, lobby_timeout: float) -> int | None:
        """Wait until every connection has what it ``needed``; else the one still short.

        Messages other than lobby lists must come within ``timeout``; a lobby
        list within ``lobby_timeout``, since the snapshot timer runs on its own.
        """
        messages_only = {connection: (count, 0) for connection, (count, _) in needed.items()}
        for wanted, limit in ((messages_only, timeout), (needed, lobby_timeout)):
            with trio.move_on_after(limit):
                while self.missing(wanted) is not None:
                    self.progress = trio.Event()
                    await self.progress.wait()
            short = self.missing(wanted)
            if short is not None:
                return short
        return None

    async def wait_for_final_lobby(self, timeout: float) -> Divergence | None:
        """Wait until every connection shows the lobby the recording ends with."""
        with trio.move_on_after(timeout):
            while unsettled := [r for r in self.connections.values() if not r.lobby_settled]:
                self.progress = trio.Event()
                await self.progress.wait()
            return None
        return unsettled[0].lobby_divergence(trio.current_time() - self.base)

    def matched(self) -> int:
        return sum(r.messages_matched for r in self.connections.values())


def _peer(text: str, connection: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host and port.isdigit():
        return host.strip("[]"), int(port)
    return "127.0.0.1", 40000 + connection


async def replay_in_process(
    session: Session,
    *,
    seed: int | None = None,
    tolerance: float = IN_PROCESS_TOLERANCE,
    **config_overrides: Any,
) -> ReplayResult:
    """Replay ``session`` against a fresh in-process server; compare every byte.

    Run it on a virtual clock (``trio.testing.MockClock(autojump_threshold=0)``,
    or pytest-trio's ``autojump_clock``) so that recorded times cost nothing;
    :func:`replay_in_process_sync` does that.  ``seed`` defaults to the
    recorded one; ``config_overrides`` change recorded settings.  Raises
    ReplayError if no seed is known.  The server and its streams live and
    end inside this call.

    A session recorded by a proxy shows client
    events in the order the recorder read them, which can differ from the
    order the server handled them when they came at the same instant on
    different connections.  When such a session diverges, the replay tries
    the nearby simultaneous pairs the other way round (see
    :func:`reordered_events`) and reports the first divergence only if no
    such order gets further.
    """
    seed = session.seed if seed is None else seed
    if seed is None:
        raise ReplayError("the session records no seed; give one")
    started = time.perf_counter()
    events = played_events(session)
    result = await _replay_events(events, session, seed, tolerance, config_overrides)
    if result.divergence is not None and session.settings.get("recorded_by") == "proxy":
        attempts = 0
        best = result
        tried: set[tuple[int, int]] = set()
        while best.divergence is not None and attempts < MAX_REORDERINGS:
            candidate = reordered_events(events, best.divergence, tried)
            if candidate is None:
                break
            attempts += 1
            retry = await _replay_events(
                candidate, session, seed, tolerance, config_overrides
            )
            if _further(retry, best):
                events, best = candidate, retry
                tried.clear()
        if best.divergence is None:
            result = best
    return attrs.evolve(result, real_seconds=time.perf_counter() - started)


# How many alternative orders of simultaneous client events an in-process
# replay tries.
MAX_REORDERINGS = 32


def reordered_events(
    events: tuple[Event, ...], divergence: Divergence, tried: set[tuple[int, int]]
) -> tuple[Event, ...] | None:
    """``events`` with one client event of the divergent connection moved, or None.

    The event is moved across the client events of other connections recorded
    within SIMULTANEOUS_SECONDS of it, as if the server had handled them the
    other way round: a divergence near time T on connection C comes from C's
    events being handled too early (moved later) or too late (moved earlier).
    Moves already in ``tried`` are skipped; the one returned is added.
    """
    limit = divergence.expected_time if divergence.expected_time is not None else divergence.time
    connection = divergence.connection
    for move in _moves(events, connection, limit):
        if move not in tried:
            tried.add(move)
            source, target = move
            moved = list(events)
            moved.insert(target, moved.pop(source))
            return tuple(moved)
    return None


def _moves(events: tuple[Event, ...], connection: int, limit: float) -> list[tuple[int, int]]:
    """Candidate moves (from index, to index) of ``connection``'s client events near ``limit``."""
    moves: list[tuple[int, int]] = []
    own = [
        index for index, event in enumerate(events)
        if event.connection == connection and event.kind in CLIENT_EVENTS
        and abs(event.time - limit) <= 2 * SIMULTANEOUS_SECONDS
    ]
    for index in sorted(own, key=lambda i: abs(events[i].time - limit)):
        moment = events[index].time
        # Later: past the following simultaneous client events of other connections.
        target = index
        for later in range(index + 1, len(events)):
            event = events[later]
            if event.time - moment > SIMULTANEOUS_SECONDS or event.connection == connection:
                break
            if event.kind in CLIENT_EVENTS:
                target = later
        if target != index:
            moves.append((index, target))
        # Earlier: before the preceding simultaneous client events of other connections.
        target = index
        for earlier in range(index - 1, -1, -1):
            event = events[earlier]
            if moment - event.time > SIMULTANEOUS_SECONDS or event.connection == connection:
                break
            if event.kind in CLIENT_EVENTS:
                target = earlier
        if target != index:
            moves.append((index, target))
    return moves


def _further(retry: ReplayResult, best: ReplayResult) -> bool:
    """Whether ``retry`` got further into the session than ``best``."""
    if retry.divergence is None:
        return True
    assert best.divergence is not None
    return (retry.client_events, retry.messages) > (best.client_events, best.messages)


async def _replay_events(
    events: tuple[Event, ...],
    session: Session,
    seed: int,
    tolerance: float,
    config_overrides: dict[str, Any],
) -> ReplayResult:
    started = time.perf_counter()
    steps = plan(events, heartbeats=True)
    base = trio.current_time()
    played = 0
    driver = trio.CancelScope()
    observer = _Observer(steps.expected, base, driver.cancel)
    wall_clock = session.settings.get("wall_clock")
    server = Server(config_for_replay(session.settings, **config_overrides), seed=seed,
                    recorder=observer, database=players_for_replay(session),
                    database_in_thread=False,
                    wall_clock_offset=None if wall_clock is None else wall_clock - base)
    clients: dict[int, trio.abc.HalfCloseableStream] = {}
    divergence: Divergence | None = None

    def lobby_wait() -> float:
        return server.core.snapshot_delay() + FINAL_LOBBY_SECONDS

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with driver:
            for event, needed in zip(steps.client_events, steps.needed_before):
                await trio.sleep_until(base + event.time)
                # Let everything due by now happen first, as it did when recorded.
                await trio.testing.wait_all_tasks_blocked()
                short = await observer.wait_for(needed, tolerance, lobby_wait())
                if short is not None:
                    divergence = _missing(observer, short, base)
                    break
                divergence = await _play_in_process(server, observer, clients, event, base)
                if divergence is not None:
                    break
                played += 1
            else:
                await trio.sleep_until(base + (events[-1].time if events else 0.0))
                await trio.testing.wait_all_tasks_blocked()
                short = await observer.wait_for(steps.needed_at_end, tolerance, lobby_wait())
                if short is not None:
                    divergence = _missing(observer, short, base)
                else:
                    # The last lobby lists may still be on the snapshot timer.
                    divergence = await observer.wait_for_final_lobby(lobby_wait())
        if observer.divergences:
            # Let the rest of that instant happen, so that the report does not
            # depend on which connection's writer the scheduler ran first.
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return ReplayResult(
        mode="in_process",
        connections=len({e.connection for e in events if e.kind == "connect"}),
        client_events=played,
        messages=observer.matched(),
        session_seconds=events[-1].time if events else 0.0,
        real_seconds=time.perf_counter() - started,
        divergence=observer.divergence or divergence,
    )


def _missing(observer: _Observer, connection: int, base: float) -> Divergence:
    received = observer.connections.get(connection)
    now = trio.current_time() - base
    if received is None:
        return Divergence(connection, 0, None, None, now, "connection_refused")
    return received.missing(now, "message_missing")


async def _play_in_process(
    server: Server,
    observer: _Observer,
    clients: dict[int, trio.abc.HalfCloseableStream],
    event: Event,
    base: float,
) -> Divergence | None:
    connection = event.connection
    now = trio.current_time() - base
    if event.kind == "connect":
        client_end, server_end = trio.testing.memory_stream_pair()
        clients[connection] = client_end
        observer.next_recorded_id = connection
        server.open_stream(server_end, _peer(event.text, connection))
        await trio.testing.wait_all_tasks_blocked()
        if connection not in observer.connections:
            observer.next_recorded_id = None
            return Divergence(connection, 0, None, None, now, "connection_refused")
        return None
    client = clients[connection]
    try:
        if event.kind == "recv":
            await client.send_all(event.data)
        elif event.kind == "eof":
            await client.send_eof()
        else:  # close: the server has ended it, or the client vanished now
            await client.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        received = observer.connections[connection]
        return Divergence(
            connection, received.matched + received.lists, None, None, now,
            "connection_closed_early",
        )
    return None


def replay_in_process_sync(session: Session, **options: Any) -> ReplayResult:
    """:func:`replay_in_process` in a trio run of its own on a virtual clock."""
    return trio.run(
        lambda: replay_in_process(session, **options),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )


# ---------------------------------------------------------------------------
# Live, over TCP


@attrs.define(eq=False)
class _LiveConnection:
    id: int  # in the session file
    received: _Received
    stream: trio.SocketStream | None = None
    server_closed: bool = False
    client_closed: bool = False


class _LiveReplay:
    def __init__(self, session: Session, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.events = played_events(session)
        self.plan = plan(self.events, heartbeats=False)
        self.connections: dict[int, _LiveConnection] = {}
        self.divergence: Divergence | None = None
        self.changed = trio.Event()
        self.start = 0.0
        self.driver = trio.CancelScope()
        self.played = 0
        for event in self.plan.client_events:
            if event.kind == "connect":
                expected = self.plan.expected.setdefault(event.connection, _Expected())
                self.connections[event.connection] = _LiveConnection(
                    event.connection, _Received(event.connection, expected, exact=False)
                )

    def now(self) -> float:
        return trio.current_time() - self.start

    def diverge(self, divergence: Divergence) -> None:
        if self.divergence is None:
            self.divergence = divergence
            self.driver.cancel()
        self.changed.set()

    async def run(self) -> ReplayResult:
        started = time.perf_counter()
        self.start = trio.current_time()
        failure: ReplayError | None = None
        async with trio.open_nursery() as nursery:
            with self.driver:
                try:
                    await self._drive(nursery)
                except ReplayError as error:
                    failure = error
            nursery.cancel_scope.cancel()
        for connection in self.connections.values():
            if connection.stream is not None:
                with trio.move_on_after(1, shield=True):
                    await connection.stream.aclose()
        if failure is not None:
            raise failure
        return ReplayResult(
            mode="live",
            connections=len(self.connections),
            client_events=self.played,
            messages=sum(c.received.messages_matched for c in self.connections.values()),
            session_seconds=self.events[-1].time if self.events else 0.0,
            real_seconds=time.perf_counter() - started,
            divergence=self.divergence,
        )

    async def _drive(self, nursery: trio.Nursery) -> None:
        previous_recorded = 0.0
        previous_real = self.start
        for event, needed in zip(self.plan.client_events, self.plan.needed_before):
            # Keep at least the recorded gap since the previous client event.
            await trio.sleep_until(previous_real + (event.time - previous_recorded))
            if not await self._wait_for(needed):
                return
            previous_recorded, previous_real = event.time, trio.current_time()
            if not await self._play(event, nursery):
                return
            self.played += 1
        if not await self._wait_for(self.plan.needed_at_end):
            return
        if not await self._wait_for_final_lobby():
            return
        # Anything the server sends now was not recorded; give it a moment to show.
        await trio.sleep(min(LIVE_SETTLE_SECONDS, self.timeout))

    async def _wait_for(self, needed: Needed) -> bool:
        """Wait until each connection received what it ``needed``; False on divergence."""

        def short() -> list[_LiveConnection]:
            return [
                c for c in self.connections.values()
                if c.id in needed and c.received.short_of(needed[c.id])
            ]

        with trio.move_on_after(self.timeout):
            while True:
                if self.divergence is not None:
                    return False
                waiting = short()
                if not waiting:
                    return True
                closed = [c for c in waiting if c.server_closed]
                if closed:
                    self._report_missing(closed, "connection_closed_by_server")
                    return False
                self.changed = trio.Event()
                await self.changed.wait()
        waiting = short()
        if self.divergence is not None or not waiting:
            return self.divergence is None
        self._report_missing(waiting, f"message_missing_after_{self.timeout:g}_s")
        return False

    async def _wait_for_final_lobby(self) -> bool:
        """Wait until each connection shows the lobby the recording ends with."""
        with trio.move_on_after(self.timeout):
            while unsettled := [
                c for c in self.connections.values() if not c.received.lobby_settled
            ]:
                if self.divergence is not None:
                    return False
                self.changed = trio.Event()
                await self.changed.wait()
            return self.divergence is None
        self.diverge(unsettled[0].received.lobby_divergence(self.now()))
        return False

    def _report_missing(self, short: list[_LiveConnection], reason: str) -> None:
        divergences = [c.received.missing(self.now(), reason) for c in short]
        self.diverge(min(divergences, key=lambda d: d.expected_time or 0.0))

    async def _play(self, event: Event, nursery: trio.Nursery) -> bool:
        connection = self.connections[event.connection]
        if event.kind == "connect":
            try:
                with trio.fail_after(self.timeout):
                    connection.stream = await trio.open_tcp_stream(self.host, self.port)
            except (OSError, trio.TooSlowError) as error:
                if self.played == 0:
                    raise ReplayError(
                        f"cannot connect to {self.host}:{self.port}: {error}"
                    ) from None
                self.diverge(Divergence(connection.id, 0, None, None, self.now(),
                                        f"connect_failed ({error})"))
                return False
            nursery.start_soon(self._read, connection)
            return True
        stream = connection.stream
        assert stream is not None
        try:
            if event.kind == "recv":
                await stream.send_all(event.data)
            elif event.kind == "eof":
                await stream.send_eof()
            else:
                connection.client_closed = True
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The server may close first (a refusal); what it sent is checked anyway.
            pass
        return True

    async def _read(self, connection: _LiveConnection) -> None:
        stream = connection.stream
        assert stream is not None
        splitter = connection.received.splitter
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if not connection.client_closed:
                    connection.server_closed = True
                self.changed.set()
                return
            for raw in splitter.feed(data):
                if is_heartbeat(raw):
                    continue
                if not self._check(connection, raw):
                    return
            if splitter.broken:
                self._check(connection, splitter.rest)
                return
            self.changed.set()

    def _check(self, connection: _LiveConnection, raw: bytes) -> bool:
        divergence = connection.received.check(raw, self.now())
        if divergence is not None:
            self.diverge(divergence)
            return False
        return True


async def replay_live(
    session: Session, host: str, port: int, *, timeout: float = 5.0
) -> ReplayResult:
    """Replay ``session`` over TCP against the server at ``host:port``.

    Runs in real time (at least the recorded gaps between client events).
    ``timeout`` bounds each wait for server messages and each connect.
    Raises ReplayError if the first connection cannot be made.  Every socket
    it opens is closed before it returns.
    """
    return await _LiveReplay(session, host, port, timeout).run()
