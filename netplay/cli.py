"""The ``netplay-server`` command."""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import math
import os
import resource
import secrets
import signal
import sys
from functools import partial
from typing import AsyncIterator, Callable, Sequence

import attrs
import structlog
import trio

from netplay import __version__
from netplay.config import DEFAULT_PORT, Config
from netplay.logs import LEVELS, configure_logging
from netplay.server import Server, open_listeners
from netplay.signals import STOP_SIGNALS, StopSignals
from netplay.storage import StorageError
from netplay.wire import MAX_JSON_LENGTH_ON_WIRE

log = structlog.get_logger("netplay.cli")


def _versions(text: str) -> frozenset[str]:
    """``004-019,021`` -> {"004", ..., "019", "021"}."""
    versions: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        if not dash:
            high = low
        for value in (low, high):
            if not (len(value) == 3 and value.isascii() and value.isdigit()):
                raise argparse.ArgumentTypeError(f"{value!r} is not a 3-digit version")
        if int(high) < int(low):
            raise argparse.ArgumentTypeError(f"{part!r} is an empty range")
        versions.update(f"{v:03d}" for v in range(int(low), int(high) + 1))
    return frozenset(versions)


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _coalesce_seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 0.005:
        raise argparse.ArgumentTypeError(f"{text} is not in 0..0.005 seconds")
    return value


