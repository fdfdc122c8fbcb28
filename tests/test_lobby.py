"""The lobby as a pure object: every transition, and every refused one."""

from __future__ import annotations

import pytest
import structlog.testing
from helpers import assert_rooms_and_requests_consistent

from netplay.actions import Send
from netplay.dialects.classic import Dialect, parse_command
from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.length3 import MAX_JSON_LENGTH_ON_WIRE, Decoder, Direction
from netplay.lobbies.classic import (
    HIGH_LEVEL,
    Lobby,
    Player,
    PlayerState,
    RoomState,
    shares_starting_board,
)
from netplay.lobbies.panels import (
    STARTING_BOARD_ROWS,
    garbage_rule_violations,
    play_rule_violations,
    starting_board_violations,
)

CLIENTS = Dialect.CLIENTS
DOCUMENT = Dialect.DOCUMENT
DEFAULT_VERSION = {CLIENTS: 19, DOCUMENT: 139}
BOARD_DIGITS = STARTING_BOARD_ROWS * 6

UNREGISTERED = PlayerState.UNREGISTERED
LOBBY = PlayerState.LOBBY
ROOM = PlayerState.ROOM
PLAYING = PlayerState.PLAYING
GAME_OVER = PlayerState.GAME_OVER


# ---------------------------------------------------------------------------
# Helpers


def decode(data: bytes) -> object:
    """The one message in ``data``: a JSON frame's payload, or the frame itself."""
    decoder = Decoder(Direction.SERVER_TO_CLIENT, max_json_length=MAX_JSON_LENGTH_ON_WIRE)
    decoder.receive_data(data)
    frames = decoder.frames()
    assert len(frames) == 1, frames
    assert decoder.buffered == 0
    return frames[0].payload if isinstance(frames[0], m.Json) else frames[0]


def delivered(sends: list[Send]) -> list[tuple[int, object]]:
    assert all(isinstance(send, Send) for send in sends)
    return [(send.player, decode(send.data)) for send in sends]


def menu(cursor="level", ready=False, character="lip", level=5) -> m.MenuState:
    return m.MenuState(cursor=cursor, ready=ready, character=character, level=level)


def fingerprint(lobby: Lobby) -> object:
    """Everything observable about the lobby's state, to compare before and after."""
    return (
        {
            pid: (p.state, p.name, p.menu, p.room.id if p.room else None, p.dialect,
                  p.seen_unpaired, p.seen_paired)
            for pid, p in lobby.players.items()
        },
        {name: p.id for name, p in lobby.names.items()},
        {
            rid: (r.state, tuple(p.id for p in r.players), id(r.match),
                  tuple(r.match.game_over) if r.match else None)
            for rid, r in lobby.rooms.items()
        },
        frozenset(lobby.proposals),
        lobby.unpaired_version,
        lobby.paired_version,
        lobby.snapshot_due,
    )


def assert_consistent(lobby: Lobby) -> None:
    """Players, names, rooms and proposals agree with each other."""
    registered = {p.name: p for p in lobby.players.values() if p.state is not UNREGISTERED}
    assert lobby.names == registered
    for player in lobby.players.values():
        if player.state in (ROOM, PLAYING, GAME_OVER):
            assert player.room is not None
            assert lobby.rooms[player.room.id] is player.room
            assert player in player.room.players
        else:
            assert player.room is None
    assert_rooms_and_requests_consistent(lobby)
    # Two crossing requests make a room at once, so they never both stand.
    for sender, receiver in lobby.proposals:
        assert (receiver, sender) not in lobby.proposals


class World:
    """A lobby and a few players, driven by commands as the core would."""

    def __init__(self, seed: int = 7, **lobby_options) -> None:
        self.lobby = Lobby(seed=seed, **lobby_options)
        self._next_id = 1

    def connect(self, dialect: Dialect = CLIENTS, version: int | None = None) -> int:
        player_id = self._next_id
        self._next_id += 1
        self.lobby.connect(player_id, dialect, version or DEFAULT_VERSION[dialect])
        return player_id

    def join(self, name: str, dialect: Dialect = CLIENTS, version: int | None = None,
             level: int = 5, character: str = "lip") -> int:
        player_id = self.connect(dialect, version)
        assert self.do(player_id, m.Register(name, level, character)) == []
        return player_id

    def do(self, player_id: int, message: object) -> list[tuple[int, object]]:
        sends = self.lobby.handle(player_id, message)
        assert_consistent(self.lobby)
        return delivered(sends)

    def json(self, player_id: int, payload: dict) -> list[tuple[int, object]]:
        return self.do(player_id, parse_command(payload))

    def name(self, player_id: int) -> str:
        return self.lobby.players[player_id].name

    def player(self, player_id: int) -> Player:
        return self.lobby.players[player_id]

    def state(self, player_id: int) -> PlayerState:
        return self.lobby.players[player_id].state

    def request(self, sender: int, receiver: int) -> list[tuple[int, object]]:
        return self.do(sender, m.GameRequest(self.name(sender), self.name(receiver)))

    def pair(self, first: int, second: int) -> list[tuple[int, object]]:
        self.request(first, second)
        return self.request(second, first)

    def ready(self, player_id: int, **changes) -> list[tuple[int, object]]:
        current = self.player(player_id).menu
        fields = {"character": current.character, "level": current.level,
                  "cursor": "ready", "ready": True, **changes}
        return self.do(player_id, m.MenuState(**fields))

    def start(self, first: int, second: int) -> list[tuple[int, object]]:
        if self.state(first) is LOBBY:
            self.pair(first, second)
        self.ready(first)
        return self.ready(second)

    def panels(self, player_id: int, request: bytes) -> list[tuple[int, object]]:
        assert len(request) == 8
        message = m.PanelRequest(request[:1] == b"Q", chr(request[1]), request[2:].decode())
        return self.do(player_id, message)

    def disconnect(self, player_id: int) -> list[tuple[int, object]]:
        sends = self.lobby.disconnect(player_id)
        assert_consistent(self.lobby)
        return delivered(sends)

    def snapshots(self) -> dict[int, object]:
        sends = self.lobby.snapshots()
        recipients = [send.player for send in sends]
        assert len(recipients) == len(set(recipients)), "one snapshot per player"
        assert not self.lobby.snapshot_due
        return dict(delivered(sends))


