#!/usr/bin/env python3
"""Soak test: hundreds of random clients against a running server, checking what they see.

Each of ``--clients`` slots runs one episode after another until
``--duration`` is over, choosing at random:

* play: register, get paired with another slot, exchange a ``menu_state``,
  ready up, play (inputs at 60 Hz, panel requests), then end with game over
  (sometimes a rematch), ``leave_room``, or one player vanishing;
* lobby: register (names collide on purpose), sit in the lobby reading lists,
  send requests to random names, leave any room that forms by accident;
* misbehave: a refused version, garbage bytes, bad JSON, a flood, an oversized
  ``J`` frame, an unknown letter, messages not valid in the state;
* vanish: close, reset (RST), or go silent (neither read nor write) for a while;
* reconnect: close and at once register the same name again.

Alongside, a control client does a fresh handshake every ``--control-interval``
seconds.  Invariants, each counted as a violation when broken:

* paired players get ``game_request``, ``create_room``, the forwarded
  ``menu_state`` and ``match_start`` (with their own settings) within
  ``--answer-within`` seconds; game over on both sides brings ``create_room``;
  a ``leave_room`` reaches both;
* inputs arrive in order, never echoed, none lost in a match that ends with
  game over; every panel request is answered (``P``/``Q``) and mirrored
  (``O``/``R``);
* a player whose opponent vanished is told (``leave_room``) within
  ``--answer-within`` seconds, or ``--idle-timeout`` more for a silent one;
* the control handshake is answered within ``--handshake-within`` seconds;
* no lobby list names a player that left more than ``--gone-within`` seconds
  ago (a silent one counts as left once the server's idle timeout has passed),
  and a player always finds its own name in its lobby lists;
* a connection that sent an oversized frame or an unknown letter, or asked for
  an unknown version, is closed; one that sent bad JSON, a flood or messages
  out of place is still served (pinged) afterwards;
* the server never sends bytes that do not parse, and never closes a
  well-behaved client;
* once every client has left, the lobby is empty.

The report gives the counts of actions, errors (things the tool could not do,
such as a refused connection) and violations with a few examples, handshake
latencies, the tool's own scheduling lag, and with ``--server-pid`` the
server's resident memory (RSS) at start, peak and end.  The exit status is 1
when any invariant was broken, 2 when the server could not be reached at all.

Example::

    .venv/bin/python tools/soak.py --port 49569 --clients 200 --duration 60 \\
        --server-pid "$(pgrep -f netplay-server)"
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import secrets
import socket
import struct
import sys
import time
from typing import Any, Callable

import attrs
import trio

try:  # run as a script: tools/ is on sys.path
    import _clients
except ImportError:  # imported as tools.soak
    from tools import _clients  # type: ignore[no-redef]

from netplay.errors import RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.length3 import (
    MAX_JSON_LENGTH_ON_WIRE,
    Decoder,
    Direction,
    encode_json,
)

FRAME = 1 / 60
ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz1234567890+/"
# Shared by many slots, so that registrations collide.
COMMON_NAMES = ["ann", "bob", "cyd", "dee", "eve", "fay", "gus", "hal"]
CHARACTERS = ["lip", "windy", "sherbet", "thiana", "ruby", "elias"]
MAX_EXAMPLES_PER_VIOLATION = 5
INBOX_LIMIT = 512

EPISODE_WEIGHTS = {"play": 6, "lobby": 3, "misbehave": 3, "vanish": 2, "reconnect": 1}
MISBEHAVIOURS = [
    "refused_version", "garbage", "bad_json", "flood", "oversized_frame", "unknown_letter",
    "out_of_state",
]


@attrs.frozen(kw_only=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 49569
    clients: int = 100
    duration: float = 60.0
    server_pid: int | None = None
    seed: int | None = None
    # The server's idle timeout: how long a silent client may stay listed.
    idle_timeout: float = 10.0
    ping_interval: float = 1.0
    answer_within: float = 5.0
    handshake_within: float = 2.0
    gone_within: float = 3.0
    control_interval: float = 0.5
    document_share: float = 0.2  # share of clients speaking the design document's dialect
    # Seconds between two progress lines on stderr; 0: none.
    progress_interval: float = _clients.PROGRESS_INTERVAL


@attrs.define
class Report:
    """What a soak run saw.  ``violations`` empty means every invariant held."""

    seed: int
    clients: int
    duration: float
    actions: collections.Counter[str] = attrs.Factory(collections.Counter)
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    violations: collections.Counter[str] = attrs.Factory(collections.Counter)
    examples: dict[str, list[str]] = attrs.Factory(dict)
    handshake_seconds: list[float] = attrs.Factory(list)
    max_tool_lag: float = 0.0
    rss_start: int | None = None
    rss_peak: int | None = None
    rss_end: int | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        handshakes = _clients.percentiles(self.handshake_seconds, digits=6)
        return {
            "seed": self.seed,
            "clients": self.clients,
            "duration": self.duration,
            "violations": dict(self.violations),
            "violation_examples": self.examples,
            "actions": dict(sorted(self.actions.items())),
            "errors": dict(sorted(self.errors.items())),
            "control_handshakes": len(self.handshake_seconds),
            "handshake_ms_median": _ms(handshakes["p50"]),
            "handshake_ms_p99": _ms(handshakes["p99"]),
            "handshake_ms_max": _ms(handshakes["max"]),
            "max_tool_lag_ms": _ms(self.max_tool_lag),
            "server_rss_start": self.rss_start,
            "server_rss_peak": self.rss_peak,
            "server_rss_end": self.rss_end,
        }

    def render(self) -> str:
        data = self.as_dict()
        lines = [
            f"soak: {self.clients} clients for {self.duration:g} s, seed {self.seed}",
            f"violations: {sum(self.violations.values())}",
        ]
        for kind, count in sorted(self.violations.items()):
            lines.append(f"  {kind}: {count}")
            lines += [f"      e.g. {example}" for example in self.examples.get(kind, [])]
        lines.append("actions:")
        lines += [f"  {kind}: {count}" for kind, count in sorted(self.actions.items())]
        lines.append("errors:" + ("" if self.errors else " none"))
        lines += [f"  {kind}: {count}" for kind, count in sorted(self.errors.items())]
        lines.append(
            f"control handshakes: {data['control_handshakes']}, median "
            f"{data['handshake_ms_median']} ms, p99 {data['handshake_ms_p99']} ms, "
            f"max {data['handshake_ms_max']} ms"
        )
        lines.append(f"tool's own scheduling lag, max: {data['max_tool_lag_ms']} ms")
        lines.append(
            f"server RSS: start {_mib(self.rss_start)}, peak {_mib(self.rss_peak)}, "
            f"end {_mib(self.rss_end)}"
        )
        return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _mib(size: int | None) -> str:
    return "unknown" if size is None else f"{size / (1 << 20):.1f} MiB"


class ServerClosed(Exception):
    """The server closed (or reset) the connection, or we already had."""


# ---------------------------------------------------------------------------
# Names


class NameClaims:
    """Which names the soak's clients hold or may hold, and since when a name is free.

    A name is claimed when a registration is sent and released when its client
    leaves (or when the registration is refused).  A silent client's claim is
    released at the moment the server's idle timeout will have passed.
    """

    def __init__(self) -> None:
        self.holders: collections.Counter[str] = collections.Counter()
        self.free_since: dict[str, float] = {}

    def claim(self, name: str) -> None:
        self.holders[name] += 1

    def release(self, name: str, at: float, *, held: bool = True) -> None:
        """End a claim; ``held=False`` for a registration the server refused."""
        self.holders[name] -= 1
        assert self.holders[name] >= 0
        if held:
            self.free_since[name] = max(at, self.free_since.get(name, -math.inf))

    def gone_for(self, name: str, now: float) -> float:
        """How long nobody of ours may hold ``name``; infinite for a name we never used."""
        if self.holders[name] > 0:
            return 0.0
        return now - self.free_since.get(name, -math.inf)


def lobby_names(payload: dict[str, Any]) -> list[str] | None:
    """The unpaired names of a lobby list (either dialect), or None if it holds none."""
    if "unpaired" in payload:
        return payload["unpaired"]
    state = payload.get("lobby_state")
    if isinstance(state, dict):
        return state.get("unpaired")
    return None


def request_sender(payload: dict[str, Any]) -> str | None:
    for key in ("game_request", "game_request_to_client"):
        request = payload.get(key)
        if isinstance(request, dict):
            return request.get("sender")
    return None


# ---------------------------------------------------------------------------
# One client connection


class Peer:
    """One TCP connection of the soak: a reader task that checks what arrives, locked writes."""

    def __init__(self, soak: Soak, stream: trio.SocketStream, *, document: bool) -> None:
        self.soak = soak
        self.stream = stream
        self.document = document
        self.decoder = Decoder(Direction.SERVER_TO_CLIENT, max_json_length=MAX_JSON_LENGTH_ON_WIRE)
        self.send_lock = trio.Lock()
        self.inbox: collections.deque[Any] = collections.deque(maxlen=INBOX_LIMIT)
        self.arrived = trio.Event()
        self.closed = trio.Event()  # end of stream or reset seen
        self.reader_scope = trio.CancelScope()
        self.answer_pings = True
        self.name: str | None = None  # the name last asked for
        self.holds_claim = False
        self.gone = False  # we closed it, or went silent
        self.in_room = False
        self.match: MatchSide | None = None
        self.last_lobby: list[str] | None = None

    @classmethod
    async def connect(cls, soak: Soak, *, document: bool = False) -> Peer:
        options = soak.options
        stream = await trio.open_tcp_stream(options.host, options.port)
        peer = cls(soak, stream, document=document)
        soak.report.actions["connections"] += 1
        soak.nursery.start_soon(peer._read)
        return peer

    # -- writing ------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        if self.gone:
            raise ServerClosed()
        try:
            async with self.send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ServerClosed() from None

    async def send_json(self, payload: dict[str, Any]) -> None:
        await self.send(encode_json(payload))

    async def request_game(self, receiver: str) -> None:
        key = "game_request_to_server" if self.document else "game_request"
        await self.send_json({key: {"sender": self.name, "receiver": receiver}})

    async def menu_state(self, *, ready: bool, level: int, character: str) -> None:
        state = {"cursor": "ready" if ready else "level", "ready": ready,
                 "character": character, "level": level}
        await self.send_json({"menu_state": state})

    # -- reading ------------------------------------------------------------

    async def _read(self) -> None:
        with self.reader_scope:
            try:
                while True:
                    data = await self.stream.receive_some(65536)
                    # Bytes read just as we left are not ours to judge any more.
                    if not data or self.gone:
                        break
                    self.decoder.receive_data(data)
                    while not self.gone and (frame := self.decoder.next_frame()) is not None:
                        await self._handle(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except RemoteProtocolError as error:
                self.soak.violation("server_sent_bytes_that_do_not_parse", error.reason)
        if not self.gone:
            self.release_name(trio.current_time())
        self.closed.set()
        self.arrived.set()

    async def _handle(self, frame: Any) -> None:
        soak = self.soak
        if isinstance(frame, (m.Ping, m.Heartbeat)):
            if self.answer_pings:
                answer = b"W" if isinstance(frame, m.Heartbeat) else b"F" + frame.token.encode()
                try:
                    await self.send(answer)
                except ServerClosed:
                    pass
        elif isinstance(frame, m.Input):
            if self.match is None:
                soak.violation("input_outside_a_match", f"{self.name} got {frame.raw!r}")
            else:
                self.match.received_input(frame.raw[1])
            return
        elif isinstance(frame, m.Panels):
            if self.match is None:
                soak.violation("panels_outside_a_match", f"{self.name} got {frame.letter}")
            else:
                self.match.received_panels(frame.letter)
            return
        elif isinstance(frame, m.Json):
            self._check_json(frame.payload)
        self.inbox.append(frame)
        self.arrived.set()
        self.arrived = trio.Event()

    def _check_json(self, payload: dict[str, Any]) -> None:
        if "create_room" in payload:
            self.in_room = True
        if "leave_room" in payload:
            self.in_room = False
        names = lobby_names(payload)
        if names is None:
            return
        soak = self.soak
        self.last_lobby = names
        soak.report.actions["lobby_lists_checked"] += 1
        if self.name not in names:
            soak.violation("own_name_missing_from_lobby_list", f"{self.name!r} not in {names[:8]}")
        now = trio.current_time()
        allowed = soak.options.gone_within + soak.recent_lag
        for name in names:
            gone_for = soak.claims.gone_for(name, now)
            if gone_for > allowed:
                soak.violation(
                    "departed_player_still_listed",
                    f"{name!r} listed {gone_for:.1f} s after it left",
                )

    async def expect(self, accept: Callable[[Any], bool], timeout: float) -> Any:
        """The first frame ``accept`` takes, dropping the others; None on timeout.

        Raises ServerClosed if the connection ends first.
        """
        with trio.move_on_after(timeout):
            while True:
                while self.inbox:
                    frame = self.inbox.popleft()
                    if accept(frame):
                        return frame
                if self.closed.is_set():
                    raise ServerClosed()
                await self.arrived.wait()
        return None

    async def expect_json(self, accept: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
        frame = await self.expect(lambda f: isinstance(f, m.Json) and accept(f.payload), timeout)
        return None if frame is None else frame.payload

    async def expect_closed(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self.closed.wait()
        return self.closed.is_set()

    # -- life cycle ---------------------------------------------------------

    async def register(self, name: str, *, level: int = 5, character: str = "lip",
                       retry_with_suffix: bool = True) -> str | None:
        """Handshake and register; the name obtained, or None (refused, or not answered)."""
        soak, within = self.soak, self.soak.options.answer_within
        version = b"139" if self.document else b"004"
        self.claim_name(name)
        await self.send(b"H" + version + encode_json(
            {"name": name, "level": level, "character": character}
        ))
        hello = await self.expect(
            lambda f: isinstance(f, (m.HelloAccepted, m.HelloRefused)), within
        )
        if hello is None or isinstance(hello, m.HelloRefused):
            soak.violation("handshake_not_accepted", f"{version!r} got {hello!r}")
            return None
        for _ in range(5):
            payload = await self.expect_json(
                lambda p: "choose_another_name" in p or self.name in (lobby_names(p) or ()), within
            )
            if payload is None:
                soak.violation("registration_not_answered", repr(self.name))
                return None
            if "choose_another_name" not in payload:
                soak.report.actions["registrations"] += 1
                return self.name
            soak.report.actions["names_refused_in_use"] += 1
            self.release_name(trio.current_time(), held=False)
            if not retry_with_suffix:
                return None
            self.claim_name(f"{name}-{soak.random.randrange(10**6)}")
            await self.send_json({"name": self.name, "level": level, "character": character})
        return None

    def claim_name(self, name: str) -> None:
        if self.holds_claim:
            self.release_name(trio.current_time())
        self.name, self.holds_claim = name, True
        self.soak.claims.claim(name)

    def release_name(self, at: float, *, held: bool = True) -> None:
        if self.holds_claim and self.name is not None:
            self.holds_claim = False
            self.soak.claims.release(self.name, at, held=held)

    async def close(self, how: str = "close") -> None:
        """Leave: ``close`` (FIN) or ``reset`` (RST).  Safe to call twice, and when cancelled."""
        if not self.gone:
            self.gone = True
            self.release_name(trio.current_time())
        self.reader_scope.cancel()
        with trio.CancelScope(shield=True):
            if how == "reset":
                try:
                    self.stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                except OSError:
                    pass
            await self.stream.aclose()

    def go_silent(self, seconds: float) -> None:
        """Neither read nor write for ``seconds``, then close; the server should drop us first."""
        now = trio.current_time()
        self.gone = True
        self.release_name(now + min(seconds, self.soak.options.idle_timeout))
        self.reader_scope.cancel()
        hold = trio.CancelScope()
        self.soak.silent_holds.add(hold)

        async def hold_then_close() -> None:
            try:
                with hold:
                    await trio.sleep(seconds)
            finally:
                self.soak.silent_holds.discard(hold)
                with trio.CancelScope(shield=True):
                    await self.stream.aclose()

        self.soak.nursery.start_soon(hold_then_close)


# ---------------------------------------------------------------------------
# Matches


@attrs.define(eq=False)
class MatchSide:
    """One player's side of one match: its input sequence and what it received."""

    soak: Soak
    peer: Peer
    level: int
    character: str
    step: int  # odd, so the sequence runs through the whole alphabet
    offset: int
    opponent: MatchSide | None = None
    sent: int = 0
    received: int = 0
    panels_asked: int = 0
    panels_answered: int = 0
    panels_mirrored: int = 0
    broken: bool = False

    def symbol(self, index: int) -> int:
        return ALPHABET[(index * self.step + self.offset) % len(ALPHABET)]

    def received_input(self, symbol: int) -> None:
        opponent = self.opponent
        assert opponent is not None
        if not self.broken:
            if self.received >= opponent.sent:
                self.broken = True
                self.soak.violation(
                    "input_never_sent_by_the_opponent",
                    f"{self.peer.name}: input {self.received + 1} of {opponent.sent} sent (echo?)",
                )
            elif symbol != opponent.symbol(self.received):
                self.broken = True
                self.soak.violation(
                    "input_out_of_order",
                    f"{self.peer.name}: input {self.received} is {chr(symbol)!r}, "
                    f"expected {chr(opponent.symbol(self.received))!r}",
                )
        self.received += 1
        self.soak.report.actions["inputs_received"] += 1

    def received_panels(self, letter: str) -> None:
        if letter in "PQ":
            self.panels_answered += 1
        else:
            self.panels_mirrored += 1
        self.soak.report.actions["panel_messages_received"] += 1

    async def play(self, stop: trio.Event) -> None:
        """Inputs at 60 Hz until ``stop``, with a panel request now and then.

        Returns only after its last write is done, so that what the caller
        sends next comes after every input.
        """
        rng, peer = self.soak.random, self.peer
        data = b"P5000000"  # the starting board comes first
        self.panels_asked += 1
        next_frame = trio.current_time()
        while not stop.is_set():
            data += b"I" + bytes([self.symbol(self.sent)])
            self.sent += 1
            roll = rng.random()
            if roll < 1 / 120:
                data += rng.choice([b"P5", b"Q5"]) + bytes(rng.choices(b"12345", k=6))
                self.panels_asked += 1
            elif roll < 1 / 100:
                data += b"P2111222"  # no panel fits; the server answers nothing
            await peer.send(data)
            self.soak.report.actions["inputs_sent"] += 1
            data = b""
            next_frame += FRAME
            now = trio.current_time()
            if next_frame < now - 0.5:
                next_frame = now  # fell far behind: do not burst to catch up
            await trio.sleep_until(next_frame)


