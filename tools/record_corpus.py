"""Regenerate the session corpus in ``tests/sessions``.

Usage::

    python tools/record_corpus.py [--out DIR] [--check]

Each scenario below drives scripted clients against an in-process server on
trio's virtual clock, with a fixed seed, and records the session with a
``SessionWriter``.  Together the scenarios send every message of both
dialects (see the list at the top of each one).  The files are
reproducible: the same code writes the same bytes.  ``--check`` replays
every file in process after writing it and exits 1 if one diverges.

Determinism needs one care: a client must never act at the very instant a
server timer (ping, idle timeout, lobby snapshot, linger) fires, or the
order of the two would be a coin toss.  :meth:`Scene.step` therefore puts
every client action on a 50 ms grid, skipping grid points within a
millisecond of a pending server deadline, and lets the server settle first.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
from typing import Any, Awaitable, Callable

import structlog
import trio
import trio.lowlevel
import trio.testing

from netplay.accounts.storage import MEMORY, SqliteStorage
from netplay.config import Config
from netplay.framing import messages as m
from netplay.framing.length3 import encode_json
from netplay.recording.record import (
    Event,
    Session,
    SessionWriter,
    format_session,
    parse_session,
    replay_settings,
)
from netplay.recording.replay import replay_in_process_sync
from netplay.server import Server
from netplay.testing import Client046, Client2025, ScriptedClient, hello046

SEED = 20240611
WALL_CLOCK = 1_718_064_000.0  # 2024-06-11 00:00 UTC
STEP = 0.05
# How far from any server deadline a client action must stay.
MARGIN = 0.001
DEFAULT_OUT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "sessions")
)


class Scene:
    """Scripted clients taking turns against one server, on the virtual clock."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._next_port = 50001

    async def step(self) -> None:
        """Wait for the next safe grid point, with the server settled."""
        now = trio.current_time()
        candidate = round((math.floor(now / STEP + 1e-9) + 1) * STEP, 6)
        while True:
            await trio.sleep_until(candidate - MARGIN)
            await trio.testing.wait_all_tasks_blocked()
            wait = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if trio.current_time() + wait > candidate + MARGIN:
                break
            candidate = round(candidate + STEP, 6)
        await trio.sleep_until(candidate)
        await trio.testing.wait_all_tasks_blocked()

    async def connect(self, name: str, *, version: str = "004", answer_pings: bool = True) -> Actor:
        await self.step()
        client_end, server_end = trio.testing.memory_stream_pair()
        self.server.open_stream(server_end, ("127.0.0.1", self._next_port))
        self._next_port += 1
        return Actor(self, name, version, ScriptedClient(client_end, answer_pings=answer_pings))

    async def join(self, name: str, *, version: str = "004", **registration: Any) -> Actor:
        """Connect, hello and register in one write, as the existing clients do."""
        actor = await self.connect(name, version=version)
        await actor.register(name, **registration)
        frame = await actor.client.receive()
        assert isinstance(frame, m.HelloAccepted), frame
        return actor