def refused(world: World, player_id: int, message: object, reason: str) -> RemoteProtocolError:
    """Assert the message is refused for ``reason`` and changes nothing."""
    before = fingerprint(world.lobby)
    with pytest.raises(RemoteProtocolError) as caught:
        world.lobby.handle(player_id, message)
    error = caught.value
    assert error.reason == reason
    assert not error.fatal
    player = world.player(player_id)
    assert error.context["player"] == player_id
    assert error.context["name"] == player.name
    assert error.context["state"] == player.state.value
    assert error.context["message"] == type(message).__name__
    assert fingerprint(world.lobby) == before
    assert_consistent(world.lobby)
    return error


@pytest.fixture
def logs():
    with structlog.testing.capture_logs() as captured:
        yield captured


def lines(captured: list[dict], event: str) -> list[dict]:
    return [line for line in captured if line["event"] == event]


# ---------------------------------------------------------------------------
# Registration


def test_registration_is_silent_and_puts_the_player_in_the_lobby():
    world = World()
    alice = world.connect()
    assert world.state(alice) is UNREGISTERED
    assert not world.lobby.snapshot_due
    assert world.do(alice, m.Register("alice", 7, "thiana")) == []
    assert world.state(alice) is LOBBY
    assert world.lobby.names == {"alice": world.player(alice)}
    assert world.player(alice).menu == menu(cursor="level", ready=False, character="thiana",
                                            level=7)
    assert world.lobby.snapshot_due


def test_registered_player_appears_in_the_next_lobby_snapshot():
    world = World()
    alice = world.join("alice")
    assert world.snapshots() == {alice: {"unpaired": ["alice"]}}


def test_taken_name_gets_choose_another_name_with_every_name_in_use_and_changes_nothing():
    world = World()
    world.join("bob")
    world.join("alice")
    carol, dave = world.join("carol"), world.join("dave")
    world.pair(carol, dave)  # names of players in rooms are in use too
    newcomer = world.connect()
    before = fingerprint(world.lobby)
    answer = world.do(newcomer, m.Register("alice", 3, "lip"))
    assert answer == [
        (newcomer, {"choose_another_name": {"used_names": ["alice", "bob", "carol", "dave"]}})
    ]
    assert world.state(newcomer) is UNREGISTERED
    assert world.player(newcomer).name is None
    assert fingerprint(world.lobby) == before


def test_after_choose_another_name_a_retry_on_the_same_connection_registers():
    world = World()
    world.join("alice")
    newcomer = world.connect()
    assert world.do(newcomer, m.Register("alice", 3, "lip"))[0][1]["choose_another_name"]
    assert world.do(newcomer, m.Register("alice2", 3, "lip")) == []
    assert world.state(newcomer) is LOBBY
    assert sorted(world.lobby.names) == ["alice", "alice2"]


def test_names_are_compared_exactly():
    world = World()
    world.join("alice")
    assert world.do(world.connect(), m.Register("Alice", 1, "lip")) == []
    assert world.do(world.connect(), m.Register("alice ", 1, "lip")) == []
    assert sorted(world.lobby.names) == ["Alice", "alice", "alice "]


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "line\nbreak", "\u200b", "x" * 33])
def test_invalid_name_gets_choose_another_name_and_stays_unregistered(name):
    world = World()
    world.join("bob")
    newcomer = world.connect()
    before = fingerprint(world.lobby)
    assert world.do(newcomer, m.Register(name, 3, "lip")) == [
        (newcomer, {"choose_another_name": {"used_names": ["bob"]}})
    ]
    assert world.state(newcomer) is UNREGISTERED
    assert fingerprint(world.lobby) == before


def test_max_name_length_is_the_lobbys_setting():
    world = World(max_name_length=4)
    player = world.connect()
    assert world.do(player, m.Register("alice", 3, "lip"))[0][1] == {
        "choose_another_name": {"used_names": []}
    }
    assert world.do(player, m.Register("alic", 3, "lip")) == []


def test_refused_name_is_logged_with_its_problem(logs):
    world = World()
    world.join("alice")
    world.do(world.connect(), m.Register("alice", 3, "lip"))
    world.do(world.connect(), m.Register("", 3, "lip"))
    assert [line["problem"] for line in lines(logs, "name_refused")] == ["in_use", "empty"]


