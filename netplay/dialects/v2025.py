"""The JSON dialect of the 2023–2025 clients (network versions 003–005): validation and rendering.

Clients of every version send the same messages (those of the 2022 client
with the settings folded into ``login_request``, plus ``inputMethod`` and
``levelData``; version 005 adds ``matchAbort``).  What they are sent differs:

* versions 003 and 004 read the 2022 shapes with additions (``publicId``,
  ``levelData``, a lobby list of players with ratings, replays in the
  standard version 2 format);
* version 005 reads typed messages: ``{"type": T, "sender": S, "senderId":
  ID, "content": {...}}``.

Incoming JSON is checked field by field into the commands of ``messages``; a
frame that fails raises a non-fatal RemoteProtocolError and nothing of it is
applied or forwarded.  Every outgoing message is rendered here from values,
never copied from another client.
"""

from __future__ import annotations

import copy
import enum
import json
from typing import Any

from netplay.dialects import v046
from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m

NEW_USER_ID_REQUEST = v046.NEW_USER_ID_REQUEST
MAX_USER_ID_LENGTH = v046.MAX_USER_ID_LENGTH
REPLAY_PUBLICITY = v046.REPLAY_PUBLICITY
DEFAULT_PUBLICITY = v046.DEFAULT_PUBLICITY
INPUT_METHODS = ("controller", "touch")
TAUNT_KINDS = v046.TAUNT_KINDS
MAX_TAUNT_INDEX = v046.MAX_TAUNT_INDEX
MIN_LEVEL = 1
MAX_LEVEL = 11  # the modern presets
RANDOM_CHARACTER = "__RandomCharacter"
REPLAY_VERSION = 2

# Reasons a login is refused, in the words of the panel-game server.
LOGIN_ENGINE = "Please update your game, server expects engine version: {expected}"
LOGIN_NO_USER_ID = "Client did not send a user ID in the login request"
LOGIN_UNKNOWN_ID = "The user ID provided was not found on this server"
LOGIN_NAME_TAKEN = "That player name is already taken"
LOGIN_UNAVAILABLE = "The server cannot check logins right now; please try again later"
LOGIN_BANNED = "You are banned from this server"

# The one game mode these clients play online (GameModes.TWO_PLAYER_VS).
TWO_PLAYER_VS: dict[str, Any] = {
    "style": 2,
    "gameScene": "GameBase",
    "richPresenceLabel": "2p versus",
    "playerCount": 2,
    "stackInteraction": 1,
    "winConditions": [1],
    "gameOverConditions": [1],
    "doCountdown": True,
}
# What a replay keeps of it (Replay's constructor).
REPLAY_GAME_MODE: dict[str, Any] = {
    "stackInteraction": 1,
    "winConditions": [1],
    "gameOverConditions": [1],
    "doCountdown": True,
}


def _preset(
    speed: int, shock_frequency: int, shock_cap: int, colors: int, health: int,
    stop: tuple[int, int, int, int, int], frames: tuple[int, int, int, int, int],
) -> dict[str, Any]:
    combo, chain, danger, coefficient, danger_coefficient = stop
    hover, garbage_hover, flash, face, pop = frames
    return {
        "startingSpeed": speed,
        "speedIncreaseMode": 1,
        "shockFrequency": shock_frequency,
        "shockCap": shock_cap,
        "colors": colors,
        "maxHealth": health,
        "stop": {
            "formula": 1, "comboConstant": combo, "chainConstant": chain,
            "dangerConstant": danger, "coefficient": coefficient,
            "dangerCoefficient": danger_coefficient,
        },
        "frameConstants": {
            "HOVER": hover, "GARBAGE_HOVER": garbage_hover, "FLASH": flash, "FACE": face,
            "POP": pop,
        },
    }


