"""A scripted game client and an in-process server, for tests and tools.

:class:`ScriptedClient` speaks the client side of the protocol over any trio
stream: a TCP connection, or one end of a memory stream pair whose other end
is served by an in-process :class:`~netplay.server.Server` (see
:func:`running_server` and :func:`connect_in_process`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, AsyncIterator

import trio
import trio.testing

from netplay import messages as m
from netplay.config import Config
from netplay.server import Server
from netplay.wire import MAX_JSON_LENGTH_ON_WIRE, Decoder, Direction, encode_json

_peer_ports = itertools.count(40000)


class ConnectionClosed(Exception):
    """The server closed the connection while the client waited for a message."""


class ScriptedClient:
    """The client side of one connection, driven step by step."""

    def __init__(self, stream: trio.abc.Stream, *, answer_pings: bool = True) -> None:
        self.stream = stream
        self.decoder = Decoder(Direction.SERVER_TO_CLIENT, max_json_length=MAX_JSON_LENGTH_ON_WIRE)
        self.answer_pings = answer_pings
        self.pings = 0
        self.closed = False

    # -- sending ----------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_json(self, payload: dict[str, Any]) -> None:
        await self.send(encode_json(payload))

    async def hello(self, version: str = "004") -> None:
        await self.send(b"H" + version.encode("ascii"))

    async def register(
        self, name: str, *, version: str = "004", level: int = 5, character: str = "lip"
    ) -> None:
        """Handshake and register in one write, as the existing clients do; wait for ``H``."""
        registration = encode_json({"name": name, "level": level, "character": character})
        await self.send(b"H" + version.encode("ascii") + registration)
        frame = await self.receive()
        if not isinstance(frame, m.HelloAccepted):
            raise AssertionError(f"expected H, got {frame!r}")

    async def menu_state(
        self, *, ready: bool, cursor: str = "level", character: str = "lip", level: int = 5
    ) -> None:
        await self.send_json(
            {"menu_state": {"cursor": cursor, "ready": ready, "character": character, "level": level}}
        )

    async def aclose(self) -> None:
        await self.stream.aclose()

    # -- receiving --------------------------------------------------------------

    async def receive(self, *, timeout: float = 5.0, skip_pings: bool = True) -> Any:
        """The next frame from the server (pings answered and skipped unless asked).

        Raises ConnectionClosed at end of stream, trio.TooSlowError on timeout.
        """
        with trio.fail_after(timeout):
            while True:
                frame = self.decoder.next_frame()
                if frame is None:
                    try:
                        data = await self.stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        self.closed = True
                        raise ConnectionClosed()
                    self.decoder.receive_data(data)
                    continue
                if isinstance(frame, m.Ping | m.Heartbeat):
                    self.pings += 1
                    if self.answer_pings and isinstance(frame, m.Ping):
                        await self.send(b"F" + frame.token.encode("latin-1"))
                    if skip_pings:
                        continue
                return frame

    async def receive_json(self, *, timeout: float = 5.0) -> dict[str, Any]:
        frame = await self.receive(timeout=timeout)
        if not isinstance(frame, m.Json):
            raise AssertionError(f"expected a J frame, got {frame!r}")
        return frame.payload

    async def receive_until(self, key: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Skip JSON frames until one holding ``key``; return it."""
        with trio.fail_after(timeout):
            while True:
                payload = await self.receive_json(timeout=math.inf)
                if key in payload:
                    return payload

    async def expect_closed(self, *, timeout: float = 15.0) -> list[Any]:
        """Read until the server closes; return the frames that came before."""
        frames = []
        with trio.fail_after(timeout):
            while True:
                try:
                    frames.append(await self.receive(timeout=math.inf, skip_pings=False))
                except ConnectionClosed:
                    return frames

    async def expect_silence(self, seconds: float) -> None:
        """Assert that no non-ping frame arrives within ``seconds``."""
        with trio.move_on_after(seconds):
            frame = await self.receive(timeout=math.inf)
            raise AssertionError(f"expected nothing, got {frame!r}")


@contextlib.asynccontextmanager
async def running_server(
    config: Config | None = None, *, seed: int = 1, recorder: Any = None
) -> AsyncIterator[Server]:
    """An in-process server without listeners; connect with :func:`connect_in_process`."""
    server = Server(config or Config(), seed=seed, recorder=recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            server.shutdown()
            nursery.cancel_scope.cancel()


def connect_in_process(
    server: Server, *, host: str = "127.0.0.1", lockstep: bool = False, answer_pings: bool = True
) -> ScriptedClient:
    """A client whose stream is served by ``server`` in this process.

    ``lockstep`` makes writes block until the other side reads, like a full
    socket buffer; the default streams buffer without bound.
    """
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_end, server_end = pair()
    server.open_stream(server_end, (host, next(_peer_ports)))
    return ScriptedClient(client_end, answer_pings=answer_pings)


async def pair_up(first: ScriptedClient, second: ScriptedClient, a: str, b: str) -> None:
    """Both players request each other; wait until both have ``create_room``."""
    await first.send_json({"game_request": {"sender": a, "receiver": b}})
    await second.receive_until("game_request")
    await second.send_json({"game_request": {"sender": b, "receiver": a}})
    await first.receive_until("create_room")
    await second.receive_until("create_room")


async def start_match(first: ScriptedClient, second: ScriptedClient) -> None:
    """Both players ready up; wait until both have ``match_start``."""
    await first.menu_state(ready=True, cursor="ready")
    await second.menu_state(ready=True, cursor="ready")
    await first.receive_until("match_start")
    await second.receive_until("match_start")
