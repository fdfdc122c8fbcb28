"""The ``netplay-server`` process over real loopback TCP.

Each test starts its own server process on a free port (``helpers.LoggingProcess``),
which reads the port from the JSON ``listening`` log line, and stops the process at
the end whatever happens.  Waits are real but short and every one of them is bounded.
"""

from __future__ import annotations

import signal
import socket
import struct
from functools import partial
from typing import Any, Callable

import pytest
import trio
from helpers import STOP_TIMEOUT, LoggingProcess

from netplay.framing import messages as m
from netplay.framing.length3 import encode_json
from netplay.testing import ConnectionClosed, ScriptedClient, pair_up, start_match


@pytest.fixture
def start_server(start_server) -> Callable[..., LoggingProcess]:
    """Server processes with a fixed seed (and the options given)."""
    return partial(start_server, "--seed", "7")


@pytest.fixture
def server(start_server) -> LoggingProcess:
    return start_server()


def registration(name: str, level: int = 5, character: str = "lip") -> bytes:
    return encode_json({"name": name, "level": level, "character": character})


async def receive_lobby(client: ScriptedClient, names: list[str]) -> None:
    """Read lobby lists until one names exactly ``names``."""
    with trio.fail_after(3):
        while (await client.receive_until("unpaired", timeout=3))["unpaired"] != names:
            pass


# -- handshake ---------------------------------------------------------------


async def test_hello_and_registration_in_one_write_get_h_then_the_lobby_list(server):
    client = await server.connect()
    await client.send(b"H004" + registration("alice"))
    assert await client.receive() == m.HelloAccepted()
    assert await client.receive_json() == {"unpaired": ["alice"]}
    await client.aclose()


async def test_unknown_version_gets_n_then_the_connection_closes(server):
    client = await server.connect()
    # What follows a refused hello is ignored, registration included.
    await client.send(b"H999" + registration("refused"))
    frames = await client.expect_closed(timeout=3)
    assert frames == [m.HelloRefused()]
    await client.aclose()
    assert server.process.poll() is None


async def test_silent_client_gets_elol_each_second_and_is_dropped_at_the_idle_timeout(
    start_server,
):
    server = start_server("--idle-timeout", "3")
    client = await server.connect(answer_pings=False)
    await client.send(b"H004" + registration("quiet"))
    start = trio.current_time()
    assert await client.receive() == m.HelloAccepted()
    assert await client.receive_json() == {"unpaired": ["quiet"]}
    pings = []
    with pytest.raises(ConnectionClosed):
        while True:
            frame = await client.receive(timeout=5, skip_pings=False)
            assert frame == m.Ping("LOL")
            pings.append(trio.current_time() - start)
    dropped_after = trio.current_time() - start
    # Bounds leave room for a busy machine; the lower ones are exact.
    assert 0.95 <= pings[0] <= 2.0
    assert len(pings) == 2  # at about 1 s and 2 s
    assert 0.95 <= pings[1] - pings[0] <= 1.6
    assert 2.95 <= dropped_after <= 5.0
    await client.aclose()
    assert "connection_idle" in server.events()


async def test_answering_pings_keeps_a_connection_past_the_idle_timeout(start_server):
    server = start_server("--idle-timeout", "1.5")
    client = await server.connect()  # answers each ELOL with FLOL
    await client.send(b"H004" + registration("alive"))
    assert await client.receive() == m.HelloAccepted()
    assert await client.receive_json() == {"unpaired": ["alive"]}
    await client.expect_silence(2.5)
    assert client.pings >= 2
    assert not client.closed
    await client.aclose()


# -- robustness --------------------------------------------------------------


