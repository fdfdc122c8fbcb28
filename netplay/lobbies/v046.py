"""The lobby of the 2022 client (protocol 046): its login and every byte it is sent.  Sans-IO.

046 clients seed their own panels, so they cannot share a match with the
older dialects: they meet in this lobby of their own, which the core feeds
like the other ones.  Rooms, matches, spectators and results follow the rules
shared with the 2025 clients (:mod:`netplay.lobbies.rooms`); this module adds
the 2022 client's way in (a name message, then an optional ``login_request``)
and renders every message in its dialect (``J`` + 3-byte length frames).
"""

from __future__ import annotations

from typing import Any

import structlog

from netplay.accounts import ratings, storage
from netplay.actions import Action, Send, Store
from netplay.dialects import v046 as d
from netplay.framing import messages as m
from netplay.framing.inputs import INPUT_BYTES, encode_for_catch_up
from netplay.framing.length3 import encode_json
from netplay.lobbies.rooms import (
    PLAYER_TRANSITIONS,
    REGISTERED,
    SHARED_ACCEPTED,
    InputRoute,
    LoginState,
    Match,
    Player,
    PlayerId,
    PlayerState,
    Room,
    RoomLobby,
    RoomState,
    refuse,
)

__all__ = [
    "ACCEPTED", "PLAYER_TRANSITIONS", "InputRoute", "Lobby046", "LoginState", "PlayerState",
    "RoomState",
]

log = structlog.get_logger("netplay.lobby046")

WIRE_FORMAT = "046"

ACCEPTED: dict[type, frozenset[PlayerState]] = {
    **SHARED_ACCEPTED,
    m.Register046: frozenset({PlayerState.UNREGISTERED}),
    m.LoginRequest: REGISTERED,
    m.MenuState046: frozenset({PlayerState.ROOM}),
}

# One value per input letter, so relaying to spectators allocates nothing.
_AS_PLAYER_ONE = {byte: bytes((ord("U"), byte)) for byte in INPUT_BYTES}
_AS_PLAYER_TWO = {byte: bytes((ord("I"), byte)) for byte in INPUT_BYTES}


def _json(payload: dict[str, Any]) -> bytes:
    return encode_json(payload)


