"""The lobby of the 2022 client (protocol 046): login, rooms, matches, spectators.  Sans-IO.

Theory of operation
-------------------
046 clients seed their own panels, so they cannot share a match with the
older dialects: they meet in this lobby of their own, which the core feeds
like the other one.  :class:`Lobby046` is a plain object fed events
(:meth:`connect`, :meth:`handle`, :meth:`stored`, :meth:`tick`,
:meth:`disconnect`) with the current time; it returns actions: ``Send`` (which
player gets which bytes) and ``Store`` (a database operation whose outcome
comes back through :meth:`stored`).  It never reads a clock, a socket or a
database itself.

Four exchanges, each an explicit state machine:

* a *player* moves through :class:`PlayerState`; :data:`PLAYER_TRANSITIONS`
  lists every legal move and :data:`ACCEPTED` which command is valid in which
  state.  Anything else is refused with a RemoteProtocolError before any state
  is touched.  Its *login* moves through :class:`LoginState` beside that;
* a *request* ``sender -> receiver`` becomes a room when the receiver asks
  back; the one who completes the pair is player 1 (``a``);
* a *room* moves through :class:`RoomState`; while playing it holds a
  :class:`Match` with the seed and every input so far, which is what a
  spectator who joins late is sent to catch up;
* a match ends when both players have reported ``game_over`` (disagreeing
  reports make a draw) or, :attr:`Config.game_over_timeout` after the first
  report, on that report alone, so that a crashed client never strands its
  opponent.
"""

from __future__ import annotations

import collections
import enum
import math
import random
from typing import Any, Callable

import attrs
import structlog

from netplay.accounts import ratings, storage
from netplay.accounts.replays import Decision, FinishedMatch, MatchPlayer, Publicity
from netplay.actions import Action, Send, Store
from netplay.dialects import v046 as d
from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.inputs import INPUT_BYTES, encode_for_catch_up
from netplay.framing.length3 import encode_json
from netplay.lobbies.results import FinishGame
from netplay.stats import MatchResult

log = structlog.get_logger("netplay.lobby046")

PlayerId = int

# The client sends at most 4 taunts in 10 s; the server holds it to that.
TAUNTS_PER_WINDOW = 4
TAUNT_WINDOW = 10.0
# Inputs kept per player and match for late spectators: one hour at 60 a second.
MAX_RECORDED_INPUTS = 60 * 60 * 60
SEED_RANGE = (1, 9_999_999)
# A lobby this large may answer a join with a list encoded a moment ago: up
# to this many seconds per player (0.4 s at 2,000 players).
STALE_LIST_MIN_PLAYERS = 256
STALE_LIST_SECONDS_PER_PLAYER = 0.0002


class PlayerState(enum.Enum):
    UNREGISTERED = "unregistered"  # handshake done, no name yet
    LOBBY = "lobby"
    ROOM = "room"  # paired, at character select
    PLAYING = "playing"
    SPECTATING = "spectating"


class LoginState(enum.Enum):
    NONE = "none"
    PENDING = "pending"  # the database is being asked
    LOGGED_IN = "logged_in"
    REFUSED = "refused"


class RoomState(enum.Enum):
    SELECTING = "character select"
    PLAYING = "playing"


PLAYER_TRANSITIONS: dict[PlayerState, frozenset[PlayerState]] = {
    PlayerState.UNREGISTERED: frozenset({PlayerState.LOBBY}),
    PlayerState.LOBBY: frozenset({PlayerState.ROOM, PlayerState.SPECTATING}),
    PlayerState.ROOM: frozenset({PlayerState.PLAYING, PlayerState.LOBBY}),
    PlayerState.PLAYING: frozenset({PlayerState.ROOM, PlayerState.LOBBY}),
    PlayerState.SPECTATING: frozenset({PlayerState.LOBBY}),
}

ROOM_TRANSITIONS: dict[RoomState, frozenset[RoomState]] = {
    RoomState.SELECTING: frozenset({RoomState.PLAYING}),
    RoomState.PLAYING: frozenset({RoomState.SELECTING}),
}

_REGISTERED = frozenset(PlayerState) - {PlayerState.UNREGISTERED}
_SHOWN_IN_LOBBY_LIST = frozenset({PlayerState.LOBBY, PlayerState.ROOM, PlayerState.PLAYING})
_IN_ROOM = frozenset({PlayerState.ROOM, PlayerState.PLAYING})

ACCEPTED: dict[type, frozenset[PlayerState]] = {
    m.Register046: frozenset({PlayerState.UNREGISTERED}),
    m.LoginRequest: _REGISTERED,
    m.GameRequest: frozenset({PlayerState.LOBBY}),
    m.SpectateRequest: frozenset({PlayerState.LOBBY}),
    m.MenuState046: frozenset({PlayerState.ROOM}),
    m.LeaveRoom: frozenset({PlayerState.ROOM, PlayerState.PLAYING, PlayerState.SPECTATING}),
    # Spectators report game_over too; theirs is ignored.
    m.GameOverClaim: frozenset({PlayerState.PLAYING, PlayerState.SPECTATING}),
    m.Taunt: _IN_ROOM,
    m.LeaderboardRequest: _REGISTERED,
}


