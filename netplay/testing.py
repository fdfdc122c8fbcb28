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

from netplay.config import Config
from netplay.framing import endmarker
from netplay.framing import messages as m
from netplay.framing.length3 import (
    MAX_JSON_LENGTH_ON_WIRE,
    Decoder,
    Direction,
    encode_json,
)
from netplay.server import Server

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
    config: Config | None = None, *, seed: int = 1, recorder: Any = None, **options: Any
) -> AsyncIterator[Server]:
    """An in-process server without listeners; connect with :func:`connect_in_process`.

    ``options`` go to :class:`~netplay.server.Server` (a database, a replays directory).
    """
    server = Server(config or Config(), seed=seed, recorder=recorder, **options)
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


# -- the 2022 client (protocol 046) ----------------------------------------------------

NEW_USER_ID = "need a new user id"


def name_message046(name: object, **overrides: Any) -> dict[str, Any]:
    """The name message of a 2022 client, as it sends it after ``H046``."""
    return {
        "name": name, "level": 5, "character": "__RandomCharacter",
        "character_is_random": "__RandomCharacter", "character_display_name": "",
        "stage": "__RandomStage", "stage_is_random": "__RandomStage",
        "panels_dir": "pdp_ta_common", "ranked": False,
        "save_replays_publicly": "with my name", **overrides,
    }


def hello046(name: object, **overrides: Any) -> bytes:
    """``H046`` and the name message in one write, as the 2022 client sends them."""
    return b"H046" + encode_json(name_message046(name, **overrides))


