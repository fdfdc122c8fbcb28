"""The 046 lobby as a pure object: every transition, fed commands, checked by what it returns."""

from __future__ import annotations

import json

import pytest

from netplay.accounts import ratings, storage
from netplay.actions import Send, Store
from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import messages as m
from netplay.lobbies.v046 import (
    ACCEPTED,
    PLAYER_TRANSITIONS,
    Lobby046,
    LoginState,
    PlayerState,
    RoomState,
)


def decoded(actions, player_id=None):
    """The JSON payloads (and raw game bytes) sent, optionally to one player only."""
    result = []
    for action in actions:
        if isinstance(action, Send) and (player_id is None or action.player == player_id):
            data = action.data
            result.append(json.loads(data[4:]) if data[:1] == b"J" else data)
    return result


def keys_to(actions, player_id):
    return [set(p) if isinstance(p, dict) else p for p in decoded(actions, player_id)]


def registration(name, **fields):
    return m.Register046(name, m.Selections(**fields), "with my name")


def menu(ready=False, cursor="__Ready", level=5, stage="pa_stages_fire", ranked=False):
    return m.MenuState046(m.Selections(
        cursor=cursor, character="lip", stage=stage, level=level, ranked=ranked,
        wants_ready=ready, ready=ready, loaded=True,
    ))


class Table:
    """A lobby with helpers that play the common steps."""

    def __init__(self, **options):
        self.lobby = Lobby046(seed=7, **options)
        self.now = 0.0

    def join(self, player_id, name):
        self.lobby.connect(player_id)
        return self.lobby.handle(player_id, registration(name), self.now)

    def do(self, player_id, command):
        return self.lobby.handle(player_id, command, self.now)

    def pair(self, asker, accepter, asker_name, accepter_name):
        self.do(asker, m.GameRequest(asker_name, accepter_name))
        return self.do(accepter, m.GameRequest(accepter_name, asker_name))

    def start(self, first, second):
        self.do(first, menu(ready=True))
        return self.do(second, menu(ready=True))


@pytest.fixture
def table():
    return Table()


@pytest.fixture
def room(table):
    """alice (1) asked, bob (2) accepted: bob is player 1."""
    table.join(1, "alice")
    table.join(2, "bob")
    table.pair(1, 2, "alice", "bob")
    return table


def test_every_state_has_a_transition_entry_and_every_command_a_state():
    assert set(PLAYER_TRANSITIONS) == set(PlayerState)
    for states in ACCEPTED.values():
        assert states <= set(PlayerState)


def test_registration_answers_with_the_lobby_at_once(table):
    sends = table.join(1, "alice")
    assert decoded(sends) == [{"unpaired": ["alice"], "spectatable": [], "players": {}}]
    assert table.lobby.players[1].state is PlayerState.LOBBY


def test_registration_is_refused_with_the_reason_and_changes_nothing(table):
    table.lobby.connect(1)
    sends = table.do(1, registration("bad name"))
    assert decoded(sends) == [
        {"choose_another_name": {"reason": "Usernames are limited to alphanumeric and underscores"}}
    ]
    assert table.lobby.players[1].state is PlayerState.UNREGISTERED
    assert not table.lobby.names


def test_connected_names_are_unique_regardless_of_case(table):
    table.join(1, "Alice")
    sends = table.join(2, "alice")
    assert decoded(sends) == [{"choose_another_name": {"used_names": ["alice"]}}]


def test_login_asks_storage_and_answers_with_its_outcome(table):
    table.join(1, "alice")
    (store,) = table.do(1, m.LoginRequest(None))
    assert store == Store(1, storage.Login(None, "alice"))
    assert table.lobby.players[1].login is LoginState.PENDING
    outcome = storage.LoginOutcome(storage.LoginResult.NEW_ID, user_id="123")
    sends = table.lobby.stored(1, store.operation, outcome, table.now)
    assert decoded(sends)[0] == {"login_successful": True, "new_user_id": "123"}
    assert "unpaired" in decoded(sends)[1]
    assert table.lobby.players[1].user_id == "123"
    with pytest.raises(RemoteProtocolError):
        table.do(1, m.LoginRequest(None))