# The level presets of engine 048 (LevelPresets.getModern), by level.
MODERN_LEVELS: dict[int, dict[str, Any]] = {
    1: _preset(1, 12, 21, 5, 121, (-20, 80, 160, 20, 20), (12, 41, 44, 20, 9)),
    2: _preset(5, 14, 18, 5, 101, (-16, 77, 152, 18, 18), (12, 36, 44, 18, 9)),
    3: _preset(9, 16, 18, 5, 81, (-12, 74, 144, 16, 16), (11, 31, 42, 17, 8)),
    4: _preset(13, 19, 15, 5, 66, (-8, 71, 136, 14, 14), (10, 26, 42, 16, 8)),
    5: _preset(17, 23, 15, 5, 51, (-3, 68, 128, 12, 12), (9, 21, 38, 15, 8)),
    6: _preset(21, 26, 12, 5, 41, (2, 65, 120, 10, 10), (6, 16, 36, 14, 8)),
    7: _preset(25, 29, 9, 5, 31, (7, 62, 112, 8, 8), (5, 13, 34, 13, 8)),
    8: _preset(29, 33, 6, 5, 21, (12, 60, 104, 6, 6), (4, 10, 32, 12, 7)),
    9: _preset(27, 37, 6, 6, 11, (17, 58, 96, 4, 4), (6, 7, 30, 11, 7)),
    10: _preset(32, 41, 3, 6, 1, (22, 56, 88, 2, 2), (6, 4, 28, 10, 7)),
    11: _preset(45, 18, 3, 6, 1, (27, 53, 80, 1, 0), (3, 3, 22, 8, 6)),
}


class WireFormat(enum.Enum):
    """How a client of this family reads the server's messages."""

    PLAIN = "2025-plain"  # network versions 003 and 004
    TYPED = "2025-typed"  # network version 005

    @classmethod
    def for_version(cls, version: str) -> WireFormat:
        return cls.TYPED if version >= "005" else cls.PLAIN


def _fail(reason: str, **context: object) -> RemoteProtocolError:
    return RemoteProtocolError(reason, fatal=False, **context)


# -- field checks -------------------------------------------------------------------

_optional_text = v046._optional_text
_optional_bool = v046._optional_bool
name_refusal = v046.name_refusal


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def level_data_valid(data: object) -> bool:
    """Whether ``data`` is level data the engine accepts (LevelData.validate)."""
    if not isinstance(data, dict):
        return False
    for field in ("startingSpeed", "speedIncreaseMode", "shockCap", "shockFrequency", "colors",
                  "maxHealth"):
        if not _number(data.get(field)):
            return False
    if not 0 <= data["startingSpeed"] <= 99 or data["speedIncreaseMode"] not in (1, 2):
        return False
    if not 4 <= data["colors"] <= 7 or data["maxHealth"] < 1:
        return False
    stop, frames = data.get("stop"), data.get("frameConstants")
    if not isinstance(stop, dict) or not isinstance(frames, dict):
        return False
    if stop.get("formula") not in (1, 2):
        return False
    for field in ("comboConstant", "chainConstant", "dangerConstant", "coefficient",
                  "dangerCoefficient"):
        if not _number(stop.get(field)):
            return False
    for field in ("HOVER", "FLASH", "FACE", "POP"):
        if not _number(frames.get(field)):
            return False
    if "GARBAGE_HOVER" in frames and not _number(frames["GARBAGE_HOVER"]):
        return False
    return len(str(data)) <= 2048


def _level(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("level_not_an_integer", value_type=type(value).__name__)
    if not MIN_LEVEL <= value <= MAX_LEVEL:
        raise _fail("level_out_of_range", level=value)
    return value


def _selections(source: dict[str, Any], *, lenient: bool) -> m.Selections:
    """The settings of a menu_state or a login_request.

    ``lenient`` (the login) lets a field that fails its check fall back to its
    default: refusing the whole login would leave the client with no answer.
    """
    fields: dict[str, Any] = {}
    for field in ("character", "character_is_random", "stage", "stage_is_random", "panels_dir"):
        try:
            fields[field] = _optional_text(source, field)
        except RemoteProtocolError:
            if not lenient:
                raise
    for field in ("ranked", "wants_ready", "ready"):
        try:
            fields[field] = bool(_optional_bool(source, field, False))
        except RemoteProtocolError:
            if not lenient:
                raise
    try:
        fields["loaded"] = _optional_bool(source, "loaded", None)
    except RemoteProtocolError:
        if not lenient:
            raise
    if "level" in source or not lenient:
        try:
            fields["level"] = _level(source.get("level"))
        except RemoteProtocolError:
            if not lenient:
                raise
    method = source.get("inputMethod", "controller")
    if method not in INPUT_METHODS:
        if not lenient:
            raise _fail("input_method_unknown", value=str(method)[:16])
        method = "controller"
    fields["input_method"] = method
    level_data = source.get("levelData")
    if level_data is not None:
        if level_data_valid(level_data):
            fields["level_data"] = copy.deepcopy(level_data)
        elif not lenient:
            raise _fail("level_data_invalid")
    return m.Selections(**fields)


def _user_id(payload: dict[str, Any]) -> str | None:
    """The id of a login request; None asks for a new one; "" when missing or malformed."""
    user_id = payload.get("user_id")
    if user_id == NEW_USER_ID_REQUEST:
        return None
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)  # a client may have turned the stored string into a number
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        return ""
    return user_id