# ---------------------------------------------------------------------------
# The soak


class Soak:
    def __init__(self, options: Options) -> None:
        self.options = options
        seed = options.seed if options.seed is not None else secrets.randbits(32)
        self.random = random.Random(seed)
        self.report = Report(seed=seed, clients=options.clients, duration=options.duration)
        self.claims = NameClaims()
        self.waiting: list[tuple[Peer, trio.Event]] = []  # players waiting for a partner
        self.recent_lag = 0.0
        self.nursery: trio.Nursery  # readers and silent holders live here
        self.silent_holds: set[trio.CancelScope] = set()
        # Set when the clients are being stopped: what they see then is not a finding.
        self.stopping = False

    def violation(self, kind: str, example: str, *, final: bool = False) -> None:
        if self.stopping and not final:
            return
        self.report.violations[kind] += 1
        examples = self.report.examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES_PER_VIOLATION and not any(
            seen.endswith(f" {example}") for seen in examples
        ):
            examples.append(f"t={trio.current_time() - self.started:.1f}s {example}")

    # -- running ------------------------------------------------------------

    async def run(self) -> Report:
        options = self.options
        self.started = trio.current_time()
        if await self.control_handshake() is None:
            raise _clients.ServerUnreachable(options.host, options.port, "no handshake answered")
        self.report.rss_start = self.rss()
        self.report.rss_peak = self.report.rss_start
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.watch_own_lag)
            nursery.start_soon(self.watch_server_memory)
            nursery.start_soon(self.control_loop)
            if options.progress_interval > 0:
                nursery.start_soon(self.show_progress)
            async with trio.open_nursery() as slots:
                for slot in range(options.clients):
                    slots.start_soon(self.run_slot, slot)
                await trio.sleep(options.duration)
                self.stopping = True
                slots.cancel_scope.cancel()
            for hold in list(self.silent_holds):
                hold.cancel()
            await self.check_lobby_empties()
            nursery.cancel_scope.cancel()
        self.report.rss_end = self.rss()
        return self.report

    async def show_progress(self) -> None:
        """A line on stderr every ``progress_interval`` seconds: what was done, what went wrong."""
        progress = _clients.Progress(interval=self.options.progress_interval)
        while True:
            await trio.sleep(self.options.progress_interval)
            report = self.report
            episodes = sum(n for kind, n in report.actions.items() if kind.startswith("episode_"))
            progress.say(time.monotonic(), (
                f"{episodes} episodes, {report.actions['matches_started']} matches started, "
                f"{sum(report.violations.values())} violations, "
                f"{sum(report.errors.values())} errors"
            ))

    async def run_slot(self, slot: int) -> None:
        await trio.sleep(self.random.random())  # do not all connect at once
        episodes = list(EPISODE_WEIGHTS)
        weights = list(EPISODE_WEIGHTS.values())
        while True:
            episode = self.random.choices(episodes, weights)[0]
            self.report.actions[f"episode_{episode}"] += 1
            try:
                await getattr(self, f"episode_{episode}")()
            except* OSError as group:
                for error in group.exceptions:
                    self.report.errors[f"connect_failed_{error.__class__.__name__}"] += 1
                await trio.sleep(0.5)
            except* ServerClosed:
                self.report.errors["connection_ended_under_a_client"] += 1
            await trio.sleep(self.random.random() * 0.3)

    async def new_peer(self) -> Peer:
        return await Peer.connect(self, document=self.random.random() < self.options.document_share)

    def pick_name(self) -> str:
        if self.random.random() < 0.3:
            return self.random.choice(COMMON_NAMES)
        return f"p{self.random.randrange(10**6)}"

    # -- episodes -----------------------------------------------------------

    async def episode_play(self) -> None:
        peer = await self.new_peer()
        try:
            if await peer.register(self.pick_name()) is None:
                return
            partner = None
            while self.waiting and partner is None:
                candidate, done = self.waiting.pop(0)
                if not (candidate.gone or candidate.closed.is_set()):
                    partner = (candidate, done)
                else:
                    done.set()
            if partner is not None:
                try:
                    await self.play_match(partner[0], peer)
                finally:
                    partner[1].set()
            else:
                done = trio.Event()
                entry = (peer, done)
                self.waiting.append(entry)
                with trio.move_on_after(3):
                    await done.wait()
                if entry in self.waiting:
                    self.waiting.remove(entry)  # nobody came
                    self.report.actions["players_without_partner"] += 1
                else:
                    await done.wait()  # a partner took us: the match runs elsewhere
            if not peer.gone:
                await self.idle_in_lobby(peer, self.random.random())
        finally:
            await peer.close(self.random.choice(["close", "close", "reset"]))

    async def play_match(self, first: Peer, second: Peer) -> None:
        """Pair two registered players and play 1 or 2 matches; every answer is checked."""
        soak, options, rng = self, self.options, self.random
        within = options.answer_within
        try:
            await first.request_game(second.name)
            if await second.expect_json(lambda p: request_sender(p) == first.name, within) is None:
                soak.violation("game_request_not_forwarded", f"{first.name} -> {second.name}")
                return
            await second.request_game(first.name)
            for peer, other in ((first, second), (second, first)):
                room = await peer.expect_json(lambda p: "create_room" in p, within)
                if room is None:
                    soak.violation("create_room_missing", f"{peer.name} with {other.name}")
                    return
                if room.get("opponent") != other.name:
                    soak.violation("create_room_names_the_wrong_opponent", repr(room))
            soak.report.actions["rooms_created"] += 1
            for _ in range(1 + (rng.random() < 0.3)):
                ending = await self.one_match(first, second)
                if ending != "game_over":
                    return
            await rng.choice([first, second]).send_json({"leave_room": True})
            for peer in (first, second):
                if await peer.expect_json(lambda p: "leave_room" in p, within) is None:
                    soak.violation("leave_room_not_answered", repr(peer.name))
        except ServerClosed:
            for peer in (first, second):
                if peer.closed.is_set() and not peer.gone:
                    soak.violation("server_closed_a_well_behaved_player", repr(peer.name))
        finally:
            first.match = second.match = None

    async def one_match(self, first: Peer, second: Peer) -> str:
        """Select, ready, play, and end the match one way or another; returns how it ended."""
        soak, options, rng = self, self.options, self.random
        within = options.answer_within
        sides = [
            MatchSide(soak, peer, rng.randint(1, 10), rng.choice(CHARACTERS),
                      rng.randrange(1, 64, 2), rng.randrange(64))
            for peer in (first, second)
        ]
        sides[0].opponent, sides[1].opponent = sides[1], sides[0]
        # A change of selection is forwarded as it is.
        await first.menu_state(ready=False, level=sides[0].level, character=sides[0].character)
        forwarded = await second.expect_json(lambda p: "menu_state" in p and "create_room" not in p,
                                             within)
        if forwarded is None or forwarded["menu_state"].get("level") != sides[0].level:
            soak.violation("menu_state_not_forwarded", f"{second.name} got {forwarded!r}")
        for side in sides:
            side.peer.match = side
            await side.peer.menu_state(ready=True, level=side.level, character=side.character)
        for side in sides:
            start = await side.peer.expect_json(lambda p: "match_start" in p, within)
            if start is None:
                soak.violation("match_start_missing", repr(side.peer.name))
                return "broken"
            if start.get("player_settings", {}).get("level") != side.level:
                soak.violation("match_start_with_wrong_settings", repr(start))
        soak.report.actions["matches_started"] += 1
        ending = rng.choices(["game_over", "leave", "vanish"], [5, 2, 3])[0]
        stops = [trio.Event(), trio.Event()]
        finished = [trio.Event(), trio.Event()]
        connection_ended = False
        async with trio.open_nursery() as players:
            for side, stop, done in zip(sides, stops, finished):
                players.start_soon(self.play_until, side, stop, done)
            try:
                await trio.sleep(rng.uniform(1, 4))
                await self.end_match(ending, sides, stops, finished)
            except ServerClosed:
                # Raised here it would reach the caller wrapped in an exception group.
                connection_ended = True
            for stop in stops:
                stop.set()
        if connection_ended:
            raise ServerClosed()
        if ending == "vanish":
            return "vanish"
        if ending == "leave":
            for side in sides:
                if await side.peer.expect_json(lambda p: "leave_room" in p, within) is None:
                    soak.violation("leave_room_not_answered", repr(side.peer.name))
            soak.report.actions["matches_left"] += 1
            return "leave"
        for side in sides:
            if await side.peer.expect_json(lambda p: "create_room" in p, within) is None:
                soak.violation("create_room_after_game_over_missing", repr(side.peer.name))
                return "broken"
        # create_room came after everything sent before game over: nothing may be missing.
        for side in sides:
            opponent = side.opponent
            assert opponent is not None
            name = side.peer.name
            if side.received != opponent.sent:
                soak.violation("inputs_lost", f"{name}: {side.received} of {opponent.sent}")
            if side.panels_answered != side.panels_asked:
                soak.violation("panel_request_not_answered",
                               f"{name}: {side.panels_answered} of {side.panels_asked}")
            if side.panels_mirrored != opponent.panels_asked:
                soak.violation("panels_not_mirrored",
                               f"{name}: {side.panels_mirrored} of {opponent.panels_asked}")
            side.peer.match = None
        soak.report.actions["matches_ended_by_game_over"] += 1
        return "game_over"

    async def end_match(
        self, ending: str, sides: list[MatchSide], stops: list[trio.Event],
        finished: list[trio.Event],
    ) -> None:
        rng = self.random
        if ending == "game_over":
            for index in rng.sample([0, 1], 2):
                stops[index].set()
                await finished[index].wait()  # its last input goes out first
                await sides[index].peer.send_json({"game_over": True})
                await trio.sleep(rng.uniform(0, 0.5))
        elif ending == "leave":
            for stop in stops:
                stop.set()
            for done in finished:
                await done.wait()
            await sides[rng.randrange(2)].peer.send_json({"leave_room": True})
        else:
            vanishing = rng.randrange(2)
            for stop in stops:
                stop.set()
            await self.vanish_in_match(sides[vanishing].peer, sides[1 - vanishing].peer)

    async def play_until(self, side: MatchSide, stop: trio.Event, done: trio.Event) -> None:
        try:
            await side.play(stop)
        except ServerClosed:
            if not side.peer.gone:
                self.violation("server_closed_a_well_behaved_player", repr(side.peer.name))
        finally:
            done.set()

    async def vanish_in_match(self, vanishing: Peer, survivor: Peer) -> None:
        how = self.random.choice(["close", "reset", "silent"])
        self.report.actions[f"vanished_in_match_{how}"] += 1
        bound = self.options.answer_within
        if how == "silent":
            vanishing.go_silent(self.random.uniform(self.options.idle_timeout + 1, 20))
            bound += self.options.idle_timeout
        else:
            await vanishing.close(how)
        vanishing.match = None
        start = trio.current_time()
        told = await survivor.expect_json(lambda p: "leave_room" in p, bound)
        survivor.match = None
        if told is None:
            self.violation("opponent_not_told_of_a_vanished_player",
                           f"{survivor.name} after {how}, {trio.current_time() - start:.1f} s")

    async def idle_in_lobby(self, peer: Peer, seconds: float) -> None:
        """Read lobby lists, request random players now and then, leave accidental rooms."""
        deadline = trio.current_time() + seconds
        names: list[str] = []
        while trio.current_time() < deadline:
            wait = min(0.5, deadline - trio.current_time())
            payload = await peer.expect_json(lambda p: True, wait)
            if payload is not None:
                names = lobby_names(payload) or names
                if "create_room" in payload:
                    self.report.actions["accidental_rooms"] += 1
                    await peer.send_json({"leave_room": True})
            if names and self.random.random() < 0.1:
                receiver = self.random.choice(names)
                await peer.request_game(receiver)
                self.report.actions["random_requests"] += 1

    async def episode_lobby(self) -> None:
        peer = await self.new_peer()
        try:
            if await peer.register(self.pick_name(), level=self.random.randint(1, 10)) is None:
                return
            await self.idle_in_lobby(peer, self.random.uniform(1, 5))
        finally:
            await peer.close(self.random.choice(["close", "reset"]))

    async def episode_vanish(self) -> None:
        peer = await self.new_peer()
        how = self.random.choice(["close", "reset", "silent"])
        self.report.actions[f"vanished_{how}"] += 1
        try:
            if await peer.register(self.pick_name()) is None:
                return
            await self.idle_in_lobby(peer, self.random.uniform(0, 2))
        finally:
            if how == "silent" and not peer.closed.is_set():
                peer.go_silent(self.random.uniform(2, 15))
            else:
                await peer.close(how if how != "silent" else "close")

    async def episode_reconnect(self) -> None:
        """Leave abruptly and register the same name at once: it must be free again soon."""
        name = self.pick_name()
        peer = await self.new_peer()
        try:
            if (name := await peer.register(name)) is None:
                return
        finally:
            await peer.close(self.random.choice(["close", "reset"]))
        left_at = trio.current_time()
        bound = self.options.gone_within + self.options.answer_within
        while True:
            again = await self.new_peer()
            try:
                if await again.register(name, retry_with_suffix=False) is not None:
                    self.report.actions["reconnected_under_the_same_name"] += 1
                    await self.idle_in_lobby(again, self.random.uniform(0, 1))
                    return
                if again.closed.is_set():
                    return
                self.report.actions["reconnect_found_the_name_still_taken"] += 1
            finally:
                await again.close()
            if trio.current_time() - left_at > bound:
                # Someone else of ours may hold it now; only a name free for long is a finding.
                now = trio.current_time()
                if self.claims.gone_for(name, now) > self.options.gone_within + self.recent_lag:
                    self.violation("departed_players_name_still_taken", repr(name))
                return
            await trio.sleep(0.3)

    async def episode_misbehave(self) -> None:
        kind = self.random.choice(MISBEHAVIOURS)
        self.report.actions[f"misbehaved_{kind}"] += 1
        within = self.options.answer_within
        peer = await self.new_peer()
        try:
            if kind == "refused_version":
                await peer.send(b"H999")
                refused = await peer.expect(lambda f: isinstance(f, m.HelloRefused), within)
                if refused is None or not await peer.expect_closed(within):
                    self.violation("unknown_version_not_refused_and_closed", repr(refused))
                return
            if await peer.register(self.pick_name()) is None:
                return
            rng = self.random
            if kind == "garbage":
                await peer.send(bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))))
                await trio.sleep(rng.random())
                return
            if kind in ("oversized_frame", "unknown_letter"):
                await peer.send(b"J\xff\xff\xff" if kind == "oversized_frame" else b"IAZ")
                if not await peer.expect_closed(within):
                    self.violation(f"{kind}_did_not_close_the_connection", repr(peer.name))
                return
            if kind == "bad_json":
                for body in (b"{", b"[1]", b"null", b'{"name": 5}', b"[" * 1000, b"\xff\xfe",
                             b'{"menu_state": {"ready": "yes"}}', b'{"game_request": 7}'):
                    await peer.send(b"J" + len(body).to_bytes(3, "big") + body)
            elif kind == "flood":
                await peer.send(b"IA" * 3000 + encode_json({"leave_room": True}) * 200)
            else:  # messages that are not valid in the lobby
                await peer.send(b"IAP5000000Q5123451L3")
                for payload in ({"game_over": True}, {"leave_room": True},
                                {"menu_state": {"cursor": "x", "ready": True,
                                                "character": "lip", "level": 3}}):
                    await peer.send_json(payload)
            # Still served: after a silent while, the server pings.
            ping = await peer.expect(
                lambda f: isinstance(f, (m.Ping, m.Heartbeat)),
                self.options.ping_interval + within,
            )
            if ping is None:
                self.violation(f"connection_not_served_after_{kind}", repr(peer.name))
        except ServerClosed:
            if kind not in ("garbage", "oversized_frame", "unknown_letter", "refused_version"):
                self.violation(f"server_closed_the_connection_after_{kind}", repr(peer.name))
        finally:
            await peer.close(self.random.choice(["close", "reset"]))

    # -- observers ----------------------------------------------------------

    async def control_handshake(self) -> float | None:
        """Seconds a fresh connection's handshake took, or None if it failed."""
        options = self.options
        start = trio.current_time()
        stream = None
        try:
            with trio.fail_after(options.handshake_within):
                stream = await trio.open_tcp_stream(options.host, options.port)
                await stream.send_all(b"H004")
                answer = await stream.receive_some(1)
            if answer != b"H":
                self.violation("control_handshake_answered_wrongly", repr(answer))
                return None
            return trio.current_time() - start
        except (trio.TooSlowError, OSError, trio.BrokenResourceError) as error:
            self.violation("control_handshake_failed_or_slow", repr(error))
            return None
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def control_loop(self) -> None:
        interval = self.options.control_interval
        next_at = trio.current_time()
        while True:
            seconds = await self.control_handshake()
            self.report.actions["control_handshakes"] += 1
            if seconds is not None:
                self.report.handshake_seconds.append(seconds)
            next_at += interval
            await trio.sleep_until(max(next_at, trio.current_time()))

    async def watch_own_lag(self) -> None:
        """The tool's own scheduling delay: a soak that falls behind must not blame the server."""
        period = 0.1
        recent: collections.deque[float] = collections.deque(maxlen=20)
        while True:
            before = trio.current_time()
            await trio.sleep(period)
            lag = max(0.0, trio.current_time() - before - period)
            recent.append(lag)
            self.recent_lag = max(recent)
            self.report.max_tool_lag = max(self.report.max_tool_lag, lag)

    def rss(self) -> int | None:
        pid = self.options.server_pid
        return None if pid is None else _clients.rss_bytes(pid)

    async def watch_server_memory(self) -> None:
        while True:
            rss = self.rss()
            if rss is not None:
                self.report.rss_peak = max(self.report.rss_peak or 0, rss)
            await trio.sleep(1)

    async def check_lobby_empties(self) -> None:
        """Once everyone has left, a newcomer must soon find itself alone in the lobby."""
        await trio.sleep(0.5)
        self.stopping = False
        peer = await Peer.connect(self)
        try:
            name = await peer.register(f"final-{self.random.randrange(10**6)}")
            if name is None:
                return
            deadline = trio.current_time() + self.options.gone_within + self.options.answer_within
            while peer.last_lobby != [name]:
                remaining = deadline - trio.current_time()
                if remaining <= 0 or peer.closed.is_set():
                    self.violation(
                        "lobby_not_empty_after_everyone_left", repr((peer.last_lobby or [])[:10]),
                        final=True,
                    )
                    return
                # Lists come only when the lobby changes: wait for the next one.
                await peer.expect_json(lambda p: lobby_names(p) is not None, remaining)
        finally:
            await peer.close()