@pytest.mark.parametrize(
    "result, expected",
    [
        (storage.LoginResult.WELCOME_BACK, {"login_successful": True}),
        (
            storage.LoginResult.RENAMED,
            {"login_successful": True, "name_changed": True, "old_name": "old", "new_name": "alice"},
        ),
        (
            storage.LoginResult.NAME_TAKEN,
            {"choose_another_name": {"reason": "That player name is already taken"}},
        ),
        (
            storage.LoginResult.UNKNOWN_ID,
            {"login_denied": True, "reason": "The user_id provided was not found on this server"},
        ),
        (
            storage.LoginResult.UNAVAILABLE,
            {"login_denied": True,
             "reason": "The server cannot check logins right now; please try again later"},
        ),
    ],
)
def test_login_outcomes_render_as_the_client_expects(table, result, expected):
    table.join(1, "alice")
    (store,) = table.do(1, m.LoginRequest("42"))
    outcome = storage.LoginOutcome(result, user_id="42", old_name="old")
    assert decoded(table.lobby.stored(1, store.operation, outcome, 0))[0] == expected


def test_login_without_user_id_is_denied_without_storage(table):
    table.join(1, "alice")
    assert decoded(table.do(1, m.LoginRequest(""))) == [
        {"login_denied": True, "reason": "Client did not send a user_id in the login request"}
    ]


def test_outcome_for_a_player_gone_is_dropped(table):
    table.join(1, "alice")
    (store,) = table.do(1, m.LoginRequest(None))
    table.lobby.disconnect(1)
    outcome = storage.LoginOutcome(storage.LoginResult.NEW_ID, user_id="1")
    assert table.lobby.stored(1, store.operation, outcome, 0) == []


def test_request_is_forwarded_then_mutual_request_creates_room(table):
    table.join(1, "alice")
    table.join(2, "bob")
    sends = table.do(1, m.GameRequest("alice", "bob"))
    assert decoded(sends, 2) == [{"game_request": {"sender": "alice", "receiver": "bob"}}]
    sends = table.do(2, m.GameRequest("bob", "alice"))
    (to_alice,) = decoded(sends, 1)
    (to_bob,) = decoded(sends, 2)
    assert to_bob["your_player_number"] == 1 and to_alice["your_player_number"] == 2
    assert to_alice["a_menu_state"] == to_bob["a_menu_state"]
    room = table.lobby.rooms[1]
    assert room.players[0].name == "bob" and room.state is RoomState.SELECTING
    assert not table.lobby.proposals


@pytest.mark.parametrize(
    "command, reason",
    [
        (m.GameRequest("mallory", "bob"), "sender_not_own_name"),
        (m.GameRequest("alice", "nobody"), "receiver_unknown"),
        (m.GameRequest("alice", "alice"), "request_to_self"),
    ],
)
def test_bad_requests_are_refused(table, command, reason):
    table.join(1, "alice")
    table.join(2, "bob")
    with pytest.raises(RemoteProtocolError) as error:
        table.do(1, command)
    assert error.value.reason == reason


def test_request_to_a_player_in_a_room_is_refused(room):
    room.join(3, "carol")
    with pytest.raises(RemoteProtocolError) as error:
        room.do(3, m.GameRequest("carol", "bob"))
    assert error.value.reason == "receiver_not_in_lobby"


def test_menu_state_goes_to_opponent_and_to_spectators_with_player_number(room):
    room.join(3, "carol")
    room.do(3, m.SpectateRequest("carol", 1))
    sends = room.do(1, menu(cursor="__Level"))
    assert decoded(sends, 2)[0]["menu_state"]["cursor"] == "__Level"
    (to_spectator,) = decoded(sends, 3)
    assert to_spectator["player_number"] == 2 and "menu_state" in to_spectator


def test_mode_cursor_is_not_shown_to_a_client_without_login_reply(room):
    sends = room.do(1, menu(cursor="__Mode"))
    assert decoded(sends, 2)[0]["menu_state"]["cursor"] == "__Ready"
    room.lobby.players[2].login_answered = True
    sends = room.do(1, menu(cursor="__Mode"))
    assert decoded(sends, 2)[0]["menu_state"]["cursor"] == "__Mode"


