"""The two JSON dialects: validating what clients send, rendering what they get."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netplay.dialects import classic as d
from netplay.dialects.classic import Dialect, parse_command
from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m

CLIENTS = Dialect.CLIENTS
DOCUMENT = Dialect.DOCUMENT
MENU = {"cursor": "ready", "ready": True, "character": "lip", "level": 6}


def refusal(payload: dict) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_command(payload)
    assert not caught.value.fatal
    return caught.value


# ---------------------------------------------------------------------------
# Versions


def test_client_versions_are_004_to_019_and_the_document_is_139():
    assert d.CLIENT_VERSIONS == {f"{v:03d}" for v in range(4, 20)}
    assert "003" not in d.CLIENT_VERSIONS and "020" not in d.CLIENT_VERSIONS
    assert d.DOCUMENT_VERSIONS == {"139"}
    assert not d.CLIENT_VERSIONS & d.DOCUMENT_VERSIONS


# ---------------------------------------------------------------------------
# Every message of both dialects


@pytest.mark.parametrize(
    ("payload", "command"),
    [
        ({"name": "alice", "level": 5, "character": "lip"}, m.Register("alice", 5, "lip")),
        # The document's example puts the keys in another order.
        ({"name": "Texxxtonixxx", "character": "Neris", "level": 8},
         m.Register("Texxxtonixxx", 8, "Neris")),
        ({"game_request": {"sender": "alice", "receiver": "bob"}}, m.GameRequest("alice", "bob")),
        ({"game_request_to_server": {"sender": "alice", "receiver": "bob"}},
         m.GameRequest("alice", "bob")),
        # The document spells it "reciver".
        ({"game_request_to_server": {"sender": "Alice", "reciver": "Bob"}},
         m.GameRequest("Alice", "Bob")),
        ({"game_request": {"sender": "alice", "reciver": "bob"}}, m.GameRequest("alice", "bob")),
        ({"menu_state": MENU}, m.MenuState("ready", True, "lip", 6)),
        ({"menu_state": {"character": "Lip", "level": 6, "cursor": "ready", "ready": False}},
         m.MenuState("ready", False, "Lip", 6)),
        ({"leave_room": True}, m.LeaveRoom()),
        ({"game_over": True}, m.GameOver()),
    ],
)
def test_message_parses_to_its_command(payload, command):
    assert parse_command(payload) == command


def test_correct_spelling_wins_when_a_request_carries_both():
    request = {"sender": "a", "receiver": "b", "reciver": "c"}
    assert parse_command({"game_request_to_server": request}) == m.GameRequest("a", "b")


def test_registration_keeps_an_invalid_name_for_the_lobby_to_answer():
    # The name rule is the lobby's business: it answers with choose_another_name.
    assert parse_command({"name": "", "level": 1, "character": "x"}) == m.Register("", 1, "x")
    assert parse_command({"name": "a\x00", "level": 1, "character": "x"}).name == "a\x00"


@pytest.mark.parametrize("level", ["3", "10", "0", "07"])
def test_level_as_digit_string_is_accepted_as_a_number(level):
    command = parse_command({"name": "a", "level": level, "character": "x"})
    assert command.level == int(level)
    state = parse_command({"menu_state": {**MENU, "level": level}})
    assert state.level == int(level)


@pytest.mark.parametrize("level", [0, 1, 10, 99])
def test_levels_in_range_are_accepted(level):
    assert parse_command({"menu_state": {**MENU, "level": level}}).level == level


def test_extra_fields_are_ignored():
    payload = {"name": "a", "level": 1, "character": "x", "password": "hunter2"}
    assert parse_command(payload) == m.Register("a", 1, "x")
    assert parse_command({"menu_state": {**MENU, "extra": [1]}}) == m.MenuState(
        "ready", True, "lip", 6
    )


# ---------------------------------------------------------------------------
# Refusals, each with its reason

REG = {"name": "alice", "level": 5, "character": "lip"}
REQ = {"sender": "alice", "receiver": "bob"}


@pytest.mark.parametrize(
    ("payload", "reason", "context"),
    [
        # registration
        ({**REG, "name": 5}, "field_not_a_string", {"field": "name", "value_type": "int"}),
        ({**REG, "name": None}, "field_not_a_string", {"field": "name", "value_type": "NoneType"}),
        ({**REG, "name": ["alice"]}, "field_not_a_string", {"field": "name", "value_type": "list"}),
        ({"name": "a", "character": "x"}, "field_missing", {"field": "level"}),
        ({"name": "a", "level": 1}, "field_missing", {"field": "character"}),
        ({**REG, "level": True}, "level_not_an_integer", {"value_type": "bool"}),
        ({**REG, "level": False}, "level_not_an_integer", {"value_type": "bool"}),
        ({**REG, "level": 5.0}, "level_not_an_integer", {"value_type": "float"}),
        ({**REG, "level": None}, "level_not_an_integer", {"value_type": "NoneType"}),
        ({**REG, "level": [5]}, "level_not_an_integer", {"value_type": "list"}),
        ({**REG, "level": {"level": 5}}, "level_not_an_integer", {"value_type": "dict"}),
        ({**REG, "level": "five"}, "level_not_an_integer", {"value_type": "str"}),
        ({**REG, "level": "-1"}, "level_not_an_integer", {"value_type": "str"}),
        ({**REG, "level": " 5"}, "level_not_an_integer", {"value_type": "str"}),
        ({**REG, "level": "100"}, "level_not_an_integer", {"value_type": "str"}),
        ({**REG, "level": "\u0665"}, "level_not_an_integer", {"value_type": "str"}),  # Arabic 5
        ({**REG, "level": "\u00b2"}, "level_not_an_integer", {"value_type": "str"}),  # a "2"
        ({**REG, "level": ""}, "level_not_an_integer", {"value_type": "str"}),
        ({**REG, "level": -1}, "level_out_of_range", {"level": -1}),
        ({**REG, "level": 100}, "level_out_of_range", {"level": 100}),
        ({**REG, "level": 10**400}, "level_out_of_range", {"level": 10**400}),
        ({**REG, "level": -(10**30)}, "level_out_of_range", {"level": -(10**30)}),
        ({**REG, "character": 3}, "field_not_a_string",
         {"field": "character", "value_type": "int"}),
        ({**REG, "character": "x" * 65}, "field_too_long", {"field": "character", "length": 65}),
        # requests
        ({"game_request": "bob"}, "field_not_an_object",
         {"field": "game_request", "value_type": "str"}),
        ({"game_request": ["alice", "bob"]}, "field_not_an_object",
         {"field": "game_request", "value_type": "list"}),
        ({"game_request_to_server": True}, "field_not_an_object",
         {"field": "game_request_to_server", "value_type": "bool"}),
        ({"game_request": {"sender": "alice"}}, "field_missing", {"field": "receiver"}),
        ({"game_request": {"receiver": "bob"}}, "field_missing", {"field": "sender"}),
        ({"game_request": {"sender": "alice", "receiver": None}}, "field_missing",
         {"field": "receiver"}),
        ({"game_request": {"game_request": REQ}}, "field_missing", {"field": "receiver"}),
        ({"game_request": {"sender": 1, "receiver": "bob"}}, "field_not_a_string",
         {"field": "sender/receiver"}),
        ({"game_request": {"sender": "alice", "receiver": ["bob"]}}, "field_not_a_string",
         {"field": "sender/receiver"}),
        ({"game_request_to_server": {"sender": "alice", "reciver": 7}}, "field_not_a_string",
         {"field": "sender/receiver"}),
        # menu states
        ({"menu_state": "ready"}, "field_not_an_object",
         {"field": "menu_state", "value_type": "str"}),
        ({"menu_state": None}, "field_not_an_object",
         {"field": "menu_state", "value_type": "NoneType"}),
        ({"menu_state": {"menu_state": MENU}}, "field_missing", {"field": "ready"}),
        ({"menu_state": {**MENU, "ready": 1}}, "field_not_a_boolean",
         {"field": "ready", "value_type": "int"}),
        ({"menu_state": {**MENU, "ready": 0}}, "field_not_a_boolean",
         {"field": "ready", "value_type": "int"}),
        ({"menu_state": {**MENU, "ready": "true"}}, "field_not_a_boolean",
         {"field": "ready", "value_type": "str"}),
        ({"menu_state": {k: v for k, v in MENU.items() if k != "cursor"}}, "field_missing",
         {"field": "cursor"}),
        ({"menu_state": {k: v for k, v in MENU.items() if k != "character"}}, "field_missing",
         {"field": "character"}),
        ({"menu_state": {k: v for k, v in MENU.items() if k != "level"}}, "field_missing",
         {"field": "level"}),
        ({"menu_state": {**MENU, "cursor": 3}}, "field_not_a_string",
         {"field": "cursor", "value_type": "int"}),
        ({"menu_state": {**MENU, "cursor": "c" * 65}}, "field_too_long",
         {"field": "cursor", "length": 65}),
        ({"menu_state": {**MENU, "character": {"name": "lip"}}}, "field_not_a_string",
         {"field": "character", "value_type": "dict"}),
        ({"menu_state": {**MENU, "level": True}}, "level_not_an_integer", {"value_type": "bool"}),
        ({"menu_state": {**MENU, "level": 6.5}}, "level_not_an_integer", {"value_type": "float"}),
        ({"menu_state": {**MENU, "level": 10**100}}, "level_out_of_range", {"level": 10**100}),
        # A JSON escape can carry a lone surrogate, which UTF-8 cannot: never forwardable.
        ({"menu_state": {**MENU, "cursor": "\ud800"}}, "field_not_unicode", {"field": "cursor"}),
        ({"menu_state": {**MENU, "character": "li\udfffp"}}, "field_not_unicode",
         {"field": "character"}),
        ({**REG, "character": "\udc00"}, "field_not_unicode", {"field": "character"}),
    ],
)
def test_malformed_message_is_refused_with_its_reason(payload, reason, context):
    error = refusal(payload)
    assert error.reason == reason
    assert error.context == context


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"hello": 1},
        {"leave_room": False},
        {"leave_room": 1},  # an int is not true
        {"leave_room": "true"},
        {"game_over": 1},
        {"game_over": None},
        {"create_room": True, "opponent": "bob"},  # a server message sent back
        {"game_request_to_client": REQ},  # the server-to-client name
        {"game_request_reply": {**REQ, "reply": True}},  # described, never implemented
        {"Name": "alice", "level": 1, "character": "x"},  # keys are case-sensitive
    ],
    ids=repr,
)
def test_unknown_message_is_refused(payload):
    assert refusal(payload).reason == "unknown_json_message"


def test_unknown_message_names_a_bounded_sample_of_its_keys():
    error = refusal({f"key{i:02d}" + "x" * 100: i for i in range(20)})
    keys = error.context["keys"]
    assert len(keys) == 8
    assert all(len(key) == 32 for key in keys)
    assert keys == sorted(keys)


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["name", "level", "character", "game_request", "game_request_to_server",
                         "menu_state", "leave_room", "game_over", "sender", "receiver", "x"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=70),
            lambda inner: st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["sender", "receiver", "reciver", "cursor", "ready",
                                 "character", "level"]),
                inner,
                max_size=7,
            ),
            max_leaves=10,
        ),
        max_size=4,
    )
)
def test_any_json_object_either_parses_to_a_well_typed_command_or_is_refused(payload):
    try:
        command = parse_command(payload)
    except RemoteProtocolError as error:
        assert not error.fatal
        return
    match command:
        case m.Register(name, level, character):
            assert isinstance(name, str) and isinstance(character, str)
            assert type(level) is int and 0 <= level <= 99
        case m.GameRequest(sender, receiver):
            assert isinstance(sender, str) and isinstance(receiver, str)
        case m.MenuState(cursor, ready, character, level):
            assert isinstance(cursor, str) and isinstance(character, str)
            assert type(ready) is bool
            assert type(level) is int and 0 <= level <= 99
            assert len(cursor) <= 64 and len(character) <= 64
        case m.LeaveRoom() | m.GameOver():
            pass
        case _:
            pytest.fail(f"unexpected command {command!r}")


# ---------------------------------------------------------------------------
# Rendering, per dialect

UNPAIRED = ["alice", "bob"]
PAIRED = [
    {"players": [{"name": "kat", "level": 8, "character": "ruby"},
                 {"name": "vin", "level": 3, "character": "thiana"}],
     "playing": False}
]


def test_lobby_in_clients_dialect_is_the_unpaired_list_only():
    assert d.render_lobby(CLIENTS, UNPAIRED, PAIRED) == {"unpaired": ["alice", "bob"]}


def test_lobby_in_document_dialect_is_a_lobby_state_with_both_lists():
    assert d.render_lobby(DOCUMENT, UNPAIRED, PAIRED) == {
        "lobby_state": {"unpaired": ["alice", "bob"], "paired": PAIRED}
    }


def test_leave_room_in_clients_dialect_carries_the_unpaired_list():
    assert d.render_leave_room(CLIENTS, UNPAIRED, PAIRED) == {
        "leave_room": True, "unpaired": ["alice", "bob"],
    }


def test_leave_room_in_document_dialect_carries_a_lobby_state():
    assert d.render_leave_room(DOCUMENT, UNPAIRED, PAIRED) == {
        "leave_room": True,
        "lobby_state": {"unpaired": ["alice", "bob"], "paired": PAIRED},
    }


def test_forwarded_request_is_game_request_for_clients():
    assert d.render_game_request(CLIENTS, "alice", "bob") == {
        "game_request": {"sender": "alice", "receiver": "bob"}
    }


def test_forwarded_request_is_game_request_to_client_for_the_document():
    assert d.render_game_request(DOCUMENT, "alice", "bob") == {
        "game_request_to_client": {"sender": "alice", "receiver": "bob"}
    }


def test_forwarded_request_in_clients_dialect_is_the_request_unchanged():
    sent = {"game_request": {"sender": "alice", "receiver": "bob"}}
    assert d.render_game_request(CLIENTS, "alice", "bob") == sent
    assert parse_command(sent) == m.GameRequest("alice", "bob")


def test_choose_another_name_lists_every_used_name():
    assert d.render_choose_another_name(iter(["a", "b", "c"])) == {
        "choose_another_name": {"used_names": ["a", "b", "c"]}
    }
    assert d.render_choose_another_name([]) == {"choose_another_name": {"used_names": []}}


def test_create_room_names_the_opponent_and_its_menu_state():
    state = m.MenuState("level", False, "lip", 7)
    assert d.render_create_room("bob", state) == {
        "create_room": True,
        "opponent": "bob",
        "menu_state": {"cursor": "level", "ready": False, "character": "lip", "level": 7},
    }


def test_menu_state_renders_as_the_client_sent_it_and_parses_back():
    state = m.MenuState("ready", True, "Lip", 6)
    rendered = d.render_menu_state(state)
    assert rendered == {"menu_state": {"cursor": "ready", "ready": True, "character": "Lip",
                                       "level": 6}}
    assert parse_command(rendered) == state


def test_match_start_puts_own_settings_first():
    own = m.MenuState("ready", True, "thiana", 3)
    other = m.MenuState("ready", True, "lip", 9)
    assert d.render_match_start(own, other) == {
        "match_start": True,
        "player_settings": {"character": "thiana", "level": 3},
        "opponent_settings": {"character": "lip", "level": 9},
    }


def test_cursor_after_a_game_is_level_for_clients_and_ready_for_the_document():
    assert d.cursor_after_game(CLIENTS) == "level"
    assert d.cursor_after_game(DOCUMENT) == "ready"
