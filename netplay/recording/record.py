"""Session files: every connection's traffic, in both directions, with times.

The format (see ``docs/recording.md``) is line based UTF-8 text::

    netplay-session 1
    settings {"seed": 7, "client_versions": ["004", ...], ...}
    0.000000 1 connect "127.0.0.1:50312"
    0.000210 1 recv "H004J\\u0000\\u0000\\u001e{...}"
    0.000300 1 send "H"
    1.000310 1 send "ELOL"
    3.120000 1 eof
    3.120100 1 close "end_of_stream"

Times are seconds since the session started.  Data is the exact bytes,
decoded as Latin-1 and written as a JSON string, so that text stays readable
and every byte survives.  ``recv`` is what the client sent to the server,
``send`` what the server sent to the client, ``eof`` the client's end of
stream, ``close`` the end of the connection with its reason.

Writing is buffered in memory and flushed to disk every
:data:`FLUSH_INTERVAL` by a background task, in a worker thread, so the game
loop never waits on the disk; a crash loses at most that interval, and a
clean shutdown writes everything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, AsyncIterator, Iterable, TextIO

import attrs
import structlog
import trio

from netplay.config import Config

log = structlog.get_logger("netplay.recording")

MAGIC = "netplay-session 1"
FLUSH_INTERVAL = 0.05
EVENT_KINDS = ("connect", "recv", "send", "eof", "close")
SESSION_SUFFIX = ".session"
# Lines waiting for the disk.  Past this the disk cannot keep up: recording
# stops (and says so in the file) rather than letting memory grow.
MAX_PENDING_CHARACTERS = 32 * 1024 * 1024
# Close reasons that mean the recorder's host was shutting down, not that the
# connection ended on its own: what follows them is not part of the session.
SHUTDOWN_REASONS = frozenset({"server_shutdown", "proxy_shutdown"})


def encode_data(data: bytes) -> str:
    return json.dumps(data.decode("latin-1"))


def decode_data(text: str) -> bytes:
    value = json.loads(text)
    if not isinstance(value, str):
        raise ValueError(f"data must be a JSON string, got {type(value).__name__}")
    return value.encode("latin-1")


# Config fields that say where the server listens, not how it behaves.
_NOT_REPLAY_SETTINGS = frozenset({"host", "port", "seed", "database"})


def replay_settings(config: Config, seed: int) -> dict[str, Any]:
    """The settings a replay needs to reproduce the server's bytes: the seed and
    every behaviour setting of ``config`` (sets and tuples as JSON lists)."""
    settings: dict[str, Any] = {"seed": seed, "recorded_by": "server"}
    for field in attrs.fields(Config):
        if field.name in _NOT_REPLAY_SETTINGS:
            continue
        value = getattr(config, field.name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        settings[field.name] = value
    return settings


def config_for_replay(settings: dict[str, Any], **overrides: Any) -> Config:
    """A Config with the recorded settings; keys Config does not know are ignored,
    and a setting not recorded keeps its default."""
    defaults = Config()
    values: dict[str, Any] = {}
    for field in attrs.fields(Config):
        if field.name in _NOT_REPLAY_SETTINGS or field.name not in settings:
            continue
        value = settings[field.name]
        default = getattr(defaults, field.name)
        if isinstance(default, frozenset):
            value = frozenset(value)
        elif isinstance(default, tuple):
            value = tuple(value)
        values[field.name] = value
    values.update(overrides)
    return Config(**values)


# ---------------------------------------------------------------------------
# Writing


class SessionWriter:
    """Formats events into lines; whoever owns it moves :meth:`take` to a file.

    Implements the server's ``Recorder`` protocol.  ``start`` is the clock
    reading that becomes time 0.

    Times never go backwards in the file: an event stamped earlier than the
    one before it is written with the earlier event's time.  The server
    stamps each read when it reads it and each write when it writes it, so
    this only evens out clock readings taken in a different order than the
    events were recorded.
    """

    def __init__(self, settings: dict[str, Any], start: float) -> None:
        self.start = start
        # The recorded server's wall clock minus ``start``'s clock, when the
        # settings say what the wall clock read at time 0 ("wall_clock").
        wall_clock = settings.get("wall_clock")
        self.wall_clock_offset = None if wall_clock is None else wall_clock - start
        self._latest = start
        self._lines: list[str] = [MAGIC + "\n", "settings " + json.dumps(settings) + "\n"]
        self._pending = sum(map(len, self._lines))
        self.stopped: str | None = None  # why recording stopped early, if it did

    def _add(self, now: float, connection_id: int, kind: str, rest: str | None) -> None:
        if self.stopped is not None:
            return
        if now < self._latest:
            now = self._latest
        else:
            self._latest = now
        line = f"{now - self.start:.6f} {connection_id} {kind}"
        line = f"{line} {rest}\n" if rest is not None else line + "\n"
        self._lines.append(line)
        self._pending += len(line)
        if self._pending > MAX_PENDING_CHARACTERS:
            self.stop("the disk fell behind")

    def stop(self, reason: str) -> None:
        """Record nothing more; the file ends with a comment saying why."""
        if self.stopped is None:
            self.stopped = reason
            log.error("recording_stopped", reason=reason)
            self._lines.append(f"# recording stopped: {reason}\n")

    def connected(self, connection_id: int, peer: str, now: float) -> None:
        self._add(now, connection_id, "connect", json.dumps(peer))

    def received(self, connection_id: int, data: bytes, now: float) -> None:
        self._add(now, connection_id, "recv", encode_data(data))

    def sent(self, connection_id: int, data: bytes, now: float) -> None:
        self._add(now, connection_id, "send", encode_data(data))

    def end_of_stream(self, connection_id: int, now: float) -> None:
        self._add(now, connection_id, "eof", None)

    def closed(self, connection_id: int, reason: str, now: float) -> None:
        self._add(now, connection_id, "close", json.dumps(reason))

    def take(self) -> str:
        """Every line formatted since the last call, as one string."""
        text = "".join(self._lines)
        self._lines.clear()
        self._pending = 0
        return text


class FileRecorder(SessionWriter):
    """A SessionWriter flushed to ``path`` by :meth:`run_flusher`; owns the open file."""

    def __init__(self, path: str, settings: dict[str, Any], start: float) -> None:
        super().__init__(settings, start)
        self.path = path
        self._file: TextIO | None = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def _write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()

    async def run_flusher(self) -> None:
        """Move buffered lines to the file every FLUSH_INTERVAL, until cancelled."""
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            text = self.take()
            if not text:
                continue
            try:
                # Not abandoned on cancel: close() must not race this write.
                await trio.to_thread.run_sync(self._write, text)
            except OSError as error:
                # A full or failing disk ends the recording, not the server.
                self.stop(f"cannot write: {error}")
                self._abandon()
                return

    def _abandon(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        log.error("recording_abandoned", path=self.path)

    def close(self) -> None:
        """Write what is left and close the file; safe to call from cleanup."""
        if self._file is None:
            return
        try:
            self._write(self.take())
            self._file.close()
        except OSError as error:
            log.error("recording_incomplete", path=self.path, error=str(error))
        self._file = None


class RecordingError(Exception):
    """A session file cannot be created: its directory is missing, not writable, a file..."""


@contextlib.asynccontextmanager
async def open_session_file(path: str, settings: dict[str, Any]) -> AsyncIterator[FileRecorder]:
    """A FileRecorder writing ``path``, flushed in the background until the block ends.

    Times count from entering the block.  On leaving it, by any route, the
    rest is written and the file closed.  Raises :class:`RecordingError`
    before entering the block if the file cannot be created.
    """
    settings = {**settings, "wall_clock": round(time.time(), 6)}
    try:
        recorder = FileRecorder(path, settings, trio.current_time())
    except OSError as error:
        raise RecordingError(f"cannot create {path}: {error.strerror or error}") from None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(recorder.run_flusher)
            try:
                yield recorder
            finally:
                nursery.cancel_scope.cancel()
    finally:
        recorder.close()
        log.info("recording_closed", path=path)


def new_session_path(directory: str) -> str:
    """A fresh file name in ``directory`` (created if missing); :class:`RecordingError`
    if the directory cannot be created."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise RecordingError(f"cannot create directory {directory}: {error.strerror or error}") from None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return os.path.join(directory, f"session-{stamp}-{os.getpid()}{SESSION_SUFFIX}")


