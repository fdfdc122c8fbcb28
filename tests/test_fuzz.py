"""Property tests: the codec, the sans-IO core and the whole server under random input.

* The codec fed any byte stream, cut anywhere, raises nothing but
  RemoteProtocolError.
* The sans-IO :class:`ServerCore`, driven without trio by random interleavings
  of several clients (valid messages, colliding names, messages out of place,
  garbage, oversized frames, time passing, disconnects), keeps every invariant
  after every step; only the returned actions are inspected, none is carried out.
* The whole in-process server, with a few clients doing random things on the
  virtual clock, still answers a well-behaved pair of players.

Times are arbitrary floats (rounding must never stall a timer), and text may
hold lone surrogates, which JSON escapes can carry but UTF-8 cannot.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import threading
from typing import Any

import attrs
import hypothesis.strategies as st
import trio
import trio.testing
from helpers import assert_rooms_and_requests_consistent
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from netplay.actions import Close, PauseReading, ResumeReading, Send
from netplay.config import Config
from netplay.core import Phase, ServerCore
from netplay.dialects.classic import Dialect
from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.length3 import Decoder, Direction
from netplay.lobbies.classic import PlayerState, RoomState
from netplay.server import Server
from netplay.testing import ConnectionClosed, ScriptedClient, running_server

IN_ROOM = {PlayerState.ROOM, PlayerState.PLAYING, PlayerState.GAME_OVER}
IN_MATCH = {PlayerState.PLAYING, PlayerState.GAME_OVER}

# Names that collide, differ only in case or accents, or break the name rule.
NAMES = ["ann", "bob", "cy", "Ann", "bøb", "", "   ", "x" * 33, "tab\there", "lone\ud800"]
HOSTS = ["127.0.0.1", "203.0.113.5", "203.0.113.6"]
VERSIONS = [b"004", b"013", b"019", b"139", b"999", b"01", b"\xff\x00A"]

text = st.text(st.characters(exclude_categories=()), max_size=8)
any_json_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 120),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(text, st.integers(), max_size=2),
)


def json_frame(payload: dict[str, Any]) -> bytes:
    """A J frame; non-ASCII text as JSON escapes, so that lone surrogates can be sent."""
    body = json.dumps(payload).encode("ascii")
    return b"J" + len(body).to_bytes(3, "big") + body


# ---------------------------------------------------------------------------
# (a) the codec


client_frames = st.one_of(
    st.sampled_from(
        [b"H004", b"H139", b"FLOL", b"ELOL", b"W", b"IA", b"I\xff", b"L5", b"P5000000",
         b"Q2112233", b"J\x00\x00\x02{}", b"J\x00\x00\x00", b"J\xff\xff\xff", b"Z", b"\x00"]
    ),
    st.binary(max_size=12),
    st.binary(max_size=40).map(lambda body: b"J" + len(body).to_bytes(3, "big") + body),
    st.dictionaries(text, any_json_value, max_size=3).map(json_frame),
)
server_frames = st.one_of(
    st.sampled_from([b"H", b"N", b"ELOL", b"W", b"IA", b"L1", b"P" + b"1" * 120, b"Q"]),
    st.binary(max_size=12),
    st.binary(max_size=40).map(lambda body: b"J" + len(body).to_bytes(3, "big") + body),
)


def decode_in_chunks(
    decoder: Decoder, stream: bytes, cuts: list[int]
) -> tuple[list[Any], str | None]:
    """Feed ``stream`` cut at ``cuts``; every frame up to the first fatal error, and its reason."""
    frames: list[Any] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for start, end in zip(bounds, bounds[1:]):
        decoder.receive_data(stream[start:end])
        while True:
            try:
                frame = decoder.next_frame()
            except RemoteProtocolError as error:
                if error.fatal:
                    # A broken decoder stays broken, with the same error.
                    try:
                        decoder.next_frame()
                    except RemoteProtocolError as again:
                        assert again is error
                    else:
                        raise AssertionError("a broken decoder decoded again")
                    return frames, error.reason
                frames.append(("refused", error.reason))
                continue
            if frame is None:
                break
            frames.append(frame)
    return frames, None


@settings(max_examples=150, deadline=None)
@given(
    direction=st.sampled_from(Direction),
    pieces=st.lists(st.one_of(client_frames, server_frames), max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    other_cuts=st.lists(st.integers(0, 10_000), max_size=8),
    max_json_length=st.sampled_from([0, 16, 4096]),
)
def test_codec_fed_any_bytes_raises_only_remote_protocol_errors(
    direction, pieces, cuts, other_cuts, max_json_length
):
    stream = b"".join(pieces)
    first = decode_in_chunks(Decoder(direction, max_json_length=max_json_length), stream, cuts)
    # However the stream is cut, the same frames come out and the same error ends them.
    second = decode_in_chunks(
        Decoder(direction, max_json_length=max_json_length), stream, other_cuts
    )
    assert first == second


# ---------------------------------------------------------------------------
# (b) the sans-IO core


@st.composite
def client_messages(draw: st.DrawFn, own_name: str | None) -> bytes:
    """One or a few messages a client might send, valid or not for its state."""
    name = st.sampled_from(NAMES)
    sender = st.sampled_from([own_name or "ann", own_name or "ann", *NAMES])
    level = st.one_of(st.integers(0, 12), any_json_value)
    kinds = {
        "hello": st.sampled_from(VERSIONS).map(lambda v: b"H" + v),
        "register": st.builds(
            lambda n, lv, c: json_frame({"name": n, "level": lv, "character": c}),
            name, level, st.sampled_from(["lip", "windy", "\udfff", 7, None]),
        ),
        "request": st.builds(
            lambda key, s, r: json_frame({key: {"sender": s, "receiver": r}}),
            st.sampled_from(["game_request", "game_request_to_server"]), sender, name,
        ),
        "request_spelled_as_the_document": st.builds(
            lambda s, r: json_frame({"game_request_to_server": {"sender": s, "reciver": r}}),
            sender, name,
        ),
        "menu_state": st.builds(
            lambda cursor, ready, lv, character: json_frame(
                {"menu_state": {"cursor": cursor, "ready": ready, "character": character,
                                "level": lv}}
            ),
            st.sampled_from(["level", "ready", 3, "\ud800"]),
            st.sampled_from([True, True, False, "yes"]), level, text,
        ),
        "leave_room": st.just(json_frame({"leave_room": True})),
        "game_over": st.just(json_frame({"game_over": True})),
        "panels": st.builds(
            lambda letter, colours, row: letter + colours + row,
            st.sampled_from([b"P", b"Q"]),
            st.sampled_from([b"2", b"5", b"6", b"7", b"1", b"9", b"?", b"\xff"]),
            st.sampled_from([b"000000", b"112233", b"111222", b"123451", b"888888", b"12a4x6"]),
        ),
        "input": st.binary(min_size=1, max_size=1).map(lambda b: b"I" + b),
        "inputs": st.integers(1, 300).map(lambda n: b"IA" * n),
        "level_pick": st.binary(min_size=1, max_size=1).map(lambda b: b"L" + b),
        "life": st.sampled_from([b"FLOL", b"ELOL", b"W"]),
        "json_of_any_shape": st.dictionaries(
            st.sampled_from(["name", "game_request", "menu_state", "leave_room", "game_over", "x"]),
            any_json_value, max_size=3,
        ).map(json_frame),
        "bad_json": st.binary(max_size=30).map(lambda b: b"J" + len(b).to_bytes(3, "big") + b),
        "oversized": st.sampled_from([b"J\xff\xff\xff", b"J\x00\x10\x01"]),
        "garbage": st.binary(min_size=1, max_size=10),
    }
    weights = {"garbage": 1, "oversized": 1, "bad_json": 2}
    choices = [kind for kind in kinds for _ in range(weights.get(kind, 4))]
    count = draw(st.integers(1, 3))
    return b"".join(draw(kinds[draw(st.sampled_from(choices))]) for _ in range(count))


def decode_all(data: bytes) -> list[Any]:
    """Every frame of what the server sent; it must be whole, well-formed frames."""
    decoder = Decoder(Direction.SERVER_TO_CLIENT, max_json_length=(1 << 24) - 1)
    decoder.receive_data(data)
    frames = decoder.frames()
    assert decoder.buffered == 0, f"a partial frame was sent: {data!r}"
    return frames


@attrs.define
class ClientView:
    """A client's idea of its situation, from the messages it received."""

    opponent: str | None = None
    in_match: bool = False
    unpaired: list[str] | None = None
    paired: list[Any] | None = None

    def learn(self, payload: dict[str, Any]) -> None:
        if "create_room" in payload:
            self.opponent, self.in_match = payload["opponent"], False
        if "match_start" in payload:
            self.in_match = True
        if "leave_room" in payload:
            self.opponent, self.in_match = None, False
        if "unpaired" in payload:
            self.unpaired = payload["unpaired"]
        if "lobby_state" in payload:
            self.unpaired = payload["lobby_state"]["unpaired"]
            self.paired = payload["lobby_state"]["paired"]


