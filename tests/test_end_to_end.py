"""Whole sessions over real loopback TCP, the server running in this process.

Each test starts a server on a free loopback port and connects two to four
scripted clients to it.  Waits are real, short and bounded: a message that
does not come fails the test within a few seconds.  "Nothing else was sent"
is checked by ordering rather than by waiting: a later message that must
arrive right after is awaited instead.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

from netplay.config import Config
from netplay.framing import messages as m
from netplay.framing.length3 import encode_json
from netplay.lobbies.panels import (
    garbage_rule_violations,
    play_rule_violations,
    starting_board_violations,
)
from netplay.server import Server
from netplay.testing import ScriptedClient, pair_up, start_match

TIMEOUT = 3.0
# How soon an opponent must learn that a player left: well under the one
# second after which a silent connection is first pinged.
AT_ONCE = 0.75
INPUT_SYMBOLS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz1234567890+/"
BOARD_DIGITS = 42  # 7 rows of 6


class Loopback:
    """A server listening on loopback and the clients connected to it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        assert server.port is not None
        self.port = server.port
        self.clients: list[ScriptedClient] = []

    async def connect(self, *, answer_pings: bool = True) -> ScriptedClient:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        client = ScriptedClient(stream, answer_pings=answer_pings)
        self.clients.append(client)
        return client

    async def join(
        self, name: str, *, version: str = "004", level: int = 5, character: str = "lip"
    ) -> ScriptedClient:
        """Connect, say hello and register in one write; return once ``H`` is back."""
        client = await self.connect()
        await client.register(name, version=version, level=level, character=character)
        return client

    async def close_all(self) -> None:
        for client in self.clients:
            with trio.move_on_after(1, shield=True):
                await client.aclose()


@pytest.fixture
async def loopback():
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        server = await nursery.start(Server(Config(), seed=3).run, listeners)
        harness = Loopback(server)
        try:
            yield harness
        finally:
            await harness.close_all()
            nursery.cancel_scope.cancel()


# -- helpers -----------------------------------------------------------------


def unpaired_of(payload: dict[str, Any]) -> list[str] | None:
    """The lobby list a message carries, in either dialect, or None."""
    if "lobby_state" in payload:
        return payload["lobby_state"]["unpaired"]
    return payload.get("unpaired")


async def next_json(client: ScriptedClient) -> dict[str, Any]:
    return await client.receive_json(timeout=TIMEOUT)


async def next_event(client: ScriptedClient) -> dict[str, Any]:
    """The next JSON message that is not a plain lobby broadcast."""
    with trio.fail_after(TIMEOUT):
        while True:
            payload = await next_json(client)
            if set(payload) not in ({"unpaired"}, {"lobby_state"}):
                return payload


async def until_lobby(client: ScriptedClient, names: list[str]) -> dict[str, Any]:
    """Read lobby broadcasts until one lists exactly ``names``; return it."""
    with trio.fail_after(TIMEOUT):
        while True:
            payload = await next_json(client)
            if unpaired_of(payload) == names:
                return payload


async def next_panels(client: ScriptedClient, letter: str) -> str:
    frame = await client.receive(timeout=TIMEOUT)
    assert isinstance(frame, m.Panels) and frame.letter == letter, frame
    return frame.digits


async def request_panels(
    requester: ScriptedClient, opponent: ScriptedClient, request: bytes
) -> str:
    """Send a P or Q request; return the reply after checking the opponent's mirror."""
    own, mirror = ("P", "O") if request[:1] == b"P" else ("Q", "R")
    await requester.send(request)
    digits = await next_panels(requester, own)
    assert await next_panels(opponent, mirror) == digits
    return digits


async def start_playing(
    loopback: Loopback, a: str = "alice", b: str = "bob", **join: Any
) -> tuple[ScriptedClient, ScriptedClient]:
    first = await loopback.join(a, **join)
    second = await loopback.join(b, **join)
    await pair_up(first, second, a, b)
    await start_match(first, second)
    return first, second


def menu(cursor: str, ready: bool, character: str, level: int) -> dict[str, Any]:
    return {"cursor": cursor, "ready": ready, "character": character, "level": level}


