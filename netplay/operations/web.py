"""The operator's HTTP port: ``/metrics``, the status page ``/`` and ``/status.json``.

A second trio edge beside ``server``, in the same process and event loop.
HTTP is parsed by h11 (sans-IO); this module only moves bytes, keeps time
and picks the response.  It must never harm the game server, so everything
is bounded: connections (:data:`MAX_CONNECTIONS`, and
``config.http_max_connections_per_ip`` from one address), the request head and body
(:data:`MAX_REQUEST_HEAD_BYTES`, :data:`MAX_REQUEST_BODY_BYTES`), the time to
receive a request (:data:`REQUEST_TIMEOUT`, which ends a slowloris client) and
to send a response (:data:`SEND_TIMEOUT`), and the requests per connection.
The metrics and the status data are rendered at most once per
:data:`RENDER_CACHE_SECONDS`, however many clients ask, since rendering runs
on the event loop that relays the game.

The same edge runs the two measurements that only matter when someone can
read them: the event loop's lag (a task that sleeps and notes how late it
wakes) and the garbage collector's pauses (``gc.callbacks``).
"""

from __future__ import annotations

import base64
import hashlib
import http
import json
import re
from functools import partial
from typing import Callable

import h11
import structlog
import trio

from netplay.config import Config
from netplay.operations import metrics, status
from netplay.server import Server, peer_of

log = structlog.get_logger("netplay.web")

MAX_CONNECTIONS = 64
MAX_REQUEST_HEAD_BYTES = 16 * 1024
MAX_REQUEST_BODY_BYTES = 16 * 1024
# To receive one whole request (head and body), counted from the first wait
# for it: a client that trickles bytes is cut off here, an idle one too.
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
MAX_REQUESTS_PER_CONNECTION = 1000
RECEIVE_SIZE = 8192
RENDER_CACHE_SECONDS = 1.0
# After an error response: how long, and how many bytes, to read and drop
# before closing, so that the close does not turn into a reset that destroys
# the response in flight.
LINGER_SECONDS = 1.0
MAX_LINGER_BYTES = 256 * 1024
# How often the event loop's lag is measured.
LOOP_LAG_INTERVAL = 0.1

_COMMON_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def _inline_hashes(page: bytes, tag: str) -> list[str]:
    pattern = re.compile(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), re.DOTALL)
    return [
        "'sha256-%s'" % base64.b64encode(hashlib.sha256(body).digest()).decode()
        for body in pattern.findall(page)
    ]


def content_security_policy(page: bytes) -> str:
    """Allow exactly the page's own inline script and style, and fetches to this origin."""
    scripts = " ".join(_inline_hashes(page, "script")) or "'none'"
    styles = " ".join(_inline_hashes(page, "style")) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _response(code: int, headers: list[tuple[str, str]]) -> h11.Response:
    return h11.Response(status_code=code, headers=headers, reason=http.HTTPStatus(code).phrase)


