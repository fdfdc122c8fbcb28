"""The lobby: players, game requests, rooms and matches.  Sans-IO.

Theory of operation
-------------------
The lobby is one plain object shared by every connection.  It is fed events
(:meth:`Lobby.connect`, :meth:`Lobby.handle`, :meth:`Lobby.disconnect`) and
returns a list of :class:`Send` values: which player gets which bytes.  It
never reads a clock or a socket; the server decides when to call
:meth:`Lobby.snapshots` to broadcast the lobby list, which is how a burst of
changes is coalesced into one snapshot per player.

Three exchanges, each an explicit state machine:

* a *player* moves through :class:`PlayerState`; :data:`PLAYER_TRANSITIONS`
  lists every legal move and :data:`ACCEPTED` lists which message is valid in
  which state.  Anything else is refused with a RemoteProtocolError naming the
  player, the state and the message, before any state is touched;
* a *request* is a pending proposal ``sender -> receiver`` between two lobby
  players; it becomes a room when the receiver proposes back, and vanishes when
  either player leaves the lobby;
* a *room* holds two players and moves through :class:`RoomState`; while
  playing it holds a :class:`Match`, created fresh for every match so that
  game-over flags, the starting board and the shock schedule never leak from
  one match into the next.

A player's dialect only matters when rendering; players of both dialects can
request, pair and play each other.
"""

from __future__ import annotations

import collections
import enum
import random
from typing import Any, Callable

import attrs
import structlog

from netplay.actions import Send
from netplay.dialects import classic as d
from netplay.dialects.classic import Dialect
from netplay.dialects.names import DEFAULT_MAX_NAME_LENGTH, name_problem
from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.length3 import encode_json
from netplay.lobbies.panels import MatchPanels
from netplay.stats import MatchResult

log = structlog.get_logger("netplay.lobby")

PlayerId = int

# Levels at or above this are "high" for the starting-board sharing rule.
HIGH_LEVEL = 9
# From this handshake version on, boards are shared only within a level class.
LEVEL_CLASS_SHARING_VERSION = 19


class PlayerState(enum.Enum):
    UNREGISTERED = "unregistered"  # handshake done, no name yet
    LOBBY = "lobby"  # named, unpaired, may request games
    ROOM = "room"  # paired, in character select
    PLAYING = "playing"  # in a match
    GAME_OVER = "game_over"  # sent game_over, opponent still playing


class RoomState(enum.Enum):
    SELECTING = "selecting"
    PLAYING = "playing"


PLAYER_TRANSITIONS: dict[PlayerState, frozenset[PlayerState]] = {
    PlayerState.UNREGISTERED: frozenset({PlayerState.LOBBY}),
    PlayerState.LOBBY: frozenset({PlayerState.ROOM}),
    PlayerState.ROOM: frozenset({PlayerState.PLAYING, PlayerState.LOBBY}),
    PlayerState.PLAYING: frozenset(
        {PlayerState.GAME_OVER, PlayerState.ROOM, PlayerState.LOBBY}
    ),
    PlayerState.GAME_OVER: frozenset({PlayerState.ROOM, PlayerState.LOBBY}),
}

ROOM_TRANSITIONS: dict[RoomState, frozenset[RoomState]] = {
    RoomState.SELECTING: frozenset({RoomState.PLAYING}),
    RoomState.PLAYING: frozenset({RoomState.SELECTING}),
}

_IN_MATCH = frozenset({PlayerState.PLAYING, PlayerState.GAME_OVER})
_IN_ROOM = frozenset({PlayerState.ROOM}) | _IN_MATCH

# Which message is valid in which player state.
ACCEPTED: dict[type, frozenset[PlayerState]] = {
    m.Register: frozenset({PlayerState.UNREGISTERED}),
    m.GameRequest: frozenset({PlayerState.LOBBY}),
    m.MenuState: frozenset({PlayerState.ROOM}),
    m.LeaveRoom: _IN_ROOM,
    m.GameOver: frozenset({PlayerState.PLAYING}),
    m.PanelRequest: _IN_MATCH,
    m.Input: _IN_MATCH,
    m.LevelPick: _IN_ROOM,
}


