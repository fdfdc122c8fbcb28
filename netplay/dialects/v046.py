"""The 2022 client's JSON dialect (protocol 046): validation and rendering.

Incoming JSON is checked field by field into the commands of ``messages``;
a frame that fails raises a non-fatal RemoteProtocolError and nothing of it
is applied or forwarded.  Outgoing messages are rendered here, so that every
byte a 046 client receives has the shape that client needs: it crashes on a
missing required field or a wrong type (see ``protocol.md``), so nothing it
receives is ever copied from another client unchecked.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from netplay.dialects.classic import MAX_TEXT_FIELD_LENGTH
from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.length3 import encode_json

NEW_USER_ID_REQUEST = "need a new user id"
MIN_LEVEL = 1
MAX_LEVEL = 10
MAX_NAME_LENGTH = 16
MAX_USER_ID_LENGTH = 32
TAUNT_KINDS = frozenset({"taunt_ups", "taunt_downs"})
MAX_TAUNT_INDEX = 1000
REPLAY_PUBLICITY = ("with my name", "anonymously", "not at all")
DEFAULT_PUBLICITY = "with my name"

# Select-screen cells every client has; any other cursor is a character id.
# "__Mode" is drawn only by a client that got a reply to its login.
SELECT_CELLS = frozenset(
    {"__Panels", "__Mode", "__Stage", "__Level", "__Ready", "__Random", "__Leave"}
)
MODE_CELL = "__Mode"
_CHARACTER_ID = re.compile(r"[A-Za-z0-9_ .\-]{1,64}")
_CURSOR_FALLBACK = "__Ready"

# Reasons the client shows when a name is refused.
NAME_BLANK = "Name cannot be blank"
NAME_ANONYMOUS = 'Username cannot be "anonymous"'
NAME_DEFAULT = 'Username cannot be "defaultname" or a variation of it'
NAME_CHARACTERS = "Usernames are limited to alphanumeric and underscores"
NAME_TOO_LONG = f"The name length limit is {MAX_NAME_LENGTH} characters"
NAME_OWNED = "That player name is already taken"
_DEFAULT_NAME = re.compile(r"d+e+f+a+u+l+t+n+a+m+e?")
_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9_]+")

# Reasons for login_denied.
LOGIN_NO_USER_ID = "Client did not send a user_id in the login request"
LOGIN_UNKNOWN_ID = "The user_id provided was not found on this server"
LOGIN_UNAVAILABLE = "The server cannot check logins right now; please try again later"
LOGIN_BANNED = "You are banned from this server"


def _fail(reason: str, **context: object) -> RemoteProtocolError:
    return RemoteProtocolError(reason, fatal=False, **context)


# -- names -----------------------------------------------------------------------


def name_refusal(name: object) -> str | None:
    """The reason text the client shows for a name it may not use, or None.

    Checked in the 2022 server's order; that the name is connected already is
    the lobby's business and answered differently (``used_names``).
    """
    if not isinstance(name, str) or not name:
        return NAME_BLANK
    if name.lower() == "anonymous":
        return NAME_ANONYMOUS
    if _DEFAULT_NAME.search(name.lower()):
        return NAME_DEFAULT
    if not _NAME_CHARACTERS.fullmatch(name):
        return NAME_CHARACTERS
    if len(name) > MAX_NAME_LENGTH:
        return NAME_TOO_LONG
    return None


# -- field checks -------------------------------------------------------------------


def _optional_text(source: dict[str, Any], field: str) -> str | None:
    value = source.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail("field_not_a_string", field=field, value_type=type(value).__name__)
    if len(value) > MAX_TEXT_FIELD_LENGTH:
        raise _fail("field_too_long", field=field, length=len(value))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail("field_not_unicode", field=field) from None
    return value


def _optional_bool(source: dict[str, Any], field: str, default: bool | None) -> bool | None:
    value = source.get(field, default)
    if value is None or isinstance(value, bool):
        return value
    raise _fail("field_not_a_boolean", field=field, value_type=type(value).__name__)


def _level(value: object, field: str = "level") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("level_not_an_integer", field=field, value_type=type(value).__name__)
    if not MIN_LEVEL <= value <= MAX_LEVEL:
        raise _fail("level_out_of_range", level=value)
    return value


def _selections(source: dict[str, Any]) -> m.Selections:
    cursor = _optional_text(source, "cursor")
    if cursor is None:
        raise _fail("field_missing", field="cursor")
    if "level" not in source:
        raise _fail("field_missing", field="level")
    return m.Selections(
        cursor=cursor,
        character=_optional_text(source, "character"),
        character_is_random=_optional_text(source, "character_is_random"),
        character_display_name=_optional_text(source, "character_display_name"),
        stage=_optional_text(source, "stage"),
        stage_is_random=_optional_text(source, "stage_is_random"),
        panels_dir=_optional_text(source, "panels_dir"),
        level=_level(source["level"]),
        ranked=bool(_optional_bool(source, "ranked", False)),
        loaded=_optional_bool(source, "loaded", None),
        wants_ready=bool(_optional_bool(source, "wants_ready", False)),
        ready=bool(_optional_bool(source, "ready", False)),
    )


def _registration(payload: dict[str, Any]) -> m.Register046:
    """The name message; a field that fails its check falls back to its default.

    Refusing the whole message would leave the client at "Connecting..."
    forever, and its menu_state will carry every field again anyway.
    """
    fields: dict[str, Any] = {}
    for field in (
        "character", "character_is_random", "character_display_name",
        "stage", "stage_is_random", "panels_dir",
    ):
        try:
            fields[field] = _optional_text(payload, field)
        except RemoteProtocolError:
            pass
    try:
        fields["level"] = _level(payload.get("level"))
    except RemoteProtocolError:
        pass
    if isinstance(payload.get("ranked"), bool):
        fields["ranked"] = payload["ranked"]
    publicity = payload.get("save_replays_publicly")
    if publicity not in REPLAY_PUBLICITY:
        publicity = DEFAULT_PUBLICITY
    return m.Register046(
        name=payload.get("name"),
        selections=m.Selections(**fields),
        save_replays_publicly=publicity,
    )


def _user_id(payload: dict[str, Any]) -> str | None:
    """The id of a login request; None asks for a new one.  Missing: refused."""
    if "user_id" not in payload:
        raise _fail("field_missing", field="user_id")
    user_id = payload["user_id"]
    if user_id == NEW_USER_ID_REQUEST:
        return None
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)  # a client may have turned the stored string into a number
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        raise _fail("user_id_invalid")
    return user_id


def parse_command(payload: dict[str, Any], *, registered: bool) -> m.Command046:
    """Validate a 046 client's JSON object into a command.

    Before registration every JSON message is the name message, as the 2022
    client and server have it.  Raises a non-fatal RemoteProtocolError for
    unknown or malformed messages.
    """
    if not registered:
        return _registration(payload)
    if "menu_state" in payload:
        state = payload["menu_state"]
        if not isinstance(state, dict):
            raise _fail("field_not_an_object", field="menu_state")
        return m.MenuState046(_selections(state))
    if "game_request" in payload:
        request = payload["game_request"]
        if not isinstance(request, dict):
            raise _fail("field_not_an_object", field="game_request")
        sender, receiver = request.get("sender"), request.get("receiver")
        if not isinstance(sender, str) or not isinstance(receiver, str):
            raise _fail("field_not_a_string", field="sender/receiver")
        return m.GameRequest(sender=sender, receiver=receiver)
    if payload.get("login_request") is True:
        try:
            return m.LoginRequest(_user_id(payload))
        except RemoteProtocolError:
            return m.LoginRequest("")  # answered login_denied by the lobby
    if "spectate_request" in payload:
        request = payload["spectate_request"]
        if not isinstance(request, dict):
            raise _fail("field_not_an_object", field="spectate_request")
        sender, number = request.get("sender"), request.get("roomNumber")
        if not isinstance(sender, str):
            raise _fail("field_not_a_string", field="sender")
        if isinstance(number, bool) or not isinstance(number, int):
            raise _fail("field_not_an_integer", field="roomNumber")
        return m.SpectateRequest(sender=sender, room_number=number)
    if payload.get("game_over") is True:
        outcome = payload.get("outcome")
        if isinstance(outcome, bool) or outcome not in (0, 1, 2):
            raise _fail("outcome_invalid", value=str(outcome)[:16])
        return m.GameOverClaim(outcome)
    if payload.get("taunt") is True:
        kind, index = payload.get("type"), payload.get("index")
        if kind not in TAUNT_KINDS:
            raise _fail("taunt_type_unknown", value=str(kind)[:32])
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= MAX_TAUNT_INDEX:
            raise _fail("taunt_index_invalid", value=str(index)[:16])
        return m.Taunt(kind=kind, index=index)
    if payload.get("leave_room") is True:
        return m.LeaveRoom()
    if payload.get("logout") is True:
        return m.Logout()
    if payload.get("leaderboard_request") is True:
        return m.LeaderboardRequest()
    keys = sorted(str(key)[:32] for key in payload)[:8]
    raise _fail("unknown_json_message", keys=keys)


# -- rendering -------------------------------------------------------------------------


def selections_json(selections: m.Selections, *, mode_cell_shown: bool = True) -> dict[str, Any]:
    """A menu state as a 046 client reads it (for the player itself or another).

    The cursor must name a cell the recipient has, or its client crashes:
    ``__Mode`` only exists for a client that got a login reply, and a
    character id that does not look like one is replaced.
    """
    cursor = selections.cursor
    if cursor == MODE_CELL and not mode_cell_shown:
        cursor = _CURSOR_FALLBACK
    elif cursor not in SELECT_CELLS and (
        cursor.startswith("__") or not _CHARACTER_ID.fullmatch(cursor)
    ):
        cursor = _CURSOR_FALLBACK
    state: dict[str, Any] = {
        "cursor": cursor,
        "level": selections.level,
        "ranked": selections.ranked,
        "wants_ready": selections.wants_ready,
        "ready": selections.ready,
    }
    for field in (
        "character", "character_is_random", "character_display_name",
        "stage", "stage_is_random", "panels_dir",
    ):
        value = getattr(selections, field)
        if value is not None:
            state[field] = value
    if selections.loaded is not None:
        state["loaded"] = selections.loaded
    return state


def player_settings(selections: m.Selections, player_number: int) -> dict[str, Any]:
    """``player_settings`` / ``opponent_settings`` of match_start and spectating."""
    settings: dict[str, Any] = {
        "character": selections.character or selections.character_is_random or "__RandomCharacter",
        "character_display_name": selections.character_display_name or "",
        "level": selections.level,
        "player_number": player_number,
    }
    if selections.panels_dir is not None:
        settings["panels_dir"] = selections.panels_dir
    return settings


def lobby_state(
    unpaired: list[str], rooms: list[dict[str, Any]], players: dict[str, Any]
) -> dict[str, Any]:
    return {"unpaired": unpaired, "spectatable": rooms, "players": players}


def spectatable_room(number: int, a: str, b: str, playing: bool) -> dict[str, Any]:
    return {
        "roomNumber": number,
        "name": f"{a} vs {b}",
        "a": a,
        "b": b,
        "state": "playing" if playing else "character select",
    }


def choose_another_name(reason: str) -> dict[str, Any]:
    return {"choose_another_name": {"reason": reason}}


def name_in_use(name: str) -> dict[str, Any]:
    # The client only tests that the list is there; naming everyone online
    # would cost a large lobby's list per refusal and tell strangers who plays.
    return {"choose_another_name": {"used_names": [name]}}


def login_successful(
    *, new_user_id: str | None = None, old_name: str | None = None, new_name: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"login_successful": True}
    if new_user_id is not None:
        message["new_user_id"] = new_user_id
    if old_name is not None:
        message.update(name_changed=True, old_name=old_name, new_name=new_name)
    return message


def ban_duration(expires_at: float | None, now: float) -> str:
    """How long a ban still lasts, as the 2022 server wrote it: ``"12min5sec"``."""
    if expires_at is None:
        return "forever"
    seconds = max(0, int(expires_at - now))
    return f"{seconds // 60}min{seconds % 60}sec"


def login_denied(reason: str, **extra: Any) -> dict[str, Any]:
    return {"login_denied": True, "reason": reason, **extra}


def game_request(sender: str, receiver: str) -> dict[str, Any]:
    return {"game_request": {"sender": sender, "receiver": receiver}}


def create_room(
    *,
    your_number: int,
    opponent: str,
    a_state: dict[str, Any],
    b_state: dict[str, Any],
    ratings: list[dict[str, Any]],
    ranked: bool,
    character_select: bool,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "create_room": True,
        "your_player_number": your_number,
        "op_player_number": 3 - your_number,
        "opponent": opponent,
        "a_menu_state": a_state,
        "b_menu_state": b_state,
        "ratings": ratings,
        "rating_updates": True,
        "ranked": ranked,
    }
    if character_select:
        message["character_select"] = True
    return message


def spectator_character_select(
    a_state: dict[str, Any], b_state: dict[str, Any], ratings: list[dict[str, Any]], ranked: bool
) -> dict[str, Any]:
    return {
        "character_select": True,
        "create_room": True,
        "a_menu_state": a_state,
        "b_menu_state": b_state,
        "ratings": ratings,
        "rating_updates": True,
        "ranked": ranked,
    }


def menu_state(state: dict[str, Any], player_number: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"menu_state": state}
    if player_number is not None:
        message["player_number"] = player_number
    return message


def ranked_match_denied(reasons: Iterable[str]) -> dict[str, Any]:
    return {"ranked_match_denied": True, "reasons": list(reasons)}


def match_start(
    *, seed: int, stage: str, ranked: bool, own: dict[str, Any], other: dict[str, Any]
) -> dict[str, Any]:
    return {
        "match_start": True,
        "ranked": ranked,
        "stage": stage,
        "seed": seed,
        "player_settings": own,
        "opponent_settings": other,
    }


def win_counts(counts: list[int]) -> dict[str, Any]:
    return {"win_counts": list(counts)}


def spectators(names: list[str]) -> dict[str, Any]:
    return {"spectators": names}


def taunt(kind: str, index: int, player_number: int) -> dict[str, Any]:
    return {"taunt": True, "type": kind, "index": index, "player_number": player_number}


def leave_room() -> dict[str, Any]:
    return {"leave_room": True}


def leaderboard_report(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"leaderboard_report": entries}


def farewell(reason: str) -> bytes:
    """The last frame before the server closes a 046 connection (see ``core``)."""
    return encode_json({"connection_closing": True, "reason": reason})
