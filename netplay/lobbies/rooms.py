"""What the lobbies of the 2022 and the 2025 clients share: rooms, matches, spectators, results.

Theory of operation
-------------------
Both client families play the same game in the same way: players meet in a
lobby, a mutual game request makes a two-player room, both players make
their choices at select and ready up, the match's inputs are relayed to the
opponent and to spectators (who may join at select or mid-match and are sent
the match so far), both players report who won, the result is stored (rated
when ranked) and the room returns to select.  :class:`RoomLobby` holds those
rules once.  It is a plain object fed events (``connect``, ``handle``,
``stored``, ``tick``, ``disconnect``) with the current time; it returns
actions: ``Send`` (which player gets which bytes) and ``Store`` (a database
operation whose outcome comes back through ``stored``).  It never reads a
clock, a socket or a database itself.

What differs between the families is how a player logs in and every byte
they are sent.  A subclass provides both: its handlers for logging in, and
the ``_render_*``/``_*_sends`` hooks that turn the shared state into each
recipient's messages.  Several wire formats may share one lobby (the 2025
clients of network versions 004 and 005 do): each player carries its
``wire_format``, and a message for many is rendered once per format.

The exchanges, each an explicit state machine:

* a *player* moves through :class:`PlayerState`; :data:`PLAYER_TRANSITIONS`
  lists every legal move and the subclass's ``accepted`` table which command
  is valid in which state.  Anything else is refused with a
  RemoteProtocolError before any state is touched;
* a *request* ``sender -> receiver`` becomes a room when the receiver asks
  back; the one who completes the pair is player 1 (``a``);
* a *room* moves through :class:`RoomState`; while playing it holds a
  :class:`Match` with the seed and every input so far, which is what a
  spectator who joins late is sent to catch up;
* a match ends when both players have reported ``game_over`` (disagreeing
  reports make a draw) or, ``game_over_timeout`` after the first report, on
  that report alone, so that a crashed client never strands its opponent.
"""

from __future__ import annotations

import collections
import enum
import math
import random
from typing import Any, Callable, Hashable, Iterable, Mapping

import attrs
import structlog

from netplay.accounts import ratings, storage
from netplay.accounts.replays import Decision, FinishedMatch, MatchPlayer, Publicity
from netplay.actions import Action, Send, Store
from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import messages as m
from netplay.lobbies.results import FinishGame
from netplay.stats import MatchResult

log = structlog.get_logger("netplay.rooms")

PlayerId = int

# The clients send at most 4 taunts in 10 s; the server holds them to that.
TAUNTS_PER_WINDOW = 4
TAUNT_WINDOW = 10.0
# Inputs kept per player and match for late spectators: one hour at 60 a second.
MAX_RECORDED_INPUTS = 60 * 60 * 60
SEED_RANGE = (1, 9_999_999)
# A lobby this large may answer a join with a list encoded a moment ago: up
# to this many seconds per player (0.4 s at 2,000 players).
STALE_LIST_MIN_PLAYERS = 256
STALE_LIST_SECONDS_PER_PLAYER = 0.0002
RANDOM_STAGE = "__RandomStage"


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

REGISTERED = frozenset(PlayerState) - {PlayerState.UNREGISTERED}
SHOWN_IN_LOBBY_LIST = frozenset({PlayerState.LOBBY, PlayerState.ROOM, PlayerState.PLAYING})
IN_ROOM = frozenset({PlayerState.ROOM, PlayerState.PLAYING})

