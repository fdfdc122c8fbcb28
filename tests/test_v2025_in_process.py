"""The 2023-2025 clients against an in-process server: the whole story, both wire formats."""

from __future__ import annotations

import json
import time

import pytest
import structlog
import trio

from netplay.config import Config
from netplay.core import _marked_input_bodies
from netplay.framing.endmarker import MARKER
from netplay.framing.endmarker import encode_json as endmarker_encode
from netplay.testing import (
    ConnectionClosed,
    connect046,
    connect2025,
    connect_in_process,
    login_message2025,
    running_server,
)


async def logged_in(server, name, version="004", **options):
    client = connect2025(server, version=version)
    reply = await client.login(name, **options)
    return client, reply


async def pair(first, second):
    await first.request_game(second.name)
    await second.receive_until("challenge" if second.version >= "005" else "game_request")
    await second.request_game(first.name)
    kind = {True: "createRoom", False: "create_room"}
    return (
        await first.receive_until(kind[first.version >= "005"]),
        await second.receive_until(kind[second.version >= "005"]),
    )


async def test_stable_login_gives_a_new_id_a_public_id_and_the_lobby():
    async with running_server() as server:
        alice, reply = await logged_in(server, "alice")
        assert reply["login_successful"] is True
        assert reply["name_changed"] is False
        assert reply["new_user_id"].isdigit() and len(reply["new_user_id"]) >= 16
        assert reply["publicId"] == 1
        lobby = await alice.receive_until("unpaired")
        assert lobby["unpaired"] == ["alice"] and lobby["spectatable"] == []


async def test_beta_login_is_a_typed_login_response():
    async with running_server() as server:
        bob, content = await logged_in(server, "bob", version="005")
        assert content["approved"] is True and content["publicId"] == 1
        assert "newUserId" in content
        lobby = await bob.receive_until("lobbyState")
        assert lobby["unpaired"] == ["bob"]


async def test_returning_player_logs_in_with_its_id_and_keeps_its_public_id():
    async with running_server() as server:
        first, reply = await logged_in(server, "carol")
        await first.logout()
        await trio.sleep(0.1)
        again, second_reply = await logged_in(server, "carol", user_id=reply["new_user_id"])
        assert second_reply["login_successful"] is True
        assert "new_user_id" not in second_reply
        assert second_reply["publicId"] == reply["publicId"]


async def test_wrong_engine_and_bad_names_are_denied_with_the_reason():
    async with running_server() as server:
        _, reply = await logged_in(server, "dave", engine_version="047")
        assert reply == {
            "login_denied": True,
            "reason": "Please update your game, server expects engine version: 048",
        }
        _, reply = await logged_in(server, "bad name!")
        assert reply["reason"] == "Usernames are limited to alphanumeric and underscores"
        _, typed = await logged_in(server, "", version="005")
        assert typed == {"approved": False, "reason": "Name cannot be blank"}


async def test_the_same_name_cannot_log_in_twice():
    async with running_server() as server:
        await logged_in(server, "erin")
        _, reply = await logged_in(server, "erin")
        assert reply["reason"] == "Cannot login with the same name twice"


async def test_a_name_online_from_one_client_family_is_refused_to_the_other():
    async with running_server() as server:
        classic = connect046(server)
        assert (await classic.join("frank"))["unpaired"] == ["frank"]
        _, reply = await logged_in(server, "Frank")
        assert reply["reason"] == "Cannot login with the same name twice"
        newer, reply = await logged_in(server, "grace", "005")
        assert reply["approved"] is True
        second = connect046(server)
        assert await second.join("GRACE") == {"choose_another_name": {"used_names": ["GRACE"]}}
        # Free again once its holder has gone.
        await newer.logout()
        await trio.sleep(0.1)
        third = connect046(server)
        assert (await third.join("grace"))["unpaired"] == ["frank", "grace"]