class Actor:
    """One scripted client; every send waits for its turn on the grid."""

    def __init__(self, scene: Scene, name: str, version: str, client: ScriptedClient) -> None:
        self.scene, self.name, self.version, self.client = scene, name, version, client

    async def send(self, data: bytes) -> None:
        await self.scene.step()
        await self.client.send(data)

    async def json(self, payload: dict[str, Any]) -> None:
        await self.send(encode_json(payload))

    async def register(self, name: str, *, level: int = 5, character: str = "lip",
                       with_hello: bool = True) -> None:
        registration = encode_json({"name": name, "level": level, "character": character})
        hello = b"H" + self.version.encode("ascii") if with_hello else b""
        await self.send(hello + registration)

    async def request(self, receiver: str, *, key: str = "game_request",
                      receiver_field: str = "receiver") -> None:
        await self.json({key: {"sender": self.name, receiver_field: receiver}})

    async def menu(self, *, ready: bool, cursor: str = "level", level: int = 5,
                   character: str = "lip") -> None:
        await self.json({"menu_state": {"cursor": cursor, "ready": ready,
                                        "character": character, "level": level}})

    async def expect(self, key: str) -> dict[str, Any]:
        return await self.client.receive_until(key)

    async def expect_lobby(self, *names: str) -> dict[str, Any]:
        """Read lobby lists (either dialect) until one shows exactly ``names``."""
        while True:
            payload = await self.client.receive_json()
            unpaired = payload.get("unpaired", payload.get("lobby_state", {}).get("unpaired"))
            if unpaired == list(names):
                return payload

    async def frame(self) -> Any:
        return await self.client.receive()

    async def panels(self, request: bytes) -> str:
        """Send a P/Q request; return the 120 digits of the answer."""
        await self.send(request)
        frame = await self.frame()
        assert isinstance(frame, m.Panels) and frame.letter == request[:1].decode(), frame
        return frame.digits

    async def close(self) -> None:
        await self.scene.step()
        await self.client.aclose()

    async def half_close(self) -> None:
        """End of stream towards the server; the client could still read."""
        await self.scene.step()
        await self.client.stream.send_eof()

    async def closed_by_server(self) -> list[Any]:
        frames = await self.client.expect_closed(timeout=30)
        await self.client.aclose()
        return frames


async def pair(first: Actor, second: Actor) -> None:
    await first.request(second.name)
    await second.expect(_request_key(second))
    await second.request(first.name)
    await first.expect("create_room")
    await second.expect("create_room")


async def start_match(first: Actor, second: Actor) -> None:
    await first.menu(ready=True, cursor="ready")
    await second.expect("menu_state")
    await second.menu(ready=True, cursor="ready")
    await first.expect("match_start")
    await second.expect("match_start")


def _request_key(actor: Actor) -> str:
    return "game_request" if actor.version != "139" else "game_request_to_client"


async def opponent_frames(actor: Actor, count: int) -> list[Any]:
    return [await actor.frame() for _ in range(count)]


# ---------------------------------------------------------------------------
# Scenarios


async def handshake_and_names(scene: Scene) -> None:
    """Hello accepted (004, 139) and refused, registration, a name in use then
    another, invalid names, lobby snapshots as players come and go, a
    disconnect before registering, a half-close from the lobby."""
    refused = await scene.connect("refused")
    await refused.send(b"H999")
    assert await refused.closed_by_server() == [m.HelloRefused()]

    ann = await scene.join("ann")
    await ann.expect_lobby("ann")

    early = await scene.connect("early")
    await early.send(b"H007")
    assert isinstance(await early.frame(), m.HelloAccepted)
    await early.close()  # gone before registering

    ben = await scene.connect("ben")
    await ben.register("ann")
    assert isinstance(await ben.frame(), m.HelloAccepted)
    assert await ben.expect("choose_another_name") == {
        "choose_another_name": {"used_names": ["ann"]}
    }
    await ben.register("ben", with_hello=False)
    await ben.expect_lobby("ann", "ben")
    await ann.expect_lobby("ann", "ben")

    cy = await scene.connect("cy", version="019")
    await cy.register("   ")
    assert isinstance(await cy.frame(), m.HelloAccepted)
    await cy.expect("choose_another_name")
    await cy.register("x" * 40, with_hello=False)
    await cy.expect("choose_another_name")
    await cy.register("cy", with_hello=False, level=9)
    await cy.expect_lobby("ann", "ben", "cy")

    dot = await scene.join("dot", version="139")
    state = await dot.expect_lobby("ann", "ben", "cy", "dot")
    assert state["lobby_state"]["paired"] == [], state

    await ann.close()
    await ben.expect_lobby("ben", "cy", "dot")
    await dot.expect_lobby("ben", "cy", "dot")

    hasty = await scene.join("hasty")
    await hasty.expect_lobby("ben", "cy", "dot", "hasty")
    await hasty.half_close()  # the server ends the connection
    await hasty.closed_by_server()
    await ben.expect_lobby("ben", "cy", "dot")

    await ben.close()
    await cy.close()
    await dot.close()