def stranding_rows(digits: str) -> list[str]:
    """Two-colour rows shaped ``x x 8 y y`` (x != y): no play row fits on top of them."""
    rows = [digits[i : i + 6] for i in range(0, len(digits), 6)]
    return [
        row
        for row in rows
        for column in (2, 3)
        if row[column] == "8"
        and row[column - 2] == row[column - 1] != row[column + 1] == row[column + 2]
    ]


def shock_schedule_violations(digits: str) -> list[str]:
    """Ways one side's play rows, concatenated over a match, break the metal schedule."""
    rows = [digits[i : i + 6] for i in range(0, len(digits), 6)]
    problems = []
    columns = [row.index("8") for row in rows if "8" in row]
    for previous, current in zip(columns, columns[1:]):
        if previous == current:
            problems.append(f"two metal rows in a row use column {current}")
    is_metal = ("8" in row for row in rows)
    runs = [(metal, len(list(group))) for metal, group in itertools.groupby(is_metal)]
    for index, (metal, length) in enumerate(runs):
        last = index == len(runs) - 1
        if index == 0:
            low, high = 15, 22
            if metal:
                problems.append("the first rows are metal")
        else:
            low, high = (3, 4) if metal else (7, 10)
        if length > high or (length < low and not last):
            kind = "metal" if metal else "normal"
            problems.append(f"run {index}: {length} {kind} rows, expected {low}..{high}")
    return problems


# -- registration and the lobby -----------------------------------------------


async def test_registration_is_answered_h_and_every_lobby_player_gets_the_list(loopback):
    alice = await loopback.join("alice")
    assert await next_json(alice) == {"unpaired": ["alice"]}
    bob = await loopback.join("bob")
    assert await next_json(bob) == {"unpaired": ["alice", "bob"]}
    assert await next_json(alice) == {"unpaired": ["alice", "bob"]}


async def test_taken_name_gets_choose_another_name_and_a_retry_on_that_connection_succeeds(
    loopback,
):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    await until_lobby(alice, ["alice", "bob"])
    second = await loopback.connect()
    await second.send(b"H004" + encode_json({"name": "alice", "level": 5, "character": "lip"}))
    assert await second.receive() == m.HelloAccepted()
    assert await next_json(second) == {"choose_another_name": {"used_names": ["alice", "bob"]}}
    await second.send_json({"name": "carol", "level": 5, "character": "lip"})
    assert await next_json(second) == {"unpaired": ["alice", "bob", "carol"]}
    await until_lobby(bob, ["alice", "bob", "carol"])


async def test_names_of_players_in_rooms_stay_taken(loopback):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    await pair_up(alice, bob, "alice", "bob")
    await start_match(alice, bob)
    late = await loopback.connect()
    await late.send(b"H019" + encode_json({"name": "bob", "level": 5, "character": "lip"}))
    assert await late.receive() == m.HelloAccepted()
    assert await next_json(late) == {"choose_another_name": {"used_names": ["alice", "bob"]}}


async def test_names_breaking_the_name_rule_get_choose_another_name(loopback):
    alice = await loopback.join("alice")
    client = await loopback.connect()
    await client.hello()
    assert await client.receive() == m.HelloAccepted()
    for name in ["", "   ", "x" * 33, "new\nline", "tab\there"]:
        await client.send_json({"name": name, "level": 5, "character": "lip"})
        assert await next_json(client) == {"choose_another_name": {"used_names": ["alice"]}}
    await client.send_json({"name": "Zoë 2", "level": 5, "character": "lip"})
    assert await next_json(client) == {"unpaired": ["Zoë 2", "alice"]}
    await until_lobby(alice, ["Zoë 2", "alice"])


async def test_a_name_is_free_again_once_its_player_is_gone(loopback):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    await until_lobby(bob, ["alice", "bob"])
    await alice.aclose()
    await until_lobby(bob, ["bob"])
    again = await loopback.join("alice")
    assert await next_json(again) == {"unpaired": ["alice", "bob"]}


async def test_lobby_list_follows_players_coming_pairing_and_going(loopback):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    carol = await loopback.join("carol")
    await until_lobby(carol, ["alice", "bob", "carol"])
    await bob.aclose()
    await until_lobby(alice, ["alice", "carol"])
    await until_lobby(carol, ["alice", "carol"])
    await pair_up(alice, carol, "alice", "carol")
    dave = await loopback.join("dave")
    # Players in a room are not in the lobby list.
    assert await next_json(dave) == {"unpaired": ["dave"]}
    await alice.send_json({"leave_room": True})
    await until_lobby(dave, ["alice", "carol", "dave"])