def parse_command(payload: dict[str, Any]) -> m.Command2025:
    """Validate a 2025 client's JSON object into a command.

    Raises a non-fatal RemoteProtocolError for unknown or malformed messages.
    """
    if "error_report" in payload:
        text = json.dumps(payload["error_report"], ensure_ascii=False, separators=(",", ":"))
        if len(text) > m.MAX_LOGGED_ERROR_REPORT:
            return m.ErrorReport(len(text))
        return m.ErrorReport(len(text), text)
    if payload.get("login_request") is True:
        publicity = payload.get("save_replays_publicly")
        if publicity not in REPLAY_PUBLICITY:
            publicity = DEFAULT_PUBLICITY
        return m.Login2025(
            user_id=_user_id(payload),
            name=payload.get("name"),
            engine_version=payload.get("engine_version"),
            selections=_selections(payload, lenient=True),
            save_replays_publicly=publicity,
        )
    if "menu_state" in payload:
        state = payload["menu_state"]
        if not isinstance(state, dict):
            raise _fail("field_not_an_object", field="menu_state")
        return m.PlayerSettings(_selections(state, lenient=False))
    if payload.get("type") == "matchAbort":
        return m.MatchAbort()
    command = v046.parse_command(payload, registered=True)
    if type(command) in (m.LoginRequest, m.MenuState046):
        raise _fail("unknown_json_message", keys=sorted(str(key)[:32] for key in payload)[:8])
    return command  # type: ignore[return-value]


# -- rendering: values the lobby hands over ------------------------------------------


def level_data_of(selections: m.Selections) -> dict[str, Any]:
    """The level data a player plays with: theirs, or their level's preset."""
    if selections.level_data is not None:
        return selections.level_data
    return MODERN_LEVELS.get(selections.level, MODERN_LEVELS[5])


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    # Lua leaves nil fields out of its JSON; the clients test for presence.
    return {key: value for key, value in values.items() if value is not None}


def menu_state_plain(selections: m.Selections, public_id: int | None) -> dict[str, Any]:
    """A player's settings as versions 003/004 read them (ServerProtocol.toSettings)."""
    return _without_none({
        "cursor": "__Ready",
        "stage": selections.stage,
        "stage_is_random": selections.stage_is_random,
        "ready": selections.ready,
        "character": selections.character,
        "character_is_random": selections.character_is_random,
        "panels_dir": selections.panels_dir,
        "level": selections.level,
        "ranked": selections.ranked,
        "inputMethod": selections.input_method,
        "wants_ready": selections.wants_ready,
        "loaded": selections.loaded,
        "publicId": public_id,
        "levelData": level_data_of(selections),
    })


def menu_state_typed(selections: m.Selections) -> dict[str, Any]:
    """A player's settings as version 005 reads them."""
    return _without_none({
        "cursor": "__Ready",
        "stage": selections.stage,
        "selectedStage": selections.stage_is_random,
        "ready": selections.ready,
        "character": selections.character,
        "selectedCharacter": selections.character_is_random,
        "panels": selections.panels_dir,
        "level": selections.level,
        "wantsRanked": selections.ranked,
        "inputMethod": selections.input_method,
        "wantsReady": selections.wants_ready,
        "loaded": selections.loaded,
        "levelData": level_data_of(selections),
    })


