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
and every byte survives.  Writing is buffered in memory and flushed to disk
by a background task every :data:`FLUSH_INTERVAL`, in a worker thread, so the
game loop never waits on the disk; a crash loses at most that interval.
"""

from __future__ import annotations

import contextlib
import json
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


def encode_data(data: bytes) -> str:
    return json.dumps(data.decode("latin-1"))


def decode_data(text: str) -> bytes:
    return json.loads(text).encode("latin-1")


def replay_settings(config: Config, seed: int) -> dict[str, Any]:
    """The settings a replay needs to reproduce the server's bytes."""
    return {
        "seed": seed,
        "client_versions": sorted(config.client_versions),
        "document_versions": sorted(config.document_versions),
        "ping_interval": config.ping_interval,
        "idle_timeout": config.idle_timeout,
        "handshake_timeout": config.handshake_timeout,
        "registration_timeout": config.registration_timeout,
        "max_json_length": config.max_json_length,
        "max_name_length": config.max_name_length,
        "max_messages_per_second": config.max_messages_per_second,
        "message_burst": config.message_burst,
        "snapshot_interval": config.snapshot_interval,
        "snapshot_interval_per_player": config.snapshot_interval_per_player,
        "max_snapshot_interval": config.max_snapshot_interval,
    }


def config_for_replay(settings: dict[str, Any], **overrides: Any) -> Config:
    """A Config with the recorded settings (unknown keys are ignored)."""
    fields = {f.name for f in attrs.fields(Config)}
    values = {k: v for k, v in settings.items() if k in fields and k != "seed"}
    for key in ("client_versions", "document_versions"):
        if key in values:
            values[key] = frozenset(values[key])
    values.update(overrides)
    return Config(**values)


class SessionWriter:
    """Formats events into lines; whoever owns it moves :meth:`take` to a file."""

    def __init__(self, settings: dict[str, Any], start: float) -> None:
        self.start = start
        self._lines: list[str] = [MAGIC + "\n", "settings " + json.dumps(settings) + "\n"]

    def _add(self, now: float, connection_id: int, kind: str, rest: str | None) -> None:
        line = f"{now - self.start:.6f} {connection_id} {kind}"
        self._lines.append(f"{line} {rest}\n" if rest is not None else line + "\n")

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
        text = "".join(self._lines)
        self._lines.clear()
        return text


class FileRecorder(SessionWriter):
    """A SessionWriter flushed to ``path`` by :meth:`run_flusher`."""

    def __init__(self, path: str, settings: dict[str, Any], start: float) -> None:
        super().__init__(settings, start)
        self.path = path
        self._file: TextIO = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    async def run_flusher(self) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            text = self.take()
            if text:
                await trio.to_thread.run_sync(self._write, text)

    def close(self) -> None:
        """Write what is left and close the file; safe to call from cleanup."""
        self._write(self.take())
        self._file.close()


@contextlib.asynccontextmanager
async def open_recorder(
    directory: str | None, config: Config, seed: int
) -> AsyncIterator[FileRecorder | None]:
    """A recorder writing a new session file in ``directory`` (None: no recording)."""
    if directory is None:
        yield None
        return
    os.makedirs(directory, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(directory, f"session-{stamp}-{os.getpid()}.log")
    recorder = FileRecorder(path, replay_settings(config, seed), trio.current_time())
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
        return sorted({e.connection for e in self.events})

    @property
    def seed(self) -> int | None:
        return self.settings.get("seed")


class SessionFormatError(ValueError):
    pass


def parse_session(lines: Iterable[str]) -> Session:
    """Parse a session file's lines; raises SessionFormatError with the line number."""
    settings: dict[str, Any] = {}
    events: list[Event] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        if number == 1:
            if line != MAGIC:
                raise SessionFormatError(f"line 1: not a session file ({line[:40]!r})")
            continue
        try:
            if line.startswith("settings "):
                settings = json.loads(line[len("settings ") :])
                continue
            stamp, connection, rest = line.split(" ", 2) if line.count(" ") >= 2 else (
                *line.split(" ", 1), ""
            )
            kind, _, payload = rest.partition(" ")
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown event {kind!r}")
            data, text = b"", ""
            if kind in ("recv", "send"):
                data = decode_data(payload)
            elif kind in ("connect", "close"):
                text = json.loads(payload)
            events.append(Event(float(stamp), int(connection), kind, data, text))
        except (ValueError, UnicodeEncodeError) as error:
            raise SessionFormatError(f"line {number}: {error}") from None
    return Session(settings, tuple(events))


def read_session(path: str) -> Session:
    with open(path, encoding="utf-8") as file:
        return parse_session(file)