async def test_data_then_immediate_close_does_not_disturb_a_connected_client(server):
    alice = await server.connect()
    await alice.send(b"H004" + registration("alice"))
    assert await alice.receive() == m.HelloAccepted()
    await receive_lobby(alice, ["alice"])
    expected_requests = set()
    for index in range(6):
        rude = await server.connect()
        name = f"rude{index}"
        if index % 2:
            # Close with a reset: what was sent may be lost, but nothing else may suffer.
            rude.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        else:
            # An orderly close: the messages before it are still handled.
            expected_requests.add(name)
        request = encode_json({"game_request": {"sender": name, "receiver": "alice"}})
        await rude.send(b"H004" + registration(name) + request + b"P5000000IA")
        await rude.aclose()
    newcomer = await server.connect()
    await newcomer.send(b"H004" + registration("newcomer"))
    assert await newcomer.receive() == m.HelloAccepted()
    # The rude clients may show up for a moment; alice ends up with the newcomer only.
    requesters = set()
    lobby = None
    with trio.fail_after(3):
        while not (expected_requests <= requesters and lobby == ["alice", "newcomer"]):
            payload = await alice.receive_json()
            if "game_request" in payload:
                assert payload["game_request"]["receiver"] == "alice"
                requesters.add(payload["game_request"]["sender"])
            else:
                lobby = payload["unpaired"]
    await alice.send(b"FLOL")
    assert server.process.poll() is None
    await alice.aclose()
    await newcomer.aclose()


async def test_limits_given_on_the_command_line_are_enforced(start_server):
    server = start_server(
        "--max-connections-per-ip", "1", "--unlimited-networks", "",
        "--max-json-length", "100", "--handshake-timeout", "1",
    )
    first = await server.connect()
    await first.send(b"H004")
    assert await first.receive() == m.HelloAccepted()
    # A second connection from the same address is closed at once, unanswered.
    second = await server.connect()
    await second.send(b"H004")
    assert await second.expect_closed(timeout=2) == []
    await second.aclose()
    # A J frame of exactly the limit is read; one byte more closes the connection.
    body = b'{"name":"alice","level":5,"character":"' + b"x" * 50 + b'"}'
    body = body.ljust(100, b" ")  # JSON may end in spaces
    assert len(body) == 100
    await first.send(b"J" + len(body).to_bytes(3, "big") + body)
    assert await first.receive_json() == {"unpaired": ["alice"]}
    await first.send(b"J" + (101).to_bytes(3, "big"))
    assert await first.expect_closed(timeout=2) == []
    await first.aclose()
    await server.wait_for_event("disconnected")
    # With the only slot free again, a client that never says hello is closed after 1 s.
    silent = await server.connect()
    opened_at = trio.current_time()
    frames = await silent.expect_closed(timeout=3)
    assert all(frame == m.Ping("LOL") for frame in frames)
    assert 0.95 <= trio.current_time() - opened_at <= 3.0
    await silent.aclose()
    assert "handshake_timeout" in server.events()


async def test_oversized_json_header_closes_at_once_without_waiting_for_the_body(server):
    client = await server.connect()
    await client.send(b"H004")
    assert await client.receive() == m.HelloAccepted()
    sent_at = trio.current_time()
    await client.send(b"J\xff\xff\xff")
    assert await client.expect_closed(timeout=3) == []
    # Without a body coming, only a close that does not wait for it arrives at all.
    assert trio.current_time() - sent_at < 1.0
    await client.aclose()
    error = await server.wait_for_event("protocol_error")
    assert error["reason"] == "json_frame_too_long"
    assert server.process.poll() is None


def menu_state(ready: bool, cursor: str, character: str, level: int) -> bytes:
    return encode_json(
        {"menu_state": {"cursor": cursor, "ready": ready, "character": character, "level": level}}
    )


