"""What the live status page shows, as one JSON-ready value.  Sans-IO.

:func:`status_document` reads the core and its lobbies (never changing
them) and returns plain dicts and lists: players online per dialect, who
waits in the lobby, rooms with their match and spectators, recent results,
totals and the settings that matter to a player.  Every list is bounded, so
the document stays small however many players are online.  Player names go
out as they are: the page puts them in the DOM as text, never as markup.
"""

from __future__ import annotations

import datetime
from importlib import resources
from typing import Any

from netplay import __version__
from netplay.config import Config
from netplay.core import ServerCore
from netplay.dialects.classic import Dialect
from netplay.lobbies import classic as lobby
from netplay.lobbies import v046 as lobby046

# At most this many names of lobby players, and rooms, are listed.
MAX_LOBBY_NAMES = 200
MAX_ROOMS = 100


def _versions(versions: frozenset[str]) -> str:
    if not versions:
        return "-"
    low, high = min(versions), max(versions)
    return low if low == high else f"{low}-{high}"


def settings_shown(config: Config, port: int | None = None) -> dict[str, Any]:
    """The settings a player or an operator may want to see (no paths, no secrets).

    ``port`` is the game port in use, when ``config.port`` is 0.
    """
    return {
        "port": port if port is not None else config.port,
        "client_versions": _versions(config.client_versions),
        "document_versions": _versions(config.document_versions),
        "v046_versions": _versions(config.v046_versions),
        "max_connections": config.max_connections,
        "max_spectators_per_room": config.max_spectators_per_room,
        "game_over_timeout": config.game_over_timeout,
        "idle_timeout": config.idle_timeout,
        "max_messages_per_second": config.max_messages_per_second,
    }


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    moment = datetime.datetime.fromtimestamp(wall, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _classic_rooms(core: ServerCore, now: float) -> list[dict[str, Any]]:
    rooms = []
    for room in core.lobby.rooms.values():
        match = room.match
        started_at = None if match is None else match.started_at
        rooms.append({
            "dialect": "classic",
            "number": room.id,
            "players": [player.name or "" for player in room.players],
            "playing": room.state is lobby.RoomState.PLAYING,
            "match_seconds": None if started_at is None else round(now - started_at, 1),
            "spectators": [],
            "win_counts": None,
        })
    return rooms


def _shared_rooms(core: ServerCore, now: float) -> list[dict[str, Any]]:
    """The rooms of the 2022 and the 2025 lobbies, which share their shape."""
    rooms = []
    for dialect, each in ((Dialect.V046, core.lobby046), (Dialect.V2025, core.lobby2025)):
        rooms += _rooms_of(each.rooms.values(), dialect, now)
    return rooms


def _rooms_of(lobby_rooms: Any, dialect: Dialect, now: float) -> list[dict[str, Any]]:
    rooms = []
    for room in lobby_rooms:
        match = room.match
        rooms.append({
            "dialect": dialect.value,
            "number": room.number,
            "players": [player.name or "" for player in room.players],
            "playing": room.state is lobby046.RoomState.PLAYING,
            "match_seconds": None if match is None else round(now - match.started_at, 1),
            "spectators": [spectator.name or "" for spectator in room.spectators],
            "win_counts": list(room.win_counts),
            "ranked": match is not None and match.ranked,
        })
    return rooms


def status_document(
    core: ServerCore,
    *,
    now: float,
    started_at: float | None,
    started_wall: float | None,
    port: int | None = None,
) -> dict[str, Any]:
    """The status page's data at ``now`` (the server's clock, like ``started_at``)."""
    online = {dialect.value: 0 for dialect in Dialect}
    lobby_names: list[dict[str, str]] = []
    for player in core.lobby.players.values():
        online[player.dialect.value] += 1
        if player.state is lobby.PlayerState.LOBBY and player.name:
            lobby_names.append({"name": player.name, "dialect": player.dialect.value})
    for dialect, each in ((Dialect.V046, core.lobby046), (Dialect.V2025, core.lobby2025)):
        for shared_player in each.players.values():
            online[dialect.value] += 1
            if shared_player.state is lobby046.PlayerState.LOBBY and shared_player.name:
                lobby_names.append({"name": shared_player.name, "dialect": dialect.value})
    lobby_names.sort(key=lambda entry: entry["name"].casefold())

    rooms = _classic_rooms(core, now) + _shared_rooms(core, now)
    # Matches first, the most watched and the longest first among them.
    rooms.sort(key=lambda room: (
        not room["playing"], -len(room["spectators"]), -(room["match_seconds"] or 0),
    ))
    results = []
    for result in reversed(core.counters.recent_results):
        winner = None
        if result.outcome in (1, 2):
            winner = result.players[result.outcome - 1]
        results.append({
            "dialect": result.dialect,
            "room": result.room,
            "players": list(result.players),
            "outcome": result.outcome,
            "winner": winner,
            "decided_by": result.decided_by,
            "seconds": None if result.seconds is None else round(result.seconds, 1),
            "ago_seconds": round(max(0.0, now - result.ended_at), 1),
        })
    lobbies = (core.lobby, core.lobby046, core.lobby2025)
    traffic = core.counters.traffic
    received, sent = traffic.received(), traffic.sent()
    return {
        "server": {
            "version": __version__,
            "uptime_seconds": 0.0 if started_at is None else round(now - started_at, 1),
            "started_at": _iso(started_wall),
        },
        "online": {
            "players": sum(online.values()),
            "by_dialect": online,
            "connections": len(core.connections),
        },
        "lobby": {"count": len(lobby_names), "names": lobby_names[:MAX_LOBBY_NAMES]},
        "rooms": {"count": len(rooms), "list": rooms[:MAX_ROOMS]},
        "matches": {
            "in_progress": sum(room["playing"] for room in rooms),
            "started": sum(each.matches_started for each in lobbies),
            "finished": sum(sum(each.matches_ended.values()) for each in lobbies),
            "spectators": sum(len(room["spectators"]) for room in rooms),
        },
        "recent_results": results,
        "traffic": {
            "messages_in": sum(count for count, _ in received.values()),
            "messages_out": sum(count for count, _ in sent.values()),
            "bytes_in": sum(size for _, size in received.values()),
            "bytes_out": sum(size for _, size in sent.values()),
        },
        "settings": settings_shown(core.config, port),
    }


def page() -> bytes:
    """The status page: one HTML file, its CSS and script inline, that polls ``status.json``."""
    return resources.files("netplay.operations").joinpath("static/status.html").read_bytes()