class Client046(ScriptedClient):
    """A scripted 2022 client: name, login, rooms, matches and spectating.

    Methods send what the real client sends at that step; the ``receive``
    family reads what comes back.  Inputs from the server (``I``, and ``U``
    when spectating) are counted in :attr:`inputs_received` and skipped by
    :meth:`receive_json`.
    """

    def __init__(self, stream: trio.abc.Stream, *, answer_pings: bool = True) -> None:
        super().__init__(stream, answer_pings=answer_pings)
        self.name: str | None = None
        self.inputs_received = {"I": bytearray(), "U": bytearray()}

    async def join(
        self, name: str, *, level: int = 5, ranked: bool = False,
        save_replays_publicly: str = "with my name", version: str = "046",
    ) -> dict[str, Any]:
        """``H046`` and the name message in one write, as the client does; return the lobby state."""
        self.name = name
        registration = encode_json(name_message046(
            name, level=level, ranked=ranked, save_replays_publicly=save_replays_publicly,
        ))
        await self.send(b"H" + version.encode("ascii") + registration)
        frame = await self.receive()
        if not isinstance(frame, m.HelloAccepted):
            raise AssertionError(f"expected H, got {frame!r}")
        return await self.receive_json()

    async def login(self, user_id: str = NEW_USER_ID) -> dict[str, Any]:
        """Send ``login_request``; return the reply (login_successful, login_denied, ...)."""
        await self.send_json({"login_request": True, "user_id": user_id})
        while True:
            reply = await self.receive_json()
            if {"login_successful", "login_denied", "choose_another_name"} & reply.keys():
                return reply

    async def request_game(self, receiver: str) -> None:
        await self.send_json({"game_request": {"sender": self.name, "receiver": receiver}})

    async def menu_state(  # type: ignore[override]
        self, *, ready: bool = False, cursor: str = "__Ready", character: str = "lip",
        level: int = 5, stage: str = "pa_stages_fire", ranked: bool = False,
    ) -> None:
        await self.send_json({"menu_state": {
            "cursor": cursor, "character": character, "character_display_name": character,
            "stage": stage, "stage_is_random": stage, "panels_dir": "pdp_ta_common",
            "level": level, "ranked": ranked, "loaded": True, "wants_ready": ready,
            "ready": ready,
        }})

    async def send_inputs(self, inputs: str) -> None:
        await self.send(b"".join(b"I" + symbol.encode("ascii") for symbol in inputs))

    async def game_over(self, outcome: int) -> None:
        await self.send_json({"game_over": True, "outcome": outcome})

    async def spectate(self, room_number: int) -> dict[str, Any]:
        await self.send_json(
            {"spectate_request": {"sender": self.name, "roomNumber": room_number}}
        )
        return await self.receive_until("spectate_request_granted")

    async def leave_room(self) -> None:
        await self.send_json({"leave_room": True})

    async def logout(self) -> None:
        await self.send_json({"logout": True})

    async def receive_json(self, *, timeout: float = 5.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                frame = await self.receive(timeout=math.inf)
                if isinstance(frame, m.Input | m.FirstPlayerInput):
                    self.inputs_received[chr(frame.raw[0])].append(frame.raw[1])
                    continue
                if not isinstance(frame, m.Json):
                    raise AssertionError(f"expected a J frame, got {frame!r}")
                return frame.payload

    async def receive_inputs(self, letter: str, count: int, *, timeout: float = 5.0) -> bytes:
        """Read until ``count`` inputs of ``letter`` (``I`` or ``U``) have come; return them."""
        received = self.inputs_received[letter]
        with trio.fail_after(timeout):
            while len(received) < count:
                frame = await self.receive(timeout=math.inf)
                if isinstance(frame, m.Input | m.FirstPlayerInput):
                    self.inputs_received[chr(frame.raw[0])].append(frame.raw[1])
        return bytes(received[:count])


def connect046(server: Server, **kwargs: Any) -> Client046:
    """A 2022 client served by ``server`` in this process (see :func:`connect_in_process`)."""
    plain = connect_in_process(server, **kwargs)
    return Client046(plain.stream, answer_pings=plain.answer_pings)


async def pair_up046(first: Client046, second: Client046) -> tuple[dict[str, Any], dict[str, Any]]:
    """``first`` asks, ``second`` accepts (becoming player 1); return both create_room messages."""
    assert first.name is not None and second.name is not None
    await first.request_game(second.name)
    await second.receive_until("game_request")
    await second.request_game(first.name)
    return await first.receive_until("create_room"), await second.receive_until("create_room")


async def start_match046(first: Client046, second: Client046) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both players ready up; return both match_start messages."""
    await first.menu_state(ready=True)
    await second.receive_until("menu_state")
    await second.menu_state(ready=True)
    return await first.receive_until("match_start"), await second.receive_until("match_start")


# -- the 2023-2025 clients (network versions 003-005) -------------------------------------


def login_message2025(name: object, user_id: object = NEW_USER_ID, **overrides: Any) -> dict[str, Any]:
    """The ``login_request`` of a 2025 client, as it sends it after the server's ``H``."""
    return {
        "login_request": True, "user_id": user_id, "engine_version": "048", "name": name,
        "level": 5, "inputMethod": "controller", "character": "PA_Magellan",
        "character_is_random": "__RandomCharacter", "stage": "panel-attack-magellan-day",
        "stage_is_random": "__RandomStage", "ranked": False,
        "save_replays_publicly": "with my name", **overrides,
    }


def menu_state2025(*, ready: bool = False, level: int = 5, ranked: bool = False,
                   character: str = "PA_Magellan", **overrides: Any) -> dict[str, Any]:
    """A 2025 client's ``menu_state`` at select: ``ready`` sets wants_ready and ready."""
    return {
        "cursor": "__Ready", "character": character, "character_is_random": "__RandomCharacter",
        "stage": "panel-attack-magellan-day", "stage_is_random": "__RandomStage",
        "panels_dir": "pacci", "level": level, "ranked": ranked, "inputMethod": "controller",
        "loaded": True, "wants_ready": ready, "ready": ready, **overrides,
    }


class Client2025:
    """A scripted 2023-2025 client (end-marker frames): login, rooms, matches, spectating.

    Version ``005`` reads typed server messages; :meth:`receive_message` gives
    ``(type, content)`` for both kinds (a 004 message's type is its first key
    of interest, see :data:`PLAIN_TYPES`).  Inputs received are counted in
    :attr:`inputs_received` by letter and skipped by the ``receive`` family.
    """

    def __init__(self, stream: trio.abc.Stream, *, version: str = "004",
                 answer_pings: bool = True) -> None:
        self._endmarker = endmarker
        self.stream = stream
        self.version = version
        self.decoder = endmarker.Decoder(Direction.SERVER_TO_CLIENT, max_body_length=1 << 24)
        self.answer_pings = answer_pings
        self.pings = 0
        self.name: str | None = None
        self.inputs_received: dict[str, list[bytes]] = {"I": [], "U": []}

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_json(self, payload: dict[str, Any]) -> None:
        await self.send(self._endmarker.encode_json(payload))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def receive(self, *, timeout: float = 5.0) -> Any:
        """The next frame other than a ping (answered); inputs are returned too."""
        with trio.fail_after(timeout):
            while True:
                frame = self.decoder.next_frame()
                if frame is None:
                    try:
                        data = await self.stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        raise ConnectionClosed()
                    self.decoder.receive_data(data)
                    continue
                if isinstance(frame, m.Ping):
                    self.pings += 1
                    if self.answer_pings:
                        await self.send(b"E")
                    continue
                return frame

    async def receive_json(self, *, timeout: float = 5.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                frame = await self.receive(timeout=math.inf)
                if isinstance(frame, self._endmarker.MarkedInput):
                    self.inputs_received[frame.letter].append(frame.body)
                    continue
                if not isinstance(frame, m.Json):
                    raise AssertionError(f"expected a J frame, got {frame!r}")
                return frame.payload

    async def receive_until(self, kind: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Skip messages until one of ``kind`` (a 005 type or a 004 key); return its payload.

        For a 005 client the payload returned is the message's ``content``.
        """
        with trio.fail_after(timeout):
            while True:
                payload = await self.receive_json(timeout=math.inf)
                if payload.get("type") == kind and "sender" in payload:
                    return payload["content"]
                if kind in payload:
                    return payload

    async def connect(self) -> None:
        """``H`` + version alone, as the client does; wait for ``H``."""
        await self.send(b"H" + self.version.encode("ascii"))
        frame = await self.receive()
        if not isinstance(frame, m.HelloAccepted):
            raise AssertionError(f"expected H, got {frame!r}")

    async def login(self, name: str, user_id: object = NEW_USER_ID, **overrides: Any) -> dict[str, Any]:
        """Connect and log in; return the reply (its content for 005)."""
        self.name = name
        await self.connect()
        await self.send_json(login_message2025(name, user_id, **overrides))
        kind = "loginResponse" if self.version >= "005" else None
        while True:
            payload = await self.receive_json()
            if kind is not None and payload.get("type") == kind:
                return payload["content"]
            if {"login_successful", "login_denied"} & payload.keys():
                return payload

    async def request_game(self, receiver: str) -> None:
        await self.send_json({"game_request": {"sender": self.name, "receiver": receiver}})

    async def menu_state(self, **options: Any) -> None:
        await self.send_json({"menu_state": menu_state2025(**options)})

    async def send_inputs(self, inputs: str) -> None:
        await self.send(b"".join(
            self._endmarker.encode_marked(b"I", symbol.encode("utf-8")) for symbol in inputs
        ))

    async def game_over(self, outcome: int) -> None:
        await self.send_json({"game_over": True, "outcome": outcome})

    async def spectate(self, room_number: int) -> dict[str, Any]:
        await self.send_json({"spectate_request": {"sender": self.name, "roomNumber": room_number}})
        kind = "spectateRequestGranted" if self.version >= "005" else "spectate_request_granted"
        return await self.receive_until(kind)

    async def leave_room(self) -> None:
        await self.send_json({"leave_room": True})

    async def logout(self) -> None:
        await self.send_json({"logout": True})

    async def expect_closed(self, *, timeout: float = 15.0) -> list[Any]:
        """Read until the server closes; return the frames (pings answered) that came before."""
        frames = []
        with trio.fail_after(timeout):
            while True:
                try:
                    frames.append(await self.receive(timeout=math.inf))
                except ConnectionClosed:
                    return frames

    async def receive_inputs(self, letter: str, count: int, *, timeout: float = 5.0) -> list[bytes]:
        received = self.inputs_received[letter]
        with trio.fail_after(timeout):
            while len(received) < count:
                frame = await self.receive(timeout=math.inf)
                if isinstance(frame, self._endmarker.MarkedInput):
                    self.inputs_received[frame.letter].append(frame.body)
        return received[:count]


def connect2025(server: Server, *, version: str = "004", **kwargs: Any) -> Client2025:
    """A 2025 client served by ``server`` in this process."""
    plain = connect_in_process(server, **kwargs)
    return Client2025(plain.stream, version=version, answer_pings=plain.answer_pings)