# -- requests and rooms ---------------------------------------------------------


async def test_first_request_is_forwarded_unchanged_and_the_reply_creates_one_room(loopback):
    alice = await loopback.join("alice", level=3, character="windy")
    bob = await loopback.join("bob", level=8, character="lip")
    carol = await loopback.join("carol")
    await until_lobby(bob, ["alice", "bob", "carol"])
    request = {"game_request": {"sender": "alice", "receiver": "bob"}}
    await alice.send_json(request)
    assert await next_event(bob) == request
    await bob.send_json({"game_request": {"sender": "bob", "receiver": "alice"}})
    # Alice gets no request back, only the room.
    assert await next_event(alice) == {
        "create_room": True, "opponent": "bob", "menu_state": menu("level", False, "lip", 8)
    }
    assert await next_event(bob) == {
        "create_room": True, "opponent": "alice", "menu_state": menu("level", False, "windy", 3)
    }
    await until_lobby(carol, ["carol"])


async def test_invalid_requests_have_no_effect(loopback):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    carol = await loopback.join("carol")
    await until_lobby(alice, ["alice", "bob", "carol"])
    await until_lobby(bob, ["alice", "bob", "carol"])
    await until_lobby(carol, ["alice", "bob", "carol"])
    await alice.send_json({"game_request": {"sender": "alice", "receiver": "bob"}})
    await alice.send(
        b"".join(
            encode_json({"game_request": request})
            for request in [
                {"sender": "alice", "receiver": "alice"},  # to oneself
                {"sender": "alice", "receiver": "nobody"},  # unknown
                {"sender": "bob", "receiver": "carol"},  # not one's own name
                {"sender": "alice", "receiver": "bob"},  # repeated
                {"sender": "alice", "receiver": 7},  # wrong type
                {"sender": "alice", "receiver": "carol"},  # valid, marks the end
            ]
        )
    )
    # Carol's first request is alice's valid one, not the forged one from "bob".
    assert await next_event(carol) == {"game_request": {"sender": "alice", "receiver": "carol"}}
    await carol.send_json({"game_request": {"sender": "carol", "receiver": "bob"}})
    # Bob got alice's request exactly once, then carol's.
    assert await next_event(bob) == {"game_request": {"sender": "alice", "receiver": "bob"}}
    # Alice's request reached carol and carol's reached bob: nobody is in a room.
    assert await next_event(bob) == {"game_request": {"sender": "carol", "receiver": "bob"}}


async def test_room_creation_resets_cursor_and_ready_but_keeps_the_selections(loopback):
    alice = await loopback.join("alice", level=5, character="lip")
    bob = await loopback.join("bob", level=5, character="lip")
    await pair_up(alice, bob, "alice", "bob")
    await alice.send_json({"menu_state": menu("ready", True, "windy", 9)})
    assert await next_event(bob) == {"menu_state": menu("ready", True, "windy", 9)}
    await bob.send_json({"leave_room": True})
    await until_lobby(bob, ["alice", "bob"])
    await bob.send_json({"game_request": {"sender": "bob", "receiver": "alice"}})
    assert await next_event(alice) == {"leave_room": True, "unpaired": ["alice", "bob"]}
    assert await next_event(alice) == {"game_request": {"sender": "bob", "receiver": "alice"}}
    await alice.send_json({"game_request": {"sender": "alice", "receiver": "bob"}})
    assert await next_event(bob) == {
        "create_room": True, "opponent": "alice", "menu_state": menu("level", False, "windy", 9)
    }
    assert await next_event(alice) == {
        "create_room": True, "opponent": "bob", "menu_state": menu("level", False, "lip", 5)
    }


