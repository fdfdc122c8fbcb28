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

from netplay import messages as m
from netplay import storage
from netplay.dialect046 import NEW_USER_ID_REQUEST
from netplay.errors import RemoteProtocolError
from netplay.recording import SHUTDOWN_REASONS, Event, Session, config_for_replay
from netplay.server import Server
from netplay.wire import MAX_JSON_LENGTH_ON_WIRE, Decoder, Direction

# In process: how long (virtual seconds) a client event may wait for server
# messages recorded before it.  Recorded times are rounded to the
# microsecond, so a timer's message and the client's answer to it may land
# a hair apart in either order; anything longer is a divergence.
IN_PROCESS_TOLERANCE = 0.0001
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

    Bytes that cannot be framed (an unknown letter) end the splitting; they
    stay in :attr:`rest` and :attr:`broken` is set.
    """

    def __init__(self) -> None:
        self._decoder = Decoder(Direction.SERVER_TO_CLIENT, max_json_length=MAX_JSON_LENGTH_ON_WIRE)
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
    client_decoders: dict[int, Decoder] = {}
    server_splitters: dict[int, MessageSplitter] = {}
    names: dict[int, str] = {}
    asked: dict[int, str] = {}  # connection -> the id its login_request named
    for event in session.events:
        if event.kind == "recv":
            decoder = client_decoders.setdefault(
                event.connection, Decoder(max_json_length=MAX_JSON_LENGTH_ON_WIRE)
            )
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
                reply = _json_body(raw)
                if not isinstance(reply, dict) or reply.get("login_successful") is not True:
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


def is_heartbeat(raw: bytes) -> bool:
    """A server ping: ``E`` + 3 characters (existing clients) or ``W`` (document dialect)."""
    return (len(raw) == 4 and raw[:1] == b"E") or raw == b"W"


def _json_body(raw: bytes) -> Any:
    if raw[:1] != b"J" or len(raw) < 4 or int.from_bytes(raw[1:4], "big") != len(raw) - 4:
        return None
    try:
        return json.loads(raw[4:].decode("utf-8"))
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
    if raw[:1] == b"J" and len(raw) >= 4 and int.from_bytes(raw[1:4], "big") == len(raw) - 4:
        return "J" + raw[4:].decode("utf-8", "backslashreplace")
    text = raw.decode("latin-1")
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


@attrs.define(eq=False)
class _Recorded:
    """The server's recorded bytes to one connection, with the time of each chunk."""

    data: bytearray = attrs.Factory(bytearray)
    chunk_ends: list[int] = attrs.Factory(list)
    chunk_times: list[float] = attrs.Factory(list)

    def add(self, data: bytes, moment: float) -> None:
        self.data += data
        self.chunk_ends.append(len(self.data))
        self.chunk_times.append(moment)

    def time_at(self, offset: int) -> float | None:
        """When the byte at ``offset`` was recorded (None past the end)."""
        index = bisect.bisect_right(self.chunk_ends, offset)
        return self.chunk_times[index] if index < len(self.chunk_times) else None


def played_events(session: Session) -> tuple[Event, ...]:
    """The events a replay plays and checks: up to the host's shutdown, if any."""
    for index, event in enumerate(session.events):
        if event.kind == "close" and event.text in SHUTDOWN_REASONS:
            return session.events[:index]
    return session.events


def _messages_with_offsets(data: bytes) -> list[tuple[int, bytes]]:
    result, offset = [], 0
    for raw in split_messages(data):
        result.append((offset, raw))
        offset += len(raw)
    return result


def _byte_divergence(
    connection: int,
    expected: _Recorded,
    actual: bytes,
    now: float,
    reason: str | None = None,
) -> Divergence:
    """Name the first message where ``actual`` stops matching the recorded bytes."""
    expected_messages = _messages_with_offsets(bytes(expected.data))
    actual_messages = _messages_with_offsets(actual)
    index = 0
    while (
        index < len(expected_messages)
        and index < len(actual_messages)
        and expected_messages[index][1] == actual_messages[index][1]
    ):
        index += 1
    expected_message = expected_messages[index] if index < len(expected_messages) else None
    actual_message = actual_messages[index][1] if index < len(actual_messages) else None
    if reason is None:
        if expected_message is None:
            reason = "unexpected_message"
        elif actual_message is None:
            reason = "message_missing"
        else:
            reason = "message_differs"
    return Divergence(
        connection=connection,
        message_index=index,
        expected=expected_message[1] if expected_message else None,
        actual=actual_message,
        time=now,
        reason=reason,
        expected_time=expected.time_at(expected_message[0]) if expected_message else None,
    )


# ---------------------------------------------------------------------------
# In process, on the virtual clock