@attrs.define(eq=False)
class Player:
    id: PlayerId
    dialect: Dialect
    version: int
    state: PlayerState = PlayerState.UNREGISTERED
    name: str | None = None
    menu: m.MenuState | None = None  # last known selections
    room: Room | None = None
    # Snapshot versions this player has already been shown.
    seen_unpaired: int = -1
    seen_paired: int = -1

    def move(self, new_state: PlayerState) -> None:
        if new_state not in PLAYER_TRANSITIONS[self.state]:
            raise LocalProtocolError(
                f"player {self.id} cannot go from {self.state.value} to {new_state.value}"
            )
        self.state = new_state

    def opponent(self) -> Player:
        assert self.room is not None
        first, second = self.room.players
        return second if first is self else first

    def side(self) -> int:
        assert self.room is not None
        return 0 if self.room.players[0] is self else 1


@attrs.define(eq=False)
class Match:
    panels: MatchPanels
    game_over: list[bool] = attrs.Factory(lambda: [False, False])
    # The time given with the message that started it; None if none was.
    started_at: float | None = None


@attrs.define(eq=False)
class Room:
    id: int
    players: tuple[Player, Player]
    rng: random.Random
    state: RoomState = RoomState.SELECTING
    match: Match | None = None

    def move(self, new_state: RoomState) -> None:
        if new_state not in ROOM_TRANSITIONS[self.state]:
            raise LocalProtocolError(
                f"room {self.id} cannot go from {self.state.value} to {new_state.value}"
            )
        self.state = new_state


def _refuse(reason: str, player: Player, message: object, **context: object) -> RemoteProtocolError:
    return RemoteProtocolError(
        reason,
        fatal=False,
        player=player.id,
        name=player.name,
        state=player.state.value,
        message=type(message).__name__,
        **context,
    )


def shares_starting_board(first: Player, second: Player) -> bool:
    """Whether the two players of a match start from the same board.

    Clients before 019 always share; from 019 on (and the document's dialect)
    only players whose levels are both below 9 or both 9 and above share.
    """
    assert first.menu is not None and second.menu is not None
    # Check the dialect too: a document version below 019 may be configured.
    if all(
        p.dialect is Dialect.CLIENTS and p.version < LEVEL_CLASS_SHARING_VERSION
        for p in (first, second)
    ):
        return True
    return (first.menu.level >= HIGH_LEVEL) == (second.menu.level >= HIGH_LEVEL)