async def test_menu_states_are_relayed_unchanged_and_both_ready_starts_the_match(loopback):
    alice = await loopback.join("alice", level=5, character="lip")
    bob = await loopback.join("bob", level=5, character="lip")
    await pair_up(alice, bob, "alice", "bob")
    states = [
        menu("character", False, "windy", 5),
        menu("level", False, "windy", 10),
        menu("ready", True, "windy", 10),
    ]
    for state in states:
        await alice.send_json({"menu_state": state})
    for state in states:
        assert await next_event(bob) == {"menu_state": state}
    # A legacy level pick is relayed as it is, in the room too.
    await alice.send(b"L0")
    assert await bob.receive(timeout=TIMEOUT) == m.LevelPick(b"L0")
    await bob.send_json({"menu_state": menu("character", False, "thiana", 2)})
    assert await next_event(alice) == {"menu_state": menu("character", False, "thiana", 2)}
    await bob.send_json({"menu_state": menu("ready", True, "thiana", 2)})
    # Both are ready: bob's state is not relayed, the match starts instead.
    assert await next_event(alice) == {
        "match_start": True,
        "player_settings": {"character": "windy", "level": 10},
        "opponent_settings": {"character": "thiana", "level": 2},
    }
    assert await next_event(bob) == {
        "match_start": True,
        "player_settings": {"character": "thiana", "level": 2},
        "opponent_settings": {"character": "windy", "level": 10},
    }


# -- the match -------------------------------------------------------------------


async def test_panels_obey_the_rules_and_are_mirrored_to_the_opponent(loopback):
    alice, bob = await start_playing(loopback)
    own_rows: dict[ScriptedClient, list[str]] = {alice: [], bob: []}

    async def play(requester: ScriptedClient, opponent: ScriptedClient, ncolors: int, top: str):
        request = f"P{ncolors}{top}".encode()
        digits = await request_panels(requester, opponent, request)
        assert play_rule_violations(top, digits, ncolors) == [], request
        own_rows[requester].append(digits)
        return digits

    first = await play(alice, bob, 5, "000000")
    assert starting_board_violations(first) == []
    second = await play(bob, alice, 5, "000000")
    assert starting_board_violations(second) == []
    assert second[:BOARD_DIGITS] == first[:BOARD_DIGITS]
    assert second[BOARD_DIGITS:] != first[BOARD_DIGITS:]

    for ncolors in range(2, 8):
        tops = {alice: "000000", bob: "000000"}
        for _ in range(3):  # chained: each request sits on the last row of the previous reply
            for requester, opponent in ((alice, bob), (bob, alice)):
                digits = await play(requester, opponent, ncolors, tops[requester])
                assert "0" not in digits  # only a starting board has empties
                if ncolors == 2:
                    assert not any(stranding_rows(digits)), digits
                tops[requester] = digits[-6:]
    for side in (alice, bob):
        assert shock_schedule_violations("".join(own_rows[side])) == []
        assert "8" in "".join(own_rows[side])  # 380 rows reach the metal phases


async def test_garbage_panels_obey_the_rules_and_are_mirrored_to_the_opponent(loopback):
    alice, bob = await start_playing(loopback)
    for ncolors in range(2, 8):
        top = "000000"
        for _ in range(3):
            digits = await request_panels(alice, bob, f"Q{ncolors}{top}".encode())
            assert garbage_rule_violations(top, digits, ncolors) == []
            top = digits[-6:]
        digits = await request_panels(bob, alice, f"Q{ncolors}123412".encode())
        if ncolors > 2:
            assert garbage_rule_violations("123412", digits, ncolors) == []


async def test_panel_requests_that_cannot_be_answered_get_no_reply_and_harm_nothing(loopback):
    alice, bob = await start_playing(loopback)
    unanswerable = [
        b"P1000000", b"P8000000", b"P9000000", b"P0000000", b"Px000000",  # ncolors
        b"Q2112233",  # no two-colour garbage row fits on this one
        b"P2111111",  # nor a two-colour play row on this one
        b"P5abcdef",  # not digits
    ]
    await alice.send(b"".join(unanswerable))
    # The first thing either player gets is the answer to the next valid request.
    digits = await request_panels(alice, bob, b"P5000000")
    assert starting_board_violations(digits) == []
    assert play_rule_violations("000000", digits, 5) == []


async def test_a_side_whose_first_request_is_not_on_an_empty_row_gets_no_starting_board(
    loopback,
):
    alice, bob = await start_playing(loopback)
    first = await request_panels(alice, bob, b"P5123451")
    assert play_rule_violations("123451", first, 5) == []
    later = await request_panels(alice, bob, b"P5000000")
    assert "0" not in later
    # Bob's board is his own, made on his first request.
    board = await request_panels(bob, alice, b"P5000000")
    assert starting_board_violations(board) == []