def player_settings_plain(
    selections: m.Selections, player_number: int, public_id: int | None, rating: int | None
) -> dict[str, Any]:
    """``player_settings``/``opponent_settings`` of versions 003/004 (toDumbSettings)."""
    return _without_none({
        "character": selections.character or selections.character_is_random or RANDOM_CHARACTER,
        "level": selections.level,
        "panels_dir": selections.panels_dir,
        "player_number": player_number,
        "inputMethod": selections.input_method,
        "rating": rating,
        "publicId": public_id,
        "levelData": level_data_of(selections),
    })


def typed(kind: str, content: Any, sender: str, sender_id: Any = None) -> dict[str, Any]:
    """A version 005 message."""
    message: dict[str, Any] = {"type": kind, "sender": sender, "content": content}
    if sender_id is not None:
        message["senderId"] = sender_id
    return message


def replay_player(
    *, name: str, public_id: int, wins: int, selections: m.Selections, inputs: str
) -> dict[str, Any]:
    """One player of a version 2 replay (ReplayPlayer)."""
    settings = _without_none({
        "characterId": selections.character or selections.character_is_random,
        "panelId": selections.panels_dir,
        "levelData": level_data_of(selections),
        "inputMethod": selections.input_method,
        # Adjacent colours stay allowed below level 8, as the engine has it for versus.
        "allowAdjacentColors": selections.level < 8,
        "level": selections.level,
        "inputs": inputs,
    })
    return {"name": name, "publicId": public_id, "human": True, "wins": wins, "settings": settings}


def replay(
    *, engine_version: str, timestamp: float, seed: int, stage: str, ranked: bool,
    players: list[dict[str, Any]],
) -> dict[str, Any]:
    """A version 2 replay as the server sends it at match start and to spectators."""
    return {
        "timestamp": int(timestamp),
        "engineVersion": engine_version,
        "replayVersion": REPLAY_VERSION,
        "seed": seed,
        "gameMode": dict(REPLAY_GAME_MODE),
        "players": players,
        "ranked": ranked,
        "stageId": stage,
    }


def finished_replay(
    replay_so_far: dict[str, Any], *, winner: int, public_ids: tuple[int, int], game_id: int | None
) -> dict[str, Any]:
    """The stored replay of a game that ended (Replay:setOutcome); ``winner`` 0 is a draw."""
    result = dict(replay_so_far)
    result["completed"] = True
    if winner in (1, 2):
        result["winnerIndex"] = winner
        result["winnerId"] = public_ids[winner - 1]
    if game_id is not None:
        result["gameId"] = game_id
    return result


# -- input strings ----------------------------------------------------------------------

_DIGITS = frozenset("0123456789")


def compress_inputs(inputs: str) -> str:
    """Run-length form of an input string, as ReplayPlayer.compressInputString writes it.

    Each run of a non-digit character becomes the character and its count
    (``A5``); a run of a digit is written out in parentheses (``(333)``).
    A string that already holds a parenthesis followed by a digit is taken as
    compressed and returned as is, as the client does.
    """
    if not inputs:
        return inputs
    parts = []
    previous = inputs[0]
    count = 1
    for index in range(1, len(inputs) + 1):
        character = inputs[index] if index < len(inputs) else None
        if character is not None and character in _DIGITS and previous in "()":
            return inputs
        if character == previous:
            count += 1
            continue
        if previous in _DIGITS:
            parts.append("(" + previous * count + ")")
        else:
            parts.append(f"{previous}{count}")
        if character is not None:
            previous = character
            count = 1
    return "".join(parts)


def decompress_inputs(inputs: str) -> str:
    """The inverse of :func:`compress_inputs` (ReplayPlayer.decompressInputString)."""
    chunks: list[str] = []
    previous: str | None = None
    number: str | None = None
    character: str | None = None
    for position, code in enumerate(inputs):
        if position > 0:
            if code in _DIGITS:
                if number is None:
                    character = previous
                    number = ""
                number += code
            else:
                if number is not None:
                    assert character is not None
                    if character in "()":
                        chunks.append(number)
                    else:
                        chunks.append(character * int(number))
                    number = None
                if previous == code:
                    return inputs  # two equal letters in a row: not compressed
        previous = code
    if number is None:
        return inputs
    assert character is not None
    chunks.append(character * int(number))
    return "".join(chunks)
