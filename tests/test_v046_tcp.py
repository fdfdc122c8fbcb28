"""The 2022 client's dialect against the ``netplay-server`` process over loopback TCP."""

from __future__ import annotations

import pytest
import trio
from helpers import LoggingProcess, server_command

from netplay.testing import Client046, pair_up046, start_match046


async def connect(server: LoggingProcess, name: str) -> Client046:
    client = Client046(await trio.open_tcp_stream("127.0.0.1", server.port))
    await client.join(name)
    return client


async def test_session_over_tcp_and_login_again_after_a_restart(start_server, tmp_path):
    database = str(tmp_path / "players.sqlite3")
    server = start_server("--database", database)
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    alice_id = (await alice.login())["new_user_id"]
    await bob.login()
    await pair_up046(alice, bob)
    await start_match046(alice, bob)
    await alice.send_inputs("A" * 30)
    await bob.send_inputs("g" * 20)
    carol = await connect(server, "carol")
    await carol.login()
    granted = await carol.spectate(1)
    vs = granted["replay_of_match_so_far"]["vs"]
    assert vs["I"] in ("", "A30") or vs["I"].startswith("A")  # as far as it had arrived
    await bob.send_inputs("B")
    assert (await carol.receive_inputs("U", 1)) in (b"g", b"B")
    await alice.game_over(1)
    await bob.game_over(1)
    for client in (alice, bob, carol):
        assert (await client.receive_until("win_counts"))["win_counts"] == [1, 0]
    await alice.leave_room()
    await bob.receive_until("leave_room")
    await alice.logout()
    await alice.expect_closed(timeout=5)

    # The id is on disk: a new server process over the same file knows it.
    server.stop()
    again = start_server("--database", database)
    returning = await connect(again, "alice")
    assert await returning.login(alice_id) == {"login_successful": True}


async def test_corrupt_database_is_a_clear_start_up_error(tmp_path):
    path = tmp_path / "players.sqlite3"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(AssertionError, match="cannot_use_database"):
        LoggingProcess(server_command("--database", str(path)), tmp_path / "server.log")
    assert path.read_bytes() == b"garbage" * 1000
