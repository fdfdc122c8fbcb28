"""No input is ever lost: bursts, floods and spectators that do not read, in every dialect."""

from __future__ import annotations

import logging

import trio
from helpers import captured_logs

from netplay.config import Config
from netplay.testing import (
    connect046,
    connect2025,
    connect_in_process,
    pair_up,
    pair_up046,
    running_server,
    start_match,
    start_match046,
)

BURST = 3000
SYMBOLS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def symbols(count: int, offset: int = 0) -> str:
    return "".join(SYMBOLS[(offset + i) % len(SYMBOLS)] for i in range(count))


async def match046(server, *, spectator_lockstep: bool = False):
    """alice and bob (player 1) in a match, carol spectating; all logged in."""
    alice, bob = connect046(server), connect046(server)
    for client, name in ((alice, "alice"), (bob, "bob")):
        await client.join(name)
        await client.login()
    await pair_up046(alice, bob)
    await start_match046(alice, bob)
    carol = connect046(server, lockstep=spectator_lockstep)
    await carol.join("carol")
    await carol.login()
    await carol.receive_until("spectatable")
    await carol.spectate(1)
    await alice.receive_until("spectators")
    await bob.receive_until("spectators")
    return alice, bob, carol


async def test_a_046_burst_of_3000_inputs_reaches_opponent_and_spectator_whole(autojump_clock):
    async with running_server(Config()) as server:
        alice, bob, carol = await match046(server)
        burst = symbols(BURST)
        with captured_logs(logging.WARNING) as logs:
            await bob.send_inputs(burst)  # one write, as a client that stalled sends it
            assert await alice.receive_inputs("I", BURST) == burst.encode()
            assert await carol.receive_inputs("U", BURST) == burst.encode()
        assert logs == []


async def test_a_2013_burst_of_3000_inputs_reaches_the_opponent_whole(autojump_clock):
    async with running_server(Config()) as server:
        alice, bob = connect_in_process(server), connect_in_process(server)
        for client, name in ((alice, "alice"), (bob, "bob")):
            await client.register(name)
        await pair_up(alice, bob, "alice", "bob")
        await start_match(alice, bob)
        burst = symbols(BURST)
        await alice.send(b"".join(b"I" + s.encode() for s in burst))
        received = []
        while len(received) < BURST:
            frame = await bob.receive()
            if frame.raw[:1] == b"I":
                received.append(frame.raw[1:])
        assert b"".join(received) == burst.encode()


async def test_a_2025_burst_of_3000_inputs_reaches_opponent_and_spectator_whole(autojump_clock):
    async with running_server(Config()) as server:
        alice, bob = connect2025(server), connect2025(server)
        for client, name in ((alice, "alice"), (bob, "bob")):
            await client.login(name)
        await alice.request_game("bob")
        await bob.receive_until("game_request")
        await bob.request_game("alice")
        for client in (alice, bob):
            await client.receive_until("create_room")
        for client in (alice, bob):
            await client.menu_state(ready=True)
        for client in (alice, bob):
            await client.receive_until("match_start")
        carol = connect2025(server)
        await carol.login("carol")
        await carol.spectate((await carol.receive_until("unpaired"))["spectatable"][0]["roomNumber"])
        burst = symbols(BURST)
        await bob.send_inputs(burst)
        expected = [s.encode() for s in burst]
        assert await alice.receive_inputs("I", BURST) == expected
        assert await carol.receive_inputs("U", BURST) == expected


async def test_a_spectator_that_never_reads_is_dropped_alone_and_costs_the_players_nothing(
    autojump_clock,
):
    config = Config(max_queued_bytes=64 * 1024)
    per_player, per_write = 50_000, 500
    async with running_server(config) as server:
        alice, bob, carol = await match046(server, spectator_lockstep=True)
        # From here carol reads nothing: every byte for her stays queued.
        with captured_logs(logging.INFO) as logs:
            async with trio.open_nursery() as nursery:

                async def flood(client, offset):
                    for start in range(0, per_player, per_write):
                        await client.send_inputs(symbols(per_write, offset + start))
                        await trio.sleep(0)  # as fast as the loop goes

                nursery.start_soon(flood, alice, 0)
                nursery.start_soon(flood, bob, 7)
                from_bob = await alice.receive_inputs("I", per_player, timeout=120)
                from_alice = await bob.receive_inputs("I", per_player, timeout=120)
        assert from_bob == symbols(per_player, 7).encode()
        assert from_alice == symbols(per_player, 0).encode()
        dropped = [line for line in logs if line["event"] == "connection_dropped"]
        assert [line["reason"] for line in dropped] == ["send_queue_full"]
        # (On this clock the players send faster than the rate limit: some of
        # their inputs waited for it, none was lost.)
        # The players are still in their match; the spectator is gone.
        assert set(server.core.lobby046.names) == {"alice", "bob"}
        await bob.send_inputs("z")
        assert await alice.receive_inputs("I", per_player + 1) == from_bob + b"z"