def test_registration_through_the_dialect_parser_accepts_a_digit_string_level():
    world = World()
    dave = world.connect(DOCUMENT)
    assert world.json(dave, {"name": "dave", "character": "Neris", "level": "8"}) == []
    assert world.player(dave).menu.level == 8


# ---------------------------------------------------------------------------
# Lobby snapshots


def test_many_changes_are_coalesced_into_one_snapshot_per_lobby_player():
    world = World()
    carol, alice, bob = world.join("carol"), world.join("alice"), world.join("bob")
    dave = world.join("dave", DOCUMENT)
    world.disconnect(world.join("eve"))
    snapshots = world.snapshots()
    names = ["alice", "bob", "carol", "dave"]
    assert snapshots == {
        alice: {"unpaired": names},
        bob: {"unpaired": names},
        carol: {"unpaired": names},
        dave: {"lobby_state": {"unpaired": names, "paired": []}},
    }
    assert world.snapshots() == {}


def test_players_who_saw_the_latest_lobby_get_no_snapshot():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.snapshots()
    assert not world.lobby.snapshot_due
    assert world.snapshots() == {}
    carol = world.join("carol")
    assert set(world.snapshots()) == {alice, bob, carol}


def test_a_held_back_player_stays_due_and_gets_the_latest_list_next_time():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    sends = world.lobby.snapshots(may_send=lambda player: player != bob)
    assert [send.player for send in sends] == [alice]
    assert world.lobby.snapshot_due
    carol = world.join("carol")
    assert world.snapshots() == {
        player: {"unpaired": ["alice", "bob", "carol"]} for player in (alice, bob, carol)
    }


def test_unregistered_players_get_no_snapshot():
    world = World()
    alice = world.join("alice")
    world.connect()
    world.connect(DOCUMENT)
    assert set(world.snapshots()) == {alice}


def test_players_in_rooms_get_no_snapshot():
    world = World()
    alice, bob, carol = world.join("alice"), world.join("bob"), world.join("carol")
    world.snapshots()
    world.pair(alice, bob)
    assert world.snapshots() == {carol: {"unpaired": ["carol"]}}
    world.start(alice, bob)
    world.join("dave")
    assert alice not in world.snapshots()


def test_only_paired_changes_reach_document_players_but_not_clients_players():
    world = World()
    alice, bob = world.join("alice", level=5, character="lip"), world.join("bob", level=3)
    carol, dave = world.join("carol"), world.join("dave", DOCUMENT)
    world.pair(alice, bob)
    world.snapshots()
    world.do(alice, menu(cursor="level", level=8, character="lip"))
    assert world.lobby.snapshot_due
    assert world.snapshots() == {
        dave: {
            "lobby_state": {
                "unpaired": ["carol", "dave"],
                "paired": [{
                    "players": [
                        {"name": "alice", "level": 8, "character": "lip"},
                        {"name": "bob", "level": 3, "character": "lip"},
                    ],
                    "playing": False,
                }],
            }
        }
    }
    assert carol not in world.lobby.snapshots()


def test_moving_the_cursor_alone_changes_no_lobby_list():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.join("dave", DOCUMENT)
    world.pair(alice, bob)
    world.snapshots()
    world.do(alice, menu(cursor="character"))
    assert not world.lobby.snapshot_due


def test_document_lobby_shows_rooms_as_playing_once_the_match_starts():
    world = World()
    alice, bob, dave = world.join("alice"), world.join("bob"), world.join("dave", DOCUMENT)
    world.start(alice, bob)
    (snapshot,) = world.snapshots().values()
    assert snapshot["lobby_state"]["paired"][0]["playing"] is True
    assert snapshot["lobby_state"]["unpaired"] == ["dave"]


def test_snapshots_in_one_dialect_are_the_same_bytes():
    world = World()
    for name in ("alice", "bob"):
        world.join(name)
    for name in ("dave", "erin"):
        world.join(name, DOCUMENT)
    by_dialect: dict[Dialect, set[bytes]] = {CLIENTS: set(), DOCUMENT: set()}
    for send in world.lobby.snapshots():
        by_dialect[world.player(send.player).dialect].add(send.data)
    assert len(by_dialect[CLIENTS]) == len(by_dialect[DOCUMENT]) == 1


# ---------------------------------------------------------------------------
# Game requests


def test_first_request_is_forwarded_once_to_the_receiver_unchanged():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.snapshots()
    assert world.request(alice, bob) == [
        (bob, {"game_request": {"sender": "alice", "receiver": "bob"}})
    ]
    assert world.lobby.proposals == {(alice, bob)}
    assert world.state(alice) is world.state(bob) is LOBBY
    assert not world.lobby.snapshot_due


def test_request_to_a_document_player_is_forwarded_as_game_request_to_client():
    world = World()
    alice, dave = world.join("alice"), world.join("dave", DOCUMENT)
    assert world.request(alice, dave) == [
        (dave, {"game_request_to_client": {"sender": "alice", "receiver": "dave"}})
    ]