class CoreUnderRandomClients(RuleBasedStateMachine):
    """Random clients feeding one ServerCore; every returned action is checked, none executed."""

    def __init__(self) -> None:
        super().__init__()
        self.core = ServerCore(
            Config(
                max_connections=8,
                max_connections_per_ip=3,
                max_json_length=300,
                max_messages_per_second=100,
                message_burst=40,
            ),
            seed=3,
        )
        self.now = 0.0
        self.closed_by_server: set[int] = set()  # a Close was returned; the edge closes later
        self.ever_opened: set[int] = set()
        self._opponent_before: dict[int, int] = {}
        # What each client knows, built only from what it was sent.
        self.views: dict[int, ClientView] = collections.defaultdict(ClientView)

    @initialize(
        count=st.integers(0, 4),
        versions=st.lists(st.sampled_from([b"004", b"139"]), min_size=4, max_size=4),
    )
    def some_players_in_the_lobby(self, count: int, versions: list[bytes]) -> None:
        """Start with a few registered players, so that random steps reach rooms and matches."""
        for index in range(count):
            connection_id = self.core.open_connection(HOSTS[0], self.now)
            assert connection_id is not None
            self.ever_opened.add(connection_id)
            registration = json_frame({"name": NAMES[index], "level": 5, "character": "lip"})
            self.feed(connection_id, b"H" + versions[index] + registration)

    # -- helpers ------------------------------------------------------------

    def live(self) -> list[int]:
        return sorted(self.core.connections)

    def check_actions(self, actions: list[Any], *, sender: int | None = None) -> None:
        connections = self.core.connections
        opponents = set()
        if sender is not None:
            opponents = {self._opponent_before.get(sender), self.opponents().get(sender)}
        for action in actions:
            assert isinstance(action, (Send, Close, PauseReading, ResumeReading))
            assert action.player in connections, f"{action!r} targets a connection that is gone"
            if isinstance(action, (PauseReading, ResumeReading)):
                continue
            if isinstance(action, Close):
                self.closed_by_server.add(action.player)
                continue
            assert action.player not in self.closed_by_server, (
                f"{action!r} sent after the connection was told to close"
            )
            for frame in decode_all(action.data):
                if isinstance(frame, m.Json):
                    self.views[action.player].learn(frame.payload)
                if isinstance(frame, m.Input) and sender is not None:
                    # Inputs go to the sender's opponent, never back to the sender.
                    assert action.player != sender
                    assert action.player in opponents
                if isinstance(frame, m.Json) and "leave_room" in frame.payload:
                    unpaired = frame.payload.get("unpaired")
                    if unpaired is None:
                        unpaired = frame.payload["lobby_state"]["unpaired"]
                    assert unpaired == sorted(unpaired)
                    # Back in the lobby, the player is listed (unless it closed itself since,
                    # later in the same bytes).
                    player = self.core.lobby.players.get(action.player)
                    assert player is None or player.name in unpaired

    def opponents(self) -> dict[int, int]:
        """Each player in a match, and its opponent."""
        return {
            player.id: player.opponent().id
            for player in self.core.lobby.players.values()
            if player.state in IN_MATCH
        }

    # -- rules --------------------------------------------------------------

    @rule(host=st.sampled_from(HOSTS))
    def connect(self, host: str) -> None:
        before = len(self.core.connections)
        connection_id = self.core.open_connection(host, self.now)
        if connection_id is None:
            assert before == self.core.config.max_connections or (
                self.core.connections_per_host.get(host, 0)
                >= self.core.config.max_connections_per_ip
                and not self.core.config.unlimited_ip(host)
            )
        else:
            assert connection_id not in self.ever_opened
            self.ever_opened.add(connection_id)

    def feed(self, connection_id: int, payload: bytes, cut: int | None = None) -> None:
        """``payload`` arrives from a connection, in one piece or cut in two."""
        chunks = [payload]
        if cut is not None and 0 < cut < len(payload):
            chunks = [payload[:cut], payload[cut:]]
        for chunk in chunks:
            if connection_id not in self.core.connections:
                break
            self._opponent_before = self.opponents()
            self.check_actions(
                self.core.receive(connection_id, chunk, self.now), sender=connection_id
            )
            self.check_consistency()

    def players_in(self, *states: PlayerState) -> list[int]:
        return sorted(p.id for p in self.core.lobby.players.values() if p.state in states)

    def awaiting_hello(self) -> list[int]:
        return sorted(
            cid for cid, c in self.core.connections.items() if c.phase is Phase.AWAITING_HELLO
        )

    # Well-formed steps, so that random runs reach rooms and matches often.

    @precondition(lambda self: self.awaiting_hello())
    @rule(data=st.data(), version=st.sampled_from([b"004", b"004", b"019", b"139", b"999"]))
    def hello(self, data: st.DataObject, version: bytes) -> None:
        connection_id = data.draw(st.sampled_from(self.awaiting_hello()), label="connection")
        self.feed(connection_id, b"H" + version)

    @precondition(lambda self: self.players_in(PlayerState.UNREGISTERED))
    @rule(data=st.data(), name=st.sampled_from(NAMES[:5] * 3 + NAMES[5:]))
    def register(self, data: st.DataObject, name: str) -> None:
        player = data.draw(st.sampled_from(self.players_in(PlayerState.UNREGISTERED)))
        level = data.draw(st.integers(0, 12), label="level")
        self.feed(player, json_frame({"name": name, "level": level, "character": "lip"}))

    @precondition(lambda self: len(self.players_in(PlayerState.LOBBY)) >= 1)
    @rule(data=st.data())
    def request_a_game(self, data: st.DataObject) -> None:
        lobby = self.core.lobby
        player = lobby.players[data.draw(st.sampled_from(self.players_in(PlayerState.LOBBY)))]
        receiver = data.draw(st.sampled_from(sorted(lobby.names) + NAMES[:2]), label="receiver")
        key = data.draw(st.sampled_from(["game_request", "game_request_to_server"]))
        self.feed(player.id, json_frame({key: {"sender": player.name, "receiver": receiver}}))

    @precondition(lambda self: len(self.players_in(PlayerState.LOBBY)) >= 2)
    @rule(data=st.data())
    def pair_up(self, data: st.DataObject) -> None:
        """Two lobby players request each other."""
        lobby = self.core.lobby
        first, second = data.draw(
            st.lists(st.sampled_from(self.players_in(PlayerState.LOBBY)), min_size=2, max_size=2,
                     unique=True)
        )
        names = {player: lobby.players[player].name for player in (first, second)}
        for sender, receiver in ((first, second), (second, first)):
            if sender not in lobby.players:
                break  # bytes it left half-sent turned the request into garbage
            request = {"game_request": {"sender": names[sender], "receiver": names[receiver]}}
            self.feed(sender, json_frame(request))

    @precondition(lambda self: self.players_in(PlayerState.ROOM))
    @rule(data=st.data(), levels=st.tuples(st.integers(0, 12), st.integers(0, 12)))
    def both_ready(self, data: st.DataObject, levels: tuple[int, int]) -> None:
        """Both players of a room ready up."""
        player_id = data.draw(st.sampled_from(self.players_in(PlayerState.ROOM)))
        room = self.core.lobby.players[player_id].room
        assert room is not None
        for player, level in zip(room.players, levels):
            state = {"cursor": "ready", "ready": True, "character": "lip", "level": level}
            self.feed(player.id, json_frame({"menu_state": state}))

    @precondition(lambda self: self.players_in(PlayerState.ROOM))
    @rule(data=st.data(), ready=st.sampled_from([True, True, False]), level=st.integers(0, 12))
    def choose(self, data: st.DataObject, ready: bool, level: int) -> None:
        player = data.draw(st.sampled_from(self.players_in(PlayerState.ROOM)))
        state = {"cursor": "ready", "ready": ready, "character": "lip", "level": level}
        self.feed(player, json_frame({"menu_state": state}))

    @precondition(lambda self: self.players_in(*IN_MATCH))
    @rule(
        data=st.data(),
        message=st.sampled_from(
            [b"IA", b"IB" * 5, b"L3", b"P5000000", b"P6123451", b"Q5123451", b"P2111222",
             b"Q2112233", json_frame({"game_over": True})]
        ),
        cut=st.none() | st.integers(1, 8),
    )
    def play(self, data: st.DataObject, message: bytes, cut: int | None) -> None:
        player = data.draw(st.sampled_from(self.players_in(*IN_MATCH)))
        self.feed(player, message, cut)

    @precondition(lambda self: self.players_in(*IN_ROOM))
    @rule(data=st.data())
    def leave_room(self, data: st.DataObject) -> None:
        player = data.draw(st.sampled_from(self.players_in(*IN_ROOM)))
        self.feed(player, json_frame({"leave_room": True}))

    # Anything at all: valid or not for the state, merged, split, garbage, oversized.

    @precondition(lambda self: self.core.connections)
    @rule(data=st.data(), cut=st.none() | st.integers(1, 40))
    def send_anything(self, data: st.DataObject, cut: int | None) -> None:
        connection_id = data.draw(st.sampled_from(self.live()), label="connection")
        player = self.core.lobby.players.get(connection_id)
        payload = data.draw(client_messages(player.name if player else None), label="bytes")
        self.feed(connection_id, payload, cut)

    @rule(seconds=st.floats(0, 1) | st.floats(0, 1) | st.floats(0, 12))
    def time_passes(self, seconds: float) -> None:
        """Time moves on; each connection's heartbeat runs, as the edge would run it."""
        self.now += seconds
        for connection_id in self.live():
            if connection_id not in self.core.connections:
                continue  # closed by another's heartbeat in this same step
            actions, wake_at = self.core.heartbeat(connection_id, self.now)
            assert wake_at > self.now
            self.check_actions(actions)
            self.check_consistency()

    @precondition(lambda self: self.core.connections)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        """The client vanished, or the edge finished closing a connection the core closed."""
        pending = sorted(self.closed_by_server & set(self.core.connections))
        connection_id = data.draw(st.sampled_from(pending or self.live()), label="connection")
        host = self.core.connections[connection_id].host
        hosts_before = self.core.connections_per_host[host]
        self.check_actions(self.core.close_connection(connection_id))
        self.closed_by_server.discard(connection_id)
        assert connection_id not in self.core.connections
        assert connection_id not in self.core.lobby.players
        self.views.pop(connection_id, None)
        assert self.core.connections_per_host.get(host, 0) == hosts_before - 1
        assert self.core.close_connection(connection_id) == []  # closing twice is harmless

    @rule()
    def lobby_broadcast(self) -> None:
        sends = self.core.snapshots()
        self.check_actions(sends)
        lobby = self.core.lobby
        in_lobby = sorted(p.name for p in lobby.players.values() if p.state is PlayerState.LOBBY)
        for send in sends:
            player = lobby.players[send.player]
            assert player.state is PlayerState.LOBBY
            [frame] = decode_all(send.data)
            if player.dialect is Dialect.CLIENTS:
                assert frame.payload == {"unpaired": in_lobby}
            else:
                state = frame.payload["lobby_state"]
                assert state["unpaired"] == in_lobby
                assert len(state["paired"]) == len(lobby.rooms)
        assert not self.core.snapshot_due
        # After a broadcast, every lobby player's latest list is the lobby as it is.
        paired = lobby.paired_rooms()
        for player in lobby.players.values():
            if player.state is PlayerState.LOBBY:
                view = self.views[player.id]
                assert view.unpaired == in_lobby, (player.name, view.unpaired, in_lobby)
                if player.dialect is Dialect.DOCUMENT:
                    assert view.paired == paired

    # -- invariants ---------------------------------------------------------

    @invariant()
    def check_consistency(self) -> None:
        core, lobby = self.core, self.core.lobby
        hosts = collections.Counter(c.host for c in core.connections.values())
        assert core.connections_per_host == dict(hosts)
        assert all(c.id == cid for cid, c in core.connections.items())
        assert len(core.connections) <= core.config.max_connections
        open_ids = {cid for cid, c in core.connections.items() if c.phase is Phase.OPEN}
        assert set(lobby.players) == open_ids
        assert self.closed_by_server & set(core.connections) == {
            cid for cid, c in core.connections.items() if c.phase is Phase.CLOSING
        }
        # Names: exactly the registered players still connected.
        registered = {
            p.name: p for p in lobby.players.values() if p.state is not PlayerState.UNREGISTERED
        }
        assert lobby.names.keys() == registered.keys()
        assert all(lobby.names[name] is player for name, player in registered.items())
        for player_id, player in lobby.players.items():
            assert player.id == player_id
            if player.state is PlayerState.UNREGISTERED:
                assert player.name is None
            if player.state in IN_ROOM:
                assert player.room is not None and lobby.rooms.get(player.room.id) is player.room
            else:
                assert player.room is None
        # Rooms: two connected players pointing back, in states that fit the room's;
        # requests: only between two distinct players in the lobby.
        assert_rooms_and_requests_consistent(lobby)
        # Once both players are over, the match ends at once.
        for room in lobby.rooms.values():
            if room.state is not RoomState.SELECTING:
                assert {player.state for player in room.players} != {PlayerState.GAME_OVER}
        assert lobby.unpaired_names() == sorted(
            p.name for p in lobby.players.values() if p.state is PlayerState.LOBBY
        )
        # Each client was told of every change of room and match that concerns it.
        for player in lobby.players.values():
            view = self.views[player.id]
            if player.state in IN_ROOM:
                assert view.opponent == player.opponent().name, (player.name, view)
                assert view.in_match == (player.state in IN_MATCH), (player.name, view)
            else:
                assert view.opponent is None and not view.in_match, (player.name, view)