async def classic_match(scene: Scene) -> None:
    """Two existing-dialect clients: refused messages (invalid JSON, messages not
    valid in the lobby, requests to oneself and to nobody), a request forwarded,
    mutual requests make a room, menu_state relayed, L relayed, match_start,
    P/Q panels with O/R mirrors, I inputs (one and several per write),
    game_over twice leads back to select, a rematch, leave_room from a match
    and from a room."""
    alice = await scene.join("alice", level=4, character="windy")
    await alice.expect("unpaired")
    bob = await scene.join("bob", version="019", level=6, character="thiana")
    await bob.expect("unpaired")
    await alice.expect("unpaired")

    await alice.send(b"J\x00\x00\x05{bad}")  # invalid JSON: refused, connection kept
    await bob.menu(ready=False)  # not valid in the lobby
    await alice.send(b"IA")  # no match to send inputs to
    await alice.request("alice")  # to oneself
    await alice.request("nobody")
    await bob.json({"unknown": 1})

    await alice.request("bob")
    assert await bob.expect("game_request") == {
        "game_request": {"sender": "alice", "receiver": "bob"}
    }
    await alice.request("bob")  # repeated: no effect
    await bob.request("alice")
    room = await alice.expect("create_room")
    assert room["opponent"] == "bob", room
    await bob.expect("create_room")

    await alice.menu(ready=False, cursor="character", level=4, character="windy")
    await bob.expect("menu_state")
    await bob.send(b"L6")
    assert await alice.frame() == m.LevelPick(b"L6")
    await start_match(alice, bob)

    for match in range(2):
        board = await alice.panels(b"P5000000")
        mirrored = await bob.frame()
        assert mirrored == m.Panels("O", board), mirrored
        own = await bob.panels(b"P5000000")
        assert (await alice.frame()) == m.Panels("O", own)
        await alice.panels(b"P5" + board[-6:].encode())
        await bob.frame()
        await bob.panels(b"Q6" + own[-6:].encode())
        assert (await alice.frame()).letter == "R"
        await alice.send(b"IA")
        await alice.send(b"IBICID")
        assert await opponent_frames(bob, 4) == [m.INPUTS[c] for c in b"ABCD"]
        await bob.send(b"I+")
        assert await alice.frame() == m.INPUTS[ord("+")]
        if match == 0:
            await alice.json({"game_over": True})
            await bob.send(b"I/")  # still playing while alice's game is over
            assert await alice.frame() == m.INPUTS[ord("/")]
            await bob.json({"game_over": True})
            await alice.expect("create_room")
            await bob.expect("create_room")
            await start_match(bob, alice)  # the rematch, in the same room

    await bob.json({"leave_room": True})  # from a match
    assert (await alice.expect("leave_room"))["unpaired"] == ["alice", "bob"]
    await bob.expect("leave_room")

    await pair(bob, alice)
    await alice.json({"leave_room": True})  # from a room
    await alice.expect("leave_room")
    await bob.expect("leave_room")
    await alice.close()
    await bob.expect("unpaired")
    await bob.close()