async def soak(options: Options) -> Report:
    """Run a soak against a server that is already listening; see the module docstring."""
    return await Soak(options).run()


def build_parser() -> argparse.ArgumentParser:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="soak", description="Random clients against a running netplay server."
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="report this process's resident memory")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout,
                        help="the server's idle timeout (%(default)s s)")
    parser.add_argument("--ping-interval", type=float, default=defaults.ping_interval,
                        help="the server's ping interval (%(default)s s)")
    parser.add_argument("--answer-within", type=float, default=defaults.answer_within)
    parser.add_argument("--handshake-within", type=float, default=defaults.handshake_within)
    parser.add_argument("--gone-within", type=float, default=defaults.gone_within)
    parser.add_argument("--control-interval", type=float, default=defaults.control_interval)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--progress-interval", type=float, default=defaults.progress_interval,
                        metavar="SECONDS",
                        help="seconds between progress lines on stderr (%(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        host=args.host, port=args.port, clients=args.clients, duration=args.duration,
        server_pid=args.server_pid, seed=args.seed, idle_timeout=args.idle_timeout,
        ping_interval=args.ping_interval, answer_within=args.answer_within,
        handshake_within=args.handshake_within, gone_within=args.gone_within,
        control_interval=args.control_interval,
        progress_interval=0.0 if args.quiet else args.progress_interval,
    )
    try:
        report = trio.run(soak, options)
    except _clients.ServerUnreachable as error:
        return _clients.report_unreachable("soak", error)
    print(json.dumps(report.as_dict()) if args.json else report.render(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