# The commands whose handlers this module has, by the states they are valid in.
SHARED_ACCEPTED: dict[type, frozenset[PlayerState]] = {
    m.GameRequest: frozenset({PlayerState.LOBBY}),
    m.SpectateRequest: frozenset({PlayerState.LOBBY}),
    m.LeaveRoom: frozenset({PlayerState.ROOM, PlayerState.PLAYING, PlayerState.SPECTATING}),
    # Spectators report game_over too; theirs is ignored.
    m.GameOverClaim: frozenset({PlayerState.PLAYING, PlayerState.SPECTATING}),
    m.Taunt: IN_ROOM,
    m.LeaderboardRequest: REGISTERED,
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
    # The message each input letter becomes for a spectator (U for player 1,
    # I for 2), for the fixed-length inputs of the 2022 client.
    as_spectators: dict[int, bytes]
    # This player's inputs so far, for spectators who join late.
    recorded: bytearray
    # The letter a spectator receives this player's inputs under (b"U" or b"I").
    spectator_letter: bytes = b"I"
    # How many input messages were recorded (a message may hold several frames).
    count: int = 0

    def record(self, letter: int) -> None:
        if len(self.recorded) < MAX_RECORDED_INPUTS:
            self.recorded.append(letter)
            self.count += 1

    def record_body(self, body: bytes) -> bool:
        """Record a variable-length input; False once the match's record is full."""
        if len(self.recorded) + len(body) > MAX_RECORDED_INPUTS:
            return False
        self.recorded += body
        self.count += 1
        return True

    def record_bodies(self, bodies: list[bytes]) -> bool:
        """Record several variable-length inputs, all or none; False if they do not fit."""
        if len(bodies) == 1:
            return self.record_body(bodies[0])
        if len(self.recorded) + sum(map(len, bodies)) > MAX_RECORDED_INPUTS:
            return False
        for body in bodies:
            self.recorded += body
        self.count += len(bodies)
        return True


@attrs.define(eq=False)
class Player:
    id: PlayerId
    state: PlayerState = PlayerState.UNREGISTERED
    name: str | None = None
    selections: m.Selections = attrs.Factory(m.Selections)
    save_replays_publicly: str = "with my name"
    login: LoginState = LoginState.NONE
    user_id: str | None = None
    public_id: int | None = None
    # Whether this client got a login reply (the 2022 client draws "__Mode" only then).
    login_answered: bool = False
    room: Room | None = None
    seen_version: int = -1
    taunts: collections.deque[float] = attrs.Factory(collections.deque)
    # Ranked record, once storage has answered after the login.
    standing: ratings.Standing | None = None
    # Set while PLAYING, and only then.
    route: InputRoute | None = None
    # Which renderer's bytes this player reads (see the module docstring).
    wire_format: Hashable = None

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
    # Every input so far, player 1's and player 2's.
    inputs: tuple[bytearray, bytearray] = attrs.Factory(lambda: (bytearray(), bytearray()))
    # Who each player says won (0: a draw), once reported; see ``decisions_due``.
    claims: list[int | None] = attrs.Factory(lambda: [None, None])
    # The room's win counts as the match started.
    win_counts_at_start: tuple[int, int] = (0, 0)


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
    # The outcome of the room's last match (0: a draw), for messages sent after it.
    last_outcome: int | None = None

    def move(self, new_state: RoomState) -> None:
        if new_state not in ROOM_TRANSITIONS[self.state]:
            raise LocalProtocolError(
                f"room {self.number} cannot go from {self.state.value} to {new_state.value}"
            )
        self.state = new_state

    def number_of(self, player: Player) -> int:
        return 1 if self.players[0] is player else 2

    def opponent_of(self, player: Player) -> Player:
        return self.players[1] if self.players[0] is player else self.players[0]

    def everyone(self) -> list[Player]:
        return [*self.players, *self.spectators]


def refuse(reason: str, player: Player, message: object, **context: object) -> RemoteProtocolError:
    return RemoteProtocolError(
        reason, fatal=False, player=player.id, name=player.name, state=player.state.value,
        message=type(message).__name__, **context,
    )


def fan_out(recipients: Iterable[Player], render: Callable[[Player], bytes]) -> list[Send]:
    """One message to many, rendered once per wire format among them."""
    rendered: dict[Hashable, bytes] = {}
    sends = []
    for player in recipients:
        data = rendered.get(player.wire_format)
        if data is None:
            data = rendered[player.wire_format] = render(player)
        sends.append(Send(player.id, data))
    return sends


def route_to_spectators(room: Room) -> None:
    """The players' input routes follow the room's spectators."""
    spectators = tuple(spectator.id for spectator in room.spectators)
    for player in room.players:
        if player.route is not None:
            player.route.spectators = spectators


class RoomLobby:
    """Players, requests, rooms and matches of one lobby.  See the module docstring.

    Subclasses set :attr:`dialect` (a short name for logs and results),
    :attr:`accepted` (every command's states) and :attr:`_handlers`' login
    entries, and implement the rendering hooks at the end of this class.
    """

    dialect = "rooms"
    accepted: dict[type, frozenset[PlayerState]] = SHARED_ACCEPTED

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
        # Login replies by outcome: a LoginResult value, or a refusal's reason.
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
        # The lobby list as last encoded, per wire format: (version, when, bytes).
        self._encoded_lobby: dict[Hashable, tuple[int, float, bytes]] = {}
        self.players: dict[PlayerId, Player] = {}
        self.names: dict[str, Player] = {}  # by name_key: one name regardless of case
        # The names connected in the other lobbies that share this database:
        # one account is online once, whichever client it uses.
        self._names_elsewhere: list[Mapping[str, object]] = []
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
            m.GameRequest: self._game_request,
            m.SpectateRequest: self._spectate_request,
            m.LeaveRoom: self._leave_room,
            m.GameOverClaim: self._game_over,
            m.Taunt: self._taunt,
            m.LeaderboardRequest: self._leaderboard_request,
        }

    # -- events -------------------------------------------------------------------

    def connect(self, player_id: PlayerId) -> Player:
        if player_id in self.players:
            raise LocalProtocolError(f"player {player_id} is already connected")
        player = self.players[player_id] = Player(player_id)
        return player

    def is_registered(self, player_id: PlayerId) -> bool:
        player = self.players.get(player_id)
        return player is not None and player.state is not PlayerState.UNREGISTERED

    def handle(self, player_id: PlayerId, command: object, now: float) -> list[Action]:
        """Apply one command; raise a non-fatal RemoteProtocolError, with nothing applied, to refuse it."""
        player = self.players[player_id]
        self._last_now = now
        kind = type(command)
        allowed = self.accepted.get(kind)
        if allowed is None:
            raise LocalProtocolError(f"the {self.dialect} lobby does not handle {kind.__name__}")
        if player.state not in allowed:
            raise refuse("message_not_valid_in_state", player, command)
        return self._handlers[kind](player, command, now)

    def input_route(self, player_id: PlayerId) -> InputRoute | None:
        """The route of a playing player's inputs, else None.  Changes nothing."""
        player = self.players.get(player_id)
        return None if player is None else player.route

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
            return [Send(player.id, self._render_leaderboard(player, outcome))]
        raise LocalProtocolError(f"no use for the outcome of {operation!r}")

    def standing_known(self, player: Player, outcome: storage.LoginOutcome) -> list[Action]:
        """A login's standing; asked for separately from a storage that did not give it."""
        if outcome.standing is None:
            assert outcome.user_id is not None
            return [Store(player.id, storage.RankedProfiles((outcome.user_id,)))]
        player.standing = outcome.standing
        if ratings.public_player_data(player.standing) is not None:
            self.version += 1  # the lobby list shows it
        return []

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
        if player.state in IN_ROOM:
            assert player.room is not None
            sends += self._close_room(player.room, "opponent_disconnected", by=player.name)
        elif player.state is PlayerState.SPECTATING:
            sends += self._remove_spectator(player)
        elif player.state is PlayerState.LOBBY:
            self._withdraw_proposals(player)
            self.version += 1
        if player.name is not None and self.names.get(storage.name_key(player.name)) is player:
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
        sends = []
        for player in self.players.values():
            if player.state is not PlayerState.LOBBY or player.seen_version == self.version:
                continue
            if may_send is not None and not may_send(player.id):
                self._held_back = True
                continue
            player.seen_version = self.version
            sends.append(Send(player.id, self._encoded_lobby_state(player)[1]))
        return sends

    def _encoded_lobby_state(self, player: Player, *, stale_ok: bool = False) -> tuple[int, bytes]:
        """The lobby list as ``player`` reads it and the version it shows, encoded once per version.

        With ``stale_ok``, a large lobby may get a list a moment old (at most
        :data:`STALE_LIST_SECONDS_PER_PLAYER` per player): in a join storm each
        joiner needs a list at once, and encoding a fresh one per join would
        cost O(players) each; the next broadcast brings the latest.
        """
        key = self._lobby_list_key(player)
        cached = self._encoded_lobby.get(key)
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
        data = self._render_lobby_state(player)
        self._encoded_lobby[key] = (self.version, self._last_now, data)
        return self.version, data

    def _lobby_list_key(self, player: Player) -> Hashable:
        """Players with equal keys are sent the same lobby list."""
        return player.wire_format

    def lobby_players(self) -> tuple[list[Player], list[Room], list[Player]]:
        """Who the lobby list shows: players waiting (by name), rooms, everyone with a rating."""
        unpaired = sorted(
            (p for p in self.players.values() if p.state is PlayerState.LOBBY and p.name),
            key=lambda p: p.name or "",
        )
        shown = [p for p in self.players.values() if p.name and p.state in SHOWN_IN_LOBBY_LIST]
        return unpaired, list(self.rooms.values()), shown

    def _lobby_state_to(self, players: list[Player], *, stale_ok: bool = False) -> list[Send]:
        """The lobby list, now, to players who just came to the lobby.

        A stale list (see :meth:`_encoded_lobby_state`) leaves them due for
        the next broadcast.
        """
        sends = []
        for player in players:
            version, data = self._encoded_lobby_state(player, stale_ok=stale_ok)
            player.seen_version = version
            sends.append(Send(player.id, data))
        return sends

    # -- shared handlers: each checks everything before it changes anything -------------

    def _game_request(self, player: Player, message: m.GameRequest, now: float) -> list[Action]:
        if message.sender != player.name:
            raise refuse("sender_not_own_name", player, message, sender=message.sender[:64])
        receiver = self.names.get(storage.name_key(message.receiver))
        if receiver is None or receiver.name != message.receiver:
            raise refuse("receiver_unknown", player, message, receiver=message.receiver[:64])
        if receiver is player:
            raise refuse("request_to_self", player, message)
        if receiver.state is not PlayerState.LOBBY:
            raise refuse(
                "receiver_not_in_lobby", player, message, receiver=receiver.name,
                receiver_state=receiver.state.value,
            )
        if (receiver.id, player.id) in self.proposals:
            # The player who completes the pair is player 1.
            return self._create_room(player, receiver)
        if (player.id, receiver.id) in self.proposals:
            raise refuse("request_repeated", player, message, receiver=receiver.name)
        self.proposals.add((player.id, receiver.id))
        log.info("game_requested", player=player.id, name=player.name, receiver=receiver.name)
        return [Send(receiver.id, self._render_game_request(player, receiver))]

    def _spectate_request(
        self, player: Player, message: m.SpectateRequest, now: float
    ) -> list[Action]:
        if message.sender != player.name:
            raise refuse("sender_not_own_name", player, message, sender=message.sender[:64])
        room = self.rooms.get(message.room_number)
        if room is None:
            raise refuse("room_unknown", player, message, room=message.room_number)
        if len(room.spectators) >= self.max_spectators_per_room:
            raise refuse("room_full_of_spectators", player, message, room=room.number)
        self._withdraw_proposals(player)
        player.move(PlayerState.SPECTATING)
        player.room = room
        room.spectators.append(player)
        route_to_spectators(room)
        self.version += 1
        log.info("spectator_joined", player=player.id, name=player.name, room=room.number)
        granted = Send(player.id, self._render_spectate_granted(room, player))
        return [granted, *self._spectators_sends(room)]

    def _menu_state(self, player: Player, selections: m.Selections, now: float) -> list[Action]:
        """New selections of a player at select: forwarded, or the match starts."""
        room = player.room
        assert room is not None
        player.selections = selections
        first, second = room.players
        sends: list[Action] = []
        if first.selections.ranked or second.selections.ranked:
            approval = self._ranked_approval(room)
            sends += fan_out(room.everyone(), lambda r: self._render_ranked_status(room, approval, r))
        if self._ready_to_start(first) and self._ready_to_start(second):
            return sends + self._start_match(room, now)
        return sends + self._settings_sends(room, player)

    def _ready_to_start(self, player: Player) -> bool:
        return player.selections.ready

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
            raise refuse("game_over_repeated", player, message)
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
            raise refuse("taunt_rate_exceeded", player, message)
        taunts.append(now)
        room = player.room
        assert room is not None
        others = [each for each in room.everyone() if each is not player]
        return fan_out(others, lambda r: self._render_taunt(room, player, message, r))

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
        room = Room(number, (first, second), random.Random(self._room_seed(number)))
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
        return self._room_created_sends(room)

    def _room_seed(self, number: int) -> str:
        return f"{self.seed}:{self.dialect}:{number}"

    def _pick_stage(self, room: Room) -> str:
        first, second = room.players
        stages = [s for s in (first.selections.stage, second.selections.stage) if s]
        return room.rng.choice(stages) if stages else RANDOM_STAGE

    def _start_match(self, room: Room, now: float) -> list[Action]:
        first, second = room.players
        stage = self._pick_stage(room)
        seed = room.rng.randint(*SEED_RANGE)
        ranked = (first.selections.ranked or second.selections.ranked) and (
            self._ranked_approval(room).approved
        )
        room.matches_played += 1
        match = Match(
            seed=seed, stage=stage, ranked=ranked, started_at=now,
            number=room.matches_played, selections=(first.selections, second.selections),
            win_counts_at_start=(room.win_counts[0], room.win_counts[1]),
        )
        room.match = match
        room.stage = stage
        room.move(RoomState.PLAYING)
        for side, (player, opponent) in enumerate(((first, second), (second, first))):
            player.move(PlayerState.PLAYING)
            player.route = self._input_route(side, opponent, match)
        route_to_spectators(room)
        self.version += 1
        self.matches_started += 1
        log.info(
            "match_started", room=room.number, a=first.name, b=second.name, seed=seed,
            ranked=ranked,
        )
        return self._match_start_sends(room, match)

    def _input_route(self, side: int, opponent: Player, match: Match) -> InputRoute:
        return InputRoute(
            opponent.id, (), {}, match.inputs[side], spectator_letter=b"U" if side == 0 else b"I"
        )

    def _end_match(self, room: Room, outcome: int, decided_by: str, now: float) -> list[Action]:
        """Both reports are in, or the wait for the second is over: back to select."""
        match = room.match
        assert match is not None
        room.match = None
        self.decisions_due.pop(room.number, None)
        room.move(RoomState.SELECTING)
        # Taken before this game counts: a replay holds the counts at its start.
        finish = self._finish(room, match, outcome, decided_by, now)
        room.last_outcome = outcome
        sends: list[Action] = []
        if outcome in (1, 2):
            room.win_counts[outcome - 1] += 1
            sends += self._win_counts_sends(room)
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
            dialect=self.dialect,
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
        return sends + self._back_to_select_sends(room)

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
                inputs=inputs.decode("utf-8", "replace"),
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
            win_counts=match.win_counts_at_start,
            replay=self._stored_replay(room, match, outcome, decided_by),
        )
        key = f"{self.run_id}:{self._game_key_prefix()}{room.number}:{match.number}"
        return FinishGame(key=key, room=room.number, match=finished)

    def _game_key_prefix(self) -> str:
        return ""

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
        return self._back_to_select_sends(room)

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
        sends += fan_out(returning, lambda r: self._render_leave_room(room, reason, r))
        return sends + self._lobby_state_to(returning)

    def _remove_spectator(self, spectator: Player) -> list[Action]:
        room = spectator.room
        assert room is not None
        room.spectators.remove(spectator)
        route_to_spectators(room)
        spectator.room = None
        self.version += 1
        log.info("spectator_left", player=spectator.id, name=spectator.name, room=room.number)
        return self._spectators_sends(room)

    def _spectators_sends(self, room: Room) -> list[Action]:
        names = [s.name for s in room.spectators if s.name]
        return fan_out(room.everyone(), lambda r: self._render_spectators(room, names, r))

    def _win_counts_sends(self, room: Room) -> list[Action]:
        return fan_out(room.everyone(), lambda r: self._render_win_counts(room, r))

    # -- ranked play ----------------------------------------------------------------------

    def room_ratings(self, room: Room) -> list[dict[str, Any]]:
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

    def ranked_shown(self, room: Room) -> bool:
        """Whether select shows the room's next match as ranked."""
        first, second = room.players
        if not (first.selections.ranked or second.selections.ranked):
            return False
        return self._ranked_approval(room).approved

    def share_names_with(self, other: RoomLobby) -> None:
        """Refuse, in both lobbies, a name that is connected in either."""
        self._names_elsewhere.append(other.names)
        other._names_elsewhere.append(self.names)

    def name_connected(self, key: str) -> bool:
        """Whether the name with this ``name_key`` is online here or in a lobby shared with."""
        return key in self.names or any(key in names for names in self._names_elsewhere)

    def _withdraw_proposals(self, player: Player) -> None:
        if self.proposals:
            self.proposals = {pair for pair in self.proposals if player.id not in pair}

    # -- what a subclass provides ----------------------------------------------------------

    def _login_outcome(
        self, player: Player, login: storage.Login, outcome: storage.LoginOutcome, now: float
    ) -> list[Action]:
        raise NotImplementedError

    def _stored_replay(
        self, room: Room, match: Match, outcome: int, decided_by: str
    ) -> dict[str, Any] | None:
        """The replay file's content in the family's own format; None: the 2022 format."""
        return None

    def _render_lobby_state(self, recipient: Player) -> bytes:
        raise NotImplementedError

    def _render_leaderboard(self, recipient: Player, outcome: storage.LeaderboardOutcome) -> bytes:
        raise NotImplementedError

    def _render_game_request(self, sender: Player, receiver: Player) -> bytes:
        raise NotImplementedError

    def _render_spectate_granted(self, room: Room, spectator: Player) -> bytes:
        raise NotImplementedError

    def _render_ranked_status(
        self, room: Room, approval: ratings.Approval, recipient: Player
    ) -> bytes:
        raise NotImplementedError

    def _render_taunt(self, room: Room, sender: Player, taunt: m.Taunt, recipient: Player) -> bytes:
        raise NotImplementedError

    def _render_leave_room(self, room: Room, reason: str, recipient: Player) -> bytes:
        raise NotImplementedError

    def _render_spectators(self, room: Room, names: list[str], recipient: Player) -> bytes:
        raise NotImplementedError

    def _render_win_counts(self, room: Room, recipient: Player) -> bytes:
        raise NotImplementedError

    def _room_created_sends(self, room: Room) -> list[Action]:
        raise NotImplementedError

    def _settings_sends(self, room: Room, player: Player) -> list[Action]:
        """``player``'s new selections, to everyone else in the room."""
        raise NotImplementedError

    def _match_start_sends(self, room: Room, match: Match) -> list[Action]:
        raise NotImplementedError

    def _back_to_select_sends(self, room: Room) -> list[Action]:
        """After a match: everyone in the room back at select, with the ratings."""
        raise NotImplementedError