async def document_dialect(scene: Scene) -> None:
    """The design document's dialect (139): lobby_state snapshots with paired
    rooms, game_request_to_server in both spellings (receiver, reciver),
    game_request_to_client, a document player against an existing client,
    W heartbeats answered, leave_room with lobby_state, back to select with
    the ready cursor after a game."""
    dora = await scene.join("dora", version="139", level=3, character="elias")
    await dora.expect("lobby_state")
    finn = await scene.join("finn", version="010", level=8)
    await finn.expect("unpaired")
    await dora.expect("lobby_state")
    eve = await scene.join("eve", version="139")
    await eve.expect("lobby_state")
    gus = await scene.join("gus", version="139")
    await gus.expect("lobby_state")

    await dora.request("finn", key="game_request_to_server")
    assert await finn.expect("game_request") == {
        "game_request": {"sender": "dora", "receiver": "finn"}
    }
    await finn.request("dora")
    await dora.expect("create_room")
    await finn.expect("create_room")
    state = await eve.expect_lobby("eve", "gus")
    players = state["lobby_state"]["paired"][0]["players"]
    assert [p["name"] for p in players] == ["dora", "finn"], state

    await eve.request("gus", key="game_request_to_server", receiver_field="reciver")
    assert await gus.expect("game_request_to_client") == {
        "game_request_to_client": {"sender": "eve", "receiver": "gus"}
    }
    await gus.request("eve", key="game_request_to_server")
    await eve.expect("create_room")
    await gus.expect("create_room")

    await dora.menu(ready=False, cursor="level", level=3, character="elias")
    await finn.expect("menu_state")
    await start_match(finn, dora)
    board = await finn.panels(b"P6000000")
    assert await dora.frame() == m.Panels("O", board)
    own = await dora.panels(b"P6000000")
    assert await finn.frame() == m.Panels("O", own)
    await dora.panels(b"Q5" + own[-6:].encode())
    assert (await finn.frame()).letter == "R"
    await finn.send(b"IAIB")
    await dora.send(b"IC")
    assert await opponent_frames(dora, 2) == [m.INPUTS[c] for c in b"AB"]
    assert await finn.frame() == m.INPUTS[ord("C")]
    await finn.send(b"L8")
    assert await dora.frame() == m.LevelPick(b"L8")
    await dora.json({"game_over": True})
    await finn.json({"game_over": True})
    assert (await dora.expect("create_room"))["menu_state"]["cursor"] == "level"
    await finn.expect("create_room")

    await dora.send(b"W")  # the document's heartbeat, as life
    await finn.json({"leave_room": True})  # from a room, document player told with lobby_state
    left = await dora.expect("leave_room")
    assert "lobby_state" in left, left
    assert "unpaired" in await finn.expect("leave_room")

    await gus.close()  # the document player's opponent learns at once
    assert "lobby_state" in await eve.expect("leave_room")
    for actor in (dora, finn, eve):
        await actor.close()


async def disconnects(scene: Scene) -> None:
    """Disconnects in a room, while playing and after game_over: the opponent is
    told with leave_room at once, and returns to the lobby."""
    a = await scene.join("amy")
    b = await scene.join("bo")
    c = await scene.join("cat")
    d = await scene.join("dan")
    for actor in (a, b, c, d):
        await actor.expect("unpaired")

    await pair(a, b)
    await a.close()  # in a room
    assert (await b.expect("leave_room"))["unpaired"] == ["bo", "cat", "dan"]

    await pair(c, d)
    await start_match(c, d)
    await c.panels(b"P5000000")
    await d.frame()
    await c.send(b"IA")
    await d.frame()
    await c.close()  # while playing
    await d.expect("leave_room")

    await pair(b, d)
    await start_match(b, d)
    await b.json({"game_over": True})
    await b.close()  # after its game is over, the opponent still playing
    await d.expect("leave_room")
    await d.close()  # from the lobby


async def heartbeat(scene: Scene) -> None:
    """Heartbeats: a silent client is pinged (ELOL) every second and dropped
    after the idle timeout; a client that answers (FLOL) stays; a document
    client is pinged with W; a client's own E ping counts as life."""
    quiet = await scene.connect("quiet", answer_pings=False)
    await quiet.register("quiet")
    chatty = await scene.join("chatty")
    doc = await scene.join("doc", version="139")
    pings = 0
    while True:
        frame = await doc.client.receive(skip_pings=False)
        if frame == m.Heartbeat():
            pings += 1
            if pings == 2:
                break
    await doc.send(b"W")
    await doc.send(b"ELOL")
    # Chatty answers its pings while quiet stays silent until it is dropped.
    while "quiet" in (await chatty.client.receive_until("unpaired", timeout=30))["unpaired"]:
        pass
    frames = await quiet.closed_by_server()
    assert frames.count(m.Ping("LOL")) >= 9, frames
    await doc.close()
    await chatty.close()