class Lobby:
    """Every player, request and room of one server.  See the module docstring."""

    def __init__(
        self,
        *,
        seed: int,
        max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
        results: collections.deque[MatchResult] | None = None,
    ) -> None:
        """``results`` receives every finished match (the caller bounds it)."""
        self.seed = seed
        self.max_name_length = max_name_length
        self.results = results if results is not None else collections.deque(maxlen=0)
        self.matches_started = 0
        # By how they ended: "agreement" (both reported game over) or "abandoned".
        self.matches_ended: collections.Counter[str] = collections.Counter()
        self.players: dict[PlayerId, Player] = {}
        self.names: dict[str, Player] = {}
        self.rooms: dict[int, Room] = {}
        self.proposals: set[tuple[PlayerId, PlayerId]] = set()
        self._next_room_id = 1
        # Bumped whenever the unpaired list / the paired list changes.
        self.unpaired_version = 0
        self.paired_version = 0
        self._flushed_versions = (0, 0)
        self._held_back = False
        self._now: float | None = None  # of the message being handled
        self._handlers = {
            m.Register: self._register,
            m.GameRequest: self._game_request,
            m.MenuState: self._menu_state,
            m.LeaveRoom: self._leave_room,
            m.GameOver: self._game_over,
            m.PanelRequest: self._panel_request,
            m.Input: self._relay_to_opponent,
            m.LevelPick: self._relay_to_opponent,
        }

    # -- events -------------------------------------------------------------

    def connect(self, player_id: PlayerId, dialect: Dialect, version: int) -> None:
        """A connection finished its handshake; it may now register."""
        if player_id in self.players:
            raise LocalProtocolError(f"player {player_id} is already connected")
        self.players[player_id] = Player(player_id, dialect, version)

    def handle(self, player_id: PlayerId, message: object, now: float | None = None) -> list[Send]:
        """Apply one message from a player; return what to send to whom.

        ``now`` (the caller's clock, optional) only times matches.  Raises a
        non-fatal RemoteProtocolError, with nothing applied, when the message
        is not valid in the player's state or its content is refused.
        """
        player = self.players[player_id]
        kind = type(message)
        allowed = ACCEPTED.get(kind)
        if allowed is None:
            raise LocalProtocolError(f"the lobby does not handle {kind.__name__}")
        if player.state not in allowed:
            raise _refuse("message_not_valid_in_state", player, message)
        self._now = now
        return self._handlers[kind](player, message)

    def input_target(self, player_id: PlayerId) -> PlayerId | None:
        """Who receives this player's inputs, or None if it is in no match.

        The per-frame path: the caller relays the raw ``I`` message itself.
        """
        player = self.players.get(player_id)
        if player is None or player.state not in _IN_MATCH:
            return None
        return player.opponent().id

    def disconnect(self, player_id: PlayerId) -> list[Send]:
        """The player's connection is gone; free its name and tell its opponent."""
        player = self.players.pop(player_id, None)
        if player is None:
            return []
        sends: list[Send] = []
        if player.state in _IN_ROOM:
            opponent = player.opponent()
            room = player.room
            assert room is not None
            self._close_room(room, "opponent_disconnected")
            sends += self._send_leave_room(opponent)
        elif player.state is PlayerState.LOBBY:
            self._withdraw_proposals(player)
            self.unpaired_version += 1
        if player.name is not None:
            del self.names[player.name]
        log.info("player_left", player=player.id, name=player.name, state=player.state.value)
        return sends

    @property
    def snapshot_due(self) -> bool:
        """Whether the lobby changed, or a player was held back, at the last :meth:`snapshots`."""
        return (
            self._held_back
            or (self.unpaired_version, self.paired_version) != self._flushed_versions
        )

    def snapshots(self, may_send: Callable[[PlayerId], bool] | None = None) -> list[Send]:
        """The lobby list for every lobby player who has not seen the latest one.

        ``may_send`` lets the caller hold a player back (one still busy reading
        an earlier list); that player stays due and gets the list of the next
        call instead.
        """
        self._flushed_versions = (self.unpaired_version, self.paired_version)
        self._held_back = False
        rendered: dict[Dialect, bytes] = {}
        unpaired = paired = None
        sends = []
        for player in self.players.values():
            if player.state is not PlayerState.LOBBY or not self._needs_snapshot(player):
                continue
            if may_send is not None and not may_send(player.id):
                self._held_back = True
                continue
            data = rendered.get(player.dialect)
            if data is None:
                if unpaired is None:
                    unpaired, paired = self.unpaired_names(), self.paired_rooms()
                data = encode_json(d.render_lobby(player.dialect, unpaired, paired))
                rendered[player.dialect] = data
            self._mark_seen(player)
            sends.append(Send(player.id, data))
        return sends

    # -- queries ------------------------------------------------------------

    def unpaired_names(self) -> list[str]:
        return sorted(
            p.name for p in self.players.values() if p.state is PlayerState.LOBBY and p.name
        )

    def paired_rooms(self) -> list[dict[str, Any]]:
        return [
            {
                "players": [
                    {"name": p.name, "level": p.menu.level, "character": p.menu.character}
                    for p in room.players
                    if p.menu is not None
                ],
                "playing": room.state is RoomState.PLAYING,
            }
            for room in self.rooms.values()
        ]

    # -- handlers: each checks everything before it changes anything ---------

    def _register(self, player: Player, message: m.Register) -> list[Send]:
        problem = name_problem(message.name, self.max_name_length)
        if problem is None and message.name in self.names:
            problem = "in_use"
        if problem is not None:
            log.info(
                "name_refused", player=player.id, name=message.name[:64], problem=problem
            )
            used = d.render_choose_another_name(sorted(self.names))
            return [Send(player.id, encode_json(used))]
        player.name = message.name
        player.menu = m.MenuState(
            cursor="level", ready=False, character=message.character, level=message.level
        )
        self.names[message.name] = player
        player.move(PlayerState.LOBBY)
        self.unpaired_version += 1
        log.info("player_registered", player=player.id, name=player.name)
        return []

    def _game_request(self, player: Player, message: m.GameRequest) -> list[Send]:
        if message.sender != player.name:
            raise _refuse("sender_not_own_name", player, message, sender=message.sender[:64])
        if message.receiver == player.name:
            raise _refuse("request_to_self", player, message)
        receiver = self.names.get(message.receiver)
        if receiver is None:
            raise _refuse("receiver_unknown", player, message, receiver=message.receiver[:64])
        if receiver.state is not PlayerState.LOBBY:
            raise _refuse(
                "receiver_not_in_lobby", player, message, receiver=receiver.name,
                receiver_state=receiver.state.value,
            )
        if (receiver.id, player.id) in self.proposals:
            return self._create_room(receiver, player)
        if (player.id, receiver.id) in self.proposals:
            raise _refuse("request_repeated", player, message, receiver=receiver.name)
        self.proposals.add((player.id, receiver.id))
        log.info("game_requested", player=player.id, name=player.name, receiver=receiver.name)
        forwarded = d.render_game_request(receiver.dialect, player.name, receiver.name)
        return [Send(receiver.id, encode_json(forwarded))]

    def _menu_state(self, player: Player, message: m.MenuState) -> list[Send]:
        previous = player.menu
        player.menu = message
        opponent = player.opponent()
        assert previous is not None and opponent.menu is not None
        if (previous.level, previous.character) != (message.level, message.character):
            self.paired_version += 1
        if message.ready and opponent.menu.ready:
            return self._start_match(player.room)
        return [Send(opponent.id, encode_json(d.render_menu_state(message)))]

    def _leave_room(self, player: Player, message: m.LeaveRoom) -> list[Send]:
        opponent = player.opponent()
        assert player.room is not None
        self._close_room(player.room, "left", by=player.name)
        return self._send_leave_room(player) + self._send_leave_room(opponent)

    def _game_over(self, player: Player, message: m.GameOver) -> list[Send]:
        room = player.room
        assert room is not None and room.match is not None
        room.match.game_over[player.side()] = True
        player.move(PlayerState.GAME_OVER)
        if not all(room.match.game_over):
            return []
        room.move(RoomState.SELECTING)
        match, room.match = room.match, None
        self.paired_version += 1
        log.info("match_ended", room=room.id)
        self._record_result(room, match)
        for each in room.players:
            assert each.menu is not None
            each.menu = attrs.evolve(
                each.menu, cursor=d.cursor_after_game(each.dialect), ready=False
            )
            each.move(PlayerState.ROOM)
        return self._send_create_room(room)

    def _panel_request(self, player: Player, message: m.PanelRequest) -> list[Send]:
        ncolors, top_row = message.ncolors, message.top_row
        if not ("2" <= ncolors <= "7" and len(ncolors) == 1):
            raise _refuse("panel_colors_invalid", player, message, ncolors=ncolors)
        if not (len(top_row) == 6 and top_row.isascii() and top_row.isdigit()):
            raise _refuse("panel_row_invalid", player, message, top_row=top_row)
        room = player.room
        assert room is not None and room.match is not None
        generate = (
            room.match.panels.garbage_panels if message.garbage else room.match.panels.play_panels
        )
        digits = generate(player.side(), int(ncolors), top_row)
        if digits is None:
            raise _refuse(
                "panel_rules_unsatisfiable", player, message, ncolors=ncolors, top_row=top_row
            )
        own, mirrored = (b"Q", b"R") if message.garbage else (b"P", b"O")
        body = digits.encode("ascii")
        return [Send(player.id, own + body), Send(player.opponent().id, mirrored + body)]

    def _relay_to_opponent(self, player: Player, message: m.Input | m.LevelPick) -> list[Send]:
        return [Send(player.opponent().id, message.raw)]

    # -- room life cycle ------------------------------------------------------

    def _create_room(self, first: Player, second: Player) -> list[Send]:
        room_id = self._next_room_id
        self._next_room_id += 1
        # A stream of its own per room, derived from the server seed, so a
        # fixed seed reproduces every panel whatever other rooms do.
        room = Room(room_id, (first, second), random.Random(f"{self.seed}:{room_id}"))
        self.rooms[room_id] = room
        for player in room.players:
            self._withdraw_proposals(player)
            assert player.menu is not None
            player.menu = attrs.evolve(player.menu, cursor="level", ready=False)
            player.room = room
            player.move(PlayerState.ROOM)
        self.unpaired_version += 1
        self.paired_version += 1
        log.info("room_created", room=room_id, a=first.name, b=second.name)
        return self._send_create_room(room)

    def _start_match(self, room: Room | None) -> list[Send]:
        assert room is not None
        first, second = room.players
        assert first.menu is not None and second.menu is not None
        room.match = Match(
            MatchPanels(room.rng, shares_starting_board(first, second)), started_at=self._now
        )
        room.move(RoomState.PLAYING)
        for player in room.players:
            player.move(PlayerState.PLAYING)
        self.paired_version += 1
        self.matches_started += 1
        log.info(
            "match_started", room=room.id, a=first.name, b=second.name,
            shared_board=room.match.panels.share_starting_board,
        )
        return [
            Send(first.id, encode_json(d.render_match_start(first.menu, second.menu))),
            Send(second.id, encode_json(d.render_match_start(second.menu, first.menu))),
        ]

    def _record_result(self, room: Room, match: Match) -> None:
        self.matches_ended["agreement"] += 1
        now, started_at = self._now, match.started_at
        first, second = room.players
        self.results.append(MatchResult(
            dialect="classic",
            room=room.id,
            players=(first.name or "", second.name or ""),
            outcome=None,  # these clients never say who won
            decided_by="agreement",
            seconds=None if now is None or started_at is None else now - started_at,
            ended_at=now if now is not None else 0.0,
        ))

    def _close_room(self, room: Room, reason: str, **context: object) -> None:
        """Send both players of ``room`` (those still connected) back to the lobby."""
        del self.rooms[room.id]
        if room.match is not None:
            self.matches_ended["abandoned"] += 1
        for player in room.players:
            player.room = None
            if player.id in self.players:
                player.move(PlayerState.LOBBY)
        self.unpaired_version += 1
        self.paired_version += 1
        log.info("room_closed", room=room.id, reason=reason, **context)

    def _send_create_room(self, room: Room) -> list[Send]:
        first, second = room.players
        assert first.menu is not None and second.menu is not None
        return [
            Send(first.id, encode_json(d.render_create_room(second.name, second.menu))),
            Send(second.id, encode_json(d.render_create_room(first.name, first.menu))),
        ]

    def _send_leave_room(self, player: Player) -> list[Send]:
        payload = d.render_leave_room(player.dialect, self.unpaired_names(), self.paired_rooms())
        self._mark_seen(player)
        return [Send(player.id, encode_json(payload))]

    def _withdraw_proposals(self, player: Player) -> None:
        if self.proposals:
            self.proposals = {pair for pair in self.proposals if player.id not in pair}

    def _needs_snapshot(self, player: Player) -> bool:
        if player.seen_unpaired != self.unpaired_version:
            return True
        return player.dialect is Dialect.DOCUMENT and player.seen_paired != self.paired_version

    def _mark_seen(self, player: Player) -> None:
        player.seen_unpaired = self.unpaired_version
        player.seen_paired = self.paired_version