async def test_shared_board_is_reused_as_it_is_when_the_second_side_asks_for_fewer_colours(
    loopback,
):
    alice, bob = await start_playing(loopback)
    board = await request_panels(alice, bob, b"P7000000")
    assert starting_board_violations(board) == []
    reply = await request_panels(bob, alice, b"P3000000")
    assert reply[:BOARD_DIGITS] == board[:BOARD_DIGITS]
    # The rows made for bob on top of the shared ones use his three colours.
    assert set(reply[BOARD_DIGITS:]) <= set("1238")
    below = reply[BOARD_DIGITS - 6 : BOARD_DIGITS]
    for column, panel in enumerate(reply[BOARD_DIGITS : BOARD_DIGITS + 6]):
        assert panel != below[column]


async def test_inputs_reach_the_opponent_in_order_and_are_never_echoed(loopback):
    alice, bob = await start_playing(loopback)
    sent = {
        alice: bytes(INPUT_SYMBOLS[i % 64] for i in range(100)),
        bob: bytes(INPUT_SYMBOLS[(7 * i + 3) % 64] for i in range(100)),
    }

    async def send_inputs(client: ScriptedClient) -> None:
        symbols = sent[client]
        for symbol in symbols[:50]:  # one frame per write, as a client at 60 Hz
            await client.send(b"I" + bytes([symbol]))
        await client.send(b"".join(b"I" + bytes([symbol]) for symbol in symbols[50:]))

    async def receive_inputs(client: ScriptedClient, into: list[int]) -> None:
        for _ in range(100):
            frame = await client.receive(timeout=TIMEOUT)
            assert isinstance(frame, m.Input), frame
            into.append(frame.raw[1])

    got: dict[ScriptedClient, list[int]] = {alice: [], bob: []}
    async with trio.open_nursery() as nursery:
        for client in (alice, bob):
            nursery.start_soon(send_inputs, client)
            nursery.start_soon(receive_inputs, client, got[client])
    assert bytes(got[bob]) == sent[alice]
    assert bytes(got[alice]) == sent[bob]
    # Had anything been echoed, it would come before these.
    await bob.send(b"I/L7")
    assert await alice.receive(timeout=TIMEOUT) == m.Input(b"I/")
    assert await alice.receive(timeout=TIMEOUT) == m.LevelPick(b"L7")
    await alice.send(b"IA")
    assert await bob.receive(timeout=TIMEOUT) == m.Input(b"IA")


async def test_game_over_from_both_returns_to_select_and_the_next_match_has_a_fresh_board(
    loopback,
):
    alice = await loopback.join("alice", level=4, character="windy")
    bob = await loopback.join("bob", level=6, character="lip")
    await pair_up(alice, bob, "alice", "bob")
    await start_match(alice, bob)
    first_board = await request_panels(alice, bob, b"P5000000")
    await request_panels(bob, alice, b"P5000000")
    await alice.send_json({"game_over": True})
    # One game over ends nothing: bob plays on and alice still sees him.
    await bob.send(b"IB")
    assert await alice.receive(timeout=TIMEOUT) == m.Input(b"IB")
    await request_panels(bob, alice, b"Q5000000")
    await bob.send_json({"game_over": True})
    assert await next_event(alice) == {
        "create_room": True, "opponent": "bob", "menu_state": menu("level", False, "lip", 5)
    }
    assert await next_event(bob) == {
        "create_room": True, "opponent": "alice", "menu_state": menu("level", False, "lip", 5)
    }
    # Game frames from the finished match are ignored; a level pick still goes through.
    await alice.send(b"IA" + b"P5000000" + encode_json({"game_over": True}) + b"L3")
    assert await bob.receive(timeout=TIMEOUT) == m.LevelPick(b"L3")
    # start_match readied both with level 5 and character lip.
    await start_match(alice, bob)
    second_board = await request_panels(alice, bob, b"P5000000")
    assert starting_board_violations(second_board) == []
    assert second_board[:BOARD_DIGITS] != first_board[:BOARD_DIGITS]
    shared = await request_panels(bob, alice, b"P5000000")
    assert starting_board_violations(shared) == []
    assert shared[:BOARD_DIGITS] == second_board[:BOARD_DIGITS]
    # And both game overs are needed again.
    await bob.send_json({"game_over": True})
    await alice.send(b"IC")
    assert await bob.receive(timeout=TIMEOUT) == m.Input(b"IC")
    await alice.send_json({"game_over": True})
    assert (await next_event(bob))["create_room"] is True