def test_both_ready_start_a_match_with_one_seed(room):
    sends = room.start(1, 2)
    (to_alice,) = decoded(sends, 1)
    (to_bob,) = decoded(sends, 2)
    assert to_alice["seed"] == to_bob["seed"]
    assert to_bob["player_settings"]["player_number"] == 1
    assert to_alice["player_settings"] == to_bob["opponent_settings"]
    assert room.lobby.rooms[1].state is RoomState.PLAYING
    assert {p.state for p in room.lobby.players.values()} == {PlayerState.PLAYING}


def test_same_seed_reproduces_match_seeds():
    seeds = []
    for _ in range(2):
        table = Table()
        table.join(1, "alice")
        table.join(2, "bob")
        table.pair(1, 2, "alice", "bob")
        seeds.append(decoded(table.start(1, 2), 1)[0]["seed"])
    assert seeds[0] == seeds[1]


def test_wanting_ranked_is_answered_with_the_reasons_to_the_room(room):
    sends = room.do(1, menu(ranked=True))
    assert {"ranked_match_denied": True, "reasons": [
        "Neither player has finished enough placement matches against already ranked players",
        "bob didn't log in", "bob doesn't want ranked", "alice didn't log in",
    ]} in decoded(sends, 1)


def logged_in(table, player_id, user_id, standing=None):
    player = table.lobby.players[player_id]
    player.login, player.user_id = LoginState.LOGGED_IN, user_id
    player.standing = standing or ratings.Standing()


def ranked_room():
    table = Table(placement_rule=ratings.PlacementRule.RELAXED)
    table.join(1, "alice")
    table.join(2, "bob")
    logged_in(table, 1, "11")
    logged_in(table, 2, "22")
    table.pair(1, 2, "alice", "bob")
    return table


def test_ranked_approval_and_a_rated_match_waits_for_its_new_ratings():
    table = ranked_room()
    sends = table.do(1, menu(ranked=True))
    assert {"ranked_match_denied": True, "reasons": ["bob doesn't want ranked"]} in decoded(sends, 1)
    sends = table.do(2, menu(ranked=True))
    assert {"ranked_match_approved": True} in decoded(sends, 1)
    table.do(1, menu(ranked=True, ready=True))
    start = decoded(table.do(2, menu(ranked=True, ready=True)), 1)[-1]
    assert start["ranked"] is True and start["player_settings"]["rating"] == 1500
    table.lobby.handle_input(2, b"IA")
    table.do(1, m.GameOverClaim(1))
    sends = table.do(2, m.GameOverClaim(1))
    (store,) = [action for action in sends if isinstance(action, Store)]
    finish = store.operation
    assert finish.match.ranked and finish.match.winner == 1
    assert finish.match.players[0].user_id == "22" and finish.match.players[0].inputs == "A"
    assert finish.match.win_counts == (0, 0)  # at the start: playback adds the result
    assert all("character_select" not in p for p in decoded(sends) if isinstance(p, dict))
    before = (ratings.Standing(), ratings.Standing())
    after = ratings.rate_game(*before, winner=1)
    outcome = storage.RecordGameOutcome(
        storage.RecordResult.RECORDED, rated=True, before=before, after=after,
    )
    sends = table.lobby.stored(2, finish, outcome, 0)
    select = decoded(sends, 2)[0]
    assert select["character_select"] is True
    assert select["ratings"][0]["placement_match_progress"] == "1/30 placement matches played."


def test_casual_match_goes_back_to_select_at_once_and_is_stored():
    table = ranked_room()
    table.start(1, 2)
    table.do(1, m.GameOverClaim(2))
    sends = table.do(2, m.GameOverClaim(2))
    assert any(isinstance(a, Store) and not a.operation.match.ranked for a in sends)
    assert "character_select" in decoded(sends, 1)[-1]


def test_abandoned_match_is_stored_as_a_disconnect():
    table = ranked_room()
    table.start(1, 2)
    sends = table.lobby.disconnect(1)
    (store,) = [action for action in sends if isinstance(action, Store)]
    assert store.operation.match.decided_by.value == "disconnect"
    assert store.operation.match.winner == 0


