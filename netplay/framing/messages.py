"""Every message of the letter protocol, as immutable values.

Two layers live here.  *Frames* are what the codec in ``wire`` produces and
consumes: one value per letter, JSON frames carried as a plain dict.
*Commands* are what a JSON frame means once ``dialect`` has validated it;
the lobby only ever sees commands and the fixed-length game frames.

Values that occur once per game frame (inputs) are interned so that the
per-frame path allocates nothing.
"""

from __future__ import annotations

from typing import Any

import attrs

# ---------------------------------------------------------------------------
# Frames sent by clients


@attrs.frozen
class Hello:
    """``H`` + 3 digits: the client's protocol version."""

    version: str


@attrs.frozen
class ClientPing:
    """``E`` + 3 characters sent by a client; counts as life, needs no answer."""

    token: str


@attrs.frozen
class Pong:
    """``F`` + 3 characters: the answer to the server's ``E`` ping."""

    token: str


@attrs.frozen
class Heartbeat:
    """``W``: the design document's heartbeat, in either direction."""


@attrs.frozen
class PanelRequest:
    """``P`` or ``Q`` + ncolors digit + 6 digits of the client's top row.

    ``ncolors`` and ``top_row`` are kept as received; the lobby validates them.
    """

    garbage: bool
    ncolors: str
    top_row: str


@attrs.frozen
class Input:
    """``I`` + one symbol: one frame of a player's input, in either direction."""

    raw: bytes  # the whole 2-byte message, relayed as is


@attrs.frozen
class LevelPick:
    """``L`` + one digit: a legacy level pick, in either direction."""

    raw: bytes


@attrs.frozen
class Json:
    """``J`` + length + a JSON object, in either direction."""

    payload: dict[str, Any]


# ---------------------------------------------------------------------------
# Frames sent by the server only


@attrs.frozen
class HelloAccepted:
    """``H``: the version was accepted."""


@attrs.frozen
class HelloRefused:
    """``N``: the version was refused; the server closes the connection."""


@attrs.frozen
class Ping:
    """``E`` + 3 characters: are you there?  Answered by ``F`` + the same 3."""

    token: str


@attrs.frozen
class FirstPlayerInput:
    """``U`` + one symbol: player 1's input, relayed to a 046 spectator."""

    raw: bytes


@attrs.frozen
class Panels:
    """``P``/``O``/``Q``/``R`` + 120 digits: 20 rows of panels."""

    letter: str
    digits: str


ClientFrame = Hello | ClientPing | Pong | Heartbeat | PanelRequest | Input | LevelPick | Json
ServerFrame = (
    HelloAccepted | HelloRefused | Ping | Heartbeat | Panels | Input | FirstPlayerInput
    | LevelPick | Json
)

# One value per possible byte, so decoding an input allocates nothing.
INPUTS: tuple[Input, ...] = tuple(Input(bytes((ord("I"), b))) for b in range(256))
LEVEL_PICKS: tuple[LevelPick, ...] = tuple(LevelPick(bytes((ord("L"), b))) for b in range(256))
HEARTBEAT = Heartbeat()

# ---------------------------------------------------------------------------
# Commands: what a client's JSON frame asks for, after validation


@attrs.frozen
class Register:
    """``{"name", "level", "character"}``: join the lobby under a name."""

    name: str
    level: int
    character: str


@attrs.frozen
class GameRequest:
    """``game_request`` / ``game_request_to_server``: I want to play ``receiver``."""

    sender: str
    receiver: str


@attrs.frozen
class MenuState:
    """A player's character-select screen: where the cursor is, ready or not."""

    cursor: str
    ready: bool
    character: str
    level: int

    def as_json(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "ready": self.ready,
            "character": self.character,
            "level": self.level,
        }


@attrs.frozen
class LeaveRoom:
    """``{"leave_room": true}``: back to the lobby, with the opponent."""