def test_repeated_request_is_refused():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.request(alice, bob)
    refused(world, alice, m.GameRequest("alice", "bob"), "request_repeated")
    assert world.lobby.proposals == {(alice, bob)}


def test_request_to_oneself_is_refused():
    world = World()
    alice = world.join("alice")
    refused(world, alice, m.GameRequest("alice", "alice"), "request_to_self")
    assert world.lobby.rooms == {}


def test_request_to_an_unknown_name_is_refused():
    world = World()
    alice = world.join("alice")
    world.connect()  # connected, but nameless
    refused(world, alice, m.GameRequest("alice", "nobody"), "receiver_unknown")


def test_request_to_a_player_in_a_room_is_refused():
    world = World()
    alice, bob, carol = world.join("alice"), world.join("bob"), world.join("carol")
    world.pair(alice, bob)
    error = refused(world, carol, m.GameRequest("carol", "alice"), "receiver_not_in_lobby")
    assert error.context["receiver_state"] == "room"


def test_request_whose_sender_is_not_the_requesters_name_is_refused():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.join("carol")
    refused(world, alice, m.GameRequest("carol", "bob"), "sender_not_own_name")
    refused(world, alice, m.GameRequest("bob", "alice"), "sender_not_own_name")


def test_mutual_requests_create_one_room_and_tell_both_the_others_menu_state():
    world = World()
    alice = world.join("alice", level=5, character="lip")
    bob = world.join("bob", level=9, character="thiana")
    world.request(alice, bob)
    answer = world.request(bob, alice)
    assert sorted(answer, key=lambda sent: sent[0]) == [
        (alice, {"create_room": True, "opponent": "bob",
                 "menu_state": {"cursor": "level", "ready": False, "character": "thiana",
                                "level": 9}}),
        (bob, {"create_room": True, "opponent": "alice",
               "menu_state": {"cursor": "level", "ready": False, "character": "lip",
                              "level": 5}}),
    ]
    assert world.state(alice) is world.state(bob) is ROOM
    (room,) = world.lobby.rooms.values()
    assert set(room.players) == {world.player(alice), world.player(bob)}
    assert room.state is RoomState.SELECTING
    assert world.lobby.proposals == set()
    assert world.lobby.snapshot_due


def test_room_creation_is_logged_with_both_names(logs):
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.pair(alice, bob)
    (line,) = lines(logs, "room_created")
    assert {line["a"], line["b"]} == {"alice", "bob"}


def test_a_new_room_resets_cursor_to_level_and_ready_to_false():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.pair(alice, bob)
    world.ready(alice, cursor="ready")
    world.do(alice, m.LeaveRoom())
    assert world.player(alice).menu.ready is True  # kept until the next room
    answer = dict(world.pair(alice, bob))
    assert answer[bob]["menu_state"]["cursor"] == "level"
    assert answer[bob]["menu_state"]["ready"] is False
    assert world.player(alice).menu.ready is False


def test_players_of_each_dialect_pair_through_their_own_messages():
    world = World()
    alice, dave = world.join("alice"), world.join("dave", DOCUMENT, level=8, character="ruby")
    assert world.json(alice, {"game_request": {"sender": "alice", "receiver": "dave"}}) == [
        (dave, {"game_request_to_client": {"sender": "alice", "receiver": "dave"}})
    ]
    answer = dict(world.json(dave, {"game_request_to_server": {"sender": "dave",
                                                                "reciver": "alice"}}))
    assert answer[alice]["opponent"] == "dave"
    assert answer[alice]["menu_state"] == {"cursor": "level", "ready": False,
                                           "character": "ruby", "level": 8}
    assert answer[dave]["opponent"] == "alice"
    assert world.state(alice) is world.state(dave) is ROOM


def test_pairing_withdraws_every_pending_request_of_both_players():
    world = World()
    alice, bob, carol, dave = (world.join(n) for n in ("alice", "bob", "carol", "dave"))
    world.request(carol, alice)
    world.request(alice, dave)
    world.request(bob, carol)
    world.request(dave, carol)
    world.pair(alice, bob)
    assert world.lobby.proposals == {(dave, carol)}
    refused(world, carol, m.GameRequest("carol", "alice"), "receiver_not_in_lobby")
    # carol's old request to alice is gone: when both are back, a request starts afresh.
    world.do(alice, m.LeaveRoom())
    assert world.request(carol, alice) == [
        (alice, {"game_request": {"sender": "carol", "receiver": "alice"}})
    ]
    assert world.state(alice) is LOBBY


# ---------------------------------------------------------------------------
# Room: character select


def test_menu_state_is_stored_and_forwarded_unchanged_to_the_opponent():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.pair(alice, bob)
    state = menu(cursor="character", ready=False, character="Lip", level=6)
    assert world.do(alice, state) == [
        (bob, {"menu_state": {"cursor": "character", "ready": False, "character": "Lip",
                              "level": 6}})
    ]
    assert world.player(alice).menu == state


def test_one_ready_player_is_forwarded_and_no_match_starts():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.pair(alice, bob)
    assert world.ready(alice) == [(bob, {"menu_state": menu("ready", True).as_json()})]
    assert world.ready(alice, ready=False)[0][1]["menu_state"]["ready"] is False
    assert world.ready(bob)[0][0] == alice  # alice withdrew: still forwarded, no match
    assert world.state(alice) is world.state(bob) is ROOM