class Actor046(Actor):
    """A scripted 2022 client (protocol 046) on the grid."""

    async def join046(self, **fields: Any) -> dict[str, Any]:
        await self.send(hello046(self.name, **fields))
        frame = await self.client.receive()
        assert isinstance(frame, m.HelloAccepted), frame
        self.first_reply = await self.client.receive_json()
        return self.first_reply

    async def login(self, user_id: str = "need a new user id") -> dict[str, Any]:
        await self.json({"login_request": True, "user_id": user_id})
        while True:
            reply = await self.client.receive_json()
            if {"login_successful", "login_denied", "choose_another_name"} & reply.keys():
                return reply

    async def menu046(self, *, ready: bool, cursor: str = "__Ready", ranked: bool = False,
                      character: str = "lip") -> None:
        await self.json({"menu_state": {
            "cursor": cursor, "character": character, "character_display_name": character,
            "stage": "pa_stages_fire", "stage_is_random": "pa_stages_fire",
            "panels_dir": "pdp_ta_common", "level": 5, "ranked": ranked, "loaded": True,
            "wants_ready": ready, "ready": ready,
        }})

    async def inputs(self, symbols: str) -> None:
        await self.send(b"".join(b"I" + s.encode("ascii") for s in symbols))

    async def frames_of(self, kind: type, count: int) -> list[Any]:
        """Read until ``count`` frames of ``kind``; other frames are skipped."""
        found = []
        while len(found) < count:
            frame = await self.client.receive()
            if isinstance(frame, kind):
                found.append(frame)
        return found


async def join046(scene: Scene, name: str, **fields: Any) -> Actor046:
    await scene.step()
    client_end, server_end = trio.testing.memory_stream_pair()
    scene.server.open_stream(server_end, ("127.0.0.1", scene._next_port))
    scene._next_port += 1
    actor = Actor046(scene, name, "046", Client046(client_end))
    await actor.join046(**fields)
    return actor


async def dialect_046(scene: Scene) -> None:
    """The 2022 client: refused names, logins (new, returning, renamed, unknown,
    name taken), requests and a room, menu states with a ranked wish, a match
    with inputs, a spectator joining mid-match (catch-up, U/I, spectators list),
    taunts, an agreed win, a disagreeing draw, a report decided by the timeout,
    the leaderboard, leave_room, a spectator leaving, logout, and a disconnect."""
    blank = await join046(scene, "")
    assert blank.first_reply == {"choose_another_name": {"reason": "Name cannot be blank"}}
    await blank.close()
    amy = await join046(scene, "amy")
    amy_id = (await amy.login())["new_user_id"]
    ben = await join046(scene, "ben")
    await ben.login()
    await ben.json({"leaderboard_request": True})
    await ben.expect("leaderboard_report")
    await amy.request("ben")
    await ben.expect("game_request")
    await ben.request("amy")
    await amy.expect("create_room")
    await ben.expect("create_room")
    await amy.menu046(ready=False, cursor="__Mode", ranked=True)
    await ben.expect("ranked_match_denied")
    await amy.menu046(ready=True)
    await ben.expect("menu_state")
    await ben.menu046(ready=True)
    start = await amy.expect("match_start")
    await ben.expect("match_start")
    await ben.inputs("AAAAg")
    await amy.inputs("AAB")
    await amy.frames_of(m.Input, 5)
    await ben.frames_of(m.Input, 3)
    cat = await join046(scene, "cat")
    await cat.login()
    await cat.json({"spectate_request": {"sender": "cat", "roomNumber": 1}})
    granted = await cat.expect("spectate_request_granted")
    assert granted["replay_of_match_so_far"]["vs"]["seed"] == start["seed"]
    await cat.expect("spectators")
    await ben.json({"taunt": True, "type": "taunt_ups", "index": 1})
    await cat.expect("taunt")
    await ben.inputs("C")
    await amy.inputs("D")
    await cat.frames_of(m.FirstPlayerInput, 1)
    await cat.frames_of(m.Input, 1)
    await amy.json({"game_over": True, "outcome": 1})
    await ben.json({"game_over": True, "outcome": 1})
    await cat.json({"game_over": True, "outcome": 1})
    await amy.expect("character_select")
    await ben.expect("character_select")
    await cat.expect("character_select")
    # A draw by disagreement, then a match decided on one report.
    for first_claim, second_claim in ((1, 2), (2, None)):
        await amy.menu046(ready=True)
        await ben.expect("menu_state")
        await ben.menu046(ready=True)
        await amy.expect("match_start")
        await ben.expect("match_start")
        await amy.json({"game_over": True, "outcome": first_claim})
        if second_claim is not None:
            await ben.json({"game_over": True, "outcome": second_claim})
        await amy.expect("character_select")
        await ben.expect("character_select")
    await cat.json({"leave_room": True})
    await cat.expect("unpaired")
    await amy.json({"leave_room": True})
    await amy.expect("leave_room")
    await ben.expect("leave_room")
    await amy.json({"logout": True})
    await amy.closed_by_server()
    # Back with the stored id, under the same name, then under a new one.
    again = await join046(scene, "amy")
    assert await again.login(amy_id) == {"login_successful": True}
    await again.close()
    renamed = await join046(scene, "amelia")
    assert (await renamed.login(amy_id))["name_changed"] is True
    thief = await join046(scene, "AMELIA")
    assert thief.first_reply == {"choose_another_name": {"used_names": ["AMELIA"]}}
    await thief.close()
    await renamed.close()
    taker = await join046(scene, "Amelia")
    assert "choose_another_name" in await taker.login()
    stranger = await join046(scene, "dan")
    assert "login_denied" in await stranger.login("12345")
    for actor in (ben, cat, taker, stranger):
        await actor.close()


