"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Sequence

import trio

from netplay.lobby import Lobby, PlayerState, RoomState
from netplay.testing import ScriptedClient

ROOT = Path(__file__).resolve().parents[1]


# -- child processes that log JSON lines on stderr ----------------------------------------


@asynccontextmanager
async def json_logging_process(argv: Sequence[str]) -> AsyncIterator[trio.Process]:
    """Run ``argv`` from the project root with stderr piped, for :func:`read_json_line`.

    A child still running when the block ends (a test that failed half-way)
    is killed, so no server or proxy outlives its test.
    """
    process = await trio.lowlevel.open_process(
        list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_json_line(stream: trio.abc.ReceiveStream, event: str) -> dict:
    """The first JSON log line on ``stream`` whose ``event`` is ``event``; others are skipped."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                return entry
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError(f"the process ended before logging {event!r}")
        buffer += data


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