@contextlib.asynccontextmanager
async def open_recorder(
    directory: str | None, config: Config, seed: int
) -> AsyncIterator[FileRecorder | None]:
    """A recorder writing a new session file in ``directory`` (None: no recording).

    Raises :class:`RecordingError` if the directory or the file cannot be created.
    """
    if directory is None:
        yield None
        return
    async with open_session_file(
        new_session_path(directory), replay_settings(config, seed)
    ) as recorder:
        yield recorder


# ---------------------------------------------------------------------------
# Reading


@attrs.frozen
class Event:
    time: float
    connection: int
    kind: str  # one of EVENT_KINDS
    data: bytes = b""  # recv / send
    text: str = ""  # connect: the peer; close: the reason


@attrs.frozen
class Session:
    settings: dict[str, Any]
    events: tuple[Event, ...]

    def connections(self) -> list[int]:
        """Connection ids in the order they connected."""
        seen: dict[int, None] = {}
        for event in self.events:
            seen.setdefault(event.connection, None)
        return list(seen)

    @property
    def seed(self) -> int | None:
        return self.settings.get("seed")

    @property
    def duration(self) -> float:
        return self.events[-1].time if self.events else 0.0


class SessionFormatError(ValueError):
    """A session file that cannot be read; the message names the line."""


