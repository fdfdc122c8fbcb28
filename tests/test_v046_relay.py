"""The per-frame path of 046 inputs: ``ServerCore.relay_target`` and the lobby's input routes.

Pure core, fed bytes: two players start a match, a spectator joins, and single
inputs take the fast path exactly as the full path would have handled them.
"""

from __future__ import annotations

from netplay.actions import PauseReading, ResumeReading, Send
from netplay.config import Config
from netplay.core import ServerCore
from netplay.framing import messages as m
from netplay.framing.length3 import Decoder, encode_json
from netplay.lobbies.v046 import InputRoute

NOW = 100.0
READY = encode_json({"menu_state": {"cursor": "__Ready", "level": 5, "ready": True,
                                    "wants_ready": True, "character": "lip"}})


def json_sent(actions: list, player: int) -> list[dict]:
    decoder = Decoder()
    for action in actions:
        if isinstance(action, Send) and action.player == player:
            decoder.receive_data(action.data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        if isinstance(frame, m.Json):
            frames.append(frame.payload)
    return frames


def joined(core: ServerCore, name: str) -> int:
    connection = core.open_connection("127.0.0.1", NOW)
    assert connection is not None
    core.receive(connection, b"H046" + encode_json({"name": name, "level": 5}), NOW)
    return connection


def match_with_spectator(config: Config | None = None) -> tuple[ServerCore, int, int, int]:
    """(core, player 1, player 2, spectator) with the match started and the spectator watching."""
    core = ServerCore(config or Config(), seed=1)
    alice, bob, carol = joined(core, "alice"), joined(core, "bob"), joined(core, "carol")
    core.receive(alice, encode_json({"game_request": {"sender": "alice", "receiver": "bob"}}), NOW)
    core.receive(bob, encode_json({"game_request": {"sender": "bob", "receiver": "alice"}}), NOW)
    core.receive(alice, READY, NOW)
    started = core.receive(bob, READY, NOW)
    assert any("match_start" in payload for payload in json_sent(started, alice))
    granted = core.receive(
        carol, encode_json({"spectate_request": {"sender": "carol", "roomNumber": 1}}), NOW
    )
    assert any("spectate_request_granted" in p for p in json_sent(granted, carol))
    return core, bob, alice, carol  # bob completed the pair: player 1


def test_a_lone_046_input_is_routed_to_the_opponent_and_spectators_and_recorded():
    core, first, second, spectator = match_with_spectator()
    route = core.relay_target(first, b"IC", NOW)
    assert isinstance(route, InputRoute)
    assert route.opponent == second and route.spectators == (spectator,)
    assert route.as_spectators[ord("C")] == b"UC"  # player 1's inputs reach spectators as U
    other = core.relay_target(second, b"ID", NOW)
    assert isinstance(other, InputRoute) and other.as_spectators[ord("D")] == b"ID"
    # Recorded for spectators who join later, as the full path records them.
    late = joined(core, "dave")
    granted = core.receive(
        late, encode_json({"spectate_request": {"sender": "dave", "roomNumber": 1}}), NOW
    )
    [message] = [p for p in json_sent(granted, late) if "spectate_request_granted" in p]
    replay = message["replay_of_match_so_far"]["vs"]
    assert (replay["in_buf"], replay["I"]) == ("C1", "D1")
    # The route follows spectators who join and leave.
    assert route.spectators == (spectator, late)
    core.close_connection(spectator)
    assert route.spectators == (late,)


def test_fast_and_full_paths_send_the_same_bytes():
    core, first, second, spectator = match_with_spectator()
    route = core.relay_target(first, b"Ig", NOW)
    assert isinstance(route, InputRoute)
    fast = [(route.opponent, b"Ig")] + [(s, route.as_spectators[ord("g")]) for s in route.spectators]
    full = [(a.player, a.data) for a in core.receive(first, b"Ig", NOW)]
    assert fast == full == [(second, b"Ig"), (spectator, b"Ug")]


def test_a_backlog_of_046_inputs_takes_the_fast_path_in_order():
    core, first, second, spectator = match_with_spectator()
    relayed = core.counters.traffic.relayed_inputs
    route = core.relay_target(first, b"IAIBIg", NOW)
    assert isinstance(route, InputRoute) and route.opponent == second
    assert core.counters.traffic.relayed_inputs - relayed == 3
    player = core.lobby046.players[first]
    assert player.room is not None and player.room.match is not None
    assert player.room.match.inputs[0] == bytearray(b"ABg")
    # The full path would have sent the same, one message at a time.
    full = core.receive(first, b"IAIBIg", NOW)
    assert [(a.player, a.data) for a in full if a.player == second] == [
        (second, b"IA"), (second, b"IB"), (second, b"Ig")
    ]


def test_a_backlog_the_bucket_would_not_admit_whole_goes_to_the_full_path():
    # After set-up the bucket holds 1.05 tokens: two inputs would each be admitted, five not.
    core, first, second, spectator = match_with_spectator(
        Config(max_messages_per_second=0.001, message_burst=5.05)
    )
    player = core.lobby046.players[first]
    assert player.room is not None and player.room.match is not None
    assert core.relay_target(first, b"IAIBICIDIE", NOW) is None
    assert player.room.match.inputs[0] == bytearray()  # nothing recorded, nothing spent
    assert isinstance(core.relay_target(first, b"IAIB", NOW), InputRoute)
    assert player.room.match.inputs[0] == bytearray(b"AB")


def test_inputs_the_fast_path_does_not_take():
    core, first, second, spectator = match_with_spectator()
    assert core.relay_target(first, b"I\x00", NOW) is None  # invalid: refused by the full path
    assert core.relay_target(first, b"ICI", NOW) is None  # a partial input: the decoder's job
    assert core.relay_target(first, b"ICI\x00", NOW) is None  # one invalid in a backlog
    assert core.relay_target(first, b"IC" + encode_json({"game_over": True}), NOW) is None
    assert core.relay_target(spectator, b"IC", NOW) is None  # not playing
    core.receive(first, encode_json({"game_over": True, "outcome": 1}), NOW)
    core.receive(second, encode_json({"game_over": True, "outcome": 1}), NOW)
    assert core.relay_target(first, b"IC", NOW) is None  # the match is over


def test_a_046_input_over_the_rate_limit_waits_for_the_decoder_path_unrecorded():
    core, first, second, spectator = match_with_spectator(
        Config(max_messages_per_second=0.001, message_burst=4)
    )
    # The burst was spent on the hello, the name, the request and the ready message.
    assert core.relay_target(first, b"IC", NOW) is None
    player = core.lobby046.players[first]
    assert player.room is not None and player.room.match is not None
    assert player.room.match.inputs[0] == bytearray()
    # The decoder path holds it until the bucket has a token, then relays it.
    assert core.receive(first, b"IC", NOW) == [PauseReading(first)]
    resume_at = core.next_deadline()
    assert resume_at > NOW
    actions = core.tick(resume_at)
    assert Send(second, b"IC") in actions and actions[-1] == ResumeReading(first)
    assert player.room.match.inputs[0] == bytearray(b"C")