def test_both_ready_starts_the_match_with_swapped_settings_and_no_menu_state():
    world = World()
    alice = world.join("alice", level=5, character="lip")
    bob = world.join("bob", level=9, character="thiana")
    world.pair(alice, bob)
    world.ready(alice, level=6)
    answer = world.ready(bob, character="ruby")
    assert sorted(answer, key=lambda sent: sent[0]) == [
        (alice, {"match_start": True,
                 "player_settings": {"character": "lip", "level": 6},
                 "opponent_settings": {"character": "ruby", "level": 9}}),
        (bob, {"match_start": True,
               "player_settings": {"character": "ruby", "level": 9},
               "opponent_settings": {"character": "lip", "level": 6}}),
    ]
    assert world.state(alice) is world.state(bob) is PLAYING
    (room,) = world.lobby.rooms.values()
    assert room.state is RoomState.PLAYING
    assert room.match is not None


def test_level_pick_is_relayed_to_the_opponent_in_a_room_and_in_a_match():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.pair(alice, bob)
    assert world.do(alice, m.LevelPick(b"L5")) == [(bob, m.LevelPick(b"L5"))]
    world.start(alice, bob)
    assert world.do(bob, m.LevelPick(b"L0")) == [(alice, m.LevelPick(b"L0"))]


# ---------------------------------------------------------------------------
# Match


@pytest.fixture
def playing() -> tuple[World, int, int]:
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.start(alice, bob)
    return world, alice, bob


def test_play_panels_go_to_the_requester_as_p_and_the_opponent_as_o(playing):
    world, alice, bob = playing
    ((to_alice, mine), (to_bob, theirs)) = world.panels(alice, b"P5000000")
    assert (to_alice, to_bob) == (alice, bob)
    assert mine.letter == "P" and theirs.letter == "O"
    assert mine.digits == theirs.digits
    assert play_rule_violations("000000", mine.digits, 5) == []
    assert starting_board_violations(mine.digits) == []


def test_garbage_panels_go_to_the_requester_as_q_and_the_opponent_as_r(playing):
    world, alice, bob = playing
    ((to_bob, mine), (to_alice, theirs)) = world.panels(bob, b"Q6123456")
    assert (to_bob, to_alice) == (bob, alice)
    assert (mine.letter, theirs.letter) == ("Q", "R")
    assert mine.digits == theirs.digits
    assert garbage_rule_violations("123456", mine.digits, 6) == []


def test_later_play_panels_rest_on_the_row_the_client_sent(playing):
    world, alice, _ = playing
    world.panels(alice, b"P5000000")
    ((_, reply), _) = world.panels(alice, b"P5123451")
    assert play_rule_violations("123451", reply.digits, 5) == []
    assert "0" not in reply.digits


@pytest.mark.parametrize("ncolors", ["0", "1", "8", "9", "?", "a", " ", "\xff"])
def test_panel_request_with_a_bad_colour_count_is_refused(playing, ncolors):
    world, alice, _ = playing
    for garbage in (False, True):
        error = refused(world, alice, m.PanelRequest(garbage, ncolors, "000000"),
                        "panel_colors_invalid")
        assert error.context["ncolors"] == ncolors


@pytest.mark.parametrize("top_row", ["00000a", "12345", "1234567", "", "12 456", "\xb2" * 6])
def test_panel_request_with_a_bad_top_row_is_refused(playing, top_row):
    world, alice, _ = playing
    for garbage in (False, True):
        refused(world, alice, m.PanelRequest(garbage, "5", top_row), "panel_row_invalid")


def test_garbage_request_no_panel_can_satisfy_is_refused_not_looped(playing):
    world, alice, _ = playing
    # With two colours, column 1 can be neither 1 (below) nor 2 (its left neighbour).
    with pytest.raises(RemoteProtocolError) as caught:
        world.lobby.handle(alice, m.PanelRequest(True, "2", "112233"))
    assert caught.value.reason == "panel_rules_unsatisfiable"
    assert world.state(alice) is PLAYING


def test_inputs_go_to_the_opponent_only(playing):
    world, alice, bob = playing
    assert world.lobby.input_target(alice) == bob
    assert world.lobby.input_target(bob) == alice
    assert world.do(alice, m.Input(b"IA")) == [(bob, m.Input(b"IA"))]
    assert world.do(bob, m.Input(b"I/")) == [(alice, m.Input(b"I/"))]


def test_nobody_receives_inputs_outside_a_match():
    world = World()
    alice, bob, carol = world.join("alice"), world.join("bob"), world.join("carol")
    nameless = world.connect()
    world.pair(alice, bob)
    for player in (alice, bob, carol, nameless, 999):
        assert world.lobby.input_target(player) is None


def test_game_over_from_one_player_waits_for_the_other(playing):
    world, alice, bob = playing
    assert world.do(alice, m.GameOver()) == []
    assert world.state(alice) is GAME_OVER
    assert world.state(bob) is PLAYING
    # The loser still watches: inputs and panels keep flowing both ways.
    assert world.lobby.input_target(alice) == bob
    assert world.do(bob, m.Input(b"IB")) == [(alice, m.Input(b"IB"))]
    assert [to for to, _ in world.panels(alice, b"Q5123456")] == [alice, bob]


