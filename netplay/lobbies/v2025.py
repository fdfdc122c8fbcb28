"""The lobby of the 2023–2025 clients (network versions 003–005): login and rendering.  Sans-IO.

Rooms, matches, spectators and results follow the rules shared with the 2022
client (:mod:`netplay.lobbies.rooms`).  This module adds what is the 2025
clients' own:

* one ``login_request`` carries the name, the user id, the engine version and
  the player's settings; only a successful login enters the lobby;
* players meet only players whose engine shares their *engine group*
  (``engine_groups``): the game is deterministic lockstep, and two engines
  that simulate differently would desync.  Each group is a lobby of its own
  within this object: its own list, requests and rooms;
* inputs are variable-length ``I`` messages, recorded whole for the replay a
  late spectator is sent (version 2 replays, inputs run-length compressed);
* version 005 reads typed messages and may abort a match (``matchAbort``).

Players of versions 003/004 and of 005 share a group's lobby: each is sent
its own wire format (``Player.wire_format``).
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable

import attrs
import structlog

from netplay.accounts import ratings, storage
from netplay.actions import Action, Send, Store
from netplay.dialects import v2025 as d
from netplay.dialects.v2025 import WireFormat
from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.endmarker import MarkedInput, encode_json, encode_marked
from netplay.lobbies.rooms import (
    IN_ROOM,
    SHARED_ACCEPTED,
    LoginState,
    Match,
    Player,
    PlayerId,
    PlayerState,
    Room,
    RoomLobby,
    RoomState,
    fan_out,
    refuse,
)

log = structlog.get_logger("netplay.lobby2025")

DEFAULT_ENGINE_GROUPS: tuple[frozenset[str], ...] = (frozenset({"048"}),)
PLAIN, TYPED = WireFormat.PLAIN, WireFormat.TYPED
# A client sends nothing between its login and the answer; a few are kept anyway.
MAX_HELD_COMMANDS = 16
_ANY_STATE = frozenset(PlayerState)

ACCEPTED: dict[type, frozenset[PlayerState]] = {
    **SHARED_ACCEPTED,
    m.Login2025: frozenset({PlayerState.UNREGISTERED}),
    # The client sends its settings whenever they change, wherever it is;
    # only those made at select count.
    m.PlayerSettings: _ANY_STATE - {PlayerState.UNREGISTERED},
    m.MatchAbort: frozenset({PlayerState.PLAYING, PlayerState.ROOM, PlayerState.SPECTATING}),
}


def parse_engine_groups(text: str) -> tuple[frozenset[str], ...]:
    """``"048"``, ``"047+048,049"``: groups split by commas, versions sharing a lobby by ``+``."""
    groups = []
    for part in text.split(","):
        versions = frozenset(v.strip() for v in part.split("+") if v.strip())
        if not versions:
            raise ValueError(f"empty engine group in {text!r}")
        if any(versions & group for group in groups):
            raise ValueError(f"an engine version is in two groups in {text!r}")
        groups.append(versions)
    if not groups:
        raise ValueError("no engine versions")
    return tuple(groups)


# How a 005 player is told why its opponent went, by the reason the connection closed.
_DISCONNECT_WORDS = {
    "logout": "{} logged out",
    "client_error_report": "{} crashed",
}


def _typed_json(kind: str, content: Any, sender: str, sender_id: Any = None) -> bytes:
    return encode_json(d.typed(kind, content, sender, sender_id))


class Lobby2025(RoomLobby):
    """Every 2025 player, request and room of one server.  See the module docstring."""

    dialect = "v2025"
    accepted = ACCEPTED

    def __init__(
        self, *, engine_groups: tuple[frozenset[str], ...] = DEFAULT_ENGINE_GROUPS,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.engine_groups = engine_groups
        self._group_of_engine = {
            version: index for index, group in enumerate(engine_groups) for version in group
        }
        # What a login with an unknown engine is told to update to.
        self.expected_engine = max(self._group_of_engine)
        # Per player: the engine group it logged in with, and its network version.
        self.engine_group: dict[PlayerId, int] = {}
        self.versions: dict[PlayerId, str] = {}
        self._handlers[m.Login2025] = self._login
        self._handlers[m.PlayerSettings] = self._player_settings
        self._handlers[m.MatchAbort] = self._match_abort
        self._pending_logins: dict[PlayerId, tuple[m.Login2025, str]] = {}
        # Commands that came while the database checked a login, for after it.
        self._held: dict[PlayerId, list[object]] = {}
        # While a room closes: the reason a 005 player's leaveRoom gives.
        self._leave_words: str | None = None
        self._disconnect_reason: str | None = None

    def handle(self, player_id: PlayerId, command: object, now: float) -> list[Action]:
        if player_id in self._pending_logins and type(command) is not m.Login2025:
            held = self._held.setdefault(player_id, [])
            if len(held) >= MAX_HELD_COMMANDS:
                raise refuse("too_many_messages_during_login", self.players[player_id], command)
            held.append(command)
            return []
        return super().handle(player_id, command, now)

    # -- events ---------------------------------------------------------------------

    def connect(self, player_id: PlayerId, version: str = "004") -> Player:  # type: ignore[override]
        player = super().connect(player_id)
        player.wire_format = WireFormat.for_version(version)
        self.versions[player_id] = version
        return player

    def disconnect(self, player_id: PlayerId, reason: str | None = None) -> list[Action]:
        """The connection is gone; ``reason`` ("logout", "client_error_report", ...)
        words the leaveRoom a 005 opponent is sent."""
        self._disconnect_reason = reason
        try:
            return self._disconnect(player_id)
        finally:
            self._disconnect_reason = None

    def _disconnect(self, player_id: PlayerId) -> list[Action]:
        player = self.players.get(player_id)
        pending = self._pending_logins.pop(player_id, None)
        if pending is not None and player is not None:
            self._release_name(player, pending[1])
        self._held.pop(player_id, None)
        sends = super().disconnect(player_id)
        self.engine_group.pop(player_id, None)
        self.versions.pop(player_id, None)
        return sends

    def handle_input(self, player_id: PlayerId, message: MarkedInput) -> list[Send]:
        """One ``I`` from a player: to the opponent as it came, to spectators as ``U``/``I``."""
        player = self.players[player_id]
        route = player.route
        if route is None:
            if player.state in IN_ROOM or player.state is PlayerState.SPECTATING:
                # Inputs that were in flight when the match ended: expected, dropped quietly.
                return []
            raise refuse("message_not_valid_in_state", player, message)
        body = message.body
        if not body:
            raise refuse("input_empty", player, message)
        if not route.record_body(body):
            raise refuse("match_too_long", player, message)
        sends = [Send(route.opponent, message.raw)]
        if route.spectators:
            data = message.raw if route.spectator_letter == b"I" else encode_marked(b"U", body)
            sends += [Send(spectator, data) for spectator in route.spectators]
        return sends

    # -- logging in -------------------------------------------------------------------

    def _login(self, player: Player, message: m.Login2025, now: float) -> list[Action]:
        if player.login is LoginState.PENDING:
            raise refuse("login_repeated", player, message, login=player.login.value)
        reason = self._login_refusal(message)
        if reason is not None:
            self.logins["refused"] += 1
            log.info(
                "login_denied", player=player.id, name=str(message.name)[:64], reason=reason
            )
            return [Send(player.id, self._render_login_denied(player, reason, None))]
        assert isinstance(message.name, str)
        key = storage.name_key(message.name)
        # Held while the database answers, so that two logins cannot take one name.
        self.names[key] = player
        player.login = LoginState.PENDING
        self._pending_logins[player.id] = (message, key)
        return [Store(player.id, storage.Login(message.user_id, message.name))]

    def _login_refusal(self, message: m.Login2025) -> str | None:
        """Why a login is refused before the database is asked, in the panel-game order."""
        if message.engine_version not in self._group_of_engine:
            return d.LOGIN_ENGINE.format(expected=self.expected_engine)
        reason = d.name_refusal(message.name)
        if reason is not None:
            return reason
        if message.user_id == "":
            return d.LOGIN_NO_USER_ID
        assert isinstance(message.name, str)
        if self.name_connected(storage.name_key(message.name)):
            return "Cannot login with the same name twice"
        return None

    def _release_name(self, player: Player, key: str) -> None:
        if self.names.get(key) is player:
            del self.names[key]

    def _login_outcome(
        self, player: Player, login: storage.Login, outcome: storage.LoginOutcome, now: float
    ) -> list[Action]:
        message, key = self._pending_logins.pop(player.id)
        held = self._held.pop(player.id, [])
        result = outcome.result
        self.logins[result.value] += 1
        context = {"player": player.id, "name": login.name, "result": result.value}
        if not outcome.succeeded:
            self._release_name(player, key)
            # The client may try again on this connection.
            player.login = LoginState.NONE
            log.info("login_denied", **context, detail=outcome.reason)
            ban = None
            if result is storage.LoginResult.NAME_TAKEN:
                reason = d.LOGIN_NAME_TAKEN
            elif result is storage.LoginResult.UNKNOWN_ID:
                reason = d.LOGIN_UNKNOWN_ID
            elif result is storage.LoginResult.BANNED:
                reason = outcome.reason or d.LOGIN_BANNED
                ban = _ban_remaining(outcome.expires_at, self.wall_clock_offset + now)
            else:
                reason = d.LOGIN_UNAVAILABLE
            denied = [Send(player.id, self._render_login_denied(player, reason, ban))]
            # As if they came after the answer: refused, each with its reason.
            return denied + self._handle_held(player, held, now)
        player.login = LoginState.LOGGED_IN
        player.login_answered = True
        player.user_id = outcome.user_id
        player.public_id = outcome.public_id
        player.name = login.name
        player.selections = message.selections
        player.save_replays_publicly = message.save_replays_publicly
        self.engine_group[player.id] = self._group_of_engine[message.engine_version]  # type: ignore[index]
        player.move(PlayerState.LOBBY)
        self.version += 1
        log.info("login_succeeded", **context, public_id=outcome.public_id)
        sends: list[Action] = [Send(player.id, self._render_login_approved(player, outcome))]
        asked = self.standing_known(player, outcome)  # before the lobby shows it
        # At once: the client shows the lobby only once it has the list.
        sends += self._lobby_state_to([player], stale_ok=True) + asked
        return sends + self._handle_held(player, held, now)

    def _handle_held(self, player: Player, held: list[object], now: float) -> list[Action]:
        """The commands that came while the database checked ``player``'s login, in order."""
        sends: list[Action] = []
        for command in held:
            try:
                sends += self.handle(player.id, command, now)
            except RemoteProtocolError as error:
                log.info("message_refused", reason=error.reason, **error.context)
        return sends

    # -- what differs from the 2022 client in play ----------------------------------------

    def _player_settings(self, player: Player, message: m.PlayerSettings, now: float) -> list[Action]:
        if player.state is PlayerState.ROOM:
            return self._menu_state(player, message.selections, now)
        if player.wire_format is TYPED:
            # The 005 server keeps settings sent anywhere (in the lobby, after
            # a game over while the opponent still plays); nobody is told
            # until the next room or select shows them.  004 ignores them.
            player.selections = message.selections
        return []

    def _ready_to_start(self, player: Player) -> bool:
        selections = player.selections
        return selections.ready and selections.wants_ready and selections.loaded is not False

    def _game_request(self, player: Player, message: m.GameRequest, now: float) -> list[Action]:
        receiver = self.names.get(storage.name_key(message.receiver))
        if receiver is not None and not self._same_group(player, receiver):
            raise refuse("receiver_unknown", player, message, receiver=message.receiver[:64])
        return super()._game_request(player, message, now)

    def _spectate_request(
        self, player: Player, message: m.SpectateRequest, now: float
    ) -> list[Action]:
        room = self.rooms.get(message.room_number)
        if room is not None and not self._same_group(player, room.players[0]):
            raise refuse("room_unknown", player, message, room=message.room_number)
        return super()._spectate_request(player, message, now)

    def _leave_room(self, player: Player, message: m.LeaveRoom, now: float) -> list[Action]:
        if player.state is PlayerState.SPECTATING and player.wire_format is TYPED:
            # A 005 spectator waits for the server's leaveRoom to go back to
            # the lobby; 004 leaves on its own and is sent none.
            room = player.room
            assert room is not None
            leave = _typed_json("leaveRoom", {"reason": f"{player.name} left"}, "room", room.number)
            return [Send(player.id, leave), *super()._leave_room(player, message, now)]
        return super()._leave_room(player, message, now)

    def _close_room(self, room: Room, reason: str, **context: object) -> list[Action]:
        by = context.get("by") or ""
        if reason == "left":
            words = f"{by} left"
        elif reason == "opponent_disconnected":
            words = _DISCONNECT_WORDS.get(self._disconnect_reason, "{}'s connection failed").format(by)
        else:
            words = reason
        self._leave_words = words
        try:
            return super()._close_room(room, reason, **context)
        finally:
            self._leave_words = None

    def _match_abort(self, player: Player, message: m.MatchAbort, now: float) -> list[Action]:
        """A 005 player stopped the match: the others are told, the room is back at select.

        Nothing is stored and nobody scores, as the panel-game server does;
        the game is kept as abandoned.
        """
        if player.state is not PlayerState.PLAYING:
            return []
        room = player.room
        assert room is not None and room.match is not None
        match = room.match
        finish = self._finish(room, match, 0, "disconnect", now)
        room.match = None
        self.decisions_due.pop(room.number, None)
        room.move(RoomState.SELECTING)
        for each in room.players:
            each.selections = _unready(each.selections)
            each.move(PlayerState.ROOM)
        self.version += 1
        self.matches_ended["aborted"] += 1
        log.info("match_aborted", room=room.number, by=player.name)
        others = [each for each in room.everyone() if each is not player]
        sends: list[Action] = [Store(room.players[0].id, finish)]
        sends += fan_out(others, lambda r: self._render_game_abort(room, player, r))
        return sends

    def _win_counts_sends(self, room: Room) -> list[Action]:
        # 005 reads the counts in its game result.
        return fan_out(
            [p for p in room.everyone() if p.wire_format is PLAIN],
            lambda r: encode_json({"win_counts": list(room.win_counts)}),
        )

    def _same_group(self, first: Player, second: Player) -> bool:
        return self.engine_group.get(first.id) == self.engine_group.get(second.id)

    def _game_key_prefix(self) -> str:
        return "2025:"

    # -- the lobby list -------------------------------------------------------------------

    def _lobby_list_key(self, player: Player) -> Hashable:
        return (self.engine_group.get(player.id), player.wire_format)

    def _render_lobby_state(self, recipient: Player) -> bytes:
        group = self.engine_group.get(recipient.id)
        unpaired, rooms, shown = self.lobby_players()
        content = {
            "unpaired": [p.name for p in unpaired if self.engine_group.get(p.id) == group],
            "spectatable": [
                _spectatable(room) for room in rooms
                if self.engine_group.get(room.players[0].id) == group
            ],
            # An empty Lua table is encoded as a JSON array; the clients read either.
            "players": ratings.lobby_players(
                (p.name, p.standing) for p in shown if self.engine_group.get(p.id) == group
            ) or [],
        }
        if recipient.wire_format is TYPED:
            return _typed_json("lobbyState", content, "server")
        return encode_json(content)

    # -- rendering ------------------------------------------------------------------------

    def _render_login_approved(self, player: Player, outcome: storage.LoginOutcome) -> bytes:
        renamed = outcome.result is storage.LoginResult.RENAMED
        new_id = outcome.user_id if outcome.result is storage.LoginResult.NEW_ID else None
        if player.wire_format is TYPED:
            content = {"approved": True, "publicId": outcome.public_id, "nameChanged": renamed}
            if new_id is not None:
                content["newUserId"] = new_id
            if renamed:
                content.update(newName=player.name, oldName=outcome.old_name)
            return _typed_json("loginResponse", content, "server")
        message: dict[str, Any] = {
            "login_successful": True, "publicId": outcome.public_id, "name_changed": renamed,
        }
        if new_id is not None:
            message["new_user_id"] = new_id
        if renamed:
            message.update(new_name=player.name, old_name=outcome.old_name)
        return encode_json(message)

    def _render_login_denied(self, player: Player, reason: str, ban: str | None) -> bytes:
        if player.wire_format is TYPED:
            content: dict[str, Any] = {"approved": False, "reason": reason}
            if ban is not None:
                content["banDuration"] = ban
            return _typed_json("loginResponse", content, "server")
        message: dict[str, Any] = {"login_denied": True, "reason": reason}
        if ban is not None:
            message["ban_duration"] = ban
        return encode_json(message)

    def _render_leaderboard(self, recipient: Player, outcome: storage.LeaderboardOutcome) -> bytes:
        rows = ratings.leaderboard_report(outcome.entries, recipient.user_id)["leaderboard_report"]
        if recipient.wire_format is TYPED:
            return _typed_json("leaderboardReport", rows, "server")
        return encode_json({"leaderboard_report": rows})

    def _render_game_request(self, sender: Player, receiver: Player) -> bytes:
        if receiver.wire_format is TYPED:
            return _typed_json(
                "challenge", {"sender": sender.name, "receiver": receiver.name}, "player",
                sender.public_id,
            )
        return encode_json({"game_request": {"sender": sender.name, "receiver": receiver.name}})

    def _render_ranked_status(
        self, room: Room, approval: ratings.Approval, recipient: Player
    ) -> bytes:
        comments = list(approval.caveats if approval.approved else approval.reasons)
        if recipient.wire_format is TYPED:
            return _typed_json(
                "rankedUpdate", {"ranked": approval.approved, "reasons": comments}, "room",
                room.number,
            )
        key = "ranked_match_approved" if approval.approved else "ranked_match_denied"
        return encode_json({key: True, "reasons": comments})

    def _render_taunt(self, room: Room, sender: Player, taunt: m.Taunt, recipient: Player) -> bytes:
        number = room.number_of(sender)
        if recipient.wire_format is TYPED:
            return _typed_json(
                "taunt", {"type": taunt.kind, "index": taunt.index, "playerNumber": number},
                "player", sender.public_id,
            )
        return encode_json(
            {"taunt": True, "type": taunt.kind, "index": taunt.index, "player_number": number}
        )

    def _render_leave_room(self, room: Room, reason: str, recipient: Player) -> bytes:
        if recipient.wire_format is TYPED:
            # Shown to a player whose match it ends, in the panel-game server's words.
            words = self._leave_words if self._leave_words is not None else reason
            return _typed_json("leaveRoom", {"reason": words}, "room", room.number)
        return encode_json({"leave_room": True})

    def _render_spectators(self, room: Room, names: list[str], recipient: Player) -> bytes:
        if recipient.wire_format is TYPED:
            return _typed_json("spectatorUpdate", names, "room", room.number)
        return encode_json({"spectators": names})

    def _render_win_counts(self, room: Room, recipient: Player) -> bytes:
        return encode_json({"win_counts": list(room.win_counts)})

    def _render_game_abort(self, room: Room, source: Player, recipient: Player) -> bytes:
        if recipient.wire_format is TYPED:
            return _typed_json("gameAbort", {"source": source.name}, "room")
        # Versions 003/004 know no abort: they learn the match is over from select.
        return self._render_character_select(room)

    def _room_players(self, room: Room, selections: Iterable[m.Selections] | None = None) -> list[dict[str, Any]]:
        """The ``players`` of a 005 room message, by player number."""
        chosen = list(selections) if selections is not None else [p.selections for p in room.players]
        room_ratings = self.room_ratings(room)
        return [
            {
                "settings": d.menu_state_typed(chosen[index]),
                "rating": room_ratings[index],
                "winCount": room.win_counts[index],
                "name": player.name,
                "publicId": player.public_id,
                "playerNumber": index + 1,
            }
            for index, player in enumerate(room.players)
        ]

    def _menu_states(self, room: Room) -> tuple[dict[str, Any], dict[str, Any]]:
        first, second = room.players
        return (
            d.menu_state_plain(first.selections, first.public_id),
            d.menu_state_plain(second.selections, second.public_id),
        )

    def _room_created_sends(self, room: Room) -> list[Action]:
        a_state, b_state = self._menu_states(room)
        room_ratings = self.room_ratings(room)
        sends: list[Action] = []
        typed = None
        for number, player in enumerate(room.players, start=1):
            if player.wire_format is TYPED:
                if typed is None:
                    typed = _typed_json("createRoom", {
                        "roomNumber": room.number, "ranked": self.ranked_shown(room),
                        "gameMode": dict(d.TWO_PLAYER_VS), "players": self._room_players(room),
                    }, "server")
                sends.append(Send(player.id, typed))
                continue
            opponent = room.opponent_of(player)
            sends.append(Send(player.id, encode_json({
                "create_room": True,
                "room_number": room.number,
                "a_menu_state": a_state,
                "b_menu_state": b_state,
                "rating_updates": True,
                "ratings": room_ratings,
                "opponent": opponent.name,
                "op_player_number": 3 - number,
                "your_player_number": number,
            })))
        return sends

    def _settings_sends(self, room: Room, player: Player) -> list[Action]:
        number = room.number_of(player)
        selections = player.selections

        def render(recipient: Player) -> bytes:
            if recipient.wire_format is TYPED:
                content = {"playerNumber": number, **d.menu_state_typed(selections)}
                return _typed_json("settingsUpdate", content, "player", player.public_id)
            return encode_json({
                "menu_state": d.menu_state_plain(selections, player.public_id),
                "player_number": number,
            })

        return fan_out([p for p in room.everyone() if p is not player], render)

    def _match_replay(self, room: Room, match: Match, *, compressed: bool) -> dict[str, Any]:
        """The match as a version 2 replay, with its inputs so far."""
        players = []
        for index, player in enumerate(room.players):
            inputs = match.inputs[index].decode("utf-8", "replace")
            if compressed:
                inputs = d.compress_inputs(inputs)
            players.append(d.replay_player(
                name=player.name or "", public_id=_public(player, index),
                wins=match.win_counts_at_start[index], selections=match.selections[index],
                inputs=inputs,
            ))
        return d.replay(
            engine_version=self._engine_of(room), timestamp=self._wall_time(match.started_at),
            seed=match.seed, stage=match.stage, ranked=match.ranked, players=players,
        )

    def _engine_of(self, room: Room) -> str:
        group = self.engine_groups[self.engine_group.get(room.players[0].id, 0)]
        return max(group)

    def _wall_time(self, now: float) -> float:
        return self.wall_clock_offset + now

    def _match_start_sends(self, room: Room, match: Match) -> list[Action]:
        first, second = room.players
        ranked_ratings: list[int | None] = [None, None]
        if match.ranked:
            for index, player in enumerate(room.players):
                standing = player.standing or ratings.Standing()
                ranked_ratings[index] = ratings.round_rating(standing.current_rating)
        a_settings, b_settings = (
            d.player_settings_plain(match.selections[i], i + 1, p.public_id, ranked_ratings[i])
            for i, p in enumerate(room.players)
        )

        def plain(own: dict[str, Any], other: dict[str, Any]) -> bytes:
            return encode_json({
                "match_start": True, "seed": match.seed, "ranked": match.ranked,
                "stage": match.stage, "player_settings": own, "opponent_settings": other,
            })

        typed: bytes | None = None
        sends: list[Action] = []
        for player in room.everyone():
            if player.wire_format is TYPED:
                if typed is None:
                    typed = _typed_json(
                        "matchStart", self._match_replay(room, match, compressed=False), "room",
                        room.number,
                    )
                sends.append(Send(player.id, typed))
            elif player is second:
                sends.append(Send(player.id, plain(b_settings, a_settings)))
            else:
                sends.append(Send(player.id, plain(a_settings, b_settings)))
        return sends

    def _render_character_select(self, room: Room) -> bytes:
        a_state, b_state = self._menu_states(room)
        return encode_json({
            "character_select": True,
            "rating_updates": True,
            "ratings": self.room_ratings(room),
            "a_menu_state": a_state,
            "b_menu_state": b_state,
        })

    def _back_to_select_sends(self, room: Room) -> list[Action]:
        outcome = room.last_outcome or 0

        def render(recipient: Player) -> bytes:
            if recipient.wire_format is TYPED:
                room_ratings = self.room_ratings(room)
                content = [
                    {
                        "rating": room_ratings[index],
                        "winCount": room.win_counts[index],
                        "placement": 0 if outcome == 0 else (1 if outcome == index + 1 else 2),
                        "publicId": player.public_id,
                    }
                    for index, player in enumerate(room.players)
                ]
                return _typed_json("gameResult", content, "room", room.number)
            return self._render_character_select(room)

        return fan_out(room.everyone(), render)

    def _render_spectate_granted(self, room: Room, spectator: Player) -> bytes:
        first, second = room.players
        match = room.match
        replay = self._match_replay(room, match, compressed=True) if match is not None else None
        if spectator.wire_format is TYPED:
            content: dict[str, Any] = {
                "roomNumber": room.number,
                "ranked": match.ranked if match is not None else self.ranked_shown(room),
                "gameMode": dict(d.TWO_PLAYER_VS),
                "players": self._room_players(
                    room, match.selections if match is not None else None
                ),
            }
            if replay is not None:
                content["replay"] = replay
                content["stage"] = replay["stageId"]
            return _typed_json("spectateRequestGranted", content, "server")
        a_state, b_state = self._menu_states(room)
        selections = match.selections if match is not None else (first.selections, second.selections)
        message: dict[str, Any] = {
            "spectate_request_granted": True,
            "spectate_request_rejected": False,
            "room_number": room.number,
            "rating_updates": True,
            "ratings": self.room_ratings(room),
            "a_menu_state": a_state,
            "b_menu_state": b_state,
            "a_name": first.name,
            "b_name": second.name,
            "win_counts": list(room.win_counts),
            # Unlike the 2022 server, true whenever a match is running.
            "match_start": match is not None,
            "player_settings": d.player_settings_plain(selections[0], 1, first.public_id, None),
            "opponent_settings": d.player_settings_plain(selections[1], 2, second.public_id, None),
        }
        if match is not None:
            message["stage"] = match.stage
            message["ranked"] = match.ranked
            message["replay_of_match_so_far"] = replay
        return encode_json(message)

    # -- stored games ---------------------------------------------------------------------

    def _stored_replay(
        self, room: Room, match: Match, outcome: int, decided_by: str
    ) -> dict[str, Any] | None:
        replay = self._match_replay(room, match, compressed=True)
        if decided_by == "disconnect":
            # Aborted or abandoned: no game was finished, so no winner and no draw.
            replay["incomplete"] = True
            return replay
        return d.finished_replay(
            replay, winner=outcome,
            public_ids=(_public(room.players[0], 0), _public(room.players[1], 1)), game_id=None,
        )


def _public(player: Player, index: int) -> int:
    # Negative numbers say "unknown" in a replay.
    return player.public_id if player.public_id is not None else -(index + 1)


def _spectatable(room: Room) -> dict[str, Any]:
    a, b = (player.name or "" for player in room.players)
    return {
        "roomNumber": room.number,
        "name": f"{a} vs {b}",
        "a": a,
        "b": b,
        "state": "playing" if room.state is RoomState.PLAYING else "character select",
    }


def _unready(selections: m.Selections) -> m.Selections:
    return attrs.evolve(selections, ready=False, wants_ready=False)


def _ban_remaining(expires_at: float | None, now: float) -> str:
    """How long a ban still lasts, in the panel-game server's words."""
    if expires_at is None:
        return "Ban Remaining: forever"
    seconds = max(0, int(expires_at - now))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days} days" if days else "", f"{hours} hours" if hours else "",
             f"{minutes} minutes" if minutes else "", f"{seconds} seconds"]
    return "Ban Remaining: " + " ".join(part for part in parts if part)