def test_lobby_lists_ratings_of_placed_players():
    table = ranked_room()
    placed = ratings.Standing(rating=1612.4, placement_done=True, ranked_games_played=31)
    table.lobby.players[1].standing = placed
    assert table.lobby.lobby_state()["players"] == {
        "alice": {"rating": 1612, "ranked_games_played": 31}
    }


def test_leaderboard_request_asks_storage_and_marks_the_asker():
    table = ranked_room()
    (store,) = table.do(1, m.LeaderboardRequest())
    assert store.operation == storage.Leaderboard("11", 100)
    entries = (ratings.LeaderboardEntry(1, "11", "alice", 1700.0, 40, 30),)
    sends = table.lobby.stored(1, store.operation, storage.LeaderboardOutcome(entries), 0)
    assert decoded(sends) == [
        {"leaderboard_report": [{"user_name": "alice", "rating": 1700, "is_you": True}]}
    ]


def test_inputs_go_to_the_opponent_and_to_spectators_as_u_and_i(room):
    room.join(3, "carol")
    room.do(3, m.SpectateRequest("carol", 1))
    room.start(1, 2)
    assert decoded(room.lobby.handle_input(2, b"IA")) == [b"IA", b"UA"]  # bob is player 1
    assert decoded(room.lobby.handle_input(1, b"Ig")) == [b"Ig", b"Ig"]
    assert bytes(room.lobby.rooms[1].match.inputs[0]) == b"A"


def test_inputs_outside_a_match_or_outside_the_alphabet_are_refused(room):
    with pytest.raises(RemoteProtocolError):
        room.lobby.handle_input(1, b"IA")
    room.start(1, 2)
    with pytest.raises(RemoteProtocolError) as error:
        room.lobby.handle_input(1, b"I\x00")
    assert error.value.reason == "input_invalid"


def test_agreeing_reports_count_a_win_and_return_everyone_to_select(room):
    room.join(3, "carol")
    room.do(3, m.SpectateRequest("carol", 1))
    room.start(1, 2)
    assert room.do(1, m.GameOverClaim(2)) == []
    assert room.do(3, m.GameOverClaim(1)) == []  # a spectator's report is ignored
    sends = room.do(2, m.GameOverClaim(2))
    for player in (1, 2, 3):
        got = decoded(sends, player)
        assert got[0] == {"win_counts": [0, 1]}
        assert got[1]["character_select"] is True
    assert "your_player_number" in decoded(sends, 1)[1]
    assert "your_player_number" not in decoded(sends, 3)[1]
    assert room.lobby.rooms[1].state is RoomState.SELECTING


def test_disagreement_is_a_draw_without_win_counts(room):
    room.start(1, 2)
    room.do(1, m.GameOverClaim(1))
    sends = room.do(2, m.GameOverClaim(2))
    assert all("win_counts" not in payload for payload in decoded(sends))
    assert room.lobby.rooms[1].win_counts == [0, 0]


def test_single_report_decides_after_the_timeout():
    table = Table(game_over_timeout=4)
    table.join(1, "alice")
    table.join(2, "bob")
    table.pair(1, 2, "alice", "bob")
    table.start(1, 2)
    table.now = 10
    table.do(1, m.GameOverClaim(1))
    assert table.lobby.tick(13.9) == []
    sends = table.lobby.tick(14)
    assert decoded(sends, 2)[0] == {"win_counts": [1, 0]}
    assert table.lobby.tick(20) == []


def test_repeated_report_is_refused(room):
    room.start(1, 2)
    room.do(1, m.GameOverClaim(1))
    with pytest.raises(RemoteProtocolError):
        room.do(1, m.GameOverClaim(2))


def test_spectator_joining_mid_match_gets_everything_so_far(room):
    start = decoded(room.start(1, 2), 2)[0]
    for symbol in b"AAg":
        room.lobby.handle_input(2, bytes((73, symbol)))
    room.join(3, "carol")
    sends = room.do(3, m.SpectateRequest("carol", 1))
    granted = decoded(sends, 3)[0]
    vs = granted["replay_of_match_so_far"]["vs"]
    assert vs["seed"] == start["seed"] and vs["in_buf"] == "A2g1" and vs["I"] == ""
    assert vs["P1_name"] == "bob" and vs["P2_name"] == "alice"
    assert decoded(sends, 3)[1] == {"spectators": ["carol"]}
    assert room.lobby.players[3].state is PlayerState.SPECTATING