@pytest.mark.parametrize(
    ("versions", "levels", "shared"),
    [
        (("004", "004"), (3, 10), True),  # before 019 boards are always shared
        (("019", "019"), (8, 9), False),
        (("019", "019"), (9, 10), True),
        (("019", "019"), (2, 8), True),
        (("004", "019"), (8, 9), False),
    ],
)
async def test_starting_board_is_shared_only_when_versions_and_levels_allow(
    loopback, versions, levels, shared
):
    alice = await loopback.join("alice", version=versions[0], level=levels[0])
    bob = await loopback.join("bob", version=versions[1], level=levels[1])
    await pair_up(alice, bob, "alice", "bob")
    for client, level in ((alice, levels[0]), (bob, levels[1])):
        await client.send_json({"menu_state": menu("ready", True, "lip", level)})
    await alice.receive_until("match_start", timeout=TIMEOUT)
    await bob.receive_until("match_start", timeout=TIMEOUT)
    first = await request_panels(alice, bob, b"P6000000")
    second = await request_panels(bob, alice, b"P6000000")
    for digits in (first, second):
        assert starting_board_violations(digits) == []
        assert play_rule_violations("000000", digits, 6) == []
    assert (first[:BOARD_DIGITS] == second[:BOARD_DIGITS]) is shared


# -- leaving -----------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["room", "match"])
async def test_leave_room_sends_both_players_back_to_the_lobby(loopback, stage):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    carol = await loopback.join("carol")
    await pair_up(alice, bob, "alice", "bob")
    if stage == "match":
        await start_match(alice, bob)
        await request_panels(alice, bob, b"P5000000")
    await until_lobby(carol, ["carol"])
    await bob.send_json({"leave_room": True})
    expected = {"leave_room": True, "unpaired": ["alice", "bob", "carol"]}
    assert await next_event(alice) == expected
    assert await next_event(bob) == expected
    await until_lobby(carol, ["alice", "bob", "carol"])
    # Inputs are no longer relayed, and the two may pair again.
    await alice.send(b"IA")
    await pair_up(alice, bob, "alice", "bob")


STAGES = ["room", "playing", "leaver_game_over", "opponent_game_over"]


@pytest.mark.parametrize("stage", STAGES)
async def test_disconnect_tells_the_opponent_at_once_with_the_lobby_list(loopback, stage):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    carol = await loopback.join("carol")
    await pair_up(alice, bob, "alice", "bob")
    if stage != "room":
        await start_match(alice, bob)
        await request_panels(alice, bob, b"P5000000")
        await request_panels(bob, alice, b"P5000000")
    if stage == "leaver_game_over":
        await alice.send_json({"game_over": True})
    if stage == "opponent_game_over":
        await bob.send_json({"game_over": True})
    await until_lobby(carol, ["carol"])
    started = trio.current_time()
    await alice.aclose()
    assert await next_event(bob) == {"leave_room": True, "unpaired": ["bob", "carol"]}
    assert trio.current_time() - started < AT_ONCE
    await until_lobby(carol, ["bob", "carol"])
    await pair_up(bob, carol, "bob", "carol")


async def test_disconnect_in_the_lobby_withdraws_the_players_request(loopback):
    alice = await loopback.join("alice")
    bob = await loopback.join("bob")
    await alice.send_json({"game_request": {"sender": "alice", "receiver": "bob"}})
    await bob.receive_until("game_request", timeout=TIMEOUT)
    await alice.aclose()
    await until_lobby(bob, ["bob"])
    newcomer = await loopback.join("alice")
    # The old request is gone: bob's request is forwarded, it creates no room.
    await bob.send_json({"game_request": {"sender": "bob", "receiver": "alice"}})
    assert await next_event(newcomer) == {"game_request": {"sender": "bob", "receiver": "alice"}}


async def test_messages_before_a_protocol_error_are_handled_then_the_connection_closes(
    loopback,
):
    alice = await loopback.join("alice")
    await until_lobby(alice, ["alice"])
    broken = await loopback.connect()
    request = encode_json({"game_request": {"sender": "broken", "receiver": "alice"}})
    registration = encode_json({"name": "broken", "level": 5, "character": "lip"})
    await broken.send(b"H004" + registration + request + b"Z" + b"IA")
    frames = await broken.expect_closed(timeout=TIMEOUT)
    assert frames[0] == m.HelloAccepted()
    assert all(unpaired_of(frame.payload) is not None for frame in frames[1:]), frames
    assert await next_event(alice) == {"game_request": {"sender": "broken", "receiver": "alice"}}
    # The name is free again at once.
    again = await loopback.join("broken")
    assert await next_json(again) == {"unpaired": ["alice", "broken"]}