@attrs.frozen
class GameOver:
    """``{"game_over": true}``: this player's game has ended."""


Command = Register | GameRequest | MenuState | LeaveRoom | GameOver


# ---------------------------------------------------------------------------
# Commands of the 2022 client (protocol 046), after validation by ``dialect046``


@attrs.frozen
class Selections:
    """What a 046 player has chosen: its name message, then each ``menu_state``.

    Text fields the client left out are None and are left out again when the
    selections are forwarded.
    """

    cursor: str = "__Ready"
    character: str | None = None
    character_is_random: str | None = None
    character_display_name: str | None = None
    stage: str | None = None
    stage_is_random: str | None = None
    panels_dir: str | None = None
    level: int = 5
    ranked: bool = False
    loaded: bool | None = None
    wants_ready: bool = False
    ready: bool = False
    # The 2025 clients' additions: how the player plays, and the level's
    # settings (a JSON object as the client sent it; None: the level's preset).
    input_method: str = "controller"
    level_data: dict[str, Any] | None = attrs.field(default=None, hash=False)


@attrs.frozen
class Register046:
    """The first JSON message of a 046 connection: a name and the player's settings.

    ``name`` is kept as received (any type); the lobby answers a bad one.
    """

    name: object
    selections: Selections
    save_replays_publicly: str


@attrs.frozen
class LoginRequest:
    """``login_request``: ``user_id`` None asks for a new id."""

    user_id: str | None


@attrs.frozen
class Logout:
    """``{"logout": true}``: the player leaves; the server closes the connection."""


@attrs.frozen
class MenuState046:
    """``menu_state`` of a 046 player in a room."""

    selections: Selections


@attrs.frozen
class GameOverClaim:
    """``{"game_over": true, "outcome": n}``: who the reporter says won (0: a draw)."""

    outcome: int


@attrs.frozen
class SpectateRequest:
    """``spectate_request``: watch room ``room_number``."""

    sender: str
    room_number: int


@attrs.frozen
class Taunt:
    """``taunt``: play taunt ``index`` of ``kind`` (``taunt_ups`` / ``taunt_downs``)."""

    kind: str
    index: int


@attrs.frozen
class LeaderboardRequest:
    """``{"leaderboard_request": true}``."""


Command046 = (
    Register046 | LoginRequest | Logout | GameRequest | MenuState046 | LeaveRoom
    | GameOverClaim | SpectateRequest | Taunt | LeaderboardRequest
)


# ---------------------------------------------------------------------------
# Commands of the 2023-2025 clients (network versions 003-005), after validation by
# ``dialects.v2025``; the rest are shared with the 2022 client's.


@attrs.frozen
class Login2025:
    """``login_request``: name, id (None asks for a new one), engine and settings at once.

    ``name`` and ``engine_version`` are kept as received (any type); the lobby
    answers bad ones.
    """

    user_id: str | None
    name: object
    engine_version: object
    selections: Selections
    save_replays_publicly: str


@attrs.frozen
class PlayerSettings:
    """``menu_state`` of a 2025 player in a room."""

    selections: Selections


@attrs.frozen
class MatchAbort:
    """``{"type": "matchAbort"}`` (network version 005): the sender stopped the match."""


@attrs.frozen
class ErrorReport:
    """``error_report``: the client crashed and tells why; it closes the connection next.

    ``text`` is the report as compact JSON when it is short enough to log
    (:data:`MAX_LOGGED_ERROR_REPORT`), else None; ``size`` its length either way.
    """

    size: int
    text: str | None = None


# The panel-game server keeps reports under 5 kB and drops longer ones.
MAX_LOGGED_ERROR_REPORT = 5000


Command2025 = (
    Login2025 | Logout | GameRequest | PlayerSettings | LeaveRoom | GameOverClaim
    | SpectateRequest | Taunt | LeaderboardRequest | MatchAbort | ErrorReport
)