class WebServer:
    """Serves one :class:`~netplay.server.Server`'s metrics and status over HTTP."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.registry = metrics.build_registry(server)
        self._page = status.page()
        self._page_policy = content_security_policy(self._page)
        self._cache: dict[str, tuple[float, bytes]] = {}
        self.connections = 0
        self._connections_by_host: dict[str, int] = {}
        self.port: int | None = None

    async def run(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[WebServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; measure the loop's lag and the collector's pauses meanwhile."""
        with metrics.GarbageCollectorWatch(self.server.counters):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_event_loop)
                if listeners:
                    self.port = listeners[0].socket.getsockname()[1]
                    nursery.start_soon(
                        partial(trio.serve_listeners, self.serve_stream, listeners,
                                handler_nursery=nursery)
                    )
                task_status.started(self)
                await trio.sleep_forever()

    async def _watch_event_loop(self) -> None:
        lag = self.server.counters.loop_lag
        while True:
            asked = trio.current_time() + LOOP_LAG_INTERVAL
            await trio.sleep_until(asked)
            lag.observe(max(0.0, trio.current_time() - asked))

    # -- one connection -------------------------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream, *, host: str | None = None) -> None:
        """Serve HTTP requests on ``stream`` until it ends or a limit is hit.  Owns ``stream``.

        ``host`` is the peer's address; by default the socket's.
        """
        if host is None:
            host = peer_of(stream)[0]
        refusal = self._refusal(host)
        if refusal is not None:
            reason, limit = refusal
            log.info("http_connection_refused", reason=reason, limit=limit, host=host)
            self.server.counters.http_connections_refused[reason] += 1
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        self._connections_by_host[host] = self._connections_by_host.get(host, 0) + 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or would not read: nothing to tell it
        except Exception:
            # Our own bug: this connection ends, the game server goes on.
            log.exception("http_connection_failed")
        finally:
            self.connections -= 1
            if self._connections_by_host[host] == 1:
                del self._connections_by_host[host]
            else:
                self._connections_by_host[host] -= 1
            await trio.aclose_forcefully(stream)

    def _refusal(self, host: str) -> tuple[str, int] | None:
        if self.connections >= MAX_CONNECTIONS:
            return ("max_connections", MAX_CONNECTIONS)
        per_address = self.server.config.http_max_connections_per_ip
        if self._connections_by_host.get(host, 0) >= per_address:
            return ("max_connections_per_ip", per_address)
        return None

    async def _serve(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            with trio.move_on_after(REQUEST_TIMEOUT) as waited:
                try:
                    request = await self._receive_request(connection, stream)
                except h11.RemoteProtocolError as error:
                    log.info("http_bad_request", error=str(error)[:200])
                    await self._send_error(connection, stream, error.error_status_hint)
                    return
            if waited.cancelled_caught:
                if connection.their_state is not h11.IDLE or connection.trailing_data[0]:
                    # Half a request after all this time: a slow or hostile client.
                    await self._send_error(connection, stream, 408)
                return
            if request is None:
                return  # closed between requests
            await self._respond(connection, stream, request)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    async def _receive_request(
        self, connection: h11.Connection, stream: trio.abc.Stream
    ) -> h11.Request | None:
        """The next whole request (its body read and dropped); None if the client closed."""
        request = None
        body_bytes = 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_SIZE)
                connection.receive_data(data)  # b"" tells h11 of the end
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > MAX_REQUEST_BODY_BYTES:
                    raise h11.RemoteProtocolError("request body too large", 413)
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif event is h11.PAUSED:
                return None  # cannot happen before our response; treat as the end

    async def _send(self, stream: trio.abc.Stream, data: bytes | None) -> None:
        if data:
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(data)

    async def _send_error(self, connection: h11.Connection, stream: trio.abc.Stream, code: int) -> None:
        if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{code}\n".encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *_COMMON_HEADERS,
        ]
        try:
            await self._send(stream, connection.send(_response(code, headers)))
            await self._send(stream, connection.send(h11.Data(data=body)))
            await self._send(stream, connection.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            return
        await self._linger(stream)

    async def _linger(self, stream: trio.abc.Stream) -> None:
        try:
            await stream.send_eof()  # type: ignore[attr-defined]
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < MAX_LINGER_BYTES:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    break
                drained += len(chunk)

    # -- responses ----------------------------------------------------------------------

    async def _respond(
        self, connection: h11.Connection, stream: trio.abc.Stream, request: h11.Request
    ) -> None:
        method = request.method
        path = request.target.split(b"?", 1)[0]
        extra: list[tuple[str, str]] = []
        if method not in (b"GET", b"HEAD"):
            code, content_type, body = 405, "text/plain; charset=utf-8", b"405 method not allowed\n"
            extra.append(("Allow", "GET, HEAD"))
        elif path == b"/metrics":
            code, content_type = 200, metrics.CONTENT_TYPE
            body = self._cached("metrics", self._render_metrics)
        elif path == b"/status.json":
            code, content_type = 200, "application/json"
            body = self._cached("status", self._render_status)
        elif path in (b"/", b"/index.html"):
            code, content_type, body = 200, "text/html; charset=utf-8", self._page
            extra.append(("Content-Security-Policy", self._page_policy))
        elif path == b"/healthz":
            code, content_type, body = 200, "text/plain; charset=utf-8", b"ok\n"
        else:
            code, content_type, body = 404, "text/plain; charset=utf-8", b"404 not found\n"
        log.debug("http_request", method=method.decode("latin-1"),
                  path=path.decode("latin-1")[:200], status=code)
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *_COMMON_HEADERS,
            *extra,
        ]
        await self._send(stream, connection.send(_response(code, headers)))
        if method != b"HEAD":
            await self._send(stream, connection.send(h11.Data(data=body)))
        await self._send(stream, connection.send(h11.EndOfMessage()))

    def _cached(self, key: str, render: Callable[[], bytes]) -> bytes:
        now = trio.current_time()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < RENDER_CACHE_SECONDS:
            return cached[1]
        body = render()
        self._cache[key] = (now, body)
        return body

    def _render_metrics(self) -> bytes:
        return metrics.render(self.registry)

    def _render_status(self) -> bytes:
        server = self.server
        document = status.status_document(
            server.core, now=trio.current_time(),
            started_at=server.started_at, started_wall=server.started_wall, port=server.port,
        )
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def open_listeners(config: Config) -> list[trio.SocketListener]:
    """Listeners of the HTTP port (``config.http_port``, which must be set)."""
    assert config.http_port is not None
    host = config.http_host if config.http_host is not None else config.host
    return await trio.open_tcp_listeners(config.http_port, host=host or None)