class Actor2025(Client2025):
    """A 2023-2025 client whose every send waits for its turn on the grid."""

    def __init__(self, scene: Scene, stream: trio.abc.Stream, version: str) -> None:
        super().__init__(stream, version=version)
        self.scene = scene

    async def send(self, data: bytes) -> None:
        await self.scene.step()
        await super().send(data)

    def kind(self, typed: str, plain: str) -> str:
        return typed if self.version >= "005" else plain


async def join2025(scene: Scene, name: str, version: str, **login: Any) -> tuple[Actor2025, Any]:
    await scene.step()
    client_end, server_end = trio.testing.memory_stream_pair()
    scene.server.open_stream(server_end, ("127.0.0.1", scene._next_port))
    scene._next_port += 1
    actor = Actor2025(scene, client_end, version)
    return actor, await actor.login(name, **login)


async def dialect_2025(scene: Scene) -> None:
    """The 2023-2025 clients, stable (004) and beta (005), beside a 2013 client
    on the same H004: logins (new, returning, wrong engine), a challenge and a
    room, ready, a match with inputs, a beta spectator joining mid-match
    (replay so far, U/I), a taunt, results and win counts, a beta game abort,
    leaving, logout, and a body that never ends."""
    old = await scene.join("old", version="004")
    await old.expect_lobby("old")
    amy, amy_login = await join2025(scene, "amy", "004")
    amy_id = amy_login["new_user_id"]
    ben, _ = await join2025(scene, "ben", "005")
    wrong, denied = await join2025(scene, "wry", "004", engine_version="046")
    assert denied.get("login_denied") is True, denied
    await wrong.aclose()
    await amy.request_game("ben")
    await ben.receive_until("challenge")
    await ben.request_game("amy")
    await amy.receive_until("create_room")
    await ben.receive_until("createRoom")
    await amy.menu_state(ready=True)
    await ben.menu_state(ready=True)
    await amy.receive_until("match_start")
    await ben.receive_until("matchStart")
    await ben.send_inputs("AAAB")
    await amy.send_inputs("AC")
    await amy.receive_inputs("I", 4)
    await ben.receive_inputs("I", 2)
    cat, _ = await join2025(scene, "cat", "005")
    lobby = await cat.receive_until("lobbyState")
    await cat.spectate(lobby["spectatable"][0]["roomNumber"])
    await ben.send_json({"taunt": True, "type": "taunt_ups", "index": 1})
    await ben.send_inputs("D")
    await amy.send_inputs("E")
    await cat.receive_inputs("U", 1)
    await cat.receive_inputs("I", 1)
    await amy.game_over(1)
    await ben.game_over(1)
    await amy.receive_until("win_counts")
    for client in (ben, cat):
        await client.receive_until("gameResult")
    await amy.menu_state(ready=True)
    await ben.menu_state(ready=True)
    await amy.receive_until("match_start")
    await ben.receive_until("matchStart")
    await ben.send_json({"type": "matchAbort"})
    await amy.receive_until("character_select")
    await cat.leave_room()
    await cat.receive_until("lobbyState")
    await amy.leave_room()
    await ben.receive_until("leaveRoom")
    await amy.logout()
    await amy.expect_closed(timeout=30)
    await amy.aclose()
    again, reply = await join2025(scene, "amy", "004", user_id=amy_id)
    assert "new_user_id" not in reply, reply
    # A body without its end marker, longer than any message may be.
    endless, _ = await join2025(scene, "eve", "004")
    await endless.send(b"J{" + b"x" * 20_000)
    await endless.expect_closed(timeout=30)
    await endless.aclose()
    for actor in (again, ben, cat):
        await actor.aclose()
    await old.close()


