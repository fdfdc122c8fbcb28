"""Every limit of the server, and every defect of the original server, under attack.

Each in-process test runs while two other players play a match in a room of
their own (:func:`match_elsewhere`) and ends by checking that their match went
on undisturbed: every input each of them sent reached the other, in order,
never echoed, and nothing else reached them.

Timing rules run in process on trio's virtual clock (``autojump_clock``); the
few tests where the socket itself matters (a reset, a half-close) run over
real loopback TCP with bounded waits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import socket
import struct
import threading
from typing import Any, AsyncIterator

import pytest
import trio
import trio.testing
from helpers import captured_logs

from netplay.actions import Close
from netplay.config import Config
from netplay.core import ServerCore
from netplay.framing import messages as m
from netplay.framing.length3 import encode_json
from netplay.lobbies.classic import PlayerState
from netplay.lobbies.panels import (
    MatchPanels,
    garbage_rule_violations,
    play_rule_violations,
    starting_board_violations,
)
from netplay.server import Server
from netplay.testing import ConnectionClosed, ScriptedClient, running_server

SYMBOLS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz1234567890+/"
FRAME = 1 / 60
# Documentation addresses (RFC 5737): not loopback, so the per-address limit applies.
REMOTE_HOST = "203.0.113.5"
OTHER_REMOTE_HOST = "203.0.113.6"
# "At once" on the virtual clock: the same instant, give or take a scheduling step.
AT_ONCE = 0.01
# The two players of the match elsewhere; short enough for any name limit under test.
ELSEWHERE = ("zoe", "zak")

_peer_ports = itertools.count(50000)


# ---------------------------------------------------------------------------
# Clients


class Client(ScriptedClient):
    """A scripted client that may write from several tasks (inputs, ping answers)."""

    def __init__(self, stream: trio.abc.Stream, *, name: str = "", **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)
        self.name = name
        self._send_lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send_json_text(self, body: bytes) -> None:
        """A J frame around ``body`` as is, for bodies the encoder would not produce."""
        await self.send(b"J" + len(body).to_bytes(3, "big") + body)

    async def receive_json_with(self, key: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """The next JSON frame holding ``key``, skipping every other frame."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.receive(timeout=math.inf)
                if isinstance(frame, m.Json) and key in frame.payload:
                    return frame.payload


class InProcessConnection:
    """A client served in process, with the raw stream that carries its bytes to the server."""

    def __init__(self, server: Server, *, host: str, buffered: bool, answer_pings: bool) -> None:
        upstream_send, self.upstream = trio.testing.memory_stream_one_way_pair()
        if buffered:
            downstream_send, downstream_receive = trio.testing.memory_stream_one_way_pair()
        else:
            downstream_send, downstream_receive = trio.testing.lockstep_stream_one_way_pair()
        server.open_stream(
            trio.StapledStream(downstream_send, self.upstream), (host, next(_peer_ports))
        )
        self.client = Client(
            trio.StapledStream(upstream_send, downstream_receive), answer_pings=answer_pings
        )

    def arrive_now(self, data: bytes) -> None:
        """Hand ``data`` to the server's reader without yielding to the scheduler."""
        self.upstream.put_data(data)


def connect(
    server: Server, *, host: str = "127.0.0.1", buffered: bool = True, answer_pings: bool = True
) -> Client:
    """A client served in process by ``server``.

    With ``buffered=False`` nothing sits between the server and the client: a
    write of the server blocks until the client reads, as on a socket whose
    buffers are full once the client stops reading.
    """
    return InProcessConnection(
        server, host=host, buffered=buffered, answer_pings=answer_pings
    ).client


def registration(name: str, *, level: int = 5, character: str = "lip") -> bytes:
    return encode_json({"name": name, "level": level, "character": character})


async def register(client: Client, name: str, *, hello: bool = True) -> Client:
    """Register ``name`` (after the handshake, unless done); wait for the lobby list holding it."""
    client.name = name
    if hello:
        await client.register(name)
    else:
        await client.send(registration(name))
    while name not in (await client.receive_json_with("unpaired"))["unpaired"]:
        pass
    return client


async def registered(server: Server, name: str, **options: Any) -> Client:
    return await register(connect(server, **options), name)


async def into_room(first: Client, second: Client) -> None:
    await first.send_json({"game_request": {"sender": first.name, "receiver": second.name}})
    await second.receive_json_with("game_request")
    await second.send_json({"game_request": {"sender": second.name, "receiver": first.name}})
    assert (await first.receive_json_with("create_room"))["opponent"] == second.name
    assert (await second.receive_json_with("create_room"))["opponent"] == first.name


async def into_match(first: Client, second: Client, *, from_lobby: bool = True) -> None:
    if from_lobby:
        await into_room(first, second)
    await first.menu_state(ready=True, cursor="ready")
    await second.menu_state(ready=True, cursor="ready")
    await first.receive_json_with("match_start")
    await second.receive_json_with("match_start")


async def players_in_match(server: Server, first: str, second: str) -> tuple[Client, Client]:
    a, b = await registered(server, first), await registered(server, second)
    await into_match(a, b)
    return a, b


# ---------------------------------------------------------------------------
# The match elsewhere


def symbol(side: int, index: int) -> int:
    """The ``index``-th input symbol of a side; the sides use different sequences."""
    return SYMBOLS[(index * (1 + 2 * side) + side) % len(SYMBOLS)]