def test_game_over_from_both_returns_both_to_character_select():
    world = World()
    alice = world.join("alice", level=5, character="lip")
    dave = world.join("dave", DOCUMENT, level=9, character="ruby")
    world.start(alice, dave)
    world.do(dave, m.GameOver())
    answer = world.do(alice, m.GameOver())
    # The clients' cursor goes back to the level; the document's to the ready button.
    assert sorted(answer, key=lambda sent: sent[0]) == [
        (alice, {"create_room": True, "opponent": "dave",
                 "menu_state": {"cursor": "ready", "ready": False, "character": "ruby",
                                "level": 9}}),
        (dave, {"create_room": True, "opponent": "alice",
                "menu_state": {"cursor": "level", "ready": False, "character": "lip",
                               "level": 5}}),
    ]
    assert world.state(alice) is world.state(dave) is ROOM
    (room,) = world.lobby.rooms.values()
    assert room.state is RoomState.SELECTING
    assert room.match is None


def test_second_match_in_the_same_room_gets_a_fresh_starting_board(playing):
    world, alice, bob = playing
    (room,) = world.lobby.rooms.values()
    first_match = room.match
    world.panels(alice, b"P5000000")
    world.panels(bob, b"P5000000")
    ((_, again), _) = world.panels(alice, b"P5000000")
    assert starting_board_violations(again.digits) != []  # one starting board per match
    world.do(alice, m.GameOver())
    world.do(bob, m.GameOver())
    world.start(alice, bob)
    assert room.match is not first_match
    assert room.match.panels is not first_match.panels
    assert room.match.game_over == [False, False]
    ((_, fresh), _) = world.panels(alice, b"P5000000")
    assert starting_board_violations(fresh.digits) == []
    ((_, fresh_other), _) = world.panels(bob, b"P5000000")
    assert fresh_other.digits[:BOARD_DIGITS] == fresh.digits[:BOARD_DIGITS]


def test_game_over_twice_is_refused(playing):
    world, alice, _ = playing
    world.do(alice, m.GameOver())
    refused(world, alice, m.GameOver(), "message_not_valid_in_state")


# ---------------------------------------------------------------------------
# Leaving: leave_room and disconnect, in every state


def _bring(world: World, alice: int, bob: int, state: str) -> None:
    if state == "room":
        world.pair(alice, bob)
    elif state == "playing":
        world.start(alice, bob)
    elif state == "game_over_leaver":
        world.start(alice, bob)
        world.do(alice, m.GameOver())
    elif state == "game_over_stayer":
        world.start(alice, bob)
        world.do(bob, m.GameOver())
    else:  # pragma: no cover
        raise AssertionError(state)


ROOM_STATES = ["room", "playing", "game_over_leaver", "game_over_stayer"]


def _lobby_list(dialect: Dialect, unpaired: list[str], paired: list) -> dict:
    if dialect is CLIENTS:
        return {"leave_room": True, "unpaired": unpaired}
    return {"leave_room": True, "lobby_state": {"unpaired": unpaired, "paired": paired}}


@pytest.mark.parametrize("stayer_dialect", [CLIENTS, DOCUMENT])
@pytest.mark.parametrize("state", ROOM_STATES)
def test_leave_room_sends_both_back_to_the_lobby_with_the_list_in_their_dialect(
    state, stayer_dialect
):
    world = World()
    alice, bob = world.join("alice"), world.join("bob", stayer_dialect)
    carol, dave = world.join("carol"), world.join("dave")
    world.pair(carol, dave)
    _bring(world, alice, bob, state)
    world.snapshots()
    answer = world.do(alice, m.LeaveRoom())
    paired = [{"players": [{"name": "carol", "level": 5, "character": "lip"},
                           {"name": "dave", "level": 5, "character": "lip"}],
               "playing": False}]
    assert answer == [
        (alice, _lobby_list(CLIENTS, ["alice", "bob"], paired)),
        (bob, _lobby_list(stayer_dialect, ["alice", "bob"], paired)),
    ]
    assert world.state(alice) is world.state(bob) is LOBBY
    (remaining_room,) = world.lobby.rooms.values()
    assert {p.name for p in remaining_room.players} == {"carol", "dave"}
    assert world.snapshots() == {}  # both already have the new list


@pytest.mark.parametrize("stayer_dialect", [CLIENTS, DOCUMENT])
@pytest.mark.parametrize("state", ROOM_STATES)
def test_disconnect_in_a_room_sends_the_one_left_behind_to_the_lobby(state, stayer_dialect):
    world = World()
    alice, bob = world.join("alice"), world.join("bob", stayer_dialect)
    carol = world.join("carol")
    _bring(world, alice, bob, state)
    world.snapshots()
    assert world.disconnect(alice) == [(bob, _lobby_list(stayer_dialect, ["bob", "carol"], []))]
    assert world.state(bob) is LOBBY
    assert world.player(bob).room is None
    assert alice not in world.lobby.players
    assert world.lobby.rooms == {}
    assert sorted(world.lobby.names) == ["bob", "carol"]
    assert world.lobby.input_target(bob) is None
    assert world.snapshots() == {carol: {"unpaired": ["bob", "carol"]}}