@pytest.mark.parametrize("versions", [("004", "004", "004"), ("005", "004", "005"), ("005", "005", "004")])
async def test_match_with_a_late_spectator_results_and_leaving(versions):
    async with running_server() as server:
        alice, _ = await logged_in(server, "alice", versions[0])
        bob, _ = await logged_in(server, "bob", versions[1])
        a_room, b_room = await pair(alice, bob)
        if alice.version == "004":
            assert a_room["your_player_number"] == 2 and a_room["a_menu_state"]["publicId"] == 2
        else:
            assert [p["name"] for p in a_room["players"]] == ["bob", "alice"]
        await alice.menu_state(ready=True)
        await bob.menu_state(ready=True)
        starts = [
            await client.receive_until("matchStart" if client.version >= "005" else "match_start")
            for client in (alice, bob)
        ]
        seeds = {start["seed"] for start in starts}
        assert len(seeds) == 1
        # bob is player 1: his inputs reach spectators as U, alice's as I.
        await bob.send_inputs("AAAB")
        await alice.send_inputs("AC")
        assert await alice.receive_inputs("I", 4) == [b"A", b"A", b"A", b"B"]
        assert await bob.receive_inputs("I", 2) == [b"A", b"C"]
        carol, _ = await logged_in(server, "carol", versions[2])
        lobby_kind = "lobbyState" if carol.version >= "005" else "unpaired"
        lobby = await carol.receive_until(lobby_kind)
        assert lobby["spectatable"][0]["state"] == "playing"
        granted = await carol.spectate(lobby["spectatable"][0]["roomNumber"])
        replay = granted["replay"] if carol.version >= "005" else granted["replay_of_match_so_far"]
        if carol.version == "004":
            assert granted["match_start"] is True
        assert replay["replayVersion"] == 2 and replay["seed"] in seeds
        # When the match started, in Unix seconds, as the clients show it.
        assert abs(replay["timestamp"] - time.time()) < 60
        assert [p["settings"]["inputs"] for p in replay["players"]] == ["A3B1", "A1C1"]
        await bob.send_inputs("D")
        await alice.send_inputs("E")
        assert await carol.receive_inputs("U", 1) == [b"D"]
        assert await carol.receive_inputs("I", 1) == [b"E"]
        await alice.game_over(1)
        await bob.game_over(1)
        for client in (alice, bob, carol):
            if client.version >= "005":
                result = await client.receive_until("gameResult")
                assert [entry["winCount"] for entry in result] == [1, 0]
                assert [entry["placement"] for entry in result] == [1, 2]
            else:
                assert (await client.receive_until("win_counts"))["win_counts"] == [1, 0]
                await client.receive_until("character_select")
        await alice.leave_room()
        for client in (alice, bob, carol):
            await client.receive_until("leaveRoom" if client.version >= "005" else "leave_room")


async def test_a_2013_client_and_a_stable_client_share_the_handshake_version():
    async with running_server() as server:
        old = connect_in_process(server)
        await old.register("oldtimer", version="004")
        assert (await old.receive_json())["unpaired"] == ["oldtimer"]
        new, reply = await logged_in(server, "newcomer", "004")
        assert reply["login_successful"] is True
        # Each sees only its own family's lobby.
        assert (await new.receive_until("unpaired"))["unpaired"] == ["newcomer"]


async def test_a_2022_client_is_unaffected_beside_2025_clients():
    async with running_server() as server:
        await logged_in(server, "newcomer", "005")
        client = connect046(server)
        lobby = await client.join("classic046")
        assert lobby["unpaired"] == ["classic046"]


async def test_engine_groups_keep_players_apart():
    config = Config(v2025_engine_groups="048,049")
    async with running_server(config) as server:
        a, _ = await logged_in(server, "a048")
        b, reply = await logged_in(server, "b049", engine_version="049")
        assert reply["login_successful"] is True
        assert (await b.receive_until("unpaired"))["unpaired"] == ["b049"]
        await b.request_game("a048")
        with trio.move_on_after(0.5):
            payload = await a.receive_until("game_request")
            raise AssertionError(f"a request crossed engine groups: {payload}")


async def test_beta_match_abort_tells_the_opponent_and_returns_to_select():
    async with running_server() as server:
        alice, bob = await _started_match(server, ("005", "005"))
        await alice.send_json({"recipient": "room", "recipientId": 1, "type": "matchAbort", "content": True})
        abort = await bob.receive_until("gameAbort")
        assert abort == {"source": "alice"}
        await alice.menu_state(ready=True)
        await bob.menu_state(ready=True)
        assert "seed" in await bob.receive_until("matchStart")


