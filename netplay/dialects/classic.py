"""The two JSON dialects: the existing clients' and the design document's.

The handshake version picks a connection's dialect once.  Incoming JSON is
validated into the dialect-neutral commands of ``messages``; outgoing lobby
events are rendered here, per dialect, so the lobby never builds JSON itself.
Every field is type-checked: a bad frame raises a non-fatal
RemoteProtocolError naming the problem, and nothing of it is applied.
"""

from __future__ import annotations

import enum
from typing import Any, Iterable

from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m

CLIENT_VERSIONS = frozenset(f"{v:03d}" for v in range(4, 20))
DOCUMENT_VERSIONS = frozenset({"139"})
V046_VERSIONS = frozenset({"046"})
V2025_VERSIONS = frozenset({"003", "004", "005"})
V2025_ENGINE_GROUPS = "048"

MAX_TEXT_FIELD_LENGTH = 64  # character names, cursor ids
MIN_LEVEL = 0
MAX_LEVEL = 99


class Dialect(enum.Enum):
    CLIENTS = "clients"  # what the existing clients 004..019 speak
    DOCUMENT = "document"  # what the design document describes
    V046 = "v046"  # what the 2022 client (protocol 046) speaks; see ``dialects.v046``
    V2025 = "v2025"  # what the 2023-2025 clients (network 003-005) speak; see ``dialects.v2025``


def _fail(reason: str, **context: object) -> RemoteProtocolError:
    return RemoteProtocolError(reason, fatal=False, **context)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _fail("field_not_a_string", field=field, value_type=type(value).__name__)
    if len(value) > MAX_TEXT_FIELD_LENGTH:
        raise _fail("field_too_long", field=field, length=len(value))
    if not _encodable(value):
        raise _fail("field_not_unicode", field=field)
    return value


def _encodable(value: str) -> bool:
    # JSON escapes can smuggle in lone surrogates, which UTF-8 cannot carry:
    # such a string could never be forwarded to anyone.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _level(value: object) -> int:
    # Some document-dialect examples carry the level as a digit string.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 2:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("level_not_an_integer", value_type=type(value).__name__)
    if not MIN_LEVEL <= value <= MAX_LEVEL:
        raise _fail("level_out_of_range", level=value)
    return value


def _object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail("field_not_an_object", field=field, value_type=type(value).__name__)
    return value


def _require(payload: dict[str, Any], field: str) -> Any:
    try:
        return payload[field]
    except KeyError:
        raise _fail("field_missing", field=field) from None


def parse_menu_state(value: object) -> m.MenuState:
    state = _object(value, "menu_state")
    ready = _require(state, "ready")
    if not isinstance(ready, bool):
        raise _fail("field_not_a_boolean", field="ready", value_type=type(ready).__name__)
    return m.MenuState(
        cursor=_text(_require(state, "cursor"), "cursor"),
        ready=ready,
        character=_text(_require(state, "character"), "character"),
        level=_level(_require(state, "level")),
    )


def _parse_game_request(value: object, field: str) -> m.GameRequest:
    request = _object(value, field)
    receiver = request.get("receiver", request.get("reciver"))  # the document's spelling
    if receiver is None:
        raise _fail("field_missing", field="receiver")
    sender = _require(request, "sender")
    if not isinstance(sender, str) or not isinstance(receiver, str):
        raise _fail("field_not_a_string", field="sender/receiver")
    return m.GameRequest(sender=sender, receiver=receiver)


def parse_command(payload: dict[str, Any]) -> m.Command:
    """Validate a client's JSON object into a command (both dialects are accepted).

    Raises a non-fatal RemoteProtocolError for unknown or malformed messages.
    A registration whose name breaks the name rule is returned as is; the
    lobby answers it (``choose_another_name``), so it is not an error here.
    """
    if "name" in payload:
        name = payload["name"]
        if not isinstance(name, str):
            raise _fail("field_not_a_string", field="name", value_type=type(name).__name__)
        return m.Register(
            name=name,
            level=_level(_require(payload, "level")),
            character=_text(_require(payload, "character"), "character"),
        )
    if "game_request" in payload:
        return _parse_game_request(payload["game_request"], "game_request")
    if "game_request_to_server" in payload:
        return _parse_game_request(payload["game_request_to_server"], "game_request_to_server")
    if "menu_state" in payload:
        return parse_menu_state(payload["menu_state"])
    if payload.get("leave_room") is True:
        return m.LeaveRoom()
    if payload.get("game_over") is True:
        return m.GameOver()
    keys = sorted(str(key)[:32] for key in payload)[:8]
    raise _fail("unknown_json_message", keys=keys)


# ---------------------------------------------------------------------------
# Rendering server messages


def lobby_state(unpaired: list[str], paired: list[dict[str, Any]]) -> dict[str, Any]:
    return {"unpaired": unpaired, "paired": paired}


def render_lobby(
    dialect: Dialect, unpaired: list[str], paired: list[dict[str, Any]]
) -> dict[str, Any]:
    if dialect is Dialect.CLIENTS:
        return {"unpaired": unpaired}
    return {"lobby_state": lobby_state(unpaired, paired)}


def render_leave_room(
    dialect: Dialect, unpaired: list[str], paired: list[dict[str, Any]]
) -> dict[str, Any]:
    if dialect is Dialect.CLIENTS:
        return {"leave_room": True, "unpaired": unpaired}
    return {"leave_room": True, "lobby_state": lobby_state(unpaired, paired)}


def render_game_request(dialect: Dialect, sender: str, receiver: str) -> dict[str, Any]:
    key = "game_request" if dialect is Dialect.CLIENTS else "game_request_to_client"
    return {key: {"sender": sender, "receiver": receiver}}


def render_choose_another_name(used_names: Iterable[str]) -> dict[str, Any]:
    return {"choose_another_name": {"used_names": list(used_names)}}


def render_create_room(opponent: str, opponent_state: m.MenuState) -> dict[str, Any]:
    return {"create_room": True, "opponent": opponent, "menu_state": opponent_state.as_json()}


def render_menu_state(state: m.MenuState) -> dict[str, Any]:
    return {"menu_state": state.as_json()}


def render_match_start(own: m.MenuState, opponent: m.MenuState) -> dict[str, Any]:
    return {
        "match_start": True,
        "player_settings": {"character": own.character, "level": own.level},
        "opponent_settings": {"character": opponent.character, "level": opponent.level},
    }


def cursor_after_game(dialect: Dialect) -> str:
    """Where a player's cursor stands when a game ends and select starts again."""
    return "level" if dialect is Dialect.CLIENTS else "ready"