class InputExchange:
    """Two players of one match sending each other numbered inputs, and what arrived."""

    def __init__(self, players: tuple[Client, Client]) -> None:
        self.players = players
        self.sent = [0, 0]
        self.received = [bytearray(), bytearray()]
        self.other_frames: list[list[Any]] = [[], []]
        self.closed: list[bool] = [False, False]
        self._progress = trio.Event()

    async def send_inputs(self, side: int, count: int) -> None:
        data = bytearray()
        for _ in range(count):
            data += b"I" + bytes([symbol(side, self.sent[side])])
            self.sent[side] += 1
        await self.players[side].send(bytes(data))

    async def play_at_sixty_hertz(self, side: int) -> None:
        while True:
            await self.send_inputs(side, 1)
            await trio.sleep(FRAME)

    async def keep_reading(self, side: int) -> None:
        client = self.players[side]
        try:
            while True:
                frame = await client.receive(timeout=math.inf)
                if isinstance(frame, m.Input):
                    self.received[side] += frame.raw[1:]
                else:
                    self.other_frames[side].append(frame)
                self._progress.set()
                self._progress = trio.Event()
        except ConnectionClosed:
            self.closed[side] = True
            self._progress.set()

    def expected(self, side: int) -> bytes:
        """What ``side`` must receive: the other side's inputs, in order, none of its own."""
        other = 1 - side
        return bytes(symbol(other, index) for index in range(self.sent[other]))

    async def wait_until(self, done: Any, *, timeout: float) -> None:
        with trio.fail_after(timeout):
            while not done():
                await self._progress.wait()

    async def exchange(self, count: int = 10, *, timeout: float = 5.0) -> None:
        """Both send ``count`` inputs; wait until each has every input of the other."""
        await self.send_inputs(0, count)
        await self.send_inputs(1, count)
        await self.wait_until(
            lambda: all(len(self.received[s]) >= self.sent[1 - s] for s in (0, 1)),
            timeout=timeout,
        )

    def assert_undisturbed(self) -> None:
        for side in (0, 1):
            assert self.other_frames[side] == [], f"side {side} got {self.other_frames[side]!r}"
            assert not self.closed[side]
            assert bytes(self.received[side]) == self.expected(side)
        assert min(self.sent) > 0

    def assert_in_order_until_closed(self) -> None:
        """After a shutdown: at most a leave_room came besides inputs, in order, then the close."""
        for side in (0, 1):
            assert all(
                isinstance(frame, m.Json) and "leave_room" in frame.payload
                for frame in self.other_frames[side]
            ), self.other_frames[side]
            assert self.closed[side]
            assert self.expected(side).startswith(bytes(self.received[side]))


@contextlib.asynccontextmanager
async def exchanging_inputs(
    players: tuple[Client, Client], *, paced: bool
) -> AsyncIterator[InputExchange]:
    """Read both players' frames during the block; with ``paced``, send inputs at 60 Hz."""
    exchange = InputExchange(players)
    async with trio.open_nursery() as nursery:
        for side in (0, 1):
            nursery.start_soon(exchange.keep_reading, side)
        with trio.CancelScope() as pacing:
            if paced:
                for side in (0, 1):
                    nursery.start_soon(exchange.play_at_sixty_hertz, side)
            yield exchange
            pacing.cancel()
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def match_elsewhere(
    server: Server, *, paced: bool = True, until_shutdown: bool = False
) -> AsyncIterator[InputExchange]:
    """Two other players (:data:`ELSEWHERE`) in a match throughout the block.

    ``paced`` keeps them sending inputs at 60 Hz (on the virtual clock);
    otherwise inputs flow only through :meth:`InputExchange.exchange`.  On
    exit, checks that their match went on undisturbed or, with
    ``until_shutdown``, that it stayed in order until the server closed it.
    """
    players = await players_in_match(server, *ELSEWHERE)
    async with exchanging_inputs(players, paced=paced) as exchange:
        await exchange.exchange(2)
        yield exchange
        if until_shutdown:
            await exchange.wait_until(lambda: all(exchange.closed), timeout=30)
        else:
            await exchange.exchange(3)
    if until_shutdown:
        exchange.assert_in_order_until_closed()
    else:
        exchange.assert_undisturbed()


# ---------------------------------------------------------------------------
# Logs and state


def events(logs: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] in names]


def state_of(server: Server, name: str) -> PlayerState | None:
    player = server.core.lobby.names.get(name)
    return None if player is None else player.state


def connection_id_of(server: Server, name: str) -> int:
    return server.core.lobby.names[name].id


async def closed_at_once(client: Client) -> list[Any]:
    """The frames the server sent before closing ``client``; the close must be immediate."""
    start = trio.current_time()
    frames = await client.expect_closed(timeout=5)
    assert trio.current_time() - start < AT_ONCE
    return frames


# ---------------------------------------------------------------------------
# Defects of the original server


