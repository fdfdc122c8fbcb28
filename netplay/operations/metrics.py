"""The server's metrics in the Prometheus text format (``prometheus_client``).

Theory of operation
-------------------
Nothing is counted through ``prometheus_client`` while the server runs: the
core, the lobbies and the edge count into plain numbers (``stats``), and
:class:`ServerCollector` turns those numbers into metric families when a
scrape asks.  Gauges of current state (connections, players, rooms,
spectators, queued bytes) are computed at that moment from the core and its
lobbies.  A scrape therefore costs one pass over the connections and rooms
and nothing between scrapes; the web edge renders at most one scrape per
:data:`web.RENDER_CACHE_SECONDS`.  See docs/metrics.md for every metric.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from netplay import __version__
from netplay.accounts import storage
from netplay.core import Phase
from netplay.dialects.classic import Dialect
from netplay.lobbies import classic as lobby
from netplay.lobbies import v046 as lobby046
from netplay.stats import Counters, Histogram

if TYPE_CHECKING:
    from netplay.server import Server

# The two lobbies, as the ``dialect`` label of rooms and matches names them.
CLASSIC = "classic"
V046 = Dialect.V046.value
V2025 = Dialect.V2025.value
MATCH_ENDINGS = {
    CLASSIC: ("agreement", "abandoned"),
    V046: ("agreement", "disagreement", "timeout", "abandoned"),
    V2025: ("agreement", "disagreement", "timeout", "abandoned"),
}
LOGIN_OUTCOMES = (*(result.value for result in storage.LoginResult), "no_user_id")
REFUSAL_REASONS = ("max_connections", "max_connections_per_ip")


def _histogram(name: str, documentation: str, labels: Iterable[str] = ()) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=list(labels))


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(bound), count)
        for bound, count in histogram.cumulative()
    ]
    family.add_metric(labels, buckets, histogram.total)


def _counter_by(
    name: str, documentation: str, label: str, counts: dict[str, int], known: Iterable[str] = ()
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key in sorted(set(known) | set(counts)):
        family.add_metric([key], counts.get(key, 0))
    return family


class ServerCollector(Collector):
    """Reads one :class:`~netplay.server.Server` at scrape time."""

    def __init__(self, server: Server, *, clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        server = self.server
        core = server.core
        counters: Counters = core.counters
        yield from self._state(server)
        yield from self._traffic(counters)

        opened = CounterMetricFamily(
            "netplay_connections_opened", "Connections admitted since the start."
        )
        opened.add_metric([], counters.connections_opened)
        yield opened
        yield _counter_by(
            "netplay_connections_refused", "Connections refused at once, by limit.",
            "reason", counters.connections_refused, REFUSAL_REASONS,
        )
        yield _counter_by(
            "netplay_http_connections_refused",
            "Connections to the HTTP port refused at once, by limit.",
            "reason", counters.http_connections_refused, REFUSAL_REASONS,
        )
        yield _counter_by(
            "netplay_connections_closed", "Connections ended, by the reason they ended.",
            "reason", counters.connections_closed,
        )
        yield _counter_by(
            "netplay_protocol_errors", "Connections closed for breaking the protocol, by error.",
            "reason", counters.protocol_errors,
        )
        yield _counter_by(
            "netplay_messages_refused",
            "Messages ignored as not valid (state, content), by reason.",
            "reason", counters.messages_refused,
        )
        yield _counter_by(
            "netplay_messages_delayed",
            "Messages held back and handled late, by reason (flood: rate limit).",
            "reason", counters.messages_delayed, ("flood",),
        )

        started = CounterMetricFamily(
            "netplay_matches_started", "Matches started, by lobby.", labels=["dialect"]
        )
        ended = CounterMetricFamily(
            "netplay_matches_ended", "Matches ended, by lobby and how the end was decided.",
            labels=["dialect", "decided_by"],
        )
        for name, each in (
            (CLASSIC, core.lobby), (V046, core.lobby046), (V2025, core.lobby2025),
        ):
            started.add_metric([name], each.matches_started)
            for ending in sorted(set(MATCH_ENDINGS[name]) | set(each.matches_ended)):
                ended.add_metric([name, ending], each.matches_ended.get(ending, 0))
        yield started
        yield ended
        logins = CounterMetricFamily(
            "netplay_logins", "Login replies, by lobby (2022 or 2025 clients) and outcome.",
            labels=["dialect", "outcome"],
        )
        for name, each in ((V046, core.lobby046), (V2025, core.lobby2025)):
            for outcome in sorted(set(LOGIN_OUTCOMES) | set(each.logins)):
                logins.add_metric([name, outcome], each.logins.get(outcome, 0))
        yield logins

        operations = CounterMetricFamily(
            "netplay_storage_operations", "Database operations run (logins, stored games, imports)."
        )
        operations.add_metric([], counters.storage_operations)
        yield operations
        yield _counter_by(
            "netplay_storage_failures", "Database operations that came back failed, by reason.",
            "reason", counters.storage_failures, ("error", "queue_full"),
        )
        batches = _histogram(
            "netplay_storage_batch_seconds",
            "Wall time of one database batch (one transaction of queued operations).",
        )
        _add_histogram(batches, [], counters.storage_batches)
        yield batches
        lag = _histogram(
            "netplay_event_loop_lag_seconds",
            "How much later than asked a periodic sleep of the event loop woke up.",
        )
        _add_histogram(lag, [], counters.loop_lag)
        yield lag
        pauses = _histogram(
            "netplay_gc_pause_seconds", "Garbage collector pauses, by generation.", ["generation"]
        )
        for generation, histogram in enumerate(counters.gc_pauses):
            _add_histogram(pauses, [str(generation)], histogram)
        yield pauses

    def _state(self, server: Server) -> Iterator[Metric]:
        core = server.core
        info = GaugeMetricFamily(
            "netplay_build_info", "Always 1; the labels say which build runs.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        uptime = GaugeMetricFamily("netplay_uptime_seconds", "Seconds since the server started.")
        uptime.add_metric(
            [], 0.0 if server.started_wall is None else self._clock() - server.started_wall
        )
        yield uptime

        connections: dict[tuple[str, str], int] = {}
        for phase in Phase:
            for dialect in Dialect:
                if phase is not Phase.AWAITING_HELLO:
                    connections[(dialect.value, phase.value)] = 0
        connections[("none", Phase.AWAITING_HELLO.value)] = 0
        for connection in core.connections.values():
            if connection.phase is Phase.AWAITING_HELLO:
                key = ("none", Phase.AWAITING_HELLO.value)
            else:
                key = (connection.dialect.value, connection.phase.value)
            connections[key] += 1
        family = GaugeMetricFamily(
            "netplay_connections", "Open connections, by dialect and phase.",
            labels=["dialect", "phase"],
        )
        for key, count in sorted(connections.items()):
            family.add_metric(list(key), count)
        yield family

        players: dict[tuple[str, str], int] = {}
        for dialect in (Dialect.CLIENTS, Dialect.DOCUMENT):
            for state in lobby.PlayerState:
                players[(dialect.value, state.value)] = 0
        for state046 in lobby046.PlayerState:
            players[(V046, state046.value)] = 0
            players[(V2025, state046.value)] = 0
        for player in core.lobby.players.values():
            players[(player.dialect.value, player.state.value)] += 1
        for player046 in core.lobby046.players.values():
            players[(V046, player046.state.value)] += 1
        for player2025 in core.lobby2025.players.values():
            players[(V2025, player2025.state.value)] += 1
        family = GaugeMetricFamily(
            "netplay_players", "Players past the handshake, by dialect and state.",
            labels=["dialect", "state"],
        )
        for key, count in sorted(players.items()):
            family.add_metric(list(key), count)
        yield family

        rooms = GaugeMetricFamily(
            "netplay_rooms", "Rooms, by lobby and state (selecting or playing).",
            labels=["dialect", "state"],
        )
        in_progress = GaugeMetricFamily(
            "netplay_matches_in_progress", "Matches being played now, by lobby.",
            labels=["dialect"],
        )
        classic_playing = sum(
            room.state is lobby.RoomState.PLAYING for room in core.lobby.rooms.values()
        )
        def playing_in(rooms: Iterable[Any]) -> int:
            return sum(room.state is lobby046.RoomState.PLAYING for room in rooms)

        for name, total, playing in (
            (CLASSIC, len(core.lobby.rooms), classic_playing),
            (V046, len(core.lobby046.rooms), playing_in(core.lobby046.rooms.values())),
            (V2025, len(core.lobby2025.rooms), playing_in(core.lobby2025.rooms.values())),
        ):
            rooms.add_metric([name, "selecting"], total - playing)
            rooms.add_metric([name, "playing"], playing)
            in_progress.add_metric([name], playing)
        yield rooms
        yield in_progress
        spectators = GaugeMetricFamily(
            "netplay_spectators", "Players watching a room, by lobby.", labels=["dialect"]
        )
        for name, each in ((V046, core.lobby046), (V2025, core.lobby2025)):
            spectators.add_metric(
                [name], sum(len(room.spectators) for room in each.rooms.values())
            )
        yield spectators

        queued = GaugeMetricFamily(
            "netplay_send_queue_bytes",
            "Bytes waiting in the server's send queues (not yet handed to the kernel).",
        )
        queued.add_metric([], sum(link.queued_bytes for link in server.links.values()))
        yield queued
        pending = GaugeMetricFamily(
            "netplay_storage_queue_operations", "Database operations waiting to run."
        )
        pending.add_metric([], server.storage_pending())
        yield pending

    def _traffic(self, counters: Counters) -> Iterator[Metric]:
        traffic = counters.traffic
        for direction, by_letter in (("received", traffic.received()), ("sent", traffic.sent())):
            messages = CounterMetricFamily(
                f"netplay_messages_{direction}",
                f"Protocol messages {direction}, by letter (J: JSON, I: input, E/F: ping).",
                labels=["letter"],
            )
            sizes = CounterMetricFamily(
                f"netplay_{direction}_bytes", f"Bytes of protocol messages {direction}, by letter.",
                labels=["letter"],
            )
            for letter, (count, size) in sorted(by_letter.items()):
                messages.add_metric([letter], count)
                sizes.add_metric([letter], size)
            yield messages
            yield sizes
        latency = _histogram(
            "netplay_relay_latency_seconds",
            "Time from reading an input to writing it to the opponent, inside the server; "
            "one input in 16 is timed.  path: direct (per-frame path) or decoded.",
            ["path"],
        )
        for path, histogram in traffic.relay_latency.items():
            _add_histogram(latency, [path], histogram)
        yield latency


def build_registry(server: Server) -> prometheus_client.CollectorRegistry:
    """A registry of the server's metrics plus the process's and the interpreter's."""
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


def render(registry: prometheus_client.CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (content type :data:`CONTENT_TYPE`)."""
    return prometheus_client.generate_latest(registry)


CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class GarbageCollectorWatch:
    """Times every garbage collection into ``counters.gc_pauses`` while installed.

    Use as a context manager; the callback is removed on exit, so servers
    started one after another in one process do not pile callbacks up.
    """

    def __init__(self, counters: Counters) -> None:
        self._pauses = counters.gc_pauses
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses[min(info["generation"], 2)].observe(time.perf_counter() - self._started)

    def __enter__(self) -> GarbageCollectorWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