def test_spectate_request_for_unknown_room_is_refused(table):
    table.join(1, "carol")
    with pytest.raises(RemoteProtocolError) as error:
        table.do(1, m.SpectateRequest("carol", 9))
    assert error.value.reason == "room_unknown"


def test_player_leaving_closes_room_for_everyone(room):
    room.join(3, "carol")
    room.do(3, m.SpectateRequest("carol", 1))
    sends = room.do(1, m.LeaveRoom())
    for player in (1, 2, 3):
        got = decoded(sends, player)
        assert got[0] == {"leave_room": True}
        assert "unpaired" in got[1]
    assert not room.lobby.rooms
    assert {p.state for p in room.lobby.players.values()} == {PlayerState.LOBBY}


def test_spectator_leaving_gets_the_lobby_and_the_room_a_new_list(room):
    room.join(3, "carol")
    room.do(3, m.SpectateRequest("carol", 1))
    sends = room.do(3, m.LeaveRoom())
    assert decoded(sends, 1) == [{"spectators": []}]
    assert "leave_room" not in decoded(sends, 3)[0] and "unpaired" in decoded(sends, 3)[0]


def test_disconnect_in_every_state_leaves_a_consistent_lobby(room):
    room.join(3, "carol")
    room.do(3, m.SpectateRequest("carol", 1))
    room.join(4, "dave")
    assert decoded(room.lobby.disconnect(3), 1) == [{"spectators": []}]
    room.start(1, 2)
    sends = room.lobby.disconnect(2)
    assert decoded(sends, 1)[0] == {"leave_room": True}
    room.lobby.disconnect(4)
    room.lobby.disconnect(1)
    assert not room.lobby.players and not room.lobby.names and not room.lobby.rooms


def test_taunts_are_rate_limited_to_four_in_ten_seconds(room):
    for _ in range(4):
        assert decoded(room.do(1, m.Taunt("taunt_ups", 1)), 2)
    with pytest.raises(RemoteProtocolError):
        room.do(1, m.Taunt("taunt_ups", 1))
    room.now = 10.5
    assert decoded(room.do(1, m.Taunt("taunt_downs", 3)), 2) == [
        {"taunt": True, "type": "taunt_downs", "index": 3, "player_number": 2}
    ]


def test_commands_in_the_wrong_state_are_refused_before_anything_changes(table):
    table.lobby.connect(1)
    for command in (menu(), m.GameOverClaim(1), m.LeaveRoom(), m.GameRequest("a", "b")):
        with pytest.raises(RemoteProtocolError) as error:
            table.do(1, command)
        assert error.value.reason == "message_not_valid_in_state"
    with pytest.raises(LocalProtocolError):
        table.do(1, m.Logout())


def test_snapshots_reach_lobby_players_once_per_change(room):
    room.join(3, "carol")
    room.join(4, "dave")
    sends = room.lobby.snapshots()
    # dave registered after carol's list was sent: only carol is behind.
    assert [send.player for send in sends] == [3]
    assert room.lobby.snapshots() == []
    assert not room.lobby.snapshot_due


def test_a_join_storm_gets_the_list_as_last_encoded_and_the_broadcast_the_latest(table):
    for number in range(1, 300):
        table.join(number, f"p{number}")
    first_list = decoded(table.join(300, "late"), 300)[0]
    assert "late" not in first_list["unpaired"]  # encoded a moment ago, for someone else
    assert 300 in [send.player for send in table.lobby.snapshots()]
    table.now = 1.0  # long after: a fresh list again
    assert "later" in decoded(table.join(301, "later"), 301)[0]["unpaired"]


def test_a_small_lobby_always_answers_a_join_with_the_latest_list(table):
    for number in range(1, 20):
        table.join(number, f"p{number}")
    assert "last" in decoded(table.join(20, "last"), 20)[0]["unpaired"]