async def test_body_without_end_marker_closes_only_that_connection():
    config = Config(max_json_length=512)
    async with running_server(config) as server:
        bystander, _ = await logged_in(server, "bystander")
        flooder = connect2025(server)
        await flooder.connect()
        await flooder.send(b'J{"login_request":true,"name":"' + b"x" * 600)
        with pytest.raises(Exception):
            await flooder.receive(timeout=3)
        await bystander.send_json({"leaderboard_request": True})
        assert "leaderboard_report" in await bystander.receive_until("leaderboard_report")


async def test_split_marker_several_messages_in_one_read_and_non_ascii_names():
    async with running_server() as server:
        client = connect2025(server)
        await client.connect()
        from netplay.framing.endmarker import encode_json
        from netplay.testing import login_message2025

        data = encode_json(login_message2025("Zoë")) + encode_json({"leaderboard_request": True})
        for index in range(0, len(data), 3):
            await client.send(data[index:index + 3])
        reply = await client.receive_until("login_denied")
        # Letters outside A-Z, a-z, 0-9 and _ are refused, as the panel-game server does.
        assert reply["reason"] == "Usernames are limited to alphanumeric and underscores"
        client2 = connect2025(server)
        await client2.connect()
        await client2.send(encode_json(login_message2025("plain")) + encode_json({"leaderboard_request": True}))
        assert (await client2.receive_until("login_successful"))["publicId"] == 1
        assert "leaderboard_report" in await client2.receive_until("leaderboard_report")


async def test_inputs_before_a_match_and_wrong_types_are_refused_quietly():
    async with running_server() as server:
        client, _ = await logged_in(server, "typed")
        await client.send_inputs("A")
        await client.send_json({"game_request": {"sender": 5, "receiver": []}})
        await client.send_json({"menu_state": "nope"})
        await client.send_json({"spectate_request": {"sender": "typed", "roomNumber": "1"}})
        await client.send_json({"leaderboard_request": True})
        assert "leaderboard_report" in await client.receive_until("leaderboard_report")


async def test_spoofed_sender_is_refused():
    async with running_server() as server:
        alice, _ = await logged_in(server, "alice")
        bob, _ = await logged_in(server, "bob")
        await alice.send_json({"game_request": {"sender": "bob", "receiver": "alice"}})
        with trio.move_on_after(0.3):
            payload = await alice.receive_until("game_request")
            raise AssertionError(payload)



async def _started_match(server, versions):
    """alice and bob, of these network versions, paired, ready and told the match started."""
    alice, _ = await logged_in(server, "alice", versions[0])
    bob, _ = await logged_in(server, "bob", versions[1])
    await pair(alice, bob)
    await alice.menu_state(ready=True)
    await bob.menu_state(ready=True)
    for client in (alice, bob):
        await client.receive_until("matchStart" if client.version >= "005" else "match_start")
    return alice, bob


async def _match_with_spectator(server, versions):
    alice, bob = await _started_match(server, versions[:2])
    carol, _ = await logged_in(server, "carol", versions[2])
    lobby = await carol.receive_until("lobbyState" if carol.version >= "005" else "unpaired")
    await carol.spectate(lobby["spectatable"][0]["roomNumber"])
    return alice, bob, carol


async def test_a_beta_spectator_who_leaves_is_sent_leave_room_then_the_lobby():
    async with running_server() as server:
        _alice, bob, carol = await _match_with_spectator(server, ("005", "005", "005"))
        await carol.leave_room()
        assert await carol.receive_until("leaveRoom") == {"reason": "carol left"}
        assert (await carol.receive_until("lobbyState"))["unpaired"] == ["carol"]
        assert await bob.receive_until("spectatorUpdate") == ["carol"]
        assert await bob.receive_until("spectatorUpdate") == []


async def test_a_stable_spectator_who_leaves_is_sent_no_leave_room():
    async with running_server() as server:
        _alice, bob, carol = await _match_with_spectator(server, ("004", "004", "004"))
        await carol.leave_room()
        while True:
            payload = await carol.receive_json()
            assert "leave_room" not in payload
            if "unpaired" in payload:
                break
        assert payload["unpaired"] == ["carol"]
        assert (await bob.receive_until("spectators"))["spectators"] == ["carol"]
        assert (await bob.receive_until("spectators"))["spectators"] == []