def test_disconnect_in_the_lobby_frees_the_name_and_withdraws_requests():
    world = World()
    alice, bob, carol = world.join("alice"), world.join("bob"), world.join("carol")
    world.request(alice, bob)
    world.request(carol, alice)
    world.request(bob, carol)
    world.snapshots()
    assert world.disconnect(alice) == []
    assert world.lobby.proposals == {(bob, carol)}
    assert sorted(world.lobby.names) == ["bob", "carol"]
    assert world.snapshots() == {bob: {"unpaired": ["bob", "carol"]},
                                 carol: {"unpaired": ["bob", "carol"]}}
    newcomer = world.join("alice")  # the name is free again
    assert world.state(newcomer) is LOBBY


def test_request_of_a_departed_player_does_not_pair_with_a_newcomer_of_that_name():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.request(alice, bob)
    world.disconnect(alice)
    newcomer = world.join("alice")
    # bob answering the old request must not pair him with the new "alice".
    assert world.request(bob, newcomer) == [
        (newcomer, {"game_request": {"sender": "bob", "receiver": "alice"}})
    ]
    assert world.state(bob) is LOBBY


def test_disconnect_before_registration_changes_no_list():
    world = World()
    world.join("alice")
    world.snapshots()
    nameless = world.connect()
    world.do(nameless, m.Register("alice", 1, "lip"))  # refused: name taken
    assert world.disconnect(nameless) == []
    assert not world.lobby.snapshot_due
    assert nameless not in world.lobby.players


def test_disconnect_of_an_unknown_or_departed_player_does_nothing():
    world = World()
    alice = world.join("alice")
    assert world.disconnect(12345) == []
    world.disconnect(alice)
    before = fingerprint(world.lobby)
    assert world.disconnect(alice) == []
    assert fingerprint(world.lobby) == before


def test_left_players_can_pair_again_in_a_new_room():
    world = World()
    alice, bob = world.join("alice"), world.join("bob")
    world.start(alice, bob)
    (first_room,) = world.lobby.rooms.values()
    world.do(bob, m.LeaveRoom())
    world.pair(bob, alice)
    (second_room,) = world.lobby.rooms.values()
    assert second_room is not first_room
    assert second_room.id != first_room.id


def test_no_room_leaks_after_many_pairings_and_departures():
    world = World()
    players = [world.join(f"p{i}", DOCUMENT if i % 3 == 0 else CLIENTS) for i in range(12)]
    for a, b in zip(players[::2], players[1::2]):
        world.start(a, b)
    for i, player in enumerate(players[::2]):
        if i % 2:
            world.disconnect(player)
        else:
            world.do(player, m.LeaveRoom())
    assert world.lobby.rooms == {}
    assert world.lobby.proposals == set()
    assert all(p.state is LOBBY for p in world.lobby.players.values())
    assert len(world.lobby.names) == len(world.lobby.players) == 9


# ---------------------------------------------------------------------------
# Messages not valid in a state: refused, naming player, state and message

MESSAGES = {
    "register": m.Register("zed", 5, "lip"),
    "game_request": m.GameRequest("alice", "bob"),
    "menu_state": menu(cursor="ready", ready=True),
    "leave_room": m.LeaveRoom(),
    "game_over": m.GameOver(),
    "panels": m.PanelRequest(False, "5", "000000"),
    "garbage": m.PanelRequest(True, "5", "123456"),
    "input": m.Input(b"IA"),
    "level_pick": m.LevelPick(b"L5"),
}

# Written from the protocol description, not copied from the lobby's table.
VALID_IN = {
    "unregistered": {"register"},
    "lobby": {"game_request"},
    "room": {"menu_state", "leave_room", "level_pick"},
    "playing": {"leave_room", "game_over", "panels", "garbage", "input", "level_pick"},
    "game_over": {"leave_room", "panels", "garbage", "input", "level_pick"},
}


def _world_with_alice_in(state: str) -> tuple[World, int]:
    world = World()
    bob = world.join("bob")
    if state == "unregistered":
        return world, world.connect()
    alice = world.join("alice")
    if state == "room":
        world.pair(alice, bob)
    elif state in ("playing", "game_over"):
        world.start(alice, bob)
        if state == "game_over":
            world.do(alice, m.GameOver())
    assert world.state(alice).value == state
    return world, alice


@pytest.mark.parametrize("state", list(VALID_IN))
@pytest.mark.parametrize("message", list(MESSAGES))
def test_message_not_valid_in_a_state_is_refused_and_changes_nothing(state, message):
    world, alice = _world_with_alice_in(state)
    if message in VALID_IN[state]:
        world.lobby.handle(alice, MESSAGES[message])  # accepted: must not raise
        assert_consistent(world.lobby)
        return
    refused(world, alice, MESSAGES[message], "message_not_valid_in_state")


def test_json_frames_and_unknown_messages_are_our_own_misuse():
    world = World()
    alice = world.join("alice")
    for frame in (m.Json({"leave_room": True}), m.Pong("LOL"), m.Heartbeat()):
        with pytest.raises(LocalProtocolError):
            world.lobby.handle(alice, frame)


def test_connecting_the_same_player_twice_is_our_own_misuse():
    world = World()
    alice = world.connect()
    with pytest.raises(LocalProtocolError):
        world.lobby.connect(alice, CLIENTS, 19)