# -- the two dialects --------------------------------------------------------------


async def test_a_client_of_each_dialect_play_each_other(loopback):
    doc = await loopback.join("doc", version="139", level=7, character="thiana")
    assert await next_json(doc) == {"lobby_state": {"unpaired": ["doc"], "paired": []}}
    old = await loopback.join("old", version="004", level=5, character="lip")
    assert await next_json(old) == {"unpaired": ["doc", "old"]}
    await until_lobby(doc, ["doc", "old"])
    watcher = await loopback.join("watcher", version="139")
    await until_lobby(watcher, ["doc", "old", "watcher"])

    await old.send_json({"game_request": {"sender": "old", "receiver": "doc"}})
    assert await next_event(doc) == {
        "game_request_to_client": {"sender": "old", "receiver": "doc"}
    }
    # The document spells the field "reciver".
    await doc.send_json({"game_request_to_server": {"sender": "doc", "reciver": "old"}})
    assert await next_event(doc) == {
        "create_room": True, "opponent": "old", "menu_state": menu("level", False, "lip", 5)
    }
    assert await next_event(old) == {
        "create_room": True, "opponent": "doc", "menu_state": menu("level", False, "thiana", 7)
    }
    room = await until_lobby(watcher, ["watcher"])
    (paired,) = room["lobby_state"]["paired"]
    assert paired["playing"] is False
    # The player who requested first comes first.
    assert paired["players"] == [
        {"name": "old", "level": 5, "character": "lip"},
        {"name": "doc", "level": 7, "character": "thiana"},
    ]

    # The document writes levels as digit strings; the opponent gets an integer.
    await doc.send_json({"menu_state": {**menu("ready", True, "thiana", 7), "level": "7"}})
    assert await next_event(old) == {"menu_state": menu("ready", True, "thiana", 7)}
    await old.send_json({"menu_state": menu("ready", True, "lip", 5)})
    assert (await next_event(doc))["opponent_settings"] == {"character": "lip", "level": 5}
    assert (await next_event(old))["opponent_settings"] == {"character": "thiana", "level": 7}
    playing = await next_json(watcher)
    assert playing["lobby_state"]["paired"][0]["playing"] is True

    # Each is pinged in its own dialect after a second of silence.
    async def first_ping(client: ScriptedClient, expected: object) -> None:
        assert await client.receive(timeout=TIMEOUT, skip_pings=False) == expected

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first_ping, doc, m.Heartbeat())
        nursery.start_soon(first_ping, old, m.Ping("LOL"))

    # Levels 7 and 5 are both below 9: the starting board is shared.
    board = await request_panels(doc, old, b"P5000000")
    assert starting_board_violations(board) == []
    assert (await request_panels(old, doc, b"P5000000"))[:BOARD_DIGITS] == board[:BOARD_DIGITS]
    garbage = await request_panels(old, doc, b"Q5000000")
    assert garbage_rule_violations("000000", garbage, 5) == []
    await doc.send(b"IAIBIC")
    await old.send(b"IxIy")
    assert [await old.receive(timeout=TIMEOUT) for _ in range(3)] == [
        m.Input(b"IA"), m.Input(b"IB"), m.Input(b"IC")
    ]
    assert [await doc.receive(timeout=TIMEOUT) for _ in range(2)] == [
        m.Input(b"Ix"), m.Input(b"Iy")
    ]

    await doc.send_json({"game_over": True})
    await old.send_json({"game_over": True})
    # Back to select: the document's player stands on "ready", the clients' on "level".
    assert await next_event(old) == {
        "create_room": True, "opponent": "doc", "menu_state": menu("ready", False, "thiana", 7)
    }
    assert await next_event(doc) == {
        "create_room": True, "opponent": "old", "menu_state": menu("level", False, "lip", 5)
    }

    await old.send_json({"leave_room": True})
    lobby_state = {"unpaired": ["doc", "old", "watcher"], "paired": []}
    assert await next_event(doc) == {"leave_room": True, "lobby_state": lobby_state}
    assert await next_event(old) == {"leave_room": True, "unpaired": ["doc", "old", "watcher"]}
    assert await until_lobby(watcher, ["doc", "old", "watcher"]) == {"lobby_state": lobby_state}