def _parse_event(line: str) -> Event:
    fields = line.split(" ", 3)
    if len(fields) < 3:
        raise ValueError("expected: TIME CONNECTION KIND [PAYLOAD]")
    stamp, connection, kind = fields[:3]
    payload = fields[3] if len(fields) == 4 else None
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event {kind[:20]!r}")
    moment = float(stamp)
    if not math.isfinite(moment) or moment < 0:
        raise ValueError(f"bad time {stamp[:20]!r}")
    if not connection.isdigit():
        raise ValueError(f"bad connection id {connection[:20]!r}")
    if (payload is None) != (kind == "eof"):
        raise ValueError(f"{kind} takes {'no' if kind == 'eof' else 'a'} payload")
    data, text = b"", ""
    if kind in ("recv", "send"):
        data = decode_data(payload)  # type: ignore[arg-type]
    elif kind in ("connect", "close"):
        value = json.loads(payload)  # type: ignore[arg-type]
        if not isinstance(value, str):
            raise ValueError(f"{kind} takes a JSON string")
        text = value
    return Event(moment, int(connection), kind, data, text)


def parse_session(lines: Iterable[str]) -> Session:
    """Parse a session file's lines.

    Raises SessionFormatError naming the line number and the problem: a
    missing header, a malformed line, a time that goes backwards, events of
    a connection before its ``connect`` or after its ``close``.
    """
    settings: dict[str, Any] = {}
    events: list[Event] = []
    open_connections: set[int] = set()
    known: set[int] = set()
    previous_time = 0.0
    number = 0
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if number == 1:
            if line != MAGIC:
                raise SessionFormatError(f"line 1: not a session file ({line[:40]!r})")
            continue
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("settings "):
                if events:
                    raise ValueError("settings must come before the events")
                settings = json.loads(line[len("settings ") :])
                if not isinstance(settings, dict):
                    raise ValueError("settings must be a JSON object")
                continue
            event = _parse_event(line)
            if event.time < previous_time:
                raise ValueError(f"time goes backwards ({event.time:.6f} < {previous_time:.6f})")
            if event.kind == "connect":
                if event.connection in known:
                    raise ValueError(f"connection {event.connection} connects twice")
                known.add(event.connection)
                open_connections.add(event.connection)
            elif event.connection not in open_connections:
                raise ValueError(f"connection {event.connection} is not open")
            elif event.kind == "close":
                open_connections.discard(event.connection)
        except (ValueError, UnicodeEncodeError) as error:
            raise SessionFormatError(f"line {number}: {error}") from None
        previous_time = event.time
        events.append(event)
    if number == 0:
        raise SessionFormatError("line 1: empty file, not a session file")
    return Session(settings, tuple(events))


def read_session(path: str) -> Session:
    """Read a session file; raises OSError, or SessionFormatError naming the line."""
    with open(path, encoding="utf-8") as file:
        try:
            return parse_session(file)
        except UnicodeDecodeError as error:
            raise SessionFormatError(f"not UTF-8 text: {error}") from None


def format_session(session: Session) -> str:
    """The text of a session file holding ``session`` (the inverse of parse_session)."""
    writer = SessionWriter(session.settings, 0.0)
    for event in session.events:
        if event.kind == "connect":
            writer.connected(event.connection, event.text, event.time)
        elif event.kind == "recv":
            writer.received(event.connection, event.data, event.time)
        elif event.kind == "send":
            writer.sent(event.connection, event.data, event.time)
        elif event.kind == "eof":
            writer.end_of_stream(event.connection, event.time)
        else:
            writer.closed(event.connection, event.text, event.time)
    return writer.take()


def write_session(session: Session, path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(format_session(session))