class _Observer:
    """The replayed server's recorder: compares each write with the recording as it happens."""

    def __init__(self, expected: dict[int, _Recorded], base: float, stop: Callable[[], None]):
        self.expected = expected
        self.base = base
        self._stop = stop
        self.recorded_id: dict[int, int] = {}  # the replayed server's id -> id in the file
        self.next_recorded_id: int | None = None
        self.actual: dict[int, bytearray] = {}
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
        if self.next_recorded_id is not None:
            self.recorded_id[connection_id] = self.next_recorded_id
            self.actual[self.next_recorded_id] = bytearray()
            self.next_recorded_id = None

    def sent(self, connection_id: int, data: bytes, now: float) -> None:
        recorded = self.recorded_id.get(connection_id)
        if recorded is None or recorded in self.divergences:
            return
        actual = self.actual[recorded]
        start = len(actual)
        actual += data
        expected = self.expected.get(recorded)
        expected_data = expected.data if expected is not None else b""
        if expected_data[start : start + len(data)] != data:
            self.divergences[recorded] = _byte_divergence(
                recorded, expected or _Recorded(), bytes(actual), now - self.base
            )
            self._stop()
        self.progress.set()

    def received(self, connection_id: int, data: bytes, now: float) -> None:
        pass

    def end_of_stream(self, connection_id: int, now: float) -> None:
        pass

    def closed(self, connection_id: int, reason: str, now: float) -> None:
        pass

    def missing(self, needed: dict[int, int]) -> int | None:
        """A connection that has not yet received its ``needed`` bytes, if any."""
        for connection, length in needed.items():
            if len(self.actual.get(connection, b"")) < length:
                return connection
        return None

    async def wait_for(self, needed: dict[int, int], timeout: float) -> int | None:
        """Wait until every connection has its ``needed`` bytes; else the one still short."""
        with trio.move_on_after(timeout):
            while (short := self.missing(needed)) is not None:
                self.progress = trio.Event()
                await self.progress.wait()
            return None
        return short


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
    """
    seed = session.seed if seed is None else seed
    if seed is None:
        raise ReplayError("the session records no seed; give one")
    started = time.perf_counter()
    events = played_events(session)
    expected: dict[int, _Recorded] = {}
    for event in events:
        if event.kind == "send":
            expected.setdefault(event.connection, _Recorded()).add(event.data, event.time)
    base = trio.current_time()
    played = 0
    driver = trio.CancelScope()
    observer = _Observer(expected, base, driver.cancel)
    server = Server(config_for_replay(session.settings, **config_overrides), seed=seed,
                    recorder=observer, database=players_for_replay(session),
                    database_in_thread=False)
    clients: dict[int, trio.abc.HalfCloseableStream] = {}
    needed: dict[int, int] = {}
    divergence: Divergence | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with driver:
            for event in events:
                if event.kind == "send":
                    needed[event.connection] = needed.get(event.connection, 0) + len(event.data)
                    continue
                await trio.sleep_until(base + event.time)
                # Let everything due by now happen first, as it did when recorded.
                await trio.testing.wait_all_tasks_blocked()
                short = await observer.wait_for(needed, tolerance)
                if short is not None:
                    divergence = _missing(observer, expected, short, trio.current_time() - base)
                    break
                divergence = await _play_in_process(server, observer, clients, event, base)
                if divergence is not None:
                    break
                played += 1
            else:
                await trio.sleep_until(base + (events[-1].time if events else 0.0))
                await trio.testing.wait_all_tasks_blocked()
                short = await observer.wait_for(needed, tolerance)
                if short is not None:
                    divergence = _missing(observer, expected, short, trio.current_time() - base)
        if observer.divergences:
            # Let the rest of that instant happen, so that the report does not
            # depend on which connection's writer the scheduler ran first.
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return ReplayResult(
        mode="in_process",
        connections=len({e.connection for e in events if e.kind == "connect"}),
        client_events=played,
        messages=_matched(observer, expected),
        session_seconds=events[-1].time if events else 0.0,
        real_seconds=time.perf_counter() - started,
        divergence=observer.divergence or divergence,
    )


def _missing(
    observer: _Observer, expected: dict[int, _Recorded], connection: int, now: float
) -> Divergence:
    return _byte_divergence(
        connection, expected[connection], bytes(observer.actual.get(connection, b"")), now,
        reason="message_missing",
    )


def _matched(observer: _Observer, expected: dict[int, _Recorded]) -> int:
    """How many whole messages the server sent as recorded, before any divergence."""
    count = 0
    for connection, actual in observer.actual.items():
        recorded = expected[connection].data if connection in expected else b""
        offset = 0
        for raw in split_messages(bytes(actual)):
            if recorded[offset : offset + len(raw)] != raw:
                break
            offset += len(raw)
            count += 1
    return count


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
        if connection not in observer.actual:
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
        return Divergence(
            connection, len(split_messages(bytes(observer.actual[connection]))), None, None,
            now, "connection_closed_early",
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
    expected: list[tuple[bytes, float]]  # non-ping messages with their recorded times
    stream: trio.SocketStream | None = None
    splitter: MessageSplitter = attrs.Factory(MessageSplitter)
    received: int = 0  # messages that matched so far
    server_closed: bool = False
    client_closed: bool = False


class _LiveReplay:
    def __init__(self, session: Session, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.events = played_events(session)
        self.connections: dict[int, _LiveConnection] = {}
        self.divergence: Divergence | None = None
        self.changed = trio.Event()
        self.start = 0.0
        self.driver = trio.CancelScope()
        self.played = 0
        # Per client event: how many messages each connection must have received first.
        self.needed_before: list[dict[int, int]] = []
        splitters: dict[int, MessageSplitter] = {}
        expected: dict[int, list[tuple[bytes, float]]] = {}
        counts: dict[int, int] = {}
        for event in self.events:
            if event.kind == "send":
                splitter = splitters.setdefault(event.connection, MessageSplitter())
                for raw in splitter.feed(event.data):
                    if not is_heartbeat(raw):
                        expected.setdefault(event.connection, []).append((raw, event.time))
                        counts[event.connection] = counts.get(event.connection, 0) + 1
            elif event.kind in CLIENT_EVENTS:
                self.needed_before.append(dict(counts))
                if event.kind == "connect":
                    self.connections[event.connection] = _LiveConnection(
                        event.connection, expected.setdefault(event.connection, [])
                    )
        # A message cut short where the recording ends is not expected.
        self.needed_at_end = {c: len(e) for c, e in expected.items()}

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
            messages=sum(c.received for c in self.connections.values()),
            session_seconds=self.events[-1].time if self.events else 0.0,
            real_seconds=time.perf_counter() - started,
            divergence=self.divergence,
        )

    async def _drive(self, nursery: trio.Nursery) -> None:
        previous_recorded = 0.0
        previous_real = self.start
        step = 0
        for event in self.events:
            if event.kind not in CLIENT_EVENTS:
                continue
            # Keep at least the recorded gap since the previous client event.
            await trio.sleep_until(previous_real + (event.time - previous_recorded))
            if not await self._wait_for(self.needed_before[step]):
                return
            step += 1
            previous_recorded, previous_real = event.time, trio.current_time()
            if not await self._play(event, nursery):
                return
            self.played += 1
        if not await self._wait_for(self.needed_at_end):
            return
        # Anything the server sends now was not recorded; give it a moment to show.
        await trio.sleep(min(LIVE_SETTLE_SECONDS, self.timeout))

    async def _wait_for(self, needed: dict[int, int]) -> bool:
        """Wait until each connection received its ``needed`` messages; False on divergence."""
        with trio.move_on_after(self.timeout):
            while True:
                if self.divergence is not None:
                    return False
                short = [
                    c for c in self.connections.values()
                    if c.received < needed.get(c.id, 0)
                ]
                if not short:
                    return True
                closed = [c for c in short if c.server_closed]
                if closed:
                    self._report_missing(closed, "connection_closed_by_server")
                    return False
                self.changed = trio.Event()
                await self.changed.wait()
        short = [c for c in self.connections.values() if c.received < needed.get(c.id, 0)]
        if self.divergence is not None or not short:
            return self.divergence is None
        self._report_missing(short, f"message_missing_after_{self.timeout:g}_s")
        return False

    def _report_missing(self, short: list[_LiveConnection], reason: str) -> None:
        first = min(short, key=lambda c: c.expected[c.received][1])
        raw, recorded_at = first.expected[first.received]
        self.diverge(
            Divergence(first.id, first.received, raw, None, self.now(), reason, recorded_at)
        )

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
            for raw in connection.splitter.feed(data):
                if is_heartbeat(raw):
                    continue
                if not self._check(connection, raw):
                    return
            if connection.splitter.broken:
                self._check(connection, connection.splitter.rest)
                return
            self.changed.set()

    def _check(self, connection: _LiveConnection, raw: bytes) -> bool:
        index = connection.received
        if index >= len(connection.expected):
            self.diverge(Divergence(connection.id, index, None, raw, self.now(),
                                    "unexpected_message"))
            return False
        expected, recorded_at = connection.expected[index]
        if not messages_equal(expected, raw):
            self.diverge(Divergence(connection.id, index, expected, raw, self.now(),
                                    "message_differs", recorded_at))
            return False
        connection.received += 1
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