async def test_beta_leave_room_says_who_left():
    async with running_server() as server:
        alice, _ = await logged_in(server, "alice", "005")
        bob, _ = await logged_in(server, "bob", "005")
        await pair(alice, bob)
        await alice.leave_room()
        assert await bob.receive_until("leaveRoom") == {"reason": "alice left"}
        assert await alice.receive_until("leaveRoom") == {"reason": "alice left"}


async def test_beta_settings_sent_outside_a_room_are_kept_and_stable_ones_are_not():
    async with running_server() as server:
        alice, _ = await logged_in(server, "alice", "005")
        bob, _ = await logged_in(server, "bob", "004")
        # Both clients send their settings from the lobby just before a challenge.
        await alice.menu_state(loaded=False, panels_dir="pdp_ta_common")
        await bob.menu_state(loaded=False, panels_dir="pdp_ta_common")
        a_room, b_room = await pair(alice, bob)
        settings = {p["name"]: p["settings"] for p in a_room["players"]}
        assert settings["alice"]["panels"] == "pdp_ta_common"
        assert settings["alice"]["loaded"] is False
        assert "panels" not in settings["bob"] and "loaded" not in settings["bob"]
        assert b_room["b_menu_state"]["panels_dir"] == "pdp_ta_common"  # alice is player 2


async def test_beta_logout_is_worded_as_a_logout_to_the_opponent(autojump_clock):
    async with running_server() as server:
        alice, _ = await logged_in(server, "alice", "005")
        bob, _ = await logged_in(server, "bob", "005")
        await pair(alice, bob)
        await alice.logout()
        assert await bob.receive_until("leaveRoom") == {"reason": "alice logged out"}


async def test_a_silent_2025_client_is_pinged_and_dropped_only_after_15_seconds(autojump_clock):
    async with running_server() as server:  # idle_timeout 10 s for everyone else
        client = connect2025(server, answer_pings=False)
        await client.login("loader")
        started = trio.current_time()
        with pytest.raises(ConnectionClosed):
            while True:
                await client.receive(timeout=60)
        assert trio.current_time() - started == pytest.approx(15.0, abs=0.1)
        assert client.pings >= 10  # an E after each second of silence


async def _saved_replay(directory):
    """The one replay file the server writes under ``directory``, once it is there, and its JSON."""
    with trio.fail_after(5):
        while not (files := list(directory.rglob("*.json"))):
            await trio.sleep(0.01)
    (path,) = files
    return path, json.loads(path.read_text())


async def test_a_finished_game_is_saved_as_a_version_2_replay_file(tmp_path):
    async with running_server(replays_directory=str(tmp_path)) as server:
        alice, bob = await _started_match(server, ("004", "005"))
        await alice.send_inputs("AAAB")
        await bob.send_inputs("AC")
        await bob.receive_inputs("I", 4)
        await alice.receive_inputs("I", 2)
        await alice.game_over(2)
        await bob.game_over(2)
        await alice.receive_until("win_counts")
        path, replay = await _saved_replay(tmp_path)
    assert replay["replayVersion"] == 2 and replay["engineVersion"] == "048"
    assert replay["completed"] is True and replay["winnerIndex"] == 2
    inputs = {p["name"]: p["settings"]["inputs"] for p in replay["players"]}
    assert inputs == {"alice": "A3B1", "bob": "A1C1"}
    assert path.name.endswith("-VS-casual-P2wins.json") and path.relative_to(tmp_path).parts[0] == "v048"


async def test_a_lone_input_takes_the_per_frame_path_and_reaches_a_spectator():
    async with running_server() as server:
        alice, bob, carol = await _match_with_spectator(server, ("004", "005", "004"))
        relayed = server.counters.traffic.relayed_inputs
        for count, symbol in enumerate("ABCDE", start=1):
            await bob.send_inputs(symbol)
            assert await alice.receive_inputs("I", count) == [s.encode() for s in "ABCDE"[:count]]
        # Relayed without decoding; bob is player 1, so carol reads his inputs as U.
        assert server.counters.traffic.relayed_inputs - relayed == 5
        assert await carol.receive_inputs("U", 5) == [s.encode() for s in "ABCDE"]