def test_illegal_state_moves_are_refused_by_the_transition_table():
    player = Player(1, CLIENTS, 19)
    with pytest.raises(LocalProtocolError):
        player.move(PLAYING)
    player.move(LOBBY)
    with pytest.raises(LocalProtocolError):
        player.move(GAME_OVER)
    with pytest.raises(LocalProtocolError):
        player.move(UNREGISTERED)
    assert player.state is LOBBY


# ---------------------------------------------------------------------------
# Starting board sharing


def _player(version: int, level: int, dialect: Dialect = CLIENTS) -> Player:
    player = Player(version, dialect, version)
    player.menu = menu(level=level)
    return player


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        # Before 019 the board is always shared.
        ((4, 1), (4, 10), True),
        ((18, 8), (18, 9), True),
        ((4, 3), (18, 99), True),
        # From 019 only within a level class: both below 9, or both 9 and above.
        ((19, 8), (19, 9), False),
        ((19, 1), (19, 8), True),
        ((19, 9), (19, 10), True),
        ((19, 0), (19, 99), False),
        # A mixed pair follows the newer client's rule.
        ((18, 8), (19, 9), False),
        ((18, 8), (19, 3), True),
        # The document's dialect follows the 019 rule.
        ((139, 8), (139, HIGH_LEVEL), False),
        ((139, 2), (19, 8), True),
        ((139, 9), (4, 8), False),
    ],
)
def test_starting_board_is_shared_by_version_and_level_class(first, second, shared):
    dialects = [DOCUMENT if version == 139 else CLIENTS for version in (first[0], second[0])]
    a = _player(*first, dialect=dialects[0])
    b = _player(*second, dialect=dialects[1])
    assert shares_starting_board(a, b) is shared
    assert shares_starting_board(b, a) is shared


def test_document_dialect_follows_the_level_class_rule_whatever_its_version():
    # A deployment may accept other document versions; the rule follows the dialect.
    a = _player(4, 8, DOCUMENT)
    b = _player(4, 9, CLIENTS)
    assert shares_starting_board(a, b) is False
    assert shares_starting_board(a, _player(4, 3, CLIENTS)) is True


def _first_boards(version: int, level_a: int, level_b: int) -> tuple[str, str]:
    world = World(seed=3)
    alice = world.join("alice", version=version, level=level_a)
    bob = world.join("bob", version=version, level=level_b)
    world.start(alice, bob)
    ((_, mine), _) = world.panels(alice, b"P5000000")
    ((_, theirs), _) = world.panels(bob, b"P6000000")
    for digits in (mine.digits, theirs.digits):
        assert starting_board_violations(digits) == []
    return mine.digits, theirs.digits


@pytest.mark.parametrize(("version", "level_a", "level_b"),
                         [(4, 8, 9), (18, 1, 10), (19, 3, 8), (19, 9, 10)])
def test_shared_starting_board_gives_both_players_the_same_first_rows(version, level_a, level_b):
    mine, theirs = _first_boards(version, level_a, level_b)
    assert mine[:BOARD_DIGITS] == theirs[:BOARD_DIGITS]
    assert mine[BOARD_DIGITS:] != theirs[BOARD_DIGITS:]


def test_unshared_starting_boards_differ_across_level_classes_from_019():
    mine, theirs = _first_boards(19, 8, 9)
    assert mine[:BOARD_DIGITS] != theirs[:BOARD_DIGITS]


def test_match_start_log_says_whether_the_board_is_shared(logs):
    _first_boards(19, 8, 9)
    _first_boards(19, 8, 8)
    assert [line["shared_board"] for line in lines(logs, "match_started")] == [False, True]


# ---------------------------------------------------------------------------
# Reproducibility


def _panel_script(seed: int) -> list[tuple[int, object]]:
    world = World(seed=seed)
    alice, bob = world.join("alice"), world.join("bob")
    carol, dave = world.join("carol"), world.join("dave")
    world.start(carol, dave)  # another room's traffic must not disturb this one's panels
    world.start(alice, bob)
    replies = []
    for player, request in [(alice, b"P5000000"), (bob, b"P5000000"), (alice, b"Q5123456"),
                            (bob, b"P6121212"), (carol, b"P5000000"), (alice, b"P5343434")]:
        replies += world.panels(player, request)
    return replies


def test_a_fixed_seed_reproduces_the_same_panels():
    assert _panel_script(42) == _panel_script(42)


def test_a_different_seed_gives_different_panels():
    assert _panel_script(42) != _panel_script(43)


def test_a_rooms_panels_do_not_depend_on_other_rooms_traffic():
    def alice_panels(with_other_room_traffic: bool) -> list:
        world = World(seed=5)
        carol, dave = world.join("carol"), world.join("dave")
        alice, bob = world.join("alice"), world.join("bob")
        world.start(carol, dave)
        world.start(alice, bob)
        if with_other_room_traffic:
            for _ in range(5):
                world.panels(carol, b"P5000000")
                world.panels(dave, b"Q4121212")
        return world.panels(alice, b"P5000000") + world.panels(bob, b"Q5123456")

    assert alice_panels(False) == alice_panels(True)