async def test_document_clients_return_to_select_with_the_ready_button_highlighted(loopback):
    first = await loopback.join("first", version="139", level=3, character="lip")
    second = await loopback.join("second", version="139", level=4, character="windy")
    await first.send_json({"game_request_to_server": {"sender": "first", "receiver": "second"}})
    assert await next_event(second) == {
        "game_request_to_client": {"sender": "first", "receiver": "second"}
    }
    await second.send_json({"game_request_to_server": {"sender": "second", "reciver": "first"}})
    assert (await next_event(first))["create_room"] is True
    assert (await next_event(second))["create_room"] is True
    await first.send_json({"menu_state": menu("ready", True, "lip", 3)})
    assert await next_event(second) == {"menu_state": menu("ready", True, "lip", 3)}
    await second.send_json({"menu_state": menu("ready", True, "windy", 4)})
    assert (await next_event(first))["match_start"] is True
    assert (await next_event(second))["match_start"] is True
    await first.send_json({"game_over": True})
    await second.send_json({"game_over": True})
    assert await next_event(first) == {
        "create_room": True, "opponent": "second", "menu_state": menu("ready", False, "windy", 4)
    }
    assert await next_event(second) == {
        "create_room": True, "opponent": "first", "menu_state": menu("ready", False, "lip", 3)
    }


async def test_document_client_is_told_with_a_lobby_state_when_its_opponent_disconnects(
    loopback,
):
    doc = await loopback.join("doc", version="139")
    old = await loopback.join("old", version="004")
    await old.send_json({"game_request": {"sender": "old", "receiver": "doc"}})
    await doc.receive_until("game_request_to_client", timeout=TIMEOUT)
    await doc.send_json({"game_request_to_server": {"sender": "doc", "receiver": "old"}})
    await start_match(doc, old)
    started = trio.current_time()
    await old.aclose()
    assert await next_event(doc) == {
        "leave_room": True, "lobby_state": {"unpaired": ["doc"], "paired": []}
    }
    assert trio.current_time() - started < AT_ONCE


# -- many players ------------------------------------------------------------------


async def test_two_rooms_play_at_the_same_time_without_disturbing_each_other(loopback):
    alice, bob = await start_playing(loopback, "alice", "bob")
    carol, dave = await start_playing(loopback, "carol", "dave")
    opponents = {alice: bob, bob: alice, carol: dave, dave: carol}
    symbol_of = {alice: b"A", bob: b"B", carol: b"C", dave: b"D"}

    async def play(client: ScriptedClient) -> None:
        for _ in range(30):
            await client.send(b"I" + symbol_of[client])
            await trio.sleep(0.002)

    async def watch(client: ScriptedClient) -> None:
        expected = m.Input(b"I" + symbol_of[opponents[client]])
        for _ in range(30):
            assert await client.receive(timeout=TIMEOUT) == expected

    async with trio.open_nursery() as nursery:
        for client in opponents:
            nursery.start_soon(play, client)
            nursery.start_soon(watch, client)

    # Panels stay within their room, and each room has its own starting board.
    await request_panels(alice, bob, b"P5000000")
    await request_panels(carol, dave, b"P5000000")
    await bob.send(b"IZ")
    assert await alice.receive(timeout=TIMEOUT) == m.Input(b"IZ")
    await dave.send(b"IY")
    assert await carol.receive(timeout=TIMEOUT) == m.Input(b"IY")

    # One room ending, then one player vanishing, leaves the other room playing.
    await alice.send_json({"game_over": True})
    await bob.send_json({"game_over": True})
    assert (await next_event(alice))["create_room"] is True
    assert (await next_event(bob))["create_room"] is True
    await alice.aclose()
    assert await next_event(bob) == {"leave_room": True, "unpaired": ["bob"]}
    await carol.send(b"IX")
    assert await dave.receive(timeout=TIMEOUT) == m.Input(b"IX")
    await dave.send(b"IW")
    assert await carol.receive(timeout=TIMEOUT) == m.Input(b"IW")
    await request_panels(dave, carol, b"Q6000000")