SCENARIOS: dict[str, Callable[[Scene], Awaitable[None]]] = {
    "handshake_and_names": handshake_and_names,
    "classic_match": classic_match,
    "document_dialect": document_dialect,
    "disconnects": disconnects,
    "heartbeat": heartbeat,
    "dialect_046": dialect_046,
    "dialect_2025": dialect_2025,
}


# ---------------------------------------------------------------------------
# Recording


def canonical(session: Session) -> Session:
    """Writes that happen at the same instant to several connections come out in
    whatever order the scheduler ran their writers; sort them by connection and
    join each connection's pieces, so that the file does not depend on it."""
    events: list[Event] = []
    run: list[Event] = []

    def flush() -> None:
        for event in sorted(run, key=lambda e: e.connection):
            last = events[-1] if events else None
            same_write = (
                last is not None and last.kind == "send"
                and (last.connection, last.time) == (event.connection, event.time)
            )
            if same_write:
                events[-1] = Event(event.time, event.connection, "send", last.data + event.data)
            else:
                events.append(event)
        run.clear()

    for event in session.events:
        if event.kind == "send" and (not run or run[0].time == event.time):
            run.append(event)
            continue
        flush()
        if event.kind == "send":
            run.append(event)
        else:
            events.append(event)
    flush()
    return Session(session.settings, tuple(events))


async def record(scenario: Callable[[Scene], Awaitable[None]], name: str) -> Session:
    config = Config()
    settings = replay_settings(config, SEED)
    settings["recorded_by"] = "record_corpus"
    settings["scenario"] = name
    # A fixed wall clock, for the times clients are told (2025 replays).
    settings["wall_clock"] = WALL_CLOCK
    writer = SessionWriter(settings, trio.current_time())
    # Player ids are random; drawn from the seed here, so the files are reproducible.
    ids = random.Random(SEED)
    database = SqliteStorage(
        MEMORY, make_user_id=lambda: str(ids.randrange(10**15, 2**53))
    )
    server = Server(config, seed=SEED, recorder=writer, database=database,
                    wall_clock_offset=writer.wall_clock_offset,
                    database_in_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await scenario(Scene(server))
        # Let the last closes reach the server before it stops.
        await trio.sleep(STEP)
        nursery.cancel_scope.cancel()
    session = parse_session(writer.take().splitlines(keepends=True))
    return canonical(session)


def record_sync(name: str) -> Session:
    return trio.run(
        record, SCENARIOS[name], name, clock=trio.testing.MockClock(autojump_threshold=0)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory (%(default)s)")
    parser.add_argument("--check", action="store_true", help="replay each file after writing")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"some of: {', '.join(SCENARIOS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario: {', '.join(unknown)}")
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for name in args.scenarios or SCENARIOS:
        try:
            session = record_sync(name)
        except Exception as error:  # an assertion, a timeout: report it, try the next
            print(f"{name}: the scenario failed: {error!r}", file=sys.stderr)
            failed += 1
            continue
        path = os.path.join(args.out, f"{name}.session")
        text = format_session(session)
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        line = (f"{path}: {len(session.events)} events, {len(text)} bytes, "
                f"{session.duration:.3f} s")
        if args.check:
            result = replay_in_process_sync(session)
            line += f", replay {'ok' if result.ok else 'DIVERGED'}"
            if not result.ok:
                failed += 1
                line += "\n" + result.report()
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    # The scenarios' servers log every connection; only warnings matter here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sys.exit(main())