CoreUnderRandomClients.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_core_keeps_its_invariants_under_random_clients = CoreUnderRandomClients.TestCase


# ---------------------------------------------------------------------------
# (c) the whole server


class Client(ScriptedClient):
    """A scripted client that may write from several tasks."""

    def __init__(self, stream: trio.abc.Stream, **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)
        self._send_lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)


def connect(server: Server, *, buffered: bool = True, answer_pings: bool = True) -> Client:
    upstream_send, upstream_receive = trio.testing.memory_stream_one_way_pair()
    if buffered:
        downstream_send, downstream_receive = trio.testing.memory_stream_one_way_pair()
    else:
        downstream_send, downstream_receive = trio.testing.lockstep_stream_one_way_pair()
    server.open_stream(trio.StapledStream(downstream_send, upstream_receive), ("127.0.0.1", 1))
    return Client(trio.StapledStream(upstream_send, downstream_receive), answer_pings=answer_pings)


class WellBehavedPlayer:
    """One of the pair that must keep getting answers; ignores what others send it."""

    def __init__(self, client: Client, name: str) -> None:
        self.client, self.name = client, name

    async def next_json(self, accept: Any, *, timeout: float = 5.0) -> dict[str, Any]:
        """The next JSON frame ``accept`` says yes to; lobby lists must hold our own name."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.client.receive(timeout=math.inf)
                if isinstance(frame, m.Json):
                    payload = frame.payload
                    if "unpaired" in payload and "leave_room" not in payload:
                        assert self.name in payload["unpaired"]
                    if accept(payload):
                        return payload
                else:
                    assert False, f"{self.name} got {frame!r} outside a match"

    async def pause(self, seconds: float) -> None:
        """Read (and check) whatever comes for ``seconds``; nothing but JSON may come."""
        with trio.move_on_after(seconds):
            await self.next_json(lambda payload: False, timeout=math.inf)

    async def next_game_frame(self, *, timeout: float = 5.0) -> Any:
        with trio.fail_after(timeout):
            while True:
                frame = await self.client.receive(timeout=math.inf)
                # Requests from strangers and lobby lists may still be on their way.
                if not isinstance(frame, m.Json):
                    return frame


async def well_behaved_rounds(
    first: WellBehavedPlayer, second: WellBehavedPlayer, pauses: list[float]
) -> None:
    """Register, then for each pause: pair, play, game over, leave; pausing between steps."""

    async def pause(seconds: float) -> None:
        async with trio.open_nursery() as nursery:
            for player in (first, second):
                nursery.start_soon(player.pause, seconds)

    for player in (first, second):
        await player.client.register(player.name)
        await player.next_json(lambda p: player.name in p.get("unpaired", ()))
    for round_number, seconds in enumerate(pauses):
        await pause(seconds)
        await first.client.send_json(
            {"game_request": {"sender": first.name, "receiver": second.name}}
        )
        await second.next_json(lambda p: p.get("game_request", {}).get("sender") == first.name)
        await second.client.send_json(
            {"game_request": {"sender": second.name, "receiver": first.name}}
        )
        for player, other in ((first, second), (second, first)):
            payload = await player.next_json(lambda p: "create_room" in p)
            assert payload["opponent"] == other.name
        await pause(seconds)
        for player in (first, second):
            await player.client.menu_state(ready=True, cursor="ready")
        for player in (first, second):
            await player.next_json(lambda p: "match_start" in p)
        await pause(seconds)
        await first.client.send(b"P5000000")
        own, mirrored = await first.next_game_frame(), await second.next_game_frame()
        assert (own.letter, mirrored.letter, own.digits) == ("P", "O", mirrored.digits)
        inputs = bytes(range(ord("A"), ord("A") + 20))
        await first.client.send(b"".join(b"I" + bytes([s]) for s in inputs))
        received = [(await second.next_game_frame()).raw[1] for _ in inputs]
        assert bytes(received) == inputs
        for player in (first, second):
            await player.client.send_json({"game_over": True})
        for player in (first, second):
            await player.next_json(lambda p: "create_room" in p)
        await (first if round_number % 2 else second).client.send_json({"leave_room": True})
        for player in (first, second):
            await player.next_json(lambda p: "leave_room" in p)


CHAOS_SLOTS = 4
chaos_actions = st.one_of(
    st.tuples(st.just("send"), st.integers(0, CHAOS_SLOTS - 1), client_messages(None)),
    st.tuples(st.just("send"), st.integers(0, CHAOS_SLOTS - 1), client_messages("ann")),
    st.tuples(st.just("sleep"), st.floats(0, 3)),
    st.tuples(
        st.just("reconnect"), st.integers(0, CHAOS_SLOTS - 1), st.booleans(), st.booleans()
    ),
    st.tuples(st.just("flood"), st.integers(0, CHAOS_SLOTS - 1)),
    st.tuples(st.just("close"), st.integers(0, CHAOS_SLOTS - 1)),
    st.tuples(st.just("long_sleep"), st.floats(10, 12)),
)
# Every slot starts connected: (reads its stream, answers pings, says hello and registers).
chaos_openings = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.sampled_from(NAMES[:5] + [None])),
    min_size=CHAOS_SLOTS, max_size=CHAOS_SLOTS,
)


def run_on_the_virtual_clock(scenario: Any, *, real_seconds: float = 60.0) -> None:
    """``trio.run`` on an autojump clock; a stalled run fails instead of hanging the suite.

    A task that keeps asking to run at the current instant stops the virtual
    clock for good, so the guard is real time, from another thread.
    """

    async def guarded() -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:

            def stop() -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)

            watchdog = threading.Timer(real_seconds, stop)
            watchdog.daemon = True
            watchdog.start()
            try:
                await scenario()
            finally:
                watchdog.cancel()
        assert not scope.cancelled_caught, f"still running after {real_seconds} s of real time"

    trio.run(guarded, clock=trio.testing.MockClock(autojump_threshold=0))


async def drain(client: Client) -> None:
    with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        while True:
            await client.receive(timeout=math.inf)


async def chaos(
    server: Server, openings: list[tuple[bool, bool, str | None]], actions: list[tuple[Any, ...]]
) -> None:
    """Clients doing ``actions`` one after the other, on the virtual clock."""
    clients: dict[int, tuple[Client, trio.CancelScope]] = {}
    opening_actions: list[tuple[Any, ...]] = [
        ("reconnect", slot, buffered, pings) for slot, (buffered, pings, _) in enumerate(openings)
    ]
    opening_actions += [
        ("send", slot, b"H004" + json_frame({"name": name, "level": 3, "character": "lip"}))
        for slot, (_, _, name) in enumerate(openings)
        if name is not None
    ]
    async with trio.open_nursery() as nursery:
        for action in opening_actions + actions:
            kind, *args = action
            try:
                if kind == "reconnect":
                    slot, buffered, answer_pings = args
                    if slot in clients:
                        old_client, old_scope = clients.pop(slot)
                        old_scope.cancel()
                        await old_client.aclose()
                    client = connect(server, buffered=buffered, answer_pings=answer_pings)
                    scope = trio.CancelScope()

                    async def read(
                        client: Client = client, scope: trio.CancelScope = scope
                    ) -> None:
                        with scope:
                            await drain(client)

                    if buffered:
                        nursery.start_soon(read)
                    clients[slot] = (client, scope)
                elif kind == "send" and args[0] in clients:
                    await clients[args[0]][0].send(args[1])
                elif kind == "flood" and args[0] in clients:
                    await clients[args[0]][0].send(b"H004" + b"IA" * 3000)
                elif kind == "close" and args[0] in clients:
                    client, scope = clients.pop(args[0])
                    scope.cancel()
                    await client.aclose()
                elif kind in ("sleep", "long_sleep"):
                    await trio.sleep(args[0])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                clients.pop(action[1], None)
        for client, scope in clients.values():
            scope.cancel()
            await client.aclose()


@settings(
    max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    openings=chaos_openings,
    actions=st.lists(chaos_actions, min_size=3, max_size=25),
    pauses=st.lists(st.floats(0, 2), min_size=1, max_size=3),
)
def test_well_behaved_pair_gets_answers_whatever_other_clients_do(openings, actions, pauses):
    async def scenario() -> None:
        # A small send queue, so that clients that never read get dropped.
        config = Config(max_queued_bytes=4096)
        async with running_server(config) as server:
            first = WellBehavedPlayer(connect(server), "good_a")
            second = WellBehavedPlayer(connect(server), "good_b")
            chaos_done = trio.Event()

            async def run_chaos() -> None:
                await chaos(server, openings, actions)
                chaos_done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_chaos)
                with trio.fail_after(120):
                    await well_behaved_rounds(first, second, pauses)
                # Stay connected (answering pings) until the others are done.
                nursery.start_soon(first.pause, math.inf)
                nursery.start_soon(second.pause, math.inf)
                await chaos_done.wait()
                assert {"good_a", "good_b"} <= set(server.core.lobby.names)
                nursery.cancel_scope.cancel()

    run_on_the_virtual_clock(scenario)
