"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import structlog
import trio
from structlog.testing import capture_logs

from netplay.lobbies.classic import Lobby, PlayerState, RoomState
from netplay.testing import ScriptedClient

ROOT = Path(__file__).resolve().parents[1]


# -- child processes: the server and the tools --------------------------------------------

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def server_command(*options: str) -> list[str]:
    """``netplay-server`` on a free loopback port, logging JSON, keeping its player
    database in memory and writing no replay files (it runs in the project's
    directory), with ``options`` added (a later option wins)."""
    return [sys.executable, "-m", "netplay", "--database", ":memory:", "--host", "127.0.0.1",
            "--port", "0", "--log-format", "json", "--replays-directory", "", *options]


def tool_command(tool: str, *options: str) -> list[str]:
    """``tools/TOOL.py`` with ``options``."""
    return [sys.executable, str(ROOT / "tools" / f"{tool}.py"), *options]


def load_tool(name: str) -> ModuleType:
    """``tools/NAME.py`` imported as a module, to call its functions in this process."""
    tools = str(ROOT / "tools")
    sys.path.insert(0, tools)  # as when run as a script: a tool may import its siblings
    try:
        spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(tools)


class LoggingProcess:
    """A child process (the server, or a tool) whose stderr goes to a log file.

    The one way the tests start a process: from the project root, stdin and
    stdout closed, every JSON line of its log readable with :meth:`records`
    at any moment.  ``wait_for`` names a log event to wait for before the
    constructor returns (``listening`` for a server); its port is then in
    :attr:`port`.  Use it as a context manager or call :meth:`stop`: a child
    still running is stopped with SIGTERM, then killed, so that none
    outlives its test.
    """

    def __init__(self, argv: Sequence[str], log_path: Path, *,
                 wait_for: str | None = "listening") -> None:
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log_file, cwd=ROOT,
        )
        self.pid = self.process.pid
        self.port: int | None = None
        if wait_for is not None:
            record = self.wait_for_record(wait_for)
            self.port = record.get("port")

    def __enter__(self) -> LoggingProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """Every complete JSON log line written so far."""
        records = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass  # a line still being written, or not JSON
        return records

    def events(self) -> list[str]:
        return [record.get("event") for record in self.records()]

    def _first(self, event: str | None) -> dict[str, Any] | None:
        return next((r for r in self.records() if event in (None, r.get("event"))), None)

    def wait_for_record(self, event: str, timeout: float = START_TIMEOUT, *,
                        poll: float = 0.02) -> dict[str, Any]:
        """The first log record of ``event``, waiting for it (blocking) if need be,
        looking every ``poll`` seconds; ``event`` None: the first record of any kind."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self._first(event)
            if record is not None:
                return record
            if self.process.poll() is not None:
                break
            time.sleep(poll)
        record = self._first(event)
        if record is not None:
            return record
        self.stop()
        raise AssertionError(f"no {event!r} in the log of {self.process.args}:\n{self.text()}")

    async def wait_for_event(self, event: str, timeout: float = 2.0) -> dict[str, Any]:
        """The first log record of ``event``, once it has been written (in a trio test)."""
        with trio.fail_after(timeout):
            while (record := self._first(event)) is None:
                await trio.sleep(0.02)
        return record

    def wait_until_catching(self, signum: int, timeout: float = START_TIMEOUT) -> None:
        """Return once the process has a handler for ``signum`` (Linux: /proc), or has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
            if int(caught.split()[1], 16) & (1 << (signum - 1)):
                return
            time.sleep(0.001)
        if self.process.poll() is None:
            raise AssertionError(f"signal {signum} never caught by {self.process.args}")

    async def connect(self, *, answer_pings: bool = True) -> ScriptedClient:
        """A scripted client connected to this server's port (in a trio test)."""
        assert self.port is not None, "no listening line was waited for"
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        return ScriptedClient(stream, answer_pings=answer_pings)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_for_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status, waiting for it in a trio test."""
        with trio.fail_after(timeout):
            while (status := self.process.poll()) is None:
                await trio.sleep(0.02)
        return status

    def stop(self) -> int:
        """SIGTERM if still running, then the exit status (killed if it does not end)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


# -- scripted players ----------------------------------------------------------------------


async def start_match_in_turn(first: ScriptedClient, second: ScriptedClient) -> None:
    """Two players in a new room ready up; wait until both have ``match_start``.

    Unlike ``netplay.testing.start_match``, ``second`` readies only after it
    saw ``first`` do so, so a session recorded over TCP has one message order.
    """
    await first.menu_state(ready=True, cursor="ready")
    await second.receive_until("menu_state")
    await second.menu_state(ready=True, cursor="ready")
    await first.receive_until("match_start")
    await second.receive_until("match_start")


# -- the lobby's invariants ----------------------------------------------------------------


def assert_rooms_and_requests_consistent(lobby: Lobby) -> None:
    """Rooms hold two connected players that point back, in states that fit the room's;
    game requests are only between two distinct players in the lobby."""
    for room_id, room in lobby.rooms.items():
        assert room.id == room_id
        first, second = room.players
        assert first is not second
        for player in room.players:
            assert lobby.players.get(player.id) is player
            assert player.room is room
        if room.state is RoomState.SELECTING:
            assert room.match is None
            assert first.state is second.state is PlayerState.ROOM
        else:
            assert room.match is not None
            assert {first.state, second.state} <= {PlayerState.PLAYING, PlayerState.GAME_OVER}
            assert room.match.game_over == [
                player.state is PlayerState.GAME_OVER for player in room.players
            ]
    for sender, receiver in lobby.proposals:
        assert sender != receiver
        assert lobby.players[sender].state is PlayerState.LOBBY
        assert lobby.players[receiver].state is PlayerState.LOBBY


@contextlib.contextmanager
def logging_restored(monkeypatch, module):
    """Put back structlog's and the root logger's set-up afterwards, and give
    ``module`` a logger of its own, since ``main`` caches the loggers it uses."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved_config)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


# -- logs ------------------------------------------------------------------------------


@contextlib.contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[list[dict[str, Any]]]:
    """Every log line at ``level`` or above, with the connection's bound context."""
    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=previous)