def _networks(text: str) -> tuple[str, ...]:
    networks = tuple(n.strip() for n in text.split(",") if n.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return networks


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="netplay-server", description="Netplay server for Panel Attack."
    )
    parser.add_argument("--version", action="version", version=f"netplay {__version__}")
    parser.add_argument("--host", default=defaults.host, help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=_bounded_int(0, 65535), default=DEFAULT_PORT, help="TCP port, 0 picks a free one (%(default)s)"
    )
    parser.add_argument("--log-format", choices=("console", "json"), default=None,
                        help="console on a terminal, json otherwise")
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of every random choice (panels); default: a fresh one, logged")
    parser.add_argument("--client-versions", type=_versions, default=defaults.client_versions,
                        metavar="LIST", help="versions of the existing clients' dialect (004-019)")
    parser.add_argument("--document-versions", type=_versions,
                        default=defaults.document_versions, metavar="LIST",
                        help="versions of the design document's dialect (139)")
    parser.add_argument("--v046-versions", type=_versions, default=defaults.v046_versions,
                        metavar="LIST",
                        help="versions of the 2022 client's dialect, with login and spectators (046)")
    parser.add_argument("--database", default=defaults.database, metavar="PATH",
                        help="SQLite file of players and their ids (%(default)s in the working "
                        "directory; :memory: keeps nothing)")
    parser.add_argument("--max-spectators-per-room", type=_bounded_int(0, 10_000),
                        default=defaults.max_spectators_per_room,
                        help="spectators admitted to one room (%(default)s)")
    parser.add_argument("--game-over-timeout", type=_positive_float,
                        default=defaults.game_over_timeout, metavar="SECONDS",
                        help="after one player's game_over, how long to wait for the other's "
                        "before deciding on the one report (%(default)s)")
    parser.add_argument("--placement-rule", choices=("2022", "relaxed"),
                        default=defaults.placement_rule,
                        help="ranked games of players in placement: 2022 = only against a placed "
                        "player (a fresh server then never ranks a game); relaxed = two players "
                        "in placement too (%(default)s)")
    parser.add_argument("--replays-directory", default=defaults.replays_directory, metavar="DIR",
                        help="where finished 046 games are written as replay files; empty: "
                        "none (%(default)s)")
    parser.add_argument("--leaderboard-limit", type=_bounded_int(1, 100_000),
                        default=defaults.leaderboard_limit,
                        help="rows of the leaderboard sent to a client (%(default)s)")
    parser.add_argument("--ping-interval", type=_positive_float, default=defaults.ping_interval)
    parser.add_argument("--idle-timeout", type=_positive_float, default=defaults.idle_timeout)
    parser.add_argument("--handshake-timeout", type=_positive_float,
                        default=defaults.handshake_timeout)
    parser.add_argument("--registration-timeout", type=_positive_float,
                        default=defaults.registration_timeout)
    parser.add_argument("--max-json-length", type=_bounded_int(2, MAX_JSON_LENGTH_ON_WIRE),
                        default=defaults.max_json_length)
    parser.add_argument("--max-name-length", type=_bounded_int(1, 1000),
                        default=defaults.max_name_length)
    parser.add_argument("--max-connections", type=_bounded_int(1, 10_000_000),
                        default=defaults.max_connections)
    parser.add_argument("--max-connections-per-ip", type=_bounded_int(1, 10_000_000),
                        default=defaults.max_connections_per_ip)
    parser.add_argument("--unlimited-networks", type=_networks,
                        default=defaults.unlimited_networks, metavar="LIST",
                        help="networks exempt from the per-IP limit (loopback)")
    parser.add_argument("--max-messages-per-second", type=_positive_float,
                        default=defaults.max_messages_per_second)
    parser.add_argument("--message-burst", type=_bounded_int(1, 10_000_000),
                        default=defaults.message_burst)
    parser.add_argument("--max-queued-bytes", type=_bounded_int(1024, 1 << 40),
                        default=defaults.max_queued_bytes)
    parser.add_argument("--shutdown-grace", type=_positive_float, default=defaults.shutdown_grace)
    parser.add_argument("--read-coalesce", type=_coalesce_seconds, default=defaults.read_coalesce,
                        metavar="SECONDS",
                        help="pause after a read wake-up so one round serves many sockets "
                        "(%(default)s; 0 disables)")
    parser.add_argument("--http-port", type=_bounded_int(0, 65535), default=defaults.http_port,
                        metavar="PORT",
                        help="serve metrics (/metrics) and a live status page (/) on this TCP "
                        "port; 0 picks a free one (off by default)")
    parser.add_argument("--http-host", default=defaults.http_host, metavar="ADDRESS",
                        help="address of the HTTP port (default: same as --host)")
    parser.add_argument("--record", metavar="DIR", default=None,
                        help="write every connection's traffic to a session file in DIR")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        host=args.host,
        port=args.port,
        seed=args.seed,
        client_versions=args.client_versions,
        document_versions=args.document_versions,
        v046_versions=args.v046_versions,
        database=args.database,
        max_spectators_per_room=args.max_spectators_per_room,
        game_over_timeout=args.game_over_timeout,
        placement_rule=args.placement_rule,
        replays_directory=args.replays_directory,
        leaderboard_limit=args.leaderboard_limit,
        ping_interval=args.ping_interval,
        idle_timeout=args.idle_timeout,
        handshake_timeout=args.handshake_timeout,
        registration_timeout=args.registration_timeout,
        max_json_length=args.max_json_length,
        max_name_length=args.max_name_length,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        unlimited_networks=args.unlimited_networks,
        max_messages_per_second=args.max_messages_per_second,
        message_burst=args.message_burst,
        max_queued_bytes=args.max_queued_bytes,
        shutdown_grace=args.shutdown_grace,
        read_coalesce=args.read_coalesce,
        http_port=args.http_port,
        http_host=args.http_host,
    )


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard limit; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def tune_garbage_collector() -> None:
    """Make collections rarer and shorter for a long-running server.

    Everything alive after start-up (modules, classes, the listeners) is moved
    out of the collector's sight, and the youngest generation is collected
    every 20,000 allocations instead of every 700, so the per-frame path is
    interrupted far less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class StartUpError(Exception):
    """Start-up failed in a way the operator must fix; logged as ``event`` with ``context``."""

    def __init__(self, event: str, **context: object) -> None:
        super().__init__(event)
        self.event = event
        self.context = context


async def serve(
    config: Config, record_dir: str | None = None, *, stop_signals: StopSignals | None = None
) -> None:
    """Run the server until SIGINT or SIGTERM, then shut down gracefully.

    The signals are listened for before anything is started, and one noted
    earlier in ``stop_signals`` counts as received now: a stop signal during
    start-up abandons the start-up (closing what was opened), one after it
    starts the graceful shutdown.  Raises :class:`StartUpError` when the
    database, the listening port or the recording directory cannot be used.
    """
    failure: StartUpError | None = None
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            running = _Running(nursery.cancel_scope)
            nursery.start_soon(_stop_at_signal, signals, stop_signals, running)
            try:
                await _start_and_serve(config, record_dir, running)
            except StartUpError as error:
                # Raised past the nursery, which would wrap it in an ExceptionGroup.
                failure = error
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    log.info("stopped")


@attrs.define(eq=False)
class _Running:
    """What a stop signal acts on: the whole run while starting, then the server."""

    run_scope: trio.CancelScope
    server: Server | None = None


async def _stop_at_signal(
    signals: AsyncIterator[int], noted: StopSignals | None, running: _Running
) -> None:
    if noted is not None and noted.first is not None:
        signum = noted.first
    else:
        signum = await signals.__anext__()
    log.info("signal_received", signal=signal.Signals(signum).name,
             starting=running.server is None)
    if running.server is None:
        running.run_scope.cancel()
    else:
        running.server.shutdown()


async def _start_and_serve(config: Config, record_dir: str | None, running: _Running) -> None:
    from netplay import web
    from netplay.recording import RecordingError, open_recorder
    from netplay.storage import SqliteStorage

    seed = config.seed if config.seed is not None else secrets.randbits(63)
    try:
        database = SqliteStorage(config.database)
    except StorageError as error:
        raise StartUpError("cannot_use_database", path=config.database, error=str(error)) from None
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                listeners = await open_listeners(config)
            except OSError as error:
                raise StartUpError(
                    "cannot_listen", host=config.host, port=config.port, error=str(error)
                ) from None
            http_listeners = None
            if config.http_port is not None:
                http_host = config.http_host if config.http_host is not None else config.host
                try:
                    http_listeners = await web.open_listeners(config)
                except OSError as error:
                    raise StartUpError(
                        "cannot_listen", host=http_host, port=config.http_port, error=str(error)
                    ) from None
            for listener in listeners + (http_listeners or []):
                stack.push_async_callback(listener.aclose)  # if start-up goes no further
            try:
                recorder = await stack.enter_async_context(open_recorder(record_dir, config, seed))
            except RecordingError as error:
                raise StartUpError(
                    "cannot_record", directory=record_dir, error=str(error)
                ) from None
            server = Server(
                config, seed=seed, recorder=recorder, database=database,
                replays_directory=config.replays_directory or None,
            )
            async with trio.open_nursery() as http_nursery:
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run, listeners)
                    if http_listeners is not None:
                        site = await http_nursery.start(web.WebServer(server).run, http_listeners)
                        log.info("http_listening",
                                 host=http_listeners[0].socket.getsockname()[0], port=site.port)
                    running.server = server
                    _log_listening(config, server, recorder, seed)
                # The server has shut down: so does its HTTP port.
                http_nursery.cancel_scope.cancel()
    finally:
        database.close()


def _log_listening(config: Config, server: Server, recorder, seed: int) -> None:
    """Tune the collector for the long run, then say the server is ready."""
    tune_garbage_collector()
    log.info(
        "listening",
        host=config.host,
        port=server.port,
        seed=seed,
        client_versions=f"{min(config.client_versions, default='-')}"
        f"..{max(config.client_versions, default='-')}",
        document_versions=",".join(sorted(config.document_versions)),
        v046_versions=",".join(sorted(config.v046_versions)),
        database=config.database,
        recording=recorder.path if recorder is not None else None,
    )


def main(argv: Sequence[str] | None = None, *, stop_signals: StopSignals | None = None) -> int:
    """Parse ``argv``, configure logging, serve; return the exit status.

    ``stop_signals`` holds SIGINT or SIGTERM noted since the process started;
    without it, they are noted from here on, and the previous handlers are
    put back on return.
    """
    if stop_signals is None:
        with StopSignals() as stop_signals:
            return main(argv, stop_signals=stop_signals)
    args = build_parser().parse_args(argv)
    log_format = args.log_format or ("console" if sys.stderr.isatty() else "json")
    configure_logging(log_format=log_format, level=args.log_level)
    config = config_from_args(args)
    limit = raise_open_file_limit()
    log.info("open_file_limit", limit=limit, pid=os.getpid())
    try:
        trio.run(partial(serve, config, args.record, stop_signals=stop_signals))
    except StartUpError as error:
        log.error(error.event, **error.context)
        return 1
    return 0


def run() -> None:
    """Console script entry point."""
    sys.exit(main())