@attrs.define(eq=False)
class InputRoute:
    """Where one player's inputs go while it plays: the per-frame path.

    Built when the match starts and dropped when the player stops playing,
    so relaying an input is a lookup, not a decision.  ``spectators`` is
    replaced, never changed in place, when spectators join or leave: a relay
    that drops a spectator while it goes through them still reaches the rest.
    """

    opponent: PlayerId
    spectators: tuple[PlayerId, ...]
    # The message each input letter becomes for a spectator (U for player 1, I for 2).
    as_spectators: dict[int, bytes]
    # This player's inputs so far, for spectators who join late.
    recorded: bytearray

    def record(self, letter: int) -> None:
        if len(self.recorded) < MAX_RECORDED_INPUTS:
            self.recorded.append(letter)


@attrs.define(eq=False)
class Player:
    id: PlayerId
    state: PlayerState = PlayerState.UNREGISTERED
    name: str | None = None
    selections: m.Selections = attrs.Factory(m.Selections)
    save_replays_publicly: str = d.DEFAULT_PUBLICITY
    login: LoginState = LoginState.NONE
    user_id: str | None = None
    # Whether this client got a login reply: only then does it draw "__Mode".
    login_answered: bool = False
    room: Room | None = None
    seen_version: int = -1
    taunts: collections.deque[float] = attrs.Factory(collections.deque)
    # Ranked record, once storage has answered after the login.
    standing: ratings.Standing | None = None
    # Set while PLAYING, and only then.
    route: InputRoute | None = None

    def move(self, new_state: PlayerState) -> None:
        if new_state not in PLAYER_TRANSITIONS[self.state]:
            raise LocalProtocolError(
                f"player {self.id} cannot go from {self.state.value} to {new_state.value}"
            )
        self.state = new_state
        if new_state is not PlayerState.PLAYING:
            self.route = None


@attrs.define(eq=False)
class Match:
    seed: int
    stage: str
    ranked: bool
    started_at: float
    number: int  # of the match in its room, from 1
    # Both players' selections as the match started.
    selections: tuple[m.Selections, m.Selections]
    # Every input so far, player 1's and player 2's (the input letters only).
    inputs: tuple[bytearray, bytearray] = attrs.Factory(lambda: (bytearray(), bytearray()))
    # Who each player says won (0: a draw), once reported; see ``decisions_due``.
    claims: list[int | None] = attrs.Factory(lambda: [None, None])


@attrs.define(eq=False)
class Room:
    number: int
    players: tuple[Player, Player]  # player 1 ("a"), player 2 ("b")
    rng: random.Random
    state: RoomState = RoomState.SELECTING
    win_counts: list[int] = attrs.Factory(lambda: [0, 0])
    spectators: list[Player] = attrs.Factory(list)
    match: Match | None = None
    stage: str | None = None  # of the last match
    matches_played: int = 0
    # Each player's standing before the room's last rated game, for the
    # difference shown at select; None before any.
    standings_before: list[ratings.Standing | None] = attrs.Factory(lambda: [None, None])
    # The key of a rated game whose new ratings select waits for.
    awaiting_result: str | None = None

    def move(self, new_state: RoomState) -> None:
        if new_state not in ROOM_TRANSITIONS[self.state]:
            raise LocalProtocolError(
                f"room {self.number} cannot go from {self.state.value} to {new_state.value}"
            )
        self.state = new_state

    def number_of(self, player: Player) -> int:
        return 1 if self.players[0] is player else 2

    def everyone(self) -> list[Player]:
        return [*self.players, *self.spectators]


def _refuse(reason: str, player: Player, message: object, **context: object) -> RemoteProtocolError:
    return RemoteProtocolError(
        reason, fatal=False, player=player.id, name=player.name, state=player.state.value,
        message=type(message).__name__, **context,
    )


def _send(player: Player, payload: dict[str, Any]) -> Send:
    return Send(player.id, encode_json(payload))


# One value per input letter, so relaying to spectators allocates nothing.
_AS_PLAYER_ONE = {byte: bytes((ord("U"), byte)) for byte in INPUT_BYTES}
_AS_PLAYER_TWO = {byte: bytes((ord("I"), byte)) for byte in INPUT_BYTES}


def _route_to_spectators(room: Room) -> None:
    """The players' input routes follow the room's spectators."""
    spectators = tuple(spectator.id for spectator in room.spectators)
    for player in room.players:
        if player.route is not None:
            player.route.spectators = spectators