async def play_scripted_session(server: LoggingProcess, *, split: bool) -> list[list[Any]]:
    """A whole session where alice's writes are split at every byte or merged.

    Returns what alice and bob received, in order, lobby lists left out.
    """
    received: list[list[Any]] = [[], []]

    async def send_as_alice(*chunks: bytes) -> None:
        if not split:
            await alice.send(b"".join(chunks))
            return
        for byte in b"".join(chunks):
            await alice.send(bytes([byte]))
            await trio.sleep(0.001)

    async def take(client: ScriptedClient, count: int) -> None:
        # Lobby lists are sent on a timer, so where they fall between other
        # messages depends on timing, not on parsing: they are left out.
        while count:
            frame = await client.receive(timeout=3)
            if not (isinstance(frame, m.Json) and set(frame.payload) == {"unpaired"}):
                received[client is bob].append(frame)
                count -= 1

    bob = await server.connect()
    await bob.send(b"H004" + registration("bob", 3, "windy"))
    assert await bob.receive() == m.HelloAccepted()
    await receive_lobby(bob, ["bob"])
    alice = await server.connect()
    await send_as_alice(
        b"H004",
        registration("alice", 7, "lip"),
        b"E123",  # a client's own ping: life, no answer
        encode_json({"game_request": {"sender": "alice", "receiver": "bob"}}),
    )
    await take(alice, 1)  # H
    await take(bob, 1)  # game_request
    await bob.send_json({"game_request": {"sender": "bob", "receiver": "alice"}})
    await take(alice, 1)
    await take(bob, 1)
    await send_as_alice(
        menu_state(False, "character", "lip", 7), menu_state(True, "ready", "lip", 7)
    )
    await take(bob, 2)
    await bob.send(menu_state(True, "ready", "windy", 3))
    await take(alice, 1)  # match_start; bob's ready is not forwarded
    await take(bob, 1)
    inputs = b"".join(b"I" + bytes([symbol]) for symbol in b"ABCDEFGHIJ")
    await send_as_alice(b"P5000000", b"Q5123456", inputs, b"FLOL", b"L5")
    await take(alice, 2)  # P, Q
    await take(bob, 2 + 10 + 1)  # O, R, inputs, L
    await send_as_alice(encode_json({"game_over": True}))
    await bob.send_json({"game_over": True})
    await take(alice, 1)
    await take(bob, 1)
    await send_as_alice(encode_json({"leave_room": True}))
    await take(alice, 1)
    await take(bob, 1)
    await alice.aclose()
    await bob.aclose()
    return received


async def test_messages_split_at_every_byte_or_merged_get_the_same_answers(start_server):
    # Two servers with the same seed: even the panels must come out the same.
    split = await play_scripted_session(start_server(), split=True)
    merged = await play_scripted_session(start_server(), split=False)
    assert split == merged
    alice, bob = merged
    assert alice[0] == m.HelloAccepted()
    assert bob[0] == m.Json({"game_request": {"sender": "alice", "receiver": "bob"}})
    assert [frame.letter for frame in alice if isinstance(frame, m.Panels)] == ["P", "Q"]
    assert bytes(frame.raw[1] for frame in bob if isinstance(frame, m.Input)) == b"ABCDEFGHIJ"
    assert bob[-1] == m.Json({"leave_room": True, "unpaired": ["alice", "bob"]})


# -- shutdown ------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_signal_closes_every_connection_and_exits_zero_after_logging_stopped(
    server, signum
):
    alice, bob, carol = [await server.connect() for _ in range(3)]
    for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        await client.send(b"H004" + registration(name))
        assert await client.receive() == m.HelloAccepted()
    await pair_up(alice, bob, "alice", "bob")
    await start_match(alice, bob)
    await receive_lobby(carol, ["carol"])
    server.process.send_signal(signum)
    async with trio.open_nursery() as nursery:
        for client in (alice, bob, carol):
            nursery.start_soon(partial(client.expect_closed, timeout=STOP_TIMEOUT))
    for client in (alice, bob, carol):
        await client.aclose()
    assert await server.wait_for_exit() == 0
    records = server.records()
    events = [record["event"] for record in records]
    assert events[-1] == "stopped"
    received = next(r for r in records if r["event"] == "signal_received")
    assert received["signal"] == signum.name
    assert events.index("signal_received") < events.index("shutting_down")


async def test_signal_with_no_connections_exits_zero(server):
    client = await server.connect()
    await client.send(b"H004")
    assert await client.receive() == m.HelloAccepted()
    await client.aclose()
    await server.wait_for_event("disconnected")
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait_for_exit() == 0
    assert server.events()[-1] == "stopped"
