"""The 2022 client's dialect (046) through the whole server, in process, on the virtual clock."""

from __future__ import annotations

import trio

from netplay.accounts import storage
from netplay.config import Config
from netplay.framing import messages as m
from netplay.testing import (
    Client046,
    connect046,
    connect_in_process,
    pair_up046,
    running_server,
    start_match046,
)


async def joined(server, name: str, **kwargs) -> Client046:
    client = connect046(server)
    await client.join(name, **kwargs)
    return client


async def in_a_room(server, *, playing: bool = False) -> tuple[Client046, Client046]:
    """alice asked, bob accepted (bob is player 1); both in the match if ``playing``."""
    alice, bob = await joined(server, "alice"), await joined(server, "bob")
    await pair_up046(alice, bob)
    if playing:
        await start_match046(alice, bob)
    return alice, bob


async def test_whole_session_login_match_spectator_rematch_leave_and_relogin(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await joined(server, "alice"), await joined(server, "bob")
        alice_login, bob_login = await alice.login(), await bob.login()
        assert alice_login["login_successful"] is True
        assert alice_login["new_user_id"].isdigit() and bob_login["new_user_id"].isdigit()
        assert alice_login["new_user_id"] != bob_login["new_user_id"]
        lobby = await alice.receive_until("unpaired")
        while "bob" not in lobby["unpaired"]:
            lobby = await alice.receive_until("unpaired")

        alice_room, bob_room = await pair_up046(alice, bob)
        # The one who completes the pair is player 1.
        assert (bob_room["your_player_number"], bob_room["op_player_number"]) == (1, 2)
        assert (alice_room["your_player_number"], alice_room["op_player_number"]) == (2, 1)
        assert alice_room["opponent"] == "bob" and bob_room["opponent"] == "alice"
        for room in (alice_room, bob_room):
            assert room["a_menu_state"]["cursor"] == room["b_menu_state"]["cursor"] == "__Ready"
            assert len(room["ratings"]) == 2 and room["rating_updates"] is True

        alice_start, bob_start = await start_match046(alice, bob)
        assert alice_start["seed"] == bob_start["seed"]
        assert alice_start["player_settings"]["player_number"] == 2
        assert bob_start["player_settings"]["player_number"] == 1
        assert alice_start["opponent_settings"] == bob_start["player_settings"]

        await bob.send_inputs("AAAg")
        await alice.send_inputs("AB")
        assert await alice.receive_inputs("I", 4) == b"AAAg"
        assert await bob.receive_inputs("I", 2) == b"AB"

        # A spectator joins mid-match and is sent everything so far.
        carol = await joined(server, "carol")
        await carol.login()
        lobby = await carol.receive_until("spectatable")
        (room,) = lobby["spectatable"]
        assert room["name"] == "bob vs alice" and room["state"] == "playing"
        granted = await carol.spectate(room["roomNumber"])
        assert granted["match_start"] is True  # a match is running
        replay = granted["replay_of_match_so_far"]["vs"]
        assert replay["seed"] == bob_start["seed"]
        assert (replay["in_buf"], replay["I"]) == ("A3g1", "A1B1")  # run-length form
        assert granted["player_settings"]["player_number"] == 1
        assert granted["opponent_settings"]["player_number"] == 2
        assert (await carol.receive_until("spectators"))["spectators"] == ["carol"]

        # Live inputs: player 1's as U, player 2's as I, a backlog in one read too.
        await bob.send_inputs("C")
        await alice.send_inputs("D")
        assert await carol.receive_inputs("U", 1) == b"C"
        assert await carol.receive_inputs("I", 1) == b"D"
        await bob.send_inputs("EFG")
        assert await carol.receive_inputs("U", 4) == b"CEFG"
        assert await alice.receive_inputs("I", 8) == b"AAAgCEFG"

        # Bob (player 1) wins; both agree.
        await alice.game_over(1)
        await bob.game_over(1)
        for client in (alice, bob, carol):
            assert (await client.receive_until("win_counts"))["win_counts"] == [1, 0]
            select = await client.receive_until("character_select")
            assert select["a_menu_state"]["ready"] is False

        # A rematch in the same room, then a draw: no win_counts for it.
        second_alice, second_bob = await start_match046(alice, bob)
        assert second_alice["seed"] != alice_start["seed"]
        await carol.receive_until("match_start")
        await alice.game_over(0)
        await bob.game_over(0)
        select = await alice.receive_until("character_select")
        assert "win_counts" not in select

        # Alice leaves: everyone in the room is told, then sees the lobby.
        await alice.leave_room()
        for client in (alice, bob, carol):
            await client.receive_until("leave_room")
            assert "unpaired" in await client.receive_until("unpaired")

        # Alice logs out, comes back with her id, and is known.
        await alice.logout()
        await alice.expect_closed()
        again = await joined(server, "alice")
        reply = await again.login(alice_login["new_user_id"])
        assert reply == {"login_successful": True}


async def test_046_players_never_meet_the_older_dialects(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        modern_lobby = await (modern := connect046(server)).join("modern")
        classic = connect_in_process(server)
        await classic.register("classic")
        assert (await classic.receive_until("unpaired"))["unpaired"] == ["classic"]
        assert modern_lobby["unpaired"] == ["modern"]
        await modern.send_json({"game_request": {"sender": "modern", "receiver": "classic"}})
        await classic.send_json({"game_request": {"sender": "classic", "receiver": "modern"}})
        await modern.expect_silence(2)
        await classic.expect_silence(2)


async def test_name_rules_answer_with_the_reason_the_client_shows(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        for name, reason in [
            ("", "Name cannot be blank"),
            ("Anonymous", 'Username cannot be "anonymous"'),
            ("mydefaultname", 'Username cannot be "defaultname" or a variation of it'),
            ("no spaces", "Usernames are limited to alphanumeric and underscores"),
            ("a" * 17, "The name length limit is 16 characters"),
        ]:
            client = connect046(server)
            reply = await client.join(name)
            assert reply == {"choose_another_name": {"reason": reason}}
        await joined(server, "taken")
        reply = await connect046(server).join("TAKEN")
        assert reply == {"choose_another_name": {"used_names": ["TAKEN"]}}


async def test_login_replies_for_every_case(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        first = await joined(server, "first")
        user_id = (await first.login())["new_user_id"]
        await first.logout()
        # A known id under a new name renames the account.
        renamed = await joined(server, "second")
        assert await renamed.login(user_id) == {
            "login_successful": True, "name_changed": True,
            "old_name": "first", "new_name": "second",
        }
        # The name now belongs to that id: a new player cannot take it...
        await renamed.logout()
        stranger = await joined(server, "Second")
        assert await stranger.login() == {
            "choose_another_name": {"reason": "That player name is already taken"}
        }
        # ...and an unknown id is denied with a reason.
        unknown = await joined(server, "third")
        reply = await unknown.login("12345")
        assert reply["login_denied"] is True
        assert reply["reason"] == "The user_id provided was not found on this server"
        # An unknown id does not ban anyone: the next new player logs in.
        fresh = await joined(server, "fourth")
        assert "new_user_id" in await fresh.login()


async def test_login_reply_comes_before_the_third_ping(autojump_clock):
    async with running_server(Config(ping_interval=0.2), seed=5) as server:
        client = await joined(server, "pinged")
        await trio.sleep(1.5)  # the client sits in the lobby and answers pings
        before = client.pings
        reply = await client.login()
        assert "login_successful" in reply
        assert client.pings - before <= 1
        assert client.pings <= 2  # at most one ping a second, whatever the setting


async def test_a_crashed_opponent_does_not_strand_the_other(autojump_clock):
    async with running_server(Config(game_over_timeout=4), seed=5) as server:
        alice, bob = await in_a_room(server, playing=True)
        await alice.game_over(2)  # bob (player 1) never reports
        start = trio.current_time()
        assert (await alice.receive_until("win_counts"))["win_counts"] == [0, 1]
        await alice.receive_until("character_select")
        assert 4 <= trio.current_time() - start <= 4.5


async def test_disagreeing_reports_are_a_draw(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await in_a_room(server, playing=True)
        await alice.game_over(1)
        await bob.game_over(2)
        select = await alice.receive_until("character_select")
        assert "win_counts" not in select
        await bob.receive_until("character_select")


async def test_spectator_at_select_waits_for_match_start(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await in_a_room(server)
        carol = connect046(server)
        lobby = await carol.join("carol")
        granted = await carol.spectate(lobby["spectatable"][0]["roomNumber"])
        assert "replay_of_match_so_far" not in granted and granted["match_start"] is False
        assert granted["win_counts"] == [0, 0]
        start, _ = await start_match046(alice, bob)
        watched = await carol.receive_until("match_start")
        assert watched["seed"] == start["seed"]
        # Its view is player 1's.
        assert watched["player_settings"]["player_number"] == 1


async def test_spectator_leaving_is_announced_and_returns_to_lobby(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await in_a_room(server)
        carol = await joined(server, "carol")
        await carol.spectate(1)
        assert (await alice.receive_until("spectators"))["spectators"] == ["carol"]
        await carol.leave_room()
        assert "unpaired" in await carol.receive_until("unpaired")
        assert (await alice.receive_until("spectators"))["spectators"] == []


async def test_spectators_per_room_are_bounded(autojump_clock):
    async with running_server(Config(max_spectators_per_room=1), seed=5) as server:
        alice, bob = await in_a_room(server)
        first = await joined(server, "first")
        await first.spectate(1)
        second = await joined(server, "second")
        await second.send_json({"spectate_request": {"sender": "second", "roomNumber": 1}})
        with trio.move_on_after(2):
            await second.receive_until("spectate_request_granted", timeout=3)
            raise AssertionError("a spectator over the limit was admitted")


async def test_disconnect_mid_match_sends_leave_room_then_lobby(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await in_a_room(server, playing=True)
        carol = await joined(server, "carol")
        await carol.spectate(1)
        await alice.aclose()
        for client in (bob, carol):
            await client.receive_until("leave_room")
            lobby = await client.receive_until("unpaired")
            assert "alice" not in lobby["unpaired"] and lobby["spectatable"] == []


async def test_taunts_are_forwarded_with_player_number_and_rate_limited(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await in_a_room(server)
        for _ in range(6):
            await bob.send_json({"taunt": True, "type": "taunt_ups", "index": 2})
        received = []
        with trio.move_on_after(1):
            while True:
                received.append(await alice.receive_until("taunt", timeout=5))
        assert received == [
            {"taunt": True, "type": "taunt_ups", "index": 2, "player_number": 1}
        ] * 4
        await alice.send_json({"taunt": True, "type": "taunt_ups", "index": "x"})
        await bob.expect_silence(1)


async def test_invalid_inputs_are_never_forwarded(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await in_a_room(server, playing=True)
        await bob.send(b"I\x00I-IA")
        assert await alice.receive_inputs("I", 1) == b"A"
        await alice.expect_silence(1)
        assert bytes(alice.inputs_received["I"]) == b"A"


async def test_older_letters_are_refused_without_harm(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice, bob = await in_a_room(server, playing=True)
        await bob.send(b"P5123456L5")
        await alice.expect_silence(1)
        await bob.send_inputs("A")
        assert await alice.receive_inputs("I", 1) == b"A"


async def test_logout_closes_the_connection(autojump_clock):
    async with running_server(Config(), seed=5) as server:
        alice = await joined(server, "alice")
        await alice.logout()
        frames = await alice.expect_closed(timeout=5)
        jsons = [frame.payload for frame in frames if isinstance(frame, m.Json)]
        assert jsons == [{"connection_closing": True, "reason": "logout"}]


async def test_server_closing_sends_a_last_frame_the_client_notices(autojump_clock):
    async with running_server(Config(idle_timeout=3), seed=5) as server:
        silent = connect046(server, answer_pings=False)
        await silent.join("silent")
        frames = await silent.expect_closed(timeout=10)
        jsons = [frame.payload for frame in frames if isinstance(frame, m.Json)]
        assert jsons[-1] == {"connection_closing": True, "reason": "idle_timeout"}


async def test_ranked_game_changes_ratings_and_writes_the_replay(autojump_clock, tmp_path):
    config = Config(placement_rule="relaxed")
    async with running_server(config, seed=5, replays_directory=str(tmp_path)) as server:
        alice, bob = await joined(server, "alice"), await joined(server, "bob")
        await alice.login()
        await bob.login()
        await pair_up046(alice, bob)
        await alice.menu_state(ranked=True)
        await bob.menu_state(ranked=True)
        assert "ranked_match_approved" in await alice.receive_until("ranked_match_approved")
        await alice.menu_state(ranked=True, ready=True)
        await bob.receive_until("menu_state")
        await bob.menu_state(ranked=True, ready=True)
        start = await alice.receive_until("match_start")
        assert start["ranked"] is True and start["player_settings"]["rating"] == 1500
        await bob.send_inputs("AAg")
        await alice.send_inputs("AB")
        await alice.game_over(1)
        await bob.game_over(1)
        select = await alice.receive_until("character_select")
        assert [r["placement_match_progress"] for r in select["ratings"]] == [
            "1/30 placement matches played.", "1/30 placement matches played.",
        ]
        await alice.send_json({"leaderboard_request": True})
        assert (await alice.receive_until("leaderboard_report"))["leaderboard_report"] == []
        # The replay follows the stored game.
        (replay,) = tmp_path.rglob("*.txt")
        assert "bob" in replay.name and "Ranked" in replay.name
        (game,) = server.database.execute([storage.PlayerGames(replay_owner(server))])[0].games
        assert game.replay_path == replay.relative_to(tmp_path).as_posix()


def replay_owner(server) -> str:
    """The user id of the first 046 player still logged in."""
    return next(p.user_id for p in server.core.lobby046.players.values() if p.user_id)
