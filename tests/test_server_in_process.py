"""The whole server over memory streams, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from netplay.config import Config
from netplay.framing import messages as m
from netplay.framing.length3 import encode_json
from netplay.testing import (
    ConnectionClosed,
    ScriptedClient,
    connect_in_process,
    pair_up,
    running_server,
    start_match,
)


async def two_players_in_a_match(
    server, first: str = "alice", second: str = "bob", **second_options
) -> tuple[ScriptedClient, ScriptedClient]:
    """Connect and register two players, pair them up and start their match.

    ``second_options`` go to the second player's :func:`connect_in_process`.
    """
    one = connect_in_process(server)
    two = connect_in_process(server, **second_options)
    await one.register(first)
    await two.register(second)
    await pair_up(one, two, first, second)
    await start_match(one, two)
    return one, two


async def test_registration_right_behind_hello_is_answered_and_listed(autojump_clock):
    async with running_server() as server:
        alice = connect_in_process(server)
        await alice.register("alice")
        assert await alice.receive_json() == {"unpaired": ["alice"]}


async def test_unknown_version_gets_n_and_close(autojump_clock):
    async with running_server() as server:
        client = connect_in_process(server)
        await client.send(b"H999")
        frames = await client.expect_closed()
        assert frames == [m.HelloRefused()]


async def test_silent_client_is_pinged_each_second_then_dropped(autojump_clock):
    async with running_server() as server:
        client = connect_in_process(server, answer_pings=False)
        await client.register("quiet")
        start = trio.current_time()
        pings = []
        with pytest.raises(ConnectionClosed):
            while True:
                frame = await client.receive(timeout=30, skip_pings=False)
                if isinstance(frame, m.Ping):
                    assert frame.token == "LOL"
                    pings.append(trio.current_time() - start)
        dropped_after = trio.current_time() - start
        assert pings[0] == pytest.approx(1.0, abs=0.01)
        assert [round(b - a, 3) for a, b in zip(pings, pings[1:])] == [1.0] * (len(pings) - 1)
        assert 10.0 <= dropped_after <= 11.5


async def test_answered_pings_keep_a_connection_alive(autojump_clock):
    async with running_server() as server:
        client = connect_in_process(server)
        await client.register("chatty")
        await client.receive_json()
        await client.expect_silence(30)
        assert client.pings >= 25
        await client.send(b"FLOL")  # still open


async def test_document_dialect_is_pinged_with_w(autojump_clock):
    async with running_server() as server:
        client = connect_in_process(server, answer_pings=False)
        await client.register("doc", version="139")
        await client.receive_json()
        frame = await client.receive(timeout=2, skip_pings=False)
        assert frame == m.Heartbeat()


async def test_oversized_json_frame_closes_the_connection_only(autojump_clock):
    async with running_server(Config(max_json_length=100)) as server:
        bystander = connect_in_process(server)
        await bystander.register("bystander")
        await bystander.receive_json()
        attacker = connect_in_process(server)
        await attacker.hello()
        await attacker.send(b"J\xff\xff\xff")
        frames = await attacker.expect_closed()
        assert frames == [m.HelloAccepted()]
        await bystander.send(b"FLOL")
        newcomer = connect_in_process(server)
        await newcomer.register("newcomer")
        assert await bystander.receive_json() == {"unpaired": ["bystander", "newcomer"]}


async def test_data_then_immediate_close_disturbs_nobody(autojump_clock):
    async with running_server() as server:
        alice = connect_in_process(server)
        await alice.register("alice")
        await alice.receive_json()
        for _ in range(5):
            rude = connect_in_process(server)
            await rude.send(b"H004" + encode_json({"name": "rude", "level": 5, "character": "x"}))
            await rude.aclose()
        # The rude client may or may not have appeared; alice ends alone again.
        while (await alice.receive_json())["unpaired"] != ["alice"]:
            pass
        assert len(server.core.lobby.players) == 1


async def test_invalid_json_is_ignored_and_the_connection_stays(autojump_clock):
    async with running_server() as server:
        client = connect_in_process(server)
        await client.hello()
        assert await client.receive() == m.HelloAccepted()
        for body in (b"{not json", b"[1,2]", b"\xff\xfe", b'"text"', b"NaN", b"1" * 5000):
            await client.send(b"J" + len(body[:4000]).to_bytes(3, "big") + body[:4000])
        await client.send_json({"name": "ok", "level": 5, "character": "lip"})
        assert await client.receive_json() == {"unpaired": ["ok"]}


async def test_unknown_letter_closes_the_connection(autojump_clock):
    async with running_server() as server:
        client = connect_in_process(server)
        await client.register("alice")
        await client.send(b"Z")
        await client.expect_closed()
        assert server.core.lobby.names == {}


async def test_frames_split_at_every_byte_parse_the_same(autojump_clock):
    async with running_server() as server:
        alice = connect_in_process(server)
        data = b"H004" + encode_json({"name": "alice", "level": 5, "character": "lip"})
        for i in range(len(data)):
            await alice.send(data[i : i + 1])
        assert await alice.receive() == m.HelloAccepted()
        assert await alice.receive_json() == {"unpaired": ["alice"]}


async def test_whole_match_relays_panels_and_inputs(autojump_clock):
    async with running_server() as server:
        alice, bob = await two_players_in_a_match(server)
        await alice.send(b"P5000000")
        own = await alice.receive()
        mirrored = await bob.receive()
        assert own.letter == "P" and mirrored.letter == "O" and own.digits == mirrored.digits
        symbols = b"ABCDEFGHIJ"
        for symbol in symbols:
            await alice.send(b"I" + bytes([symbol]))
        received = bytes([(await bob.receive()).raw[1] for _ in symbols])
        assert received == symbols
        await alice.expect_silence(0.5)  # never echoed


async def test_opponent_is_told_at_once_when_a_player_disconnects(autojump_clock):
    async with running_server() as server:
        alice, bob = await two_players_in_a_match(server)
        before = trio.current_time()
        await alice.aclose()
        message = await bob.receive_until("leave_room")
        assert trio.current_time() - before < 0.1
        assert message == {"leave_room": True, "unpaired": ["bob"]}


async def test_client_that_never_reads_is_dropped_and_its_opponent_told(autojump_clock):
    config = Config(max_queued_bytes=200)
    async with running_server(config) as server:
        alice, sleeper = await two_players_in_a_match(server, "alice", "sleeper", lockstep=True)
        # The sleeper stops reading; alice keeps playing.
        for _ in range(150):
            await alice.send(b"IA")
            await trio.sleep(1 / 60)
        message = await alice.receive_until("leave_room")
        assert message["unpaired"] == ["alice"]
        assert "sleeper" not in server.core.lobby.names


async def test_a_slow_reader_gets_the_latest_lobby_not_every_lobby(autojump_clock):
    async with running_server() as server:
        slow = connect_in_process(server, lockstep=True)
        await slow.send(b"H004" + encode_json({"name": "slow", "level": 5, "character": "x"}))
        others = []
        for index in range(6):
            other = connect_in_process(server)
            await other.register(f"p{index}")
            others.append(other)
            await trio.sleep(1)  # one lobby broadcast per join
        lists = []
        assert await slow.receive() == m.HelloAccepted()
        while not lists or len(lists[-1]) < 7:
            lists.append((await slow.receive_json())["unpaired"])
        # Six broadcasts were made while it did not read; it gets only the latest.
        assert lists == [sorted(["slow"] + [f"p{i}" for i in range(6)])]
