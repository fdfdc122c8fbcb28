"""Every setting of the server, in one frozen value."""

from __future__ import annotations

import ipaddress

import attrs

from netplay.dialects.classic import (
    CLIENT_VERSIONS,
    DOCUMENT_VERSIONS,
    V046_VERSIONS,
    V2025_ENGINE_GROUPS,
    V2025_VERSIONS,
)
from netplay.dialects.names import DEFAULT_MAX_NAME_LENGTH
from netplay.framing.length3 import DEFAULT_MAX_JSON_LENGTH

DEFAULT_PORT = 49569
DEFAULT_DATABASE = "netplay.sqlite3"


@attrs.frozen(kw_only=True)
class Config:
    """Server settings.  Times are in seconds, sizes in bytes."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # Random choices (panels) derive from this; None draws a fresh seed at start.
    seed: int | None = None
    # Handshake versions accepted, per dialect.
    client_versions: frozenset[str] = CLIENT_VERSIONS
    document_versions: frozenset[str] = DOCUMENT_VERSIONS
    v046_versions: frozenset[str] = V046_VERSIONS
    # The 2023-2025 clients' network versions; 004 and 005 are also 2013-era
    # versions, told apart by their first frame (see ``core``).
    v2025_versions: frozenset[str] = V2025_VERSIONS
    # Engine versions of those clients that may log in, by groups that share a
    # lobby: "048", "047+048,049" (see ``lobbies.v2025``).
    v2025_engine_groups: str = V2025_ENGINE_GROUPS

    # Where players, their ids and (later) results are stored; ":memory:"
    # keeps everything in memory for the life of the process.
    database: str = DEFAULT_DATABASE

    # Heartbeat: ping after this much silence, and again each further interval.
    ping_interval: float = 1.0
    # Drop a connection that sent nothing for this long.
    idle_timeout: float = 10.0
    # Time from connect to a valid ``H``, and to a successful registration.
    handshake_timeout: float = 10.0
    registration_timeout: float = 60.0

    # Limits, each enforced before memory is spent.
    max_json_length: int = DEFAULT_MAX_JSON_LENGTH
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH
    max_connections: int = 20_000
    max_connections_per_ip: int = 64
    # Addresses exempt from the per-IP limit (the operator's own machine).
    unlimited_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Token bucket over every message a connection sends.
    max_messages_per_second: float = 300.0
    message_burst: int = 1200
    # Bytes of messages held back by that bucket (never dropped: an input
    # lost is a game lost); past this the sender is closed.
    max_held_bytes: int = 256 * 1024
    # Bytes queued for a client that does not read; past this it is dropped.
    max_queued_bytes: int = 512 * 1024

    # Lobby snapshots: at most one broadcast per interval, growing with the lobby
    # so that a join storm costs O(players) bytes per interval, not per join.
    snapshot_interval: float = 0.0
    snapshot_interval_per_player: float = 0.0002
    max_snapshot_interval: float = 2.0
    # Every player gets the whole list, so a round costs players x list bytes;
    # rounds are spaced so that they average at most this many bytes a second.
    snapshot_bytes_per_second: float = 50_000_000
    # A player with more than this still unsent to it waits for the next round.
    snapshot_backlog_limit: int = 64 * 1024

    # After a wake-up for readable sockets, wait this long (blocking) before
    # reading, so that one scheduler round serves many sockets; 0 disables.
    read_coalesce: float = 0.0001

    # Protocol 046 rooms: spectators admitted per room, and how long after the
    # first game_over report the server decides on that report alone (the 2022
    # client gives up on the room about 5 s after its own report at the earliest).
    max_spectators_per_room: int = 16
    game_over_timeout: float = 4.0
    # Ranked play: "2022" lets players in placement play ranked only against a
    # placed player (so a fresh server never ranks a game); "relaxed" also
    # lets two players in placement play ranked.
    placement_rule: str = "2022"
    # Where finished 046 games are written as replay files; "" writes none.
    replays_directory: str = "replays"
    # Rows of the leaderboard sent to a client.
    leaderboard_limit: int = 100

    # Graceful shutdown: how long connections get to flush before being cut.
    shutdown_grace: float = 2.0

    # The operator's HTTP port (metrics, status page); None: no HTTP port.
    # ``http_host`` None listens on ``host``.
    http_port: int | None = None
    http_host: str | None = None
    # Every address counts here, loopback too: the port has few slots, and a
    # reverse proxy in front of it is the operator's to allow for.
    http_max_connections_per_ip: int = 16

    def unlimited_ip(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(n) for n in self.unlimited_networks)

    def snapshot_delay(self, lobby_size: int) -> float:
        return min(
            self.max_snapshot_interval,
            self.snapshot_interval + lobby_size * self.snapshot_interval_per_player,
        )
