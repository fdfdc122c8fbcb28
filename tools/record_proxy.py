"""A transparent TCP proxy that records every connection through it as a session file.

Usage::

    python tools/record_proxy.py --listen PORT --upstream HOST:PORT --out FILE \\
        [--listen-host 127.0.0.1] [--seed N]

Point real game clients at the proxy; it forwards their bytes to the
upstream server, and the server's bytes back, unchanged, half-closes
included.  The session file (format in ``docs/recording.md``) holds what
each client sent as ``recv`` and what the server sent as ``send``, with
connection ids 1, 2, 3... in accept order, and is flushed as it grows.
``--seed`` notes the upstream server's seed in the file's settings, so a
replay can start a server with the same one.  ``--listen 0`` picks a free
port; the ``listening`` log line says which.  SIGINT or SIGTERM closes every
connection, completes the file and exits 0.  A port that cannot be listened on or
an --out file that cannot be created is one error line and exit status 1, with no
file left behind.  The upstream server is not probed at start (a probe would be a
connection in its own recording); a client it cannot reach is logged and closed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from typing import Any, Sequence

import structlog
import trio

from netplay.logs import LEVELS, configure_logging, wait_for_stop_signal
from netplay.recording.record import FileRecorder, RecordingError, open_session_file

log = structlog.get_logger("record_proxy")

RECEIVE_SIZE = 65536
CONNECT_TIMEOUT = 10.0


class RecordingProxy:
    """Accepts clients, connects each to the upstream server, and records both directions."""

    def __init__(self, upstream: tuple[str, int], recorder: FileRecorder) -> None:
        self.upstream = upstream
        self.recorder = recorder
        self._ids = itertools.count(1)
        self._shutting_down = False
        self._nursery: trio.Nursery | None = None
        self.port: int | None = None

    async def run(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and relay until :meth:`shutdown`.  Reports the port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve(listeners, task_status=task_status)

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Relay the clients of ``listeners`` (closed on return) until :meth:`shutdown`."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept, listener)
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self.port)

    def shutdown(self) -> None:
        """Close every connection (recorded as ``proxy_shutdown``) and stop listening."""
        self._shutting_down = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _now(self) -> float:
        return trio.current_time()

    async def _accept(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    client = await listener.accept()
                except OSError as error:  # out of descriptors, or the like: keep serving
                    log.warning("accept_failed", error=str(error))
                    await trio.sleep(0.1)
                    continue
                # Ids are handed out here, in accept order, before any task runs.
                connection_id = next(self._ids)
                try:
                    host, port = client.socket.getpeername()[:2]
                    peer = f"{host}:{port}"
                except OSError:  # already gone; the relay will find out
                    peer = "unknown:0"
                self.recorder.connected(connection_id, peer, self._now())
                assert self._nursery is not None
                self._nursery.start_soon(self._relay, connection_id, client)

    async def _relay(self, connection_id: int, client: trio.SocketStream) -> None:
        structlog.contextvars.bind_contextvars(connection=connection_id)
        reason: str | None = None
        upstream: trio.SocketStream | None = None
        try:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    upstream = await trio.open_tcp_stream(*self.upstream)
            except (OSError, trio.TooSlowError) as error:
                log.warning("upstream_unreachable", error=str(error))
                reason = "upstream_unreachable"
                return
            log.info("relaying")
            ends: list[str] = []
            async with trio.open_nursery() as nursery:
                for source, target, from_client in ((client, upstream, True),
                                                    (upstream, client, False)):
                    nursery.start_soon(
                        self._pump, connection_id, source, target, from_client, ends,
                        nursery.cancel_scope,
                    )
            # Whichever way ended first names the close: end_of_stream (the
            # client), closed_by_server, or connection_reset.
            reason = ends[0] if ends else "ended"
        finally:
            if reason is None:
                reason = "proxy_shutdown" if self._shutting_down else "ended"
            self.recorder.closed(connection_id, reason, self._now())
            for stream in (client, upstream):
                if stream is not None:
                    with trio.move_on_after(1, shield=True):
                        await stream.aclose()
            log.info("closed", reason=reason)

    async def _pump(
        self,
        connection_id: int,
        source: trio.SocketStream,
        target: trio.SocketStream,
        from_client: bool,
        ends: list[str],
        relay_scope: trio.CancelScope,
    ) -> None:
        """Copy one direction until end of stream, recording each chunk before forwarding it.

        A reset on either side ends the whole relay.
        """
        record = self.recorder.received if from_client else self.recorder.sent
        try:
            while True:
                data = await source.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                record(connection_id, data, self._now())
                await target.send_all(data)
            # End of stream one way: pass the half-close on; the other way goes on.
            if from_client:
                self.recorder.end_of_stream(connection_id, self._now())
            ends.append("end_of_stream" if from_client else "closed_by_server")
            await target.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ends.insert(0, "connection_reset")
            relay_scope.cancel()


def host_port(text: str) -> tuple[str, int]:
    """argparse type of a ``HOST:PORT`` argument; an IPv6 host may be in brackets."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="record_proxy.py",
        description="Transparent TCP proxy recording every connection as a session file.",
    )
    parser.add_argument("--listen", type=int, required=True, metavar="PORT",
                        help="port to accept clients on (0 picks a free one)")
    parser.add_argument("--listen-host", default="127.0.0.1", help="address (%(default)s)")
    parser.add_argument("--upstream", type=host_port, required=True, metavar="HOST:PORT",
                        help="the server to forward to")
    parser.add_argument("--out", required=True, metavar="FILE", help="session file to write")
    parser.add_argument("--seed", type=int, default=None,
                        help="the upstream server's seed, noted for replays")
    parser.add_argument("--log-format", choices=("console", "json"), default=None,
                        help="console on a terminal, json otherwise")
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    return parser


def proxy_settings(upstream: tuple[str, int], seed: int | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"recorded_by": "proxy", "upstream": f"{upstream[0]}:{upstream[1]}"}
    if seed is not None:
        settings["seed"] = seed
    return settings


class CannotStart(Exception):
    """Logged as ``event`` with ``context``; the proxy exits 1."""

    def __init__(self, event: str, **context: object) -> None:
        super().__init__(event)
        self.event = event
        self.context = context


async def serve(args: argparse.Namespace) -> None:
    """Listen, then create the session file (so a busy port leaves no file), relay until
    SIGINT or SIGTERM.  Raises :class:`CannotStart`."""
    try:
        listeners = await trio.open_tcp_listeners(args.listen, host=args.listen_host)
    except OSError as error:
        raise CannotStart("cannot_listen", host=args.listen_host, port=args.listen,
                          error=error.strerror or str(error)) from None
    async with contextlib.AsyncExitStack() as stack:
        for listener in listeners:  # closed here too if start-up goes no further
            stack.push_async_callback(listener.aclose)
        try:
            recorder = await stack.enter_async_context(
                open_session_file(args.out, proxy_settings(args.upstream, args.seed))
            )
        except RecordingError as error:
            raise CannotStart("cannot_record", out=args.out, error=str(error)) from None
        proxy = RecordingProxy(args.upstream, recorder)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(proxy.serve, listeners)
            log.info("listening", host=args.listen_host, port=port,
                     upstream="%s:%d" % args.upstream, out=args.out)
            await wait_for_stop_signal()
            proxy.shutdown()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_format = args.log_format or ("console" if sys.stderr.isatty() else "json")
    configure_logging(log_format=log_format, level=args.log_level)
    try:
        trio.run(serve, args)
    except CannotStart as error:
        log.error(error.event, **error.context)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
