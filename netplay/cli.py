"""The ``netplay-server`` command."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import secrets
import signal
import sys
from functools import partial
from typing import AsyncIterator, Sequence

import attrs
import structlog
import trio

from netplay import __version__
from netplay.accounts.storage import StorageError
from netplay.config import Config
from netplay.logs import announcer, configure_logging
from netplay.operations.settings import (
    SettingsError,
    add_options,
    config_from_values,
    read_config_file,
)
from netplay.operations.signals import STOP_SIGNALS, StopSignals
from netplay.server import Server, open_listeners

log = structlog.get_logger("netplay.cli")
# Lines written whatever --log-level says (the port chosen by --port 0, above all).
announce = announcer("netplay.cli")


def build_parser() -> argparse.ArgumentParser:
    """Every option of :data:`netplay.operations.settings.SETTINGS`, plus ``--config`` and ``--version``."""
    parser = argparse.ArgumentParser(
        prog="netplay-server", description="Netplay server for Panel Attack.",
        epilog="Every option can be given in a TOML file instead (--config): its key is the "
        "option's name with underscores, as in netplay.example.toml.",
    )
    parser.add_argument("--version", action="version", version=f"netplay {__version__}")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="TOML file of settings; an option given here wins over the "
                        "file (default: none)")
    add_options(parser)
    return parser


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of ``argv`` over the settings of its ``--config`` file over the defaults.

    A config file that cannot be used ends the process with status 2 and one
    line naming the file and the key, like a bad option.
    """
    parser = build_parser()
    find_config = argparse.ArgumentParser(add_help=False)
    find_config.add_argument("--config")
    path = find_config.parse_known_args(argv)[0].config
    if path is not None:
        try:
            parser.set_defaults(**read_config_file(path))
        except SettingsError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    """The server's Config of parsed options."""
    return config_from_values(args)


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
    every 5,000 allocations instead of every 700.  The per-frame path
    allocates nothing, so collections come from everything else (match ends,
    lobby traffic); a pause grows with the threshold (about 1 ms at 5,000,
    4 ms at 20,000, measured), and a burst of finished matches then delays
    many inputs a little rather than a few by a lot.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 20, 20)


# How long a thread holding the GIL keeps it while another waits (Python's
# default: 5 ms).  The storage worker thread runs Python (replay files, rating
# updates) while the event loop relays inputs; each time the loop wakes it
# waits for the GIL, up to this long.
GIL_SWITCH_INTERVAL = 0.0002


def tune_thread_switching() -> None:
    """Let the event loop take the GIL back from a busy worker thread within 0.2 ms."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


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
    announce.info("stopped")


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
    announce.info("signal_received", signal=signal.Signals(signum).name,
             starting=running.server is None)
    if running.server is None:
        running.run_scope.cancel()
    else:
        running.server.shutdown()


async def _start_and_serve(config: Config, record_dir: str | None, running: _Running) -> None:
    from netplay.accounts.storage import SqliteStorage
    from netplay.operations import web
    from netplay.recording.record import RecordingError, open_recorder

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
                wall_clock_offset=recorder.wall_clock_offset if recorder is not None else None,
            )
            async with trio.open_nursery() as http_nursery:
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run, listeners)
                    if http_listeners is not None:
                        site = await http_nursery.start(web.WebServer(server).run, http_listeners)
                        announce.info("http_listening",
                                      host=http_listeners[0].socket.getsockname()[0],
                                      port=site.port)
                    running.server = server
                    _log_listening(config, server, recorder, seed)
                # The server has shut down: so does its HTTP port.
                http_nursery.cancel_scope.cancel()
    finally:
        database.close()


def _log_listening(config: Config, server: Server, recorder, seed: int) -> None:
    """Tune the collector for the long run, then say the server is ready."""
    tune_garbage_collector()
    tune_thread_switching()
    announce.info(
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
    args = parse_arguments(argv)
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