async def test_a_backlog_of_inputs_in_one_read_is_relayed_whole_and_in_order():
    async with running_server() as server:
        alice, bob, carol = await _match_with_spectator(server, ("005", "004", "005"))
        traffic = server.counters.traffic
        relayed, sent = traffic.relayed_inputs, traffic.sent()
        await bob.send_inputs("ABC")  # three messages in one write, as after a stall
        assert await alice.receive_inputs("I", 3) == [b"A", b"B", b"C"]
        assert await carol.receive_inputs("U", 3) == [b"A", b"B", b"C"]
        assert traffic.relayed_inputs - relayed == 3
        now_sent = traffic.sent()
        assert now_sent["I"][0] - sent.get("I", (0, 0))[0] == 3
        assert now_sent["U"][0] - sent.get("U", (0, 0))[0] == 3
        # A backlog with one body the per-frame path does not check goes
        # through the decoder, and still arrives whole.
        await bob.send(b"ID" + MARKER + "Ié".encode() + MARKER)
        assert (await alice.receive_inputs("I", 5))[3:] == [b"D", "é".encode()]
        assert traffic.relayed_inputs - relayed == 3


async def test_an_aborted_game_is_saved_as_incomplete(tmp_path):
    async with running_server(replays_directory=str(tmp_path)) as server:
        alice, bob = await _started_match(server, ("005", "005"))
        await alice.send_inputs("AB")
        await bob.receive_inputs("I", 2)
        await alice.send_json({"type": "matchAbort"})
        await bob.receive_until("gameAbort")
        path, replay = await _saved_replay(tmp_path)
    assert replay["incomplete"] is True and "winnerIndex" not in replay
    assert "completed" not in replay and path.name.endswith("-VS-casual.json")


@pytest.mark.parametrize(
    ("data", "bodies"),
    [
        (b"IA" + MARKER + b"IBC" + MARKER, [b"A", b"BC"]),
        (b"IA" + MARKER + b"IB", None),  # the last one not ended yet
        (b"IA" + MARKER + b"I" + MARKER, None),  # an empty input: refused on the full path
        (b"IA" + MARKER + b"J{}" + MARKER, None),  # not only inputs
        (b"IA" + MARKER + b"I" + b"x" * 65 + MARKER, None),  # longer than a frame's inputs
        (b"IA" + MARKER + "Ié".encode() + MARKER, None),  # not ASCII: the decoder checks it
    ],
)
def test_which_backlogs_of_2025_inputs_the_per_frame_path_takes(data, bodies):
    assert _marked_input_bodies(data) == bodies


async def test_messages_sent_during_a_denied_login_are_refused_with_their_reason():
    async with running_server() as server:
        client = connect2025(server)
        await client.connect()
        with structlog.testing.capture_logs() as logs:
            await client.send(
                endmarker_encode(login_message2025("henry", "no such id"))
                + endmarker_encode({"leaderboard_request": True})
            )
            reply = await client.receive_until("login_denied")
            await trio.sleep(0.1)
        assert reply["reason"] == "The user ID provided was not found on this server"
        [refused] = [line for line in logs if line["event"] == "message_refused"]
        assert refused["reason"] == "message_not_valid_in_state"


@pytest.mark.parametrize("length", [40, 4990])
async def test_an_error_report_is_logged_whole_when_short_and_ends_the_connection(length):
    async with running_server(Config(max_json_length=8192)) as server:
        client, _ = await logged_in(server, "ivy")
        report = {"message": "x" * length, "engine_version": "048", "name": "ivy"}
        with structlog.testing.capture_logs() as logs:
            await client.send_json({"error_report": report})
            await client.expect_closed(timeout=5)
        [line] = [line for line in logs if line["event"] == "client_error_report"]
        text = json.dumps(report, separators=(",", ":"))
        assert line["size"] == len(text)
        assert line["report"] == (text if len(text) <= 5000 else None)
        assert (line["report"] is None) == (length == 4990)
