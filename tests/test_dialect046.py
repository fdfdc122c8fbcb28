"""Validation and rendering of the 2022 client's JSON, and its input strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netplay.dialects import v046 as d
from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.inputs import (
    INPUT_ALPHABET,
    compress,
    encode_for_catch_up,
    uncompress,
)

OBSERVED_NAME_MESSAGE = {
    "save_replays_publicly": "with my name", "character": "__RandomCharacter",
    "stage": "__RandomStage", "ranked": False, "character_is_random": "__RandomCharacter",
    "stage_is_random": "__RandomStage", "level": 5, "character_display_name": "",
    "name": "alice", "panels_dir": "pdp_ta_common",
}


def test_observed_name_message_parses_into_registration():
    command = d.parse_command(OBSERVED_NAME_MESSAGE, registered=False)
    assert command == m.Register046(
        "alice",
        m.Selections(
            character="__RandomCharacter", character_is_random="__RandomCharacter",
            character_display_name="", stage="__RandomStage", stage_is_random="__RandomStage",
            panels_dir="pdp_ta_common", level=5,
        ),
        "with my name",
    )


def test_any_message_before_registration_is_the_name_message():
    command = d.parse_command({"login_request": True, "user_id": "1"}, registered=False)
    assert isinstance(command, m.Register046) and command.name is None
    assert d.name_refusal(command.name) == d.NAME_BLANK


def test_bad_fields_of_the_name_message_fall_back_to_defaults():
    command = d.parse_command(
        {"name": "bob", "level": "high", "character": 7, "save_replays_publicly": "loud"},
        registered=False,
    )
    assert command.selections == m.Selections()
    assert command.save_replays_publicly == "with my name"


@pytest.mark.parametrize(
    "name, reason",
    [
        (None, d.NAME_BLANK), ("", d.NAME_BLANK), (5, d.NAME_BLANK),
        ("ANONYMOUS", d.NAME_ANONYMOUS),
        ("defaultname", d.NAME_DEFAULT), ("ddeffaultnam", d.NAME_DEFAULT),
        ("xDefaultName2", d.NAME_DEFAULT),
        ("a-b", d.NAME_CHARACTERS), ("é", d.NAME_CHARACTERS), ("a b", d.NAME_CHARACTERS),
        ("a" * 17, d.NAME_TOO_LONG),
        ("a" * 16, None), ("Player_1", None), ("anonymous2", None),
    ],
)
def test_name_rule_of_the_2022_client(name, reason):
    assert d.name_refusal(name) == reason


@pytest.mark.parametrize(
    "payload, expected",
    [
        ({"login_request": True, "user_id": "need a new user id"}, m.LoginRequest(None)),
        ({"login_request": True, "user_id": "371897516"}, m.LoginRequest("371897516")),
        ({"login_request": True, "user_id": 371897516}, m.LoginRequest("371897516")),
        ({"login_request": True}, m.LoginRequest("")),
        ({"login_request": True, "user_id": ["x"]}, m.LoginRequest("")),
        ({"logout": True}, m.Logout()),
        ({"leave_room": True}, m.LeaveRoom()),
        ({"leaderboard_request": True}, m.LeaderboardRequest()),
        ({"game_over": True, "outcome": 0}, m.GameOverClaim(0)),
        ({"spectate_request": {"sender": "c", "roomNumber": 3}}, m.SpectateRequest("c", 3)),
        ({"taunt": True, "type": "taunt_downs", "index": 2}, m.Taunt("taunt_downs", 2)),
        ({"game_request": {"sender": "a", "receiver": "b"}}, m.GameRequest("a", "b")),
    ],
)
def test_commands_parse(payload, expected):
    assert d.parse_command(payload, registered=True) == expected


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"game_over": True, "outcome": 3}, "outcome_invalid"),
        ({"game_over": True, "outcome": True}, "outcome_invalid"),
        ({"game_over": True}, "outcome_invalid"),
        ({"taunt": True, "type": "taunt_ups", "index": "1"}, "taunt_index_invalid"),
        ({"taunt": True, "type": "shout", "index": 1}, "taunt_type_unknown"),
        ({"spectate_request": {"sender": "c", "roomNumber": "3"}}, "field_not_an_integer"),
        ({"spectate_request": [1]}, "field_not_an_object"),
        ({"menu_state": {"level": 5}}, "field_missing"),
        ({"menu_state": {"cursor": "__Ready"}}, "field_missing"),
        ({"menu_state": {"cursor": "__Ready", "level": 11}}, "level_out_of_range"),
        ({"menu_state": {"cursor": "__Ready", "level": 5, "ready": "yes"}}, "field_not_a_boolean"),
        ({"menu_state": {"cursor": "__Ready", "level": 5, "stage": 3}}, "field_not_a_string"),
        ({"menu_state": {"cursor": "x" * 65, "level": 5}}, "field_too_long"),
        ({"game_request": {"sender": "a"}}, "field_not_a_string"),
        ({"hello": 1}, "unknown_json_message"),
    ],
)
def test_malformed_commands_are_refused(payload, reason):
    with pytest.raises(RemoteProtocolError) as error:
        d.parse_command(payload, registered=True)
    assert error.value.reason == reason and not error.value.fatal


@pytest.mark.parametrize(
    "cursor, shown",
    [
        ("__Ready", "__Ready"), ("__Leave", "__Leave"), ("lip", "lip"),
        ("pa_characters_yoshi", "pa_characters_yoshi"),
        ("__Empty", "__Ready"), ("__Whatever", "__Ready"), ("<script>", "__Ready"),
    ],
)
def test_forwarded_cursor_always_names_a_cell(cursor, shown):
    assert d.selections_json(m.Selections(cursor=cursor))["cursor"] == shown


def test_forwarded_menu_state_leaves_out_absent_fields():
    state = d.selections_json(m.Selections(character="lip"))
    assert state == {
        "cursor": "__Ready", "level": 5, "ranked": False, "wants_ready": False,
        "ready": False, "character": "lip",
    }


# -- input strings -----------------------------------------------------------------


def test_compress_matches_the_clients_observed_form():
    assert compress("A" * 579 + "g" * 77) == "A579g77"
    assert compress("AAA111B") == "A3(111)B1"
    assert uncompress("A579g77") == "A" * 579 + "g" * 77


def test_client_misreads_short_plain_strings():
    # Why catch-up data is not sent plain: the client reads "A" as compressed.
    assert uncompress("A") == ""
    assert encode_for_catch_up("A") == "A1"


@given(st.text(alphabet=INPUT_ALPHABET, max_size=200))
def test_catch_up_form_reads_back_exactly_or_is_refused(inputs):
    encoded = encode_for_catch_up(inputs)
    if encoded is not None:
        assert uncompress(encoded) == inputs
    else:
        assert any(symbol.isdigit() for symbol in inputs)  # only digit inputs can defeat it


@given(st.text(alphabet="ABg", min_size=1, max_size=200))
def test_catch_up_form_always_exists_without_digit_inputs(inputs):
    assert uncompress(encode_for_catch_up(inputs)) == inputs