class Lobby046:
    """Every 046 player, request and room of one server.  See the module docstring."""

    def __init__(
        self,
        *,
        seed: int,
        max_spectators_per_room: int = 16,
        game_over_timeout: float = 4.0,
        placement_rule: ratings.PlacementRule = ratings.PlacementRule.CLASSIC,
        leaderboard_limit: int = 100,
        run_id: str = "",
        results: collections.deque[MatchResult] | None = None,
    ) -> None:
        """``run_id`` tells this server run's games apart from another run's in storage;
        ``results`` receives every finished match (the caller bounds it)."""
        self.seed = seed
        self.results = results if results is not None else collections.deque(maxlen=0)
        self.matches_started = 0
        # By how they ended: agreement, disagreement, timeout, or abandoned.
        self.matches_ended: collections.Counter[str] = collections.Counter()
        # Login replies by outcome: a LoginResult value, or "no_user_id".
        self.logins: collections.Counter[str] = collections.Counter()
        self.max_spectators_per_room = max_spectators_per_room
        self.game_over_timeout = game_over_timeout
        self.placement_rule = placement_rule
        self.leaderboard_limit = leaderboard_limit
        self.run_id = run_id
        # Wall-clock seconds minus the ``now`` the lobby is fed: stored times are wall-clock.
        self.wall_clock_offset = 0.0
        # The latest ``now`` fed in, for events that come without one (disconnects).
        self._last_now = 0.0
        # The lobby list as last encoded: (version, when, bytes).
        self._encoded_lobby: tuple[int, float, bytes] | None = None
        self.players: dict[PlayerId, Player] = {}
        self.names: dict[str, Player] = {}  # by name_key: one name regardless of case
        self.rooms: dict[int, Room] = {}
        self.proposals: set[tuple[PlayerId, PlayerId]] = set()
        # Rooms waiting for a second game_over report, and when they decide without it.
        self.decisions_due: dict[int, float] = {}
        # Set when a decision was scheduled; whoever keeps time clears it.
        self.deadlines_changed = False
        self._next_room_number = 1
        # Bumped whenever what the lobby list shows changes.
        self.version = 0
        self._flushed_version = 0
        self._held_back = False
        self._handlers: dict[type, Callable[[Player, Any, float], list[Action]]] = {
            m.Register046: self._register,
            m.LoginRequest: self._login_request,
            m.GameRequest: self._game_request,
            m.SpectateRequest: self._spectate_request,
            m.MenuState046: self._menu_state,
            m.LeaveRoom: self._leave_room,
            m.GameOverClaim: self._game_over,
            m.Taunt: self._taunt,
            m.LeaderboardRequest: self._leaderboard_request,
        }

    # -- events -------------------------------------------------------------------

    def connect(self, player_id: PlayerId) -> None:
        if player_id in self.players:
            raise LocalProtocolError(f"player {player_id} is already connected")
        self.players[player_id] = Player(player_id)

    def is_registered(self, player_id: PlayerId) -> bool:
        player = self.players.get(player_id)
        return player is not None and player.state is not PlayerState.UNREGISTERED

    def handle(self, player_id: PlayerId, command: object, now: float) -> list[Action]:
        """Apply one command; raise a non-fatal RemoteProtocolError, with nothing applied, to refuse it."""
        player = self.players[player_id]
        self._last_now = now
        kind = type(command)
        allowed = ACCEPTED.get(kind)
        if allowed is None:
            raise LocalProtocolError(f"the 046 lobby does not handle {kind.__name__}")
        if player.state not in allowed:
            raise _refuse("message_not_valid_in_state", player, command)
        return self._handlers[kind](player, command, now)

    def handle_input(self, player_id: PlayerId, raw: bytes) -> list[Send]:
        """One ``I`` from a player: to the opponent as is, to spectators as ``U``/``I``."""
        player = self.players[player_id]
        route = player.route
        if route is None:
            raise _refuse("message_not_valid_in_state", player, m.Input(raw))
        letter = raw[1]
        if letter not in INPUT_BYTES:
            # The opponent's client would fail on it: never forwarded.
            raise _refuse("input_invalid", player, m.Input(raw), value=letter)
        route.record(letter)
        sends = [Send(route.opponent, raw)]
        if route.spectators:
            data = route.as_spectators[letter]
            sends += [Send(spectator, data) for spectator in route.spectators]
        return sends

    def input_route(self, player_id: PlayerId, letter: int) -> InputRoute | None:
        """The per-frame path: the route of a valid input letter from a playing player, else None.

        Changes nothing: the caller records the input (:meth:`InputRoute.record`)
        once it has admitted it, and relays it itself.  None sends the input
        through :meth:`handle_input`, which refuses it with its reason.
        """
        player = self.players.get(player_id)
        if player is None or letter not in INPUT_BYTES:
            return None
        return player.route

    def stored(
        self, player_id: PlayerId, operation: object, outcome: object, now: float
    ) -> list[Action]:
        """The outcome of a ``Store`` this lobby asked for."""
        self._last_now = now
        if type(operation) is FinishGame:
            # The game is stored whoever is still here; the room may wait for it.
            assert isinstance(outcome, storage.RecordGameOutcome)
            return self._game_recorded(operation, outcome)  # type: ignore[arg-type]
        player = self.players.get(player_id)
        if player is None:
            return []  # gone while the database worked
        kind = type(operation)
        if kind is storage.Login:
            assert isinstance(outcome, storage.LoginOutcome)
            return self._login_outcome(player, operation, outcome, now)
        if kind is storage.RankedProfiles:
            assert isinstance(outcome, storage.RankedProfilesOutcome)
            if player.user_id is not None and player.user_id in outcome.standings:
                player.standing = outcome.standings[player.user_id]
                if ratings.public_player_data(player.standing) is not None:
                    self.version += 1  # the lobby list shows it
            return []
        if kind is storage.Leaderboard:
            assert isinstance(outcome, storage.LeaderboardOutcome)
            if outcome.error is not None:
                log.warning("leaderboard_unavailable", player=player.id, error=outcome.error)
            return [_send(player, ratings.leaderboard_report(outcome.entries, player.user_id))]
        raise LocalProtocolError(f"no use for the outcome of {operation!r}")

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (infinity: never)."""
        return min(self.decisions_due.values(), default=math.inf)

    def tick(self, now: float) -> list[Action]:
        """Decide matches whose second game_over report is overdue."""
        self._last_now = now
        sends: list[Action] = []
        for number, due in list(self.decisions_due.items()):
            if now < due:
                continue
            room = self.rooms[number]
            assert room.match is not None
            claim = next(c for c in room.match.claims if c is not None)
            log.info("game_over_timeout", room=room.number, outcome=claim)
            sends += self._end_match(room, claim, "timeout", now)
        return sends

    def disconnect(self, player_id: PlayerId) -> list[Action]:
        """The connection is gone: free the name, close its room, tell who remains."""
        player = self.players.pop(player_id, None)
        if player is None:
            return []
        sends: list[Action] = []
        if player.state in _IN_ROOM:
            assert player.room is not None
            sends += self._close_room(player.room, "opponent_disconnected", by=player.name)
        elif player.state is PlayerState.SPECTATING:
            sends += self._remove_spectator(player)
        elif player.state is PlayerState.LOBBY:
            self._withdraw_proposals(player)
            self.version += 1
        if player.name is not None:
            del self.names[storage.name_key(player.name)]
        log.info("player_left", player=player.id, name=player.name, state=player.state.value)
        return sends

    # -- lobby snapshots ----------------------------------------------------------------

    @property
    def snapshot_due(self) -> bool:
        return self._held_back or self.version != self._flushed_version

    def snapshots(self, may_send: Callable[[PlayerId], bool] | None = None) -> list[Send]:
        """The lobby list for every lobby player who has not seen the latest one."""
        self._flushed_version = self.version
        self._held_back = False
        data = None
        sends = []
        for player in self.players.values():
            if player.state is not PlayerState.LOBBY or player.seen_version == self.version:
                continue
            if may_send is not None and not may_send(player.id):
                self._held_back = True
                continue
            if data is None:
                data = self._encoded_lobby_state()[1]
            player.seen_version = self.version
            sends.append(Send(player.id, data))
        return sends

    def _encoded_lobby_state(self, *, stale_ok: bool = False) -> tuple[int, bytes]:
        """The lobby list as sent and the version it shows, encoded once per version.

        With ``stale_ok``, a large lobby may get a list a moment old (at most
        :data:`STALE_LIST_SECONDS_PER_PLAYER` per player): in a join storm each
        joiner needs a list at once, and encoding a fresh one per join would
        cost O(players) each; the next broadcast brings the latest.
        """
        cached = self._encoded_lobby
        if cached is not None:
            version, encoded_at, data = cached
            if version == self.version:
                return version, data
            players = len(self.names)
            if (
                stale_ok
                and players >= STALE_LIST_MIN_PLAYERS
                and self._last_now - encoded_at < players * STALE_LIST_SECONDS_PER_PLAYER
            ):
                return version, data
        data = encode_json(self.lobby_state())
        self._encoded_lobby = (self.version, self._last_now, data)
        return self.version, data

    def lobby_state(self) -> dict[str, Any]:
        unpaired = sorted(
            p.name for p in self.players.values() if p.state is PlayerState.LOBBY and p.name
        )
        rooms = [
            d.spectatable_room(
                room.number, room.players[0].name or "", room.players[1].name or "",
                room.state is RoomState.PLAYING,
            )
            for room in self.rooms.values()
        ]
        shown = ratings.lobby_players(
            (p.name, p.standing)
            for p in self.players.values()
            if p.name and p.state in _SHOWN_IN_LOBBY_LIST
        )
        return d.lobby_state(unpaired, rooms, shown)

    def _lobby_state_to(self, players: list[Player], *, stale_ok: bool = False) -> list[Send]:
        """The lobby list, now, to players who just came to the lobby.

        A stale list (see :meth:`_encoded_lobby_state`) leaves them due for
        the next broadcast.
        """
        if not players:
            return []
        version, data = self._encoded_lobby_state(stale_ok=stale_ok)
        for player in players:
            player.seen_version = version
        return [Send(player.id, data) for player in players]

    # -- handlers: each checks everything before it changes anything -----------------

    def _register(self, player: Player, message: m.Register046, now: float) -> list[Action]:
        reason = d.name_refusal(message.name)
        if reason is not None:
            log.info("name_refused", player=player.id, name=str(message.name)[:64], reason=reason)
            return [_send(player, d.choose_another_name(reason))]
        assert isinstance(message.name, str)
        key = storage.name_key(message.name)
        if key in self.names:
            log.info("name_refused", player=player.id, name=message.name, reason="in_use")
            return [_send(player, d.name_in_use(message.name))]
        player.name = message.name
        player.selections = message.selections
        player.save_replays_publicly = message.save_replays_publicly
        self.names[key] = player
        player.move(PlayerState.LOBBY)
        self.version += 1
        log.info("player_registered", player=player.id, name=player.name)
        # At once, not with the next broadcast: the client leaves "Connecting..."
        # only on a J frame, and must log in before its third ping.
        return self._lobby_state_to([player], stale_ok=True)

    def _login_request(self, player: Player, message: m.LoginRequest, now: float) -> list[Action]:
        if player.login is not LoginState.NONE:
            raise _refuse("login_repeated", player, message, login=player.login.value)
        assert player.name is not None
        if message.user_id == "":
            player.login = LoginState.REFUSED
            player.login_answered = True
            self.logins["no_user_id"] += 1
            log.info("login_denied", player=player.id, name=player.name, reason="no_user_id")
            return [_send(player, d.login_denied(d.LOGIN_NO_USER_ID))]
        player.login = LoginState.PENDING
        return [Store(player.id, storage.Login(message.user_id, player.name))]

    def _login_outcome(
        self, player: Player, login: storage.Login, outcome: storage.LoginOutcome, now: float
    ) -> list[Action]:
        result = outcome.result
        player.login_answered = True
        self.logins[result.value] += 1
        context = {"player": player.id, "name": player.name, "result": result.value}
        if outcome.succeeded:
            player.login = LoginState.LOGGED_IN
            player.user_id = outcome.user_id
            log.info("login_succeeded", **context)
            if result is storage.LoginResult.NEW_ID:
                reply = d.login_successful(new_user_id=outcome.user_id)
            elif result is storage.LoginResult.RENAMED:
                reply = d.login_successful(old_name=outcome.old_name, new_name=player.name)
            else:
                reply = d.login_successful()
            sends: list[Action] = [_send(player, reply)]
            if player.state is PlayerState.LOBBY:
                sends += self._lobby_state_to([player], stale_ok=True)
            assert outcome.user_id is not None
            sends.append(Store(player.id, storage.RankedProfiles((outcome.user_id,))))
            return sends
        player.login = LoginState.REFUSED
        log.info("login_denied", **context, detail=outcome.reason)
        if result is storage.LoginResult.NAME_TAKEN:
            return [_send(player, d.choose_another_name(d.NAME_OWNED))]
        if result is storage.LoginResult.UNKNOWN_ID:
            return [_send(player, d.login_denied(d.LOGIN_UNKNOWN_ID))]
        if result is storage.LoginResult.BANNED:
            return [_send(player, d.login_denied(
                outcome.reason or d.LOGIN_BANNED,
                ban_duration=d.ban_duration(outcome.expires_at, self.wall_clock_offset + now),
            ))]
        return [_send(player, d.login_denied(d.LOGIN_UNAVAILABLE))]

    def _game_request(self, player: Player, message: m.GameRequest, now: float) -> list[Action]:
        if message.sender != player.name:
            raise _refuse("sender_not_own_name", player, message, sender=message.sender[:64])
        receiver = self.names.get(storage.name_key(message.receiver))
        if receiver is None or receiver.name != message.receiver:
            raise _refuse("receiver_unknown", player, message, receiver=message.receiver[:64])
        if receiver is player:
            raise _refuse("request_to_self", player, message)
        if receiver.state is not PlayerState.LOBBY:
            raise _refuse(
                "receiver_not_in_lobby", player, message, receiver=receiver.name,
                receiver_state=receiver.state.value,
            )
        if (receiver.id, player.id) in self.proposals:
            # The player who completes the pair is player 1.
            return self._create_room(player, receiver)
        if (player.id, receiver.id) in self.proposals:
            raise _refuse("request_repeated", player, message, receiver=receiver.name)
        self.proposals.add((player.id, receiver.id))
        log.info("game_requested", player=player.id, name=player.name, receiver=receiver.name)
        assert player.name is not None and receiver.name is not None
        return [_send(receiver, d.game_request(player.name, receiver.name))]

    def _spectate_request(
        self, player: Player, message: m.SpectateRequest, now: float
    ) -> list[Action]:
        if message.sender != player.name:
            raise _refuse("sender_not_own_name", player, message, sender=message.sender[:64])
        room = self.rooms.get(message.room_number)
        if room is None:
            raise _refuse("room_unknown", player, message, room=message.room_number)
        if len(room.spectators) >= self.max_spectators_per_room:
            raise _refuse("room_full_of_spectators", player, message, room=room.number)
        self._withdraw_proposals(player)
        player.move(PlayerState.SPECTATING)
        player.room = room
        room.spectators.append(player)
        _route_to_spectators(room)
        self.version += 1
        log.info("spectator_joined", player=player.id, name=player.name, room=room.number)
        return [_send(player, self._spectate_granted(room, player))] + self._send_spectators(room)

    def _menu_state(self, player: Player, message: m.MenuState046, now: float) -> list[Action]:
        room = player.room
        assert room is not None
        player.selections = message.selections
        first, second = room.players
        sends: list[Action] = []
        if first.selections.ranked or second.selections.ranked:
            sends += self._to_room(room, self._ranked_approval(room).message())
        if first.selections.ready and second.selections.ready:
            return sends + self._start_match(room, now)
        opponent = second if player is first else first
        number = room.number_of(player)
        sends.append(_send(opponent, d.menu_state(self._state_for(player, opponent))))
        if room.spectators:
            for spectator in room.spectators:
                sends.append(
                    _send(spectator, d.menu_state(self._state_for(player, spectator), number))
                )
        return sends

    def _leave_room(self, player: Player, message: m.LeaveRoom, now: float) -> list[Action]:
        if player.state is PlayerState.SPECTATING:
            sends = self._remove_spectator(player)
            player.move(PlayerState.LOBBY)
            return sends + self._lobby_state_to([player])
        assert player.room is not None
        return self._close_room(player.room, "left", by=player.name)

    def _game_over(self, player: Player, message: m.GameOverClaim, now: float) -> list[Action]:
        if player.state is PlayerState.SPECTATING:
            return []
        room = player.room
        assert room is not None and room.match is not None
        match = room.match
        side = room.number_of(player) - 1
        if match.claims[side] is not None:
            raise _refuse("game_over_repeated", player, message)
        match.claims[side] = message.outcome
        other = match.claims[1 - side]
        if other is None:
            self.decisions_due[room.number] = now + self.game_over_timeout
            self.deadlines_changed = True
            return []
        if other == message.outcome:
            return self._end_match(room, other, "agreement", now)
        log.info("game_over_disagreement", room=room.number, claims=list(match.claims))
        return self._end_match(room, 0, "disagreement", now)

    def _taunt(self, player: Player, message: m.Taunt, now: float) -> list[Action]:
        taunts = player.taunts
        while taunts and taunts[0] <= now - TAUNT_WINDOW:
            taunts.popleft()
        if len(taunts) >= TAUNTS_PER_WINDOW:
            raise _refuse("taunt_rate_exceeded", player, message)
        taunts.append(now)
        room = player.room
        assert room is not None
        payload = d.taunt(message.kind, message.index, room.number_of(player))
        return [_send(each, payload) for each in room.everyone() if each is not player]

    def _leaderboard_request(
        self, player: Player, message: m.LeaderboardRequest, now: float
    ) -> list[Action]:
        return [Store(player.id, storage.Leaderboard(player.user_id, self.leaderboard_limit))]

    # -- rooms and matches -------------------------------------------------------------

    def _create_room(self, first: Player, second: Player) -> list[Action]:
        number = self._next_room_number
        self._next_room_number += 1
        # A random stream of its own per room, so a fixed server seed
        # reproduces every match's seed whatever other rooms do.
        room = Room(number, (first, second), random.Random(f"{self.seed}:046:{number}"))
        self.rooms[number] = room
        for player in room.players:
            self._withdraw_proposals(player)
            player.selections = attrs.evolve(
                player.selections, cursor="__Ready", ready=False, wants_ready=False
            )
            player.room = room
            player.move(PlayerState.ROOM)
        self.version += 1
        log.info("room_created", room=number, a=first.name, b=second.name)
        return self._send_room_init(room, character_select=False)

    def _start_match(self, room: Room, now: float) -> list[Action]:
        first, second = room.players
        stages = [s for s in (first.selections.stage, second.selections.stage) if s]
        stage = room.rng.choice(stages) if stages else "__RandomStage"
        seed = room.rng.randint(*SEED_RANGE)
        ranked = (first.selections.ranked or second.selections.ranked) and (
            self._ranked_approval(room).approved
        )
        room.matches_played += 1
        match = Match(
            seed=seed, stage=stage, ranked=ranked, started_at=now,
            number=room.matches_played, selections=(first.selections, second.selections),
        )
        room.match = match
        room.stage = stage
        room.move(RoomState.PLAYING)
        for side, (player, opponent, as_spectators) in enumerate(
            ((first, second, _AS_PLAYER_ONE), (second, first, _AS_PLAYER_TWO))
        ):
            player.move(PlayerState.PLAYING)
            player.route = InputRoute(opponent.id, (), as_spectators, match.inputs[side])
        _route_to_spectators(room)
        self.version += 1
        self.matches_started += 1
        log.info(
            "match_started", room=room.number, a=first.name, b=second.name, seed=seed,
            ranked=ranked,
        )
        a_settings = d.player_settings(first.selections, 1)
        b_settings = d.player_settings(second.selections, 2)
        if ranked:
            for settings, player in ((a_settings, first), (b_settings, second)):
                standing = player.standing or ratings.Standing()
                settings["rating"] = ratings.round_rating(standing.current_rating)
        a_view = encode_json(
            d.match_start(seed=seed, stage=stage, ranked=ranked, own=a_settings, other=b_settings)
        )
        b_view = encode_json(
            d.match_start(seed=seed, stage=stage, ranked=ranked, own=b_settings, other=a_settings)
        )
        sends: list[Action] = [Send(first.id, a_view), Send(second.id, b_view)]
        sends += [Send(spectator.id, a_view) for spectator in room.spectators]
        return sends

    def _end_match(self, room: Room, outcome: int, decided_by: str, now: float) -> list[Action]:
        """Both reports are in, or the wait for the second is over: back to select."""
        match = room.match
        assert match is not None
        room.match = None
        self.decisions_due.pop(room.number, None)
        room.move(RoomState.SELECTING)
        # Taken before this game counts: a replay holds the counts at its start.
        finish = self._finish(room, match, outcome, decided_by, now)
        sends: list[Action] = []
        if outcome in (1, 2):
            room.win_counts[outcome - 1] += 1
            sends += self._to_room(room, d.win_counts(room.win_counts))
        for player in room.players:
            player.selections = attrs.evolve(player.selections, ready=False, wants_ready=False)
            player.move(PlayerState.ROOM)
        self.version += 1
        log.info(
            "match_ended", room=room.number, outcome=outcome, decided_by=decided_by,
            win_counts=list(room.win_counts), seconds=round(now - match.started_at, 1),
        )
        self.matches_ended[decided_by] += 1
        first, second = room.players
        self.results.append(MatchResult(
            dialect="v046",
            room=room.number,
            players=(first.name or "", second.name or ""),
            outcome=outcome,
            decided_by=decided_by,
            seconds=now - match.started_at,
            ended_at=now,
        ))
        sends.append(Store(room.players[0].id, finish))
        if match.ranked and outcome in (1, 2):
            # Select shows the new ratings: it waits for storage (milliseconds).
            room.awaiting_result = finish.key
            return sends
        return sends + self._send_room_init(room, character_select=True)

    def _finish(
        self, room: Room, match: Match, outcome: int, decided_by: str, now: float
    ) -> FinishGame:
        """What storage keeps of a match that ended (or was abandoned)."""
        match_players = tuple(
            MatchPlayer(
                name=player.name or "",
                user_id=player.user_id if player.login is LoginState.LOGGED_IN else None,
                level=selections.level,
                character=selections.character or selections.character_is_random or "",
                panels_dir=selections.panels_dir or "",
                inputs=inputs.decode("ascii"),
                publicity=Publicity.from_client(player.save_replays_publicly),
            )
            for player, selections, inputs in zip(room.players, match.selections, match.inputs)
        )
        finished = FinishedMatch(
            players=match_players,  # type: ignore[arg-type]
            stage=match.stage,
            seed=match.seed,
            ranked=match.ranked,
            winner=outcome,
            decided_by=Decision(decided_by),
            started_at=self.wall_clock_offset + match.started_at,
            ended_at=self.wall_clock_offset + now,
            win_counts=(room.win_counts[0], room.win_counts[1]),
        )
        key = f"{self.run_id}:{room.number}:{match.number}"
        return FinishGame(key=key, room=room.number, match=finished)

    def _game_recorded(
        self, finish: FinishGame, outcome: storage.RecordGameOutcome
    ) -> list[Action]:
        """Storage kept a game: new standings, and the select a rated game waited for."""
        if outcome.result is storage.RecordResult.UNAVAILABLE:
            log.error("game_not_stored", game=finish.key, reason=outcome.reason)
        room = self.rooms.get(finish.room)
        if room is not None and outcome.rated:
            room.standings_before = list(outcome.before)
            for player, standing in zip(room.players, outcome.after):
                if standing is not None:
                    player.standing = standing
        if outcome.settled:
            changed = {user_id: after for user_id, _, after in outcome.settled}
            for player in self.players.values():
                if player.standing is not None and player.user_id in changed:
                    player.standing = attrs.evolve(
                        player.standing, rating=changed[player.user_id]
                    )
        if outcome.rated or outcome.settled:
            self.version += 1
        if room is None or room.awaiting_result != finish.key:
            return []
        room.awaiting_result = None
        return self._send_room_init(room, character_select=True)

    def _close_room(self, room: Room, reason: str, **context: object) -> list[Action]:
        """Everyone still connected goes back to the lobby: leave_room, then the lobby list."""
        del self.rooms[room.number]
        self.decisions_due.pop(room.number, None)
        sends: list[Action] = []
        if room.match is not None:
            self.matches_ended["abandoned"] += 1
            # An abandoned match is kept too, without a winner and unrated.
            finish = self._finish(room, room.match, 0, "disconnect", self._last_now)
            sends.append(Store(room.players[0].id, finish))
        returning = []
        for player in room.everyone():
            player.room = None
            if player.id in self.players:
                player.move(PlayerState.LOBBY)
                returning.append(player)
        self.version += 1
        log.info("room_closed", room=room.number, reason=reason, **context)
        leave = encode_json(d.leave_room())
        return sends + [Send(p.id, leave) for p in returning] + self._lobby_state_to(returning)

    def _remove_spectator(self, spectator: Player) -> list[Action]:
        room = spectator.room
        assert room is not None
        room.spectators.remove(spectator)
        _route_to_spectators(room)
        spectator.room = None
        self.version += 1
        log.info("spectator_left", player=spectator.id, name=spectator.name, room=room.number)
        return self._send_spectators(room)

    # -- rendering for the room -----------------------------------------------------------

    def _state_for(self, player: Player, recipient: Player) -> dict[str, Any]:
        return d.selections_json(player.selections, mode_cell_shown=recipient.login_answered)

    def _send_room_init(self, room: Room, *, character_select: bool) -> list[Action]:
        first, second = room.players
        sends: list[Action] = []
        room_ratings = self._room_ratings(room)
        ranked = self._ranked_shown(room)
        for number, player in ((1, first), (2, second)):
            opponent = second if number == 1 else first
            assert opponent.name is not None
            message = d.create_room(
                your_number=number,
                opponent=opponent.name,
                a_state=self._state_for(first, player),
                b_state=self._state_for(second, player),
                ratings=room_ratings,
                ranked=ranked,
                character_select=character_select,
            )
            sends.append(_send(player, message))
        for spectator in room.spectators:
            message = d.spectator_character_select(
                self._state_for(first, spectator), self._state_for(second, spectator),
                room_ratings, ranked,
            )
            sends.append(_send(spectator, message))
        return sends

    def _spectate_granted(self, room: Room, spectator: Player) -> dict[str, Any]:
        first, second = room.players
        match = room.match
        message: dict[str, Any] = {
            "spectate_request_granted": True,
            "spectate_request_rejected": False,
            "rating_updates": True,
            "ratings": self._room_ratings(room),
            "a_menu_state": self._state_for(first, spectator),
            "b_menu_state": self._state_for(second, spectator),
            "win_counts": list(room.win_counts),
            "match_start": False,
            "ranked": match.ranked if match is not None else self._ranked_shown(room),
        }
        if match is None:
            # At select: the spectator waits for match_start like the players.
            message["stage"] = room.stage or first.selections.stage or "__RandomStage"
            message["player_settings"] = d.player_settings(first.selections, 1)
            message["opponent_settings"] = d.player_settings(second.selections, 2)
            return message
        message["stage"] = match.stage
        message["player_settings"] = d.player_settings(match.selections[0], 1)
        message["opponent_settings"] = d.player_settings(match.selections[1], 2)
        message["replay_of_match_so_far"] = self._replay_so_far(room, match)
        return message

    def _replay_so_far(self, room: Room, match: Match) -> dict[str, Any]:
        first, second = room.players
        one, two = (
            encode_for_catch_up(inputs.decode("ascii")) for inputs in match.inputs
        )
        if one is None or two is None:
            # No form of these inputs survives the client's reading: send what
            # it reads best rather than nothing; the spectator may drift.
            log.warning("catch_up_inputs_not_exact", room=room.number)
            one = one if one is not None else match.inputs[0].decode("ascii")
            two = two if two is not None else match.inputs[1].decode("ascii")
        a, b = match.selections
        return {
            "vs": {
                "P": "", "O": "", "Q": "", "R": "",
                "in_buf": one,
                "I": two,
                "P1_level": a.level, "P2_level": b.level,
                "P1_char": a.character or "", "P2_char": b.character or "",
                "P1_name": first.name, "P2_name": second.name,
                "ranked": match.ranked,
                "do_countdown": True,
                "seed": match.seed,
            }
        }

    def _room_ratings(self, room: Room) -> list[dict[str, Any]]:
        return [
            ratings.rating_entry(player.standing, before)
            for player, before in zip(room.players, room.standings_before)
        ]

    def _ranked_profile(self, player: Player) -> ratings.RankedProfile:
        return ratings.RankedProfile(
            name=player.name or "",
            logged_in=player.login is LoginState.LOGGED_IN,
            user_id=player.user_id,
            wants_ranked=player.selections.ranked,
            level=player.selections.level,
            standing=player.standing,
        )

    def _ranked_approval(self, room: Room) -> ratings.Approval:
        first, second = room.players
        return ratings.approve_ranked(
            self._ranked_profile(first), self._ranked_profile(second), self.placement_rule
        )

    def _ranked_shown(self, room: Room) -> bool:
        """Whether select shows the room's next match as ranked."""
        first, second = room.players
        if not (first.selections.ranked or second.selections.ranked):
            return False
        return self._ranked_approval(room).approved

    def _send_spectators(self, room: Room) -> list[Action]:
        names = [s.name for s in room.spectators if s.name]
        return self._to_room(room, d.spectators(names))

    def _to_room(self, room: Room, payload: dict[str, Any]) -> list[Action]:
        data = encode_json(payload)
        return [Send(player.id, data) for player in room.everyone()]

    def _withdraw_proposals(self, player: Player) -> None:
        if self.proposals:
            self.proposals = {pair for pair in self.proposals if player.id not in pair}