class Lobby046(RoomLobby):
    """Every 046 player, request and room of one server.  See the module docstring."""

    dialect = "v046"
    accepted = ACCEPTED

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._handlers[m.Register046] = self._register
        self._handlers[m.LoginRequest] = self._login_request
        self._handlers[m.MenuState046] = self._menu_state046

    def _room_seed(self, number: int) -> str:
        return f"{self.seed}:046:{number}"

    def connect(self, player_id: PlayerId) -> Player:
        player = super().connect(player_id)
        player.wire_format = WIRE_FORMAT
        player.save_replays_publicly = d.DEFAULT_PUBLICITY
        return player

    # -- the per-frame path ---------------------------------------------------------

    def handle_input(self, player_id: PlayerId, raw: bytes) -> list[Send]:
        """One ``I`` from a player: to the opponent as is, to spectators as ``U``/``I``."""
        player = self.players[player_id]
        route = player.route
        if route is None:
            raise refuse("message_not_valid_in_state", player, m.Input(raw))
        letter = raw[1]
        if letter not in INPUT_BYTES:
            # The opponent's client would fail on it: never forwarded.
            raise refuse("input_invalid", player, m.Input(raw), value=letter)
        route.record(letter)
        sends = [Send(route.opponent, raw)]
        if route.spectators:
            data = route.as_spectators[letter]
            sends += [Send(spectator, data) for spectator in route.spectators]
        return sends

    def input_route(self, player_id: PlayerId, letter: int) -> InputRoute | None:  # type: ignore[override]
        """The per-frame path: the route of a valid input letter from a playing player, else None.

        Changes nothing: the caller records the input (:meth:`InputRoute.record`)
        once it has admitted it, and relays it itself.  None sends the input
        through :meth:`handle_input`, which refuses it with its reason.
        """
        if letter not in INPUT_BYTES:
            return None
        return super().input_route(player_id)

    def inputs_route(self, player_id: PlayerId, letters: bytes) -> InputRoute | None:
        """:meth:`input_route` for several inputs at once: None unless every letter is valid."""
        if not INPUT_BYTES.issuperset(letters):
            return None
        return super().input_route(player_id)

    def _input_route(self, side: int, opponent: Player, match: Match) -> InputRoute:
        as_spectators = _AS_PLAYER_ONE if side == 0 else _AS_PLAYER_TWO
        return InputRoute(opponent.id, (), as_spectators, match.inputs[side])

    # -- logging in -------------------------------------------------------------------

    def _register(self, player: Player, message: m.Register046, now: float) -> list[Action]:
        reason = d.name_refusal(message.name)
        if reason is not None:
            log.info("name_refused", player=player.id, name=str(message.name)[:64], reason=reason)
            return [Send(player.id, _json(d.choose_another_name(reason)))]
        assert isinstance(message.name, str)
        key = storage.name_key(message.name)
        if self.name_connected(key):
            log.info("name_refused", player=player.id, name=message.name, reason="in_use")
            return [Send(player.id, _json(d.name_in_use(message.name)))]
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
            raise refuse("login_repeated", player, message, login=player.login.value)
        assert player.name is not None
        if message.user_id == "":
            player.login = LoginState.REFUSED
            player.login_answered = True
            self.logins["no_user_id"] += 1
            log.info("login_denied", player=player.id, name=player.name, reason="no_user_id")
            return [Send(player.id, _json(d.login_denied(d.LOGIN_NO_USER_ID)))]
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
            sends: list[Action] = [Send(player.id, _json(reply))]
            asked = self.standing_known(player, outcome)  # before the lobby shows it
            if player.state is PlayerState.LOBBY:
                sends += self._lobby_state_to([player], stale_ok=True)
            return sends + asked
        player.login = LoginState.REFUSED
        log.info("login_denied", **context, detail=outcome.reason)
        if result is storage.LoginResult.NAME_TAKEN:
            return [Send(player.id, _json(d.choose_another_name(d.NAME_OWNED)))]
        if result is storage.LoginResult.UNKNOWN_ID:
            return [Send(player.id, _json(d.login_denied(d.LOGIN_UNKNOWN_ID)))]
        if result is storage.LoginResult.BANNED:
            return [Send(player.id, _json(d.login_denied(
                outcome.reason or d.LOGIN_BANNED,
                ban_duration=d.ban_duration(outcome.expires_at, self.wall_clock_offset + now),
            )))]
        return [Send(player.id, _json(d.login_denied(d.LOGIN_UNAVAILABLE)))]

    def _menu_state046(self, player: Player, message: m.MenuState046, now: float) -> list[Action]:
        return self._menu_state(player, message.selections, now)

    # -- rendering ----------------------------------------------------------------------

    def _state_for(self, player: Player, recipient: Player) -> dict[str, Any]:
        return d.selections_json(player.selections, mode_cell_shown=recipient.login_answered)

    def _render_lobby_state(self, recipient: Player) -> bytes:
        return _json(self.lobby_state())

    def lobby_state(self) -> dict[str, Any]:
        unpaired, rooms, shown = self.lobby_players()
        return d.lobby_state(
            [p.name or "" for p in unpaired],
            [
                d.spectatable_room(
                    room.number, room.players[0].name or "", room.players[1].name or "",
                    room.state is RoomState.PLAYING,
                )
                for room in rooms
            ],
            ratings.lobby_players((p.name, p.standing) for p in shown),
        )

    def _render_leaderboard(self, recipient: Player, outcome: storage.LeaderboardOutcome) -> bytes:
        return _json(ratings.leaderboard_report(outcome.entries, recipient.user_id))

    def _render_game_request(self, sender: Player, receiver: Player) -> bytes:
        assert sender.name is not None and receiver.name is not None
        return _json(d.game_request(sender.name, receiver.name))

    def _render_ranked_status(
        self, room: Room, approval: ratings.Approval, recipient: Player
    ) -> bytes:
        return _json(approval.message())

    def _render_taunt(self, room: Room, sender: Player, taunt: m.Taunt, recipient: Player) -> bytes:
        return _json(d.taunt(taunt.kind, taunt.index, room.number_of(sender)))

    def _render_leave_room(self, room: Room, reason: str, recipient: Player) -> bytes:
        return _json(d.leave_room())

    def _render_spectators(self, room: Room, names: list[str], recipient: Player) -> bytes:
        return _json(d.spectators(names))

    def _render_win_counts(self, room: Room, recipient: Player) -> bytes:
        return _json(d.win_counts(room.win_counts))

    def _settings_sends(self, room: Room, player: Player) -> list[Action]:
        opponent = room.opponent_of(player)
        number = room.number_of(player)
        sends: list[Action] = [
            Send(opponent.id, _json(d.menu_state(self._state_for(player, opponent))))
        ]
        for spectator in room.spectators:
            sends.append(
                Send(spectator.id, _json(d.menu_state(self._state_for(player, spectator), number)))
            )
        return sends

    def _room_created_sends(self, room: Room) -> list[Action]:
        return self._send_room_init(room, character_select=False)

    def _back_to_select_sends(self, room: Room) -> list[Action]:
        return self._send_room_init(room, character_select=True)

    def _send_room_init(self, room: Room, *, character_select: bool) -> list[Action]:
        first, second = room.players
        sends: list[Action] = []
        room_ratings = self.room_ratings(room)
        ranked = self.ranked_shown(room)
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
            sends.append(Send(player.id, _json(message)))
        for spectator in room.spectators:
            message = d.spectator_character_select(
                self._state_for(first, spectator), self._state_for(second, spectator),
                room_ratings, ranked,
            )
            sends.append(Send(spectator.id, _json(message)))
        return sends

    def _match_start_sends(self, room: Room, match: Match) -> list[Action]:
        first, second = room.players
        a_settings = d.player_settings(first.selections, 1)
        b_settings = d.player_settings(second.selections, 2)
        if match.ranked:
            for settings, player in ((a_settings, first), (b_settings, second)):
                standing = player.standing or ratings.Standing()
                settings["rating"] = ratings.round_rating(standing.current_rating)
        a_view = _json(d.match_start(
            seed=match.seed, stage=match.stage, ranked=match.ranked, own=a_settings,
            other=b_settings,
        ))
        b_view = _json(d.match_start(
            seed=match.seed, stage=match.stage, ranked=match.ranked, own=b_settings,
            other=a_settings,
        ))
        sends: list[Action] = [Send(first.id, a_view), Send(second.id, b_view)]
        sends += [Send(spectator.id, a_view) for spectator in room.spectators]
        return sends

    def _render_spectate_granted(self, room: Room, spectator: Player) -> bytes:
        first, second = room.players
        match = room.match
        message: dict[str, Any] = {
            "spectate_request_granted": True,
            "spectate_request_rejected": False,
            "rating_updates": True,
            "ratings": self.room_ratings(room),
            "a_menu_state": self._state_for(first, spectator),
            "b_menu_state": self._state_for(second, spectator),
            "win_counts": list(room.win_counts),
            # True while a match runs (the 2022 server always said false).
            "match_start": match is not None,
            "ranked": match.ranked if match is not None else self.ranked_shown(room),
        }
        if match is None:
            # At select: the spectator waits for match_start like the players.
            message["stage"] = room.stage or first.selections.stage or "__RandomStage"
            message["player_settings"] = d.player_settings(first.selections, 1)
            message["opponent_settings"] = d.player_settings(second.selections, 2)
            return _json(message)
        message["stage"] = match.stage
        message["player_settings"] = d.player_settings(match.selections[0], 1)
        message["opponent_settings"] = d.player_settings(match.selections[1], 2)
        message["replay_of_match_so_far"] = self._replay_so_far(room, match)
        return _json(message)

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