async def test_data_then_immediate_close_harms_neither_server_nor_others(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        alice = await registered(server, "alice")
        for attempt in range(10):
            rude = connect(server)
            name = f"rude{attempt}"
            request = encode_json({"game_request": {"sender": name, "receiver": "alice"}})
            await rude.send(b"H004" + registration(name) + request + b"IAP5000000")
            await rude.aclose()
        newcomer = await registered(server, "newcomer")
        while (await alice.receive_json_with("unpaired"))["unpaired"] != ["alice", "newcomer"]:
            pass
        assert set(server.core.lobby.names) == {"alice", "newcomer", *ELSEWHERE}
        await into_room(alice, newcomer)


async def test_end_of_stream_tells_the_opponent_at_once(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        alice, bob = await players_in_match(server, "alice", "bob")
        await alice.send(b"IA")
        assert (await bob.receive()).raw == b"IA"
        before = trio.current_time()
        await alice.stream.send_eof()  # the server must not wait for a ping to notice
        message = await bob.receive_json_with("leave_room")
        assert trio.current_time() - before < AT_ONCE
        assert message == {"leave_room": True, "unpaired": ["bob"]}
        assert await alice.expect_closed(timeout=2) == []
        assert "alice" not in server.core.lobby.names


async def test_unsatisfiable_two_colour_rows_get_no_reply_and_the_match_goes_on(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        alice, bob = await players_in_match(server, "alice", "bob")
        with captured_logs() as logs:
            for request in (b"Q2112233", b"P2111222", b"Q2221111", b"P2221111"):
                await alice.send(request)
            await alice.expect_silence(2)
            await bob.expect_silence(0.1)
        refusals = events(logs, "message_refused")
        assert {line["reason"] for line in refusals} == {"panel_rules_unsatisfiable"}
        await alice.send(b"P5000000")
        own, mirrored = await alice.receive(), await bob.receive()
        assert (own.letter, mirrored.letter) == ("P", "O") and own.digits == mirrored.digits
        await alice.send(b"Q5123451")
        own, mirrored = await alice.receive(), await bob.receive()
        assert (own.letter, mirrored.letter) == ("Q", "R") and own.digits == mirrored.digits
        await alice.send(b"IB")
        assert (await bob.receive()).raw == b"IB"
        assert state_of(server, "alice") is PlayerState.PLAYING


def test_every_two_colour_top_row_gets_valid_panels_or_none_in_bounded_time():
    problems: list[str] = []
    refused: set[tuple[str, str]] = set()

    def every_row() -> None:
        for index, digits in enumerate(itertools.product("0123", repeat=6)):
            row = "".join(digits)
            panels = MatchPanels(random.Random(index))
            for letter, generate, violations in (
                ("P", panels.play_panels, play_rule_violations),
                ("Q", panels.garbage_panels, garbage_rule_violations),
            ):
                reply = generate(0, 2, row)
                if reply is None:
                    refused.add((letter, row))
                else:
                    problems.extend(f"{letter}2{row}: {p}" for p in violations(row, reply, 2))

    worker = threading.Thread(target=every_row, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the panel generator did not finish in time"
    assert problems == []
    assert {("Q", "112233"), ("P", "111222")} <= refused


async def test_request_to_oneself_creates_no_room(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        alice = await registered(server, "alice")
        with captured_logs() as logs:
            for _ in range(2):
                await alice.send_json({"game_request": {"sender": "alice", "receiver": "alice"}})
            await alice.expect_silence(1)
        assert {line["reason"] for line in events(logs, "message_refused")} == {"request_to_self"}
        assert len(server.core.lobby.rooms) == 1  # the match elsewhere
        assert state_of(server, "alice") is PlayerState.LOBBY
        bob = await registered(server, "bob")
        await into_room(alice, bob)


async def test_second_match_has_fresh_game_over_flags_and_a_fresh_starting_board(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        alice, bob = await players_in_match(server, "alice", "bob")
        boards = []
        for match_number in range(3):
            if match_number:
                await into_match(alice, bob, from_lobby=False)
            # Panels are answered from the first match on.
            await alice.send(b"P5000000")
            alice_board = (await alice.receive()).digits
            assert (await bob.receive()).digits == alice_board
            await bob.send(b"P5000000")
            bob_board = (await bob.receive()).digits
            assert (await alice.receive()).digits == bob_board
            assert starting_board_violations(alice_board) == []
            assert alice_board[:42] == bob_board[:42]  # the shared starting board
            boards.append(alice_board[:42])
            # One player's game over alone never ends a match.
            first, second = (alice, bob) if match_number % 2 == 0 else (bob, alice)
            await first.send_json({"game_over": True})
            await first.expect_silence(1)
            await second.send(b"IC")
            assert (await first.receive()).raw == b"IC"
            await second.send_json({"game_over": True})
            for player in (alice, bob):
                payload = await player.receive_json()
                assert payload["create_room"] is True
                assert payload["menu_state"]["ready"] is False
        assert len(set(boards)) == 3


async def test_fields_of_the_wrong_type_are_refused_and_harmless(autojump_clock):
    bad_registrations = [
        {"name": 5, "level": 5, "character": "lip"},
        {"name": None, "level": 5, "character": "lip"},
        {"name": ["alice"], "level": 5, "character": "lip"},
        {"name": "alice", "level": "high", "character": "lip"},
        {"name": "alice", "level": True, "character": "lip"},
        {"name": "alice", "level": 5.5, "character": "lip"},
        {"name": "alice", "level": -1, "character": "lip"},
        {"name": "alice", "level": 10**30, "character": "lip"},
        {"name": "alice", "level": 5, "character": 7},
        {"name": "alice", "level": 5, "character": {"id": "lip"}},
        {"name": "alice", "level": 5, "character": "x" * 1000},
        {"name": "alice", "level": 5},
        {"name": "alice", "character": "lip"},
    ]
    bad_requests = [
        {"game_request": "bob"},
        {"game_request": ["alice", "bob"]},
        {"game_request": None},
        {"game_request": {"sender": "alice", "receiver": 7}},
        {"game_request": {"sender": None, "receiver": "bob"}},
        {"game_request": {"sender": "alice"}},
        {"game_request": {"sender": "bob", "receiver": "alice"}},  # not its own name
        {"game_request": {"sender": "alice", "receiver": "nobody"}},
    ]
    bad_menu_states = [
        {"menu_state": "ready"},
        {"menu_state": None},
        {"menu_state": {"cursor": "level", "ready": "yes", "character": "lip", "level": 5}},
        {"menu_state": {"cursor": "level", "ready": 1, "character": "lip", "level": 5}},
        {"menu_state": {"cursor": 3, "ready": True, "character": "lip", "level": 5}},
        {"menu_state": {"cursor": "level", "ready": True, "character": "lip", "level": "x"}},
        {"menu_state": {"cursor": "level", "ready": True, "character": "lip", "level": 100}},
        {"menu_state": {"cursor": "level", "ready": True, "character": "x" * 1000, "level": 5}},
        {"menu_state": {"ready": True}},
        {"leave_room": "yes"},
        {"leave_room": 1},
        {"game_over": "true"},
        {"unknown": True},
        {},
    ]
    bad_bodies = [b"{", b"[]", b"null", b'"text"', b"NaN", b'{"level": Infinity}', b"\xff\xfe"]
    async with running_server() as server, match_elsewhere(server):
        alice = connect(server)
        await alice.hello()
        assert await alice.receive() == m.HelloAccepted()
        for payload in bad_registrations:
            await alice.send_json(payload)
        for body in bad_bodies:
            await alice.send_json_text(body)
        await alice.expect_silence(1)
        assert "alice" not in server.core.lobby.names
        await register(alice, "alice", hello=False)
        bob = await registered(server, "bob")
        for payload in bad_requests:
            await alice.send_json(payload)
        await bob.expect_silence(1)
        assert not server.core.lobby.proposals
        await into_room(alice, bob)
        for payload in bad_menu_states:
            await alice.send_json(payload)
        await bob.expect_silence(1)
        assert state_of(server, "alice") is PlayerState.ROOM
        assert server.core.lobby.names["alice"].menu.ready is False
        await into_match(alice, bob, from_lobby=False)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "empty"),
        ("   ", "blank"),
        ("x" * 33, "too_long"),
        ("tab\there", "control_character"),
        ("new\nline", "control_character"),
        ("zero\u200bwidth", "control_character"),
        ("line\u2028separator", "control_character"),
        ("\ue000private", "control_character"),
        ("bell\x07", "control_character"),
    ],
)
async def test_invalid_name_gets_choose_another_name_and_may_retry(autojump_clock, name, problem):
    async with running_server() as server, match_elsewhere(server):
        with captured_logs() as logs:
            client = connect(server)
            await client.register(name)
            answer = await client.receive_json()
        assert answer == {"choose_another_name": {"used_names": sorted(ELSEWHERE)}}
        assert [line["problem"] for line in events(logs, "name_refused")] == [problem]
        assert name not in server.core.lobby.names
        await client.send(registration("x" * 32))  # the longest name allowed
        assert (await client.receive_json_with("unpaired"))["unpaired"] == ["x" * 32]


async def test_name_length_limit_follows_the_setting(autojump_clock):
    async with running_server(Config(max_name_length=4)) as server, match_elsewhere(server):
        client = connect(server)
        await client.register("abcde")
        assert "choose_another_name" in await client.receive_json()
        await client.send(registration("abcd"))
        assert (await client.receive_json_with("unpaired"))["unpaired"] == ["abcd"]


async def test_name_in_use_gets_choose_another_name_listing_every_name(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        await registered(server, "alice")
        copycat = connect(server)
        await copycat.register("alice")
        assert await copycat.receive_json() == {
            "choose_another_name": {"used_names": sorted(["alice", *ELSEWHERE])}
        }
        await copycat.send(registration("ålice"))
        assert (await copycat.receive_json_with("unpaired"))["unpaired"] == ["alice", "ålice"]


async def test_messages_not_valid_in_the_state_are_refused_and_harmless(autojump_clock):
    game_messages = [b"IA", b"P5000000", b"Q5123451", b"L5"]
    ready = {"menu_state": {"cursor": "ready", "ready": True, "character": "lip", "level": 5}}
    json_messages = [ready, {"leave_room": True}, {"game_over": True}]
    async with running_server() as server, match_elsewhere(server):
        # Handshake done, no name yet.
        alice = connect(server)
        await alice.hello()
        assert await alice.receive() == m.HelloAccepted()
        for data in game_messages + [b"H004"]:
            await alice.send(data)
        for payload in json_messages + [{"game_request": {"sender": "a", "receiver": "b"}}]:
            await alice.send_json(payload)
        await alice.expect_silence(1)
        await alice.send(registration("alice"))
        alice.name = "alice"
        assert (await alice.receive_json_with("unpaired"))["unpaired"] == ["alice"]
        # In the lobby.
        bob = await registered(server, "bob")
        assert (await alice.receive_json_with("unpaired"))["unpaired"] == ["alice", "bob"]
        for data in game_messages:
            await alice.send(data)
        for payload in json_messages + [{"name": "alice2", "level": 5, "character": "lip"}]:
            await alice.send_json(payload)
        await alice.expect_silence(1)
        await bob.expect_silence(0.1)
        assert state_of(server, "alice") is PlayerState.LOBBY
        assert "alice2" not in server.core.lobby.names
        # In a room: panels, inputs and game over wait for the match.
        await into_room(alice, bob)
        for data in (b"IA", b"P5000000", b"Q5123451"):
            await alice.send(data)
        await alice.send_json({"game_over": True})
        await alice.send_json({"game_request": {"sender": "alice", "receiver": "bob"}})
        await alice.expect_silence(1)
        await bob.expect_silence(0.1)
        assert state_of(server, "alice") is PlayerState.ROOM
        # In a match: character select and requests are over.
        await into_match(alice, bob, from_lobby=False)
        await alice.send_json(ready)
        await alice.send_json({"game_request": {"sender": "alice", "receiver": "bob"}})
        await alice.send(b"IZ")
        assert (await bob.receive()).raw == b"IZ"
        await alice.expect_silence(1)
        assert state_of(server, "alice") is PlayerState.PLAYING


async def test_anything_but_hello_first_closes_that_connection_only(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        for opening in (b"IA", b"P5000000", b"L5", registration("early"), b"Z"):
            client = connect(server)
            await client.send(opening)
            assert await client.expect_closed(timeout=3) == []
        assert set(server.core.lobby.names) == set(ELSEWHERE)


async def test_refused_messages_cost_a_few_log_lines_not_one_each(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        alice = await registered(server, "alice")
        with captured_logs() as logs:
            for _ in range(100):
                await alice.send(b"IA")
            await alice.expect_silence(1)
        assert len(events(logs, "message_refused")) == 3
        assert len(logs) == 3


# ---------------------------------------------------------------------------
# Limits


async def test_json_frame_at_the_length_limit_is_accepted(autojump_clock):
    async with running_server(Config(max_json_length=4096)) as server, match_elsewhere(server):
        client = connect(server)
        body = registration("alice")[4:]
        padded = body[:-1] + b" " * (4096 - len(body)) + b"}"
        assert len(padded) == 4096
        await client.hello()
        await client.send_json_text(padded)
        assert await client.receive() == m.HelloAccepted()
        assert (await client.receive_json_with("unpaired"))["unpaired"] == ["alice"]


async def test_json_frame_over_the_limit_closes_the_connection_before_its_body_arrives(
    autojump_clock,
):
    async with running_server(Config(max_json_length=4096)) as server, match_elsewhere(server):
        alice = await registered(server, "alice")
        with captured_logs() as logs:
            attacker = connect(server)
            await attacker.hello()
            # Only the header: the server must neither wait for nor buffer the body.
            await attacker.send(b"J" + (4097).to_bytes(3, "big"))
            assert await closed_at_once(attacker) == [m.HelloAccepted()]
        [error] = events(logs, "protocol_error")
        assert (error["reason"], error["length"], error["limit"]) == (
            "json_frame_too_long", 4097, 4096,
        )
        # The largest length the wire can say, body and all, changes nothing either.
        attacker = connect(server)
        await attacker.send(b"H004J\xff\xff\xff" + b" " * 100_000)
        assert await attacker.expect_closed(timeout=2) == [m.HelloAccepted()]
        await alice.send(b"FLOL")
        assert set(server.core.lobby.names) == {"alice", *ELSEWHERE}


async def test_connections_past_the_total_limit_are_closed_at_once(autojump_clock):
    # Two of the five are the players of the match elsewhere.
    async with running_server(Config(max_connections=5)) as server, match_elsewhere(server):
        alice = await registered(server, "alice")
        bob = await registered(server, "bob")
        await registered(server, "carol")
        with captured_logs() as logs:
            assert await closed_at_once(connect(server)) == []
        [line] = events(logs, "connection_refused")
        assert line["reason"] == "max_connections"
        await bob.aclose()
        await alice.receive_json_with("unpaired")  # bob is gone
        await registered(server, "dave")
        assert await closed_at_once(connect(server)) == []


async def test_connections_past_the_per_address_limit_are_closed_at_once(autojump_clock):
    config = Config(max_connections_per_ip=3)
    async with running_server(config) as server, match_elsewhere(server):
        remote = [await registered(server, f"remote{i}", host=REMOTE_HOST) for i in range(3)]
        with captured_logs() as logs:
            assert await closed_at_once(connect(server, host=REMOTE_HOST)) == []
        [line] = events(logs, "connection_refused")
        assert (line["reason"], line["host"]) == ("max_connections_per_ip", REMOTE_HOST)
        # Another address, and loopback (exempt by default), are not affected.
        await registered(server, "neighbour", host=OTHER_REMOTE_HOST)
        for index in range(5):
            await registered(server, f"local{index}")
        assert server.core.connections_per_host[REMOTE_HOST] == 3
        # A slot freed is a slot again.
        await remote[0].aclose()
        await remote[1].receive_json_with("unpaired")
        await registered(server, "remote3", host=REMOTE_HOST)
        assert await closed_at_once(connect(server, host=REMOTE_HOST)) == []


async def test_loopback_is_limited_too_once_its_exemption_is_withdrawn(autojump_clock):
    config = Config(max_connections_per_ip=3, unlimited_networks=())
    async with running_server(config) as server, match_elsewhere(server):
        await registered(server, "alice")
        assert await closed_at_once(connect(server)) == []


async def test_a_message_flood_is_delayed_in_order_never_dropped(autojump_clock):
    config = Config(max_messages_per_second=100, message_burst=200)
    async with running_server(config) as server, match_elsewhere(server):
        alice, bob = await players_in_match(server, "alice", "bob")
        await trio.sleep(3)  # a full bucket
        with captured_logs(logging.WARNING) as logs:
            # 6,369 inputs fit the bucket (1/32 each; one needs a whole token
            # to start); the rest waits for it.
            await alice.send(b"".join(b"I" + bytes([65 + i % 26]) for i in range(10_000)))
            received = [(await bob.receive(timeout=30)).raw for _ in range(10_000)]
        assert received == [b"I" + bytes([65 + i % 26]) for i in range(10_000)]
        assert [line["event"] for line in logs] == ["message_flood", "message_flood_ended"]
        ended = logs[1]
        assert ended["delayed"] == 10_000 - 6_369
        # 3,631 inputs at 3,200 a second.
        assert 1.1 <= ended["held_for"] <= 1.2
        assert state_of(server, "alice") is PlayerState.PLAYING


async def test_a_client_that_keeps_flooding_is_closed_and_its_opponent_told(autojump_clock):
    config = Config(max_messages_per_second=10, message_burst=20, max_held_bytes=2048)
    async with running_server(config) as server, match_elsewhere(server):
        alice, bob = await players_in_match(server, "alice", "bob")
        with captured_logs(logging.WARNING) as logs:
            await alice.send(b"FLOL" * 1000)
            await alice.expect_closed()
            assert "leave_room" in await bob.receive_json_with("leave_room")
        [closed] = events(logs, "message_flood_closed")
        assert closed["held_bytes"] > 2048
        assert state_of(server, "bob") is PlayerState.LOBBY


async def test_sixty_inputs_a_second_with_panels_and_a_catch_up_burst_pass_undisturbed(
    autojump_clock,
):
    async with running_server() as server, match_elsewhere(server):
        players = await players_in_match(server, "alice", "bob")
        with captured_logs(logging.WARNING) as logs:
            async with exchanging_inputs(players, paced=True) as exchange:
                for _ in range(20):
                    await trio.sleep(1)
                    await players[0].send(b"P5000000")
                    await players[1].send(b"Q5123451")
                # A client that froze for two seconds catches up all at once.
                await exchange.send_inputs(0, 120)
                await exchange.send_inputs(1, 120)
                await trio.sleep(1)
        assert logs == []
        for side, own, mirrored in ((0, "P", "R"), (1, "Q", "O")):
            letters = [frame.letter for frame in exchange.other_frames[side]]
            assert sorted(letters) == sorted([own, mirrored] * 20)
            assert bytes(exchange.received[side]) == exchange.expected(side)


async def test_client_that_never_reads_is_dropped_when_its_queue_is_full_and_its_opponent_told(
    autojump_clock,
):
    config = Config(max_queued_bytes=4096)
    async with running_server(config) as server, match_elsewhere(server):
        alice = await registered(server, "alice")
        sleeper = await registered(server, "sleeper", buffered=False)
        await into_match(alice, sleeper)
        sleeper_id = connection_id_of(server, "sleeper")
        # From here on the sleeper reads nothing.
        with captured_logs(logging.WARNING) as logs:
            requests = 0
            while "sleeper" in server.core.lobby.names:
                assert requests < 100
                await alice.send(b"P5123451")  # 121 bytes for the sleeper each
                requests += 1
                await trio.sleep(FRAME)
            dropped_at = trio.current_time()
            message = await alice.receive_json_with("leave_room")
            assert trio.current_time() - dropped_at < AT_ONCE
        assert message == {"leave_room": True, "unpaired": ["alice"]}
        assert requests == config.max_queued_bytes // 121 + 1
        [line] = events(logs, "connection_dropped")
        assert line["reason"] == "send_queue_full" and line["queued"] <= config.max_queued_bytes
        await trio.sleep(0.1)
        assert sleeper_id not in server.links
        assert sleeper_id not in server.core.connections


async def test_handshake_timeout_closes_a_connection_that_never_completes_hello(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        with captured_logs() as logs:
            slow = connect(server, answer_pings=False)
            opened = trio.current_time()
            # A byte every four seconds keeps the connection from going idle,
            # but the handshake's four bytes are not all there in time.
            await slow.send(b"H")
            await trio.sleep(4)
            await slow.send(b"0")
            await trio.sleep(4)
            await slow.send(b"0")
            await slow.expect_closed(timeout=10)
            closed_after = trio.current_time() - opened
        timeout = server.config.handshake_timeout
        assert timeout <= closed_after < timeout + AT_ONCE
        assert len(events(logs, "handshake_timeout")) == 1


async def test_handshake_timeout_follows_the_setting(autojump_clock):
    async with running_server(Config(handshake_timeout=3)) as server, match_elsewhere(server):
        silent = connect(server, answer_pings=False)
        opened = trio.current_time()
        await silent.expect_closed(timeout=10)
        assert 3 <= trio.current_time() - opened < 3 + AT_ONCE


async def test_registration_timeout_closes_a_connection_that_never_registers(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        with captured_logs() as logs:
            lurker = connect(server)
            opened = trio.current_time()
            await lurker.hello()
            assert await lurker.receive() == m.HelloAccepted()
            # It answers every ping and tries a name now and then, never a valid one.
            for _ in range(5):
                await lurker.send(registration(""))
                assert "choose_another_name" in await lurker.receive_json()
                await lurker.expect_silence(10)
            await lurker.expect_closed(timeout=30)
            closed_after = trio.current_time() - opened
        timeout = server.config.registration_timeout
        assert timeout <= closed_after < timeout + AT_ONCE
        assert len(events(logs, "registration_timeout")) == 1
        assert lurker.pings >= 40


async def test_silent_player_is_dropped_after_the_idle_timeout_and_its_opponent_told_then(
    autojump_clock,
):
    async with running_server() as server, match_elsewhere(server):
        silent = await registered(server, "silent", answer_pings=False)
        bob = await registered(server, "bob")
        await into_match(silent, bob)
        silent_since = trio.current_time()  # its ready was its last message
        with captured_logs() as logs:
            async with trio.open_nursery() as nursery:

                async def bob_plays() -> None:
                    while True:
                        await bob.send(b"IA")
                        await trio.sleep(FRAME)

                nursery.start_soon(bob_plays)
                message = await bob.receive_json_with("leave_room", timeout=30)
                told_after = trio.current_time() - silent_since
                nursery.cancel_scope.cancel()
        timeout = server.config.idle_timeout
        assert timeout <= told_after < timeout + AT_ONCE
        assert message == {"leave_room": True, "unpaired": ["bob"]}
        assert len(events(logs, "connection_idle")) == 1
        assert "silent" not in server.core.lobby.names


async def test_shutdown_closes_every_connection_within_the_grace_time_and_run_returns(
    autojump_clock,
):
    config = Config(shutdown_grace=2)
    server = Server(config, seed=1)
    run_returned_at: list[float] = []

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await server.run(task_status=task_status)
        run_returned_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        async with match_elsewhere(server, until_shutdown=True):
            alice = await registered(server, "alice")
            sleeper = await registered(server, "sleeper", buffered=False)
            await registered(server, "carol")  # the lobby list to the sleeper blocks its writer
            stranger = connect(server)
            await stranger.hello()
            await trio.sleep(0.5)
            shutdown_at = trio.current_time()
            server.shutdown()
            # Clients that read are closed at once, whatever else is pending.
            await alice.expect_closed(timeout=config.shutdown_grace)
            await stranger.expect_closed(timeout=config.shutdown_grace)
            assert trio.current_time() - shutdown_at < AT_ONCE
        with trio.fail_after(config.shutdown_grace + 1):
            while not run_returned_at:
                await trio.sleep(0.01)
        await sleeper.expect_closed(timeout=AT_ONCE)  # cut, though it never read
    # The sleeper holds the server for the whole grace time, and no longer.
    assert config.shutdown_grace <= run_returned_at[0] - shutdown_at < config.shutdown_grace + 0.05
    assert server.links == {} and server.core.connections == {}



async def test_single_inputs_over_the_rate_all_arrive_in_order(autojump_clock):
    config = Config(max_messages_per_second=10, message_burst=20)
    # At this rate 60 Hz would be a flood too: the match elsewhere exchanges a few inputs only.
    async with running_server(config) as server, match_elsewhere(server, paced=False):
        alice, bob = await players_in_match(server, "alice", "bob")
        sent = [b"I" + bytes([65 + i % 26]) for i in range(1000)]  # 640 fit the burst
        with captured_logs(logging.WARNING) as logs:
            for data in sent:
                await alice.send(data)  # one message per write: the per-frame path
                await trio.sleep(0.0001)
            received = [(await bob.receive(timeout=60)).raw for _ in sent]
        assert received == sent
        ended = events(logs, "message_flood_ended")
        assert len(ended) == len(events(logs, "message_flood")) >= 1


# ---------------------------------------------------------------------------
# Closing, encoding and timing at the edges


@pytest.mark.parametrize("closed_for", ["idle_timeout", "unknown_letter"])
async def test_connection_the_server_closes_is_gone_soon_even_if_its_client_never_reads(
    autojump_clock, closed_for
):
    async with running_server() as server, match_elsewhere(server):
        alice = await registered(server, "alice")
        sleeper = await registered(server, "sleeper", buffered=False)
        await into_match(alice, sleeper)
        sleeper_id = connection_id_of(server, "sleeper")
        # Replies the sleeper never reads: the server's writer to it is stuck.
        for _ in range(5):
            await alice.send(b"P5123451")
        if closed_for == "unknown_letter":
            await sleeper.send(b"Z")
        await alice.receive_json_with("leave_room", timeout=15)
        closed_at = trio.current_time()
        with trio.fail_after(5):  # a flush to a client that reads nothing is bounded
            while sleeper_id in server.links:
                await trio.sleep(0.1)
        assert sleeper_id not in server.core.connections
        assert trio.current_time() - closed_at <= 5


async def test_menu_state_with_a_lone_surrogate_is_refused_and_the_room_stays(autojump_clock):
    async with running_server() as server, match_elsewhere(server):
        alice, bob = await registered(server, "alice"), await registered(server, "bob")
        await into_room(alice, bob)
        with captured_logs() as logs:
            for field in ("character", "cursor"):
                state = {"cursor": "level", "ready": False, "character": "lip", "level": 5}
                body = encode_json({"menu_state": state})[4:]
                body = body.replace(f'"{state[field]}"'.encode(), b'"\\ud800"', 1)
                await alice.send_json_text(body)
            await bob.expect_silence(1)
        assert events(logs, "connection_failed") == []
        assert state_of(server, "alice") is PlayerState.ROOM
        await alice.menu_state(ready=False, character="windy")
        assert (await bob.receive_json())["menu_state"]["character"] == "windy"


async def test_character_with_a_lone_surrogate_cannot_break_a_partners_connection(
    autojump_clock,
):
    async with running_server() as server, match_elsewhere(server):
        mallory = connect(server)
        await mallory.hello()
        assert await mallory.receive() == m.HelloAccepted()
        await mallory.send_json_text(b'{"name":"mallory","level":5,"character":"\\ud800"}')
        await mallory.send(b"FLOL")
        victim = await registered(server, "victim")
        with captured_logs() as logs:
            await mallory.send_json({"game_request": {"sender": "mallory", "receiver": "victim"}})
            await victim.send_json({"game_request": {"sender": "victim", "receiver": "mallory"}})
            await victim.expect_silence(1)
        assert events(logs, "connection_failed") == []
        assert not victim.closed
        assert "victim" in server.core.lobby.names


async def test_bytes_from_a_client_dropped_in_the_same_instant_are_ignored(autojump_clock):
    # Whether the dropped client's reader or its opponent's runs first is up to the
    # scheduler; enough attempts make the losing order all but certain to occur.
    config = Config(max_queued_bytes=300)
    async with running_server(config) as server, match_elsewhere(server):
        with captured_logs() as logs:
            for attempt in range(40):
                sleeper_connection = InProcessConnection(
                    server, host="127.0.0.1", buffered=False, answer_pings=True
                )
                alice_connection = InProcessConnection(
                    server, host="127.0.0.1", buffered=True, answer_pings=True
                )
                alice = await register(alice_connection.client, f"alice{attempt}")
                sleeper = await register(sleeper_connection.client, f"sleeper{attempt}")
                await into_match(alice, sleeper)
                # Two panel replies (242 bytes) wait for the sleeper, who reads no more.
                for _ in range(2):
                    await alice.send(b"P5123451")
                    await alice.receive()
                # In one instant: the sleeper's input reaches its reader, and alice's
                # third request, which overflows the sleeper's queue, reaches hers.
                sleeper_connection.arrive_now(b"IB")
                alice_connection.arrive_now(b"P5123451")
                await alice.receive_json_with("leave_room")
                await alice.aclose()
                await trio.sleep(1)
        assert len(events(logs, "connection_dropped")) == 40
        assert events(logs, "connection_failed") == []


# Two of the many times where (t + 10) - t < 10 in floating point; the second is
# the 362nd frame of a 60 Hz client.
@pytest.mark.parametrize("last_heard_at", [6.004, 362 / 60])
def test_heartbeat_called_when_it_asked_always_makes_progress(last_heard_at):
    core = ServerCore(Config(), seed=1)
    connection_id = core.open_connection("127.0.0.1", last_heard_at)
    assert connection_id is not None
    core.receive(connection_id, b"H004", last_heard_at)
    now, reasons = last_heard_at, []
    for _ in range(100):
        actions, wake_at = core.heartbeat(connection_id, now)
        reasons += [action.reason for action in actions if isinstance(action, Close)]
        if wake_at == math.inf:
            break
        assert wake_at > now, f"asked to be called again at {wake_at!r}, which is now"
        now = wake_at
    assert reasons == ["idle_timeout"]


# ---------------------------------------------------------------------------
# Over real loopback TCP


@contextlib.asynccontextmanager
async def serving_over_tcp(config: Config) -> AsyncIterator[Server]:
    """A server listening on a free loopback port; shut down gracefully at the end."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = Server(config, seed=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, listeners)
        try:
            yield server
        finally:
            server.shutdown()


async def tcp_client(server: Server) -> Client:
    assert server.port is not None
    return Client(await trio.open_tcp_stream("127.0.0.1", server.port))


def reset_on_close(client: Client) -> None:
    """Make closing the socket send RST instead of FIN."""
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# Pings far apart, so that "at once" cannot be the next ping noticing.
TCP_CONFIG = Config(ping_interval=5, idle_timeout=30, shutdown_grace=0.5)


async def test_reset_right_after_data_harms_neither_server_nor_others_over_tcp():
    with trio.fail_after(20):
        async with serving_over_tcp(TCP_CONFIG) as server, match_elsewhere(
            server, paced=False
        ) as elsewhere:
            alice = await register(await tcp_client(server), "alice")
            for attempt in range(20):
                rude = await tcp_client(server)
                name = f"rude{attempt}"
                request = encode_json({"game_request": {"sender": name, "receiver": "alice"}})
                data = b"H004" + registration(name) + request + b"IAP5000000"
                if attempt % 2:
                    data += b"J\x00\x01\x00{"  # and a frame cut short
                await rude.send(data)
                reset_on_close(rude)
                await rude.aclose()
            await elsewhere.exchange(10)
            newcomer = await register(await tcp_client(server), "newcomer")
            while (await alice.receive_json_with("unpaired"))["unpaired"] != ["alice", "newcomer"]:
                pass
            await into_room(alice, newcomer)
            # A player reset in the middle of a match: the opponent is told at once.
            await into_match(alice, newcomer, from_lobby=False)
            await newcomer.send(b"IA" * 10)
            reset_on_close(newcomer)
            await newcomer.aclose()
            start = trio.current_time()
            assert (await alice.receive_json_with("leave_room"))["unpaired"] == ["alice"]
            assert trio.current_time() - start < 2
            await elsewhere.exchange(10)
            assert set(server.core.lobby.names) == {"alice", *ELSEWHERE}


async def test_half_close_tells_the_opponent_at_once_over_tcp():
    with trio.fail_after(20):
        async with serving_over_tcp(TCP_CONFIG) as server, match_elsewhere(
            server, paced=False
        ) as elsewhere:
            alice = await register(await tcp_client(server), "alice")
            bob = await register(await tcp_client(server), "bob")
            await into_match(alice, bob)
            await alice.send(b"IA")
            assert (await bob.receive()).raw == b"IA"
            start = trio.current_time()
            await alice.stream.send_eof()
            message = await bob.receive_json_with("leave_room")
            assert trio.current_time() - start < 2  # the next ping would be 5 s away
            assert message == {"leave_room": True, "unpaired": ["bob"]}
            # The server closes its side too, right after.
            assert await alice.expect_closed(timeout=2) == []
            await elsewhere.exchange(10)
