#!/usr/bin/env python3
"""Load generator: N matches of two clients, each playing 60 inputs a second.

Every client is a raw non-blocking TCP socket driven by one epoll loop (per
process; ``--processes K`` spreads the matches over K processes).  A client
connects, sends ``H004`` and its registration in one write, answers ``ELOL``
with ``FLOL``, pairs with its partner by mutual ``game_request``, readies up,
waits for ``match_start``, asks for its first panels (``P5000000``), and
then sends one ``I`` input per frame at 60 Hz, at a phase within the frame
drawn at random per client.  It asks for panels again about every 10 s,
giving the last 6 digits of the previous reply as its top row.

Measuring latency
-----------------
The input symbol carries a sequence number: input ``k`` of a client is the
symbol at position ``k mod 64`` of the 64-symbol alphabet.  The sender keeps
the send time of its last 64 inputs, indexed by ``k mod 64``; the receiver,
in the same process, looks the time up when the relayed input arrives.  The
server relays inputs in order, so the receiver also knows which symbol comes
next: a jump forward is a gap (inputs lost), a step back is a reordering.

The time of receipt is, by default, the kernel's timestamp of the arrival of
the bytes on the receiving socket (``SO_TIMESTAMPNS``), so a generator that
is busy sending does not add its own delay to the server's latency.  The
time the generator actually read the bytes is reported too ("read"); the
difference is the generator's own reaction time.

A saturated generator must never pass for a slow server: every send records
its lag behind its schedule, and the generator's own CPU use is reported.
When the lag or the input rate shows the generator fell behind, the report
says so.

Finishing games (046)
---------------------
``--finish-matches N`` ends the game of N of the matches during the measured
window, spread over ``--finish-spread`` seconds from ``--finish-at``: both
players send ``game_over`` with the same outcome and then idle at select, while
the other matches keep playing.  The latency of the inputs sent around those
game ends (``--finish-window`` seconds either side) is reported apart, per
second, and so is the time until select comes back.  ``--ranked`` makes every
match ranked (the server needs ``--placement-rule relaxed``), and
``--database`` / ``--replays-directory`` check afterwards, in the server's
files, that each ended game was stored exactly once with its replay file.

Examples::

    taskset -c 1 .venv/bin/python tools/loadgen.py --port 49569 --matches 200 \\
        --duration 30 --server-pid "$(pgrep -f netplay-server)"
    taskset -c 1 .venv/bin/python tools/loadgen.py --port 49569 --ramp --duration 10
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import resource
import socket
import sqlite3
import struct
import sys
import time
from typing import Any, Callable

try:  # run as a script: tools/ is on sys.path
    import _clients
except ImportError:  # imported as tools.loadgen
    from tools import _clients  # type: ignore[no-redef]

from netplay.framing import endmarker
from netplay.framing.length3 import encode_json
from netplay.testing import hello046, login_message2025, menu_state2025

# Plain globals: the per-message code looks these up on every read.
CONNECTING, HANDSHAKE = _clients.CONNECTING, _clients.HANDSHAKE
LOBBY_PREFIX, SERVER_LENGTHS = _clients.LOBBY_PREFIX, _clients.SERVER_LENGTHS

FRAME_SECONDS = 1 / 60
ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz1234567890+/"
INPUT_MESSAGES = [b"I" + bytes([symbol]) for symbol in ALPHABET]
SYMBOL_INDEX = [-1] * 256
for _position, _symbol in enumerate(ALPHABET):
    SYMBOL_INDEX[_symbol] = _position

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value, absent from Python 3.11
TIMESTAMP_SPACE = socket.CMSG_SPACE(16)  # one struct timespec
_timespec = struct.Struct("qq")

READY_STATE = encode_json(
    {"menu_state": {"cursor": "ready", "ready": True, "character": "lip", "level": 5}}
)
PANEL_INTERVAL = 10.0
SEND_BATCH = 64  # sends between two looks at the sockets when behind schedule

# Client states, in order of progress; NEW, CONNECTING and HANDSHAKE (0-2) come first.
LOBBY, REQUESTED, ROOM, MATCH, READY, FAILED = range(3, 9)


# ---------------------------------------------------------------------------
# Histograms


class Histogram:
    """Counts of durations: 10 us buckets up to 100 ms, then 1 ms buckets to 10 s.

    Percentiles are the upper edge of the bucket holding the rank, so they
    err on the high side by at most one bucket.  Mergeable across processes
    through :meth:`to_sparse` / :meth:`add_sparse`.
    """

    FINE = 10_000  # buckets of 10 us
    COARSE = 9_900  # buckets of 1 ms, from 100 ms on

    def __init__(self) -> None:
        self.counts = [0] * (self.FINE + self.COARSE)

    def record(self, seconds: float) -> None:
        index = int(seconds * 100_000.0)
        if index < 0:
            index = 0
        elif index >= self.FINE:
            index = min(self.FINE + int((seconds - 0.1) * 1000.0), len(self.counts) - 1)
        self.counts[index] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)

    @classmethod
    def upper_edge(cls, index: int) -> float:
        if index < cls.FINE:
            return (index + 1) / 100_000.0
        return 0.1 + (index - cls.FINE + 1) / 1000.0

    def percentile(self, fraction: float) -> float | None:
        total = self.count
        if not total:
            return None
        rank = max(1, math.ceil(fraction * total))
        running = 0
        for index, count in enumerate(self.counts):
            running += count
            if running >= rank:
                return self.upper_edge(index)
        return None  # not reached

    def maximum(self) -> float | None:
        for index in range(len(self.counts) - 1, -1, -1):
            if self.counts[index]:
                return self.upper_edge(index)
        return None

    def summary_ms(self) -> dict[str, float | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {
            "p50": ms(self.percentile(0.50)),
            "p99": ms(self.percentile(0.99)),
            "max": ms(self.maximum()),
            "n": self.count,
        }

    def to_sparse(self) -> list[list[int]]:
        return [[index, count] for index, count in enumerate(self.counts) if count]

    def add_sparse(self, sparse: list[list[int]]) -> None:
        for index, count in sparse:
            self.counts[index] += count


# ---------------------------------------------------------------------------
# Process set-up helpers


def tighten_timer_slack() -> None:
    """Ask for 1 us timer slack (default 50 us) so sleeps end close to their deadline."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, nanoseconds
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------
# One client


class Client(_clients.Client):
    """The state of one simulated player."""

    __slots__ = (
        "is_first", "partner", "inbuf", "need", "sent_at", "tx", "rx", "rx_next", "gaps",
        "reordered", "panel_due", "panel_sent_at", "last_row", "panels", "opponent_panels",
        "phase", "closed", "finish_due", "finish_sent_at", "outcome",
    )

    def __init__(self, index: int, name: str, is_first: bool) -> None:
        super().__init__(index, name)
        self.is_first = is_first  # the first of the pair connects first and answers the request
        self.partner: Client | None = None
        self.inbuf = bytearray()
        self.need = 0  # bytes inbuf must hold before a whole message can be parsed
        self.sent_at = [0.0] * 64
        self.tx = 0  # inputs sent
        self.rx = 0  # inputs received from the partner
        self.rx_next = 0  # the symbol position expected next
        self.gaps = 0
        self.reordered = 0
        self.panel_due = math.inf
        self.panel_sent_at = 0.0
        self.last_row = "000000"
        self.panels = 0
        self.opponent_panels = 0
        self.phase = 0.0
        self.closed = False  # the server closed the connection
        # 046 --finish-matches: when this player reports game_over (monotonic;
        # infinity: never, minus infinity: done), when it did, and the outcome.
        self.finish_due = math.inf
        self.finish_sent_at = 0.0
        self.outcome = 0


class Worker(_clients.EpollClients):
    """A set of matches driven by one epoll loop in one process.

    ``setup`` connects and pairs everyone; ``run`` plays; ``result`` sums up.
    The worker owns its sockets and closes them in :meth:`close`.
    """

    FAILED = FAILED  # this tool's state number for a client that gave up, for the base class
    # The framing of this worker's clients: JSON encoder and the 64 input messages.
    encode = staticmethod(encode_json)
    input_messages = INPUT_MESSAGES

    def __init__(
        self,
        host: str,
        port: int,
        match_ids: list[int],
        name_prefix: str,
        *,
        seed: int,
        connect_concurrency: int = 100,
        kernel_timestamps: bool = True,
    ) -> None:
        super().__init__(host, port, connect_concurrency=connect_concurrency)
        self.rng = random.Random(seed)
        self.kernel_timestamps = kernel_timestamps
        self.pairs: list[tuple[Client, Client]] = []
        for match_id in match_ids:
            first = Client(2 * match_id, f"{name_prefix}m{match_id}a", True)
            second = Client(2 * match_id + 1, f"{name_prefix}m{match_id}b", False)
            first.partner, second.partner = second, first
            self.clients += (first, second)
            self.pairs.append((first, second))
        self.ready_clients = 0
        self.sent = 0
        self.received = 0
        self.latency = Histogram()  # kernel receive time - send time
        self.read_latency = Histogram()  # generator read time - send time
        self.send_lag = Histogram()  # actual send time - scheduled send time
        self.panel_rtt = Histogram()  # in the window; the first requests are in setup_panel_rtt
        self.setup_panel_rtt = Histogram()
        self.recv_size = 65536
        self.window: dict[str, Any] = {}
        self.setup_seconds = 0.0
        # Latency of the inputs sent in the window around the finishing
        # second (046 --finish-matches), one histogram per second of it;
        # ``finish_window_start`` is wall-clock, infinity when there is none.
        self.finish_window_start = math.inf
        self.finish_window_length = 0.0
        self.finish_latency: list[Histogram] = []
        self.progress = _clients.Progress(enabled=False)  # the caller may enable it

    # -- connection set-up ------------------------------------------------------

    def _fail(self, client: Client, reason: str) -> None:
        if client.state in (CONNECTING, HANDSHAKE):
            self.in_flight -= 1
        client.state = FAILED
        self._count(reason)
        self._drop_socket(client)

    def _socket_opened(self, sock: socket.socket, now: float) -> None:
        if self.kernel_timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def _registered(self, client: Client) -> None:
        self.in_flight -= 1
        partner = client.partner
        assert partner is not None
        if client.is_first:
            client.state = LOBBY
            self.connect_queue.append(partner)
        else:
            # The first of the pair registered before this one connected, and
            # stays in the lobby until this request arrives.
            client.state = REQUESTED
            self._send_request(client)

    def _send_request(self, client: Client) -> None:
        assert client.partner is not None
        self._send(
            client,
            self.encode({"game_request": {"sender": client.name, "receiver": client.partner.name}}),
        )

    def _send_panel_request(self, client: Client, now: float) -> None:
        client.panel_sent_at = now
        self._send(client, b"P5" + client.last_row.encode("ascii"))

    def _send_failed(self, client: Client) -> None:
        self._closed(client)

    def _closed(self, client: Client) -> None:
        """The server closed or reset the connection."""
        if client.state < READY:
            self._fail(client, "closed_during_setup")
            return
        client.closed = True
        self._drop_socket(client)

    # -- incoming messages -------------------------------------------------------

    def _receive(
        self, client: Any, lost: Callable[[Any, str], None]
    ) -> tuple[bytes, float, float] | None:
        """One read: the bytes, when the kernel got them and when they were read.

        None when there is nothing to handle; a reset or a close goes to
        ``lost`` with its reason first.
        """
        sock = client.sock
        if sock is None:
            return None
        try:
            if self.kernel_timestamps:
                data, ancillary, _flags, _address = sock.recvmsg(self.recv_size, TIMESTAMP_SPACE)
            else:
                data, ancillary = sock.recv(self.recv_size), None
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            lost(client, "connection_reset")
            return None
        read_at = time.time()
        if not data:
            lost(client, "closed_by_server")
            return None
        arrived_at = read_at
        if ancillary:
            seconds, nanoseconds = _timespec.unpack(ancillary[0][2])
            arrived_at = seconds + nanoseconds * 1e-9
        return data, arrived_at, read_at

    def _closed_for(self, client: Client, reason: str) -> None:
        self._closed(client)

    def _read(self, client: Client) -> None:
        received = self._receive(client, self._closed_for)
        if received is None:
            return
        data, arrived_at, read_at = received
        if len(data) == 2 and data[0] == 73 and not client.inbuf:  # one input: the common case
            self._input(client, data[1], arrived_at, read_at)
            return
        self._feed(client, data, arrived_at, read_at)

    def _input(self, client: Client, symbol: int, arrived_at: float, read_at: float) -> None:
        position = SYMBOL_INDEX[symbol]
        expected = client.rx_next
        if position != expected:
            step = (position - expected) & 63
            if step >= 32 or position < 0:  # behind what was already seen
                client.reordered += 1
                client.rx += 1
                self.received += 1
                return
            client.gaps += step
        client.rx_next = (position + 1) & 63
        client.rx += 1
        self.received += 1
        sent_at = client.partner.sent_at[position]  # type: ignore[union-attr]
        # Inlined Histogram.record for the two per-input histograms.
        latency = arrived_at - sent_at
        index = int(latency * 100_000.0)
        if 0 <= index < 10_000:
            self.latency.counts[index] += 1
        else:
            self.latency.record(latency)
        offset = sent_at - self.finish_window_start
        if 0.0 <= offset < self.finish_window_length:
            self.finish_latency[int(offset)].record(latency)
        latency = read_at - sent_at
        index = int(latency * 100_000.0)
        if 0 <= index < 10_000:
            self.read_latency.counts[index] += 1
        else:
            self.read_latency.record(latency)

    def _feed(self, client: Client, data: bytes, arrived_at: float, read_at: float) -> None:
        if client.inbuf:
            client.inbuf += data
            if len(client.inbuf) < client.need:
                return
            data = bytes(client.inbuf)
            client.inbuf = bytearray()
        end = len(data)
        position = 0
        while position < end:
            letter = data[position]
            if letter == 73:  # I
                if position + 2 > end:
                    client.need = 2
                    break
                self._input(client, data[position + 1], arrived_at, read_at)
                position += 2
                continue
            if letter == 74:  # J
                if position + 4 > end:
                    client.need = 4
                    break
                frame_end = position + 4 + int.from_bytes(data[position + 1 : position + 4], "big")
                if frame_end > end:
                    client.need = frame_end - position
                    break
                self._json(client, data[position + 4 : frame_end])
                position = frame_end
                if client.state == FAILED:
                    return
                continue
            length = SERVER_LENGTHS[letter]
            if length == 0:
                self._fail(client, "unknown_letter_" + chr(letter))
                return
            if position + length > end:
                client.need = length
                break
            if letter == 69:  # E: ping
                client.pings += 1
                self._send(client, b"F" + data[position + 1 : position + 4])
            elif letter == 80:  # P: our panels
                client.panels += 1
                client.last_row = data[position + 115 : position + 121].decode("ascii")
                if client.panel_sent_at:
                    self.panel_rtt.record(time.monotonic() - client.panel_sent_at)
                    client.panel_sent_at = 0.0
                if client.state == MATCH:
                    client.state = READY
                    self.ready_clients += 1
            elif letter == 79:  # O: the opponent's panels
                client.opponent_panels += 1
            elif letter == 78:  # N: version refused
                self._fail(client, "version_refused")
                return
            position += length  # H, W, L, Q, R: nothing to do
        if position < end:
            client.inbuf = bytearray(data[position:])

    def _json(self, client: Client, body: bytes) -> None:
        if body.startswith(LOBBY_PREFIX):
            if client.state == HANDSHAKE:
                self._registered(client)
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self._fail(client, "bad_json")
            return
        if "game_request" in payload:
            if client.is_first and client.state == LOBBY:
                client.state = REQUESTED
                self._send_request(client)
        elif "create_room" in payload:
            if client.state == REQUESTED:
                client.state = ROOM
                self._send(client, READY_STATE)
        elif "match_start" in payload:
            if client.state == ROOM:
                client.state = MATCH
                self._send_panel_request(client, time.monotonic())
        elif "choose_another_name" in payload:
            self._fail(client, "name_refused")
        elif "leave_room" in payload:
            if client.state >= ROOM:
                # The opponent is gone: this match is over for the generator.
                client.closed = True
                if client.state < READY:
                    self._fail(client, "left_room_during_setup")

    # -- the loops ---------------------------------------------------------------

    def setup(self, timeout: float) -> int:
        """Connect, register and pair every match; return how many matches are ready.

        Connections are started ``connect_concurrency`` at a time (counting
        those not yet registered), and retried with a growing pause when
        the kernel or the server refuses them.  Gives up after ``timeout``.
        """
        start = time.monotonic()
        deadline = start + timeout
        self.connect_queue = [first for first, _ in self.pairs]
        self.connect_queue.reverse()  # popped from the end: match 0 first
        target = len(self.clients)
        while self.ready_clients < target:
            now = time.monotonic()
            if now >= deadline:
                break
            if self.progress.due(now):
                self.progress.say(now, f"set-up: {self.ready_clients}/{target} players ready, "
                                  f"failures {self.failures or 'none'}")
            self._start_due_connects(now)
            if not (self.connect_queue or self.retries or self.in_flight) and all(
                c.state in (READY, FAILED) or c.partner.state == FAILED  # type: ignore[union-attr]
                for c in self.clients
            ):
                break  # nothing more can become ready
            self._poll(0.005)
        self.setup_seconds = time.monotonic() - start
        ready = 0
        for first, second in self.pairs:
            if first.state == READY and second.state == READY and not (first.closed or second.closed):
                ready += 1
            else:
                for client in (first, second):
                    if client.state not in (READY, FAILED):
                        self.failures["setup_timeout"] = self.failures.get("setup_timeout", 0) + 1
                    self._drop_socket(client)
                    client.state = FAILED
        return ready

    def run(
        self,
        start_at: float,
        measure_at: float,
        end_at: float,
        *,
        drain: float = 2.0,
        panel_interval: float = PANEL_INTERVAL,
        on_measure: Callable[[str], None] | None = None,
    ) -> None:
        """Play from ``start_at`` to ``end_at`` (monotonic clock); statistics from ``measure_at``.

        ``on_measure("start")`` and ``on_measure("stop")`` are called at the
        edges of the measured window (the caller samples the server there).
        After ``end_at`` the loop keeps reading for up to ``drain`` seconds
        so that inputs still in flight are not counted as lost.  Each player
        asks for panels every ``panel_interval`` seconds (0: only the first).
        """
        players = [c for c in self.clients if c.state == READY]
        self.recv_size = 16384
        for client in players:
            client.phase = self.rng.random() * FRAME_SECONDS
            client.panel_due = (
                start_at + self.rng.random() * panel_interval if panel_interval > 0 else math.inf
            )
        players.sort(key=lambda c: c.phase)
        count = len(players)
        measuring = False
        cpu_start = 0.0
        switches_start = 0
        frame = 0
        slot = 0
        next_at = start_at + (players[0].phase if players else math.inf)
        monotonic, wall, sleep, poll = time.monotonic, time.time, time.sleep, self._poll
        lag_counts = self.send_lag.counts
        input_messages = self.input_messages
        input_size = len(input_messages[0])
        while True:
            now = monotonic()
            if now >= end_at:
                break
            if not measuring and now >= measure_at:
                measuring = True
                self._start_window(now)
                lag_counts = self.send_lag.counts
                cpu_start = _clients.own_cpu_seconds()
                switches_start = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
                if on_measure is not None:
                    on_measure("start")
            # The sends that are due, in schedule order; at most a batch, so
            # that a generator behind its schedule still reads and stops on time.
            batch = SEND_BATCH
            while next_at <= now and batch:
                batch -= 1
                client = players[slot]
                sock = client.sock
                due = client.finish_due
                if due <= now:
                    if due > -math.inf:  # this player's game ends now: no more inputs
                        self._send_game_over(client, now)
                elif sock is not None and not client.closed:
                    lag = monotonic() - next_at
                    index = int(lag * 100_000.0)
                    if index < 10_000:
                        lag_counts[index] += 1
                    else:
                        self.send_lag.record(lag)
                    position = client.tx & 63
                    client.sent_at[position] = wall()
                    if client.out:
                        self._send(client, input_messages[position])
                    else:
                        try:
                            if sock.send(input_messages[position]) != input_size:
                                raise BlockingIOError
                        except BlockingIOError:
                            # Not expected for a few bytes; fall back to the buffered path.
                            self._send(client, input_messages[position])
                        except OSError:
                            self._closed(client)
                    client.tx += 1
                    self.sent += 1
                    if now >= client.panel_due:
                        client.panel_due = now + panel_interval
                        self._send_panel_request(client, now)
                slot += 1
                if slot == count:
                    slot = 0
                    frame += 1
                    if self.progress.due(now):
                        self.progress.say(now, self._progress_line(now, measure_at))
                next_at = start_at + frame * FRAME_SECONDS + players[slot].phase
                now = monotonic()
            if next_at <= now:  # behind schedule: read what came in, then go on sending
                poll(0)
                continue
            # Wait for input, but wake up before the next send is due: epoll
            # rounds its timeout up to whole milliseconds, so ask for the whole
            # milliseconds left and sleep the remainder with nanosleep.
            remaining = min(next_at, end_at) - monotonic()
            poll(math.floor(remaining * 1000.0) / 1000.0 if remaining >= 0.001 else 0)
            remaining = min(next_at, end_at) - monotonic()
            if 0 < remaining < 0.001:
                sleep(remaining)
        if measuring:
            self._stop_window(
                monotonic(),
                _clients.own_cpu_seconds() - cpu_start,
                resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches_start,
            )
            if on_measure is not None:
                on_measure("stop")
        # Drain: keep reading until everything sent has arrived, or time is up.
        drain_end = monotonic() + drain
        while monotonic() < drain_end:
            if self._drained(players):
                break
            poll(0.01)

    def _send_game_over(self, client: Client, now: float) -> None:
        """End ``client``'s game (046 only: 004 players never get a ``finish_due``)."""
        raise NotImplementedError

    def _progress_line(self, now: float, measure_at: float) -> str:
        phase = "measuring" if now >= measure_at else "warming up"
        closed = sum(1 for c in self.clients if c.state == READY and c.closed)
        return (f"{phase}: {self.sent} inputs sent, {self.received} received, "
                f"{closed} players closed")

    def _drained(self, players: list[Client]) -> bool:
        """Whether every input sent has arrived wherever it was going."""
        return all(c.rx >= c.partner.tx for c in players if not c.closed)  # type: ignore[union-attr]

    def _finisher_sends(self) -> int:
        """Inputs sent so far by players whose game ends during the run."""
        return sum(c.tx for c in self.clients if c.finish_due != math.inf)

    def _start_window(self, now: float) -> None:
        self.latency, self.read_latency, self.send_lag = Histogram(), Histogram(), Histogram()
        self.setup_panel_rtt, self.panel_rtt = self.panel_rtt, Histogram()
        self.window = {"start": now, "sent": self.sent, "received": self.received,
                       "finisher_sent": self._finisher_sends()}

    def _stop_window(self, now: float, cpu: float, preempted: int) -> None:
        self.window["seconds"] = now - self.window["start"]
        self.window["sent"] = self.sent - self.window["sent"]
        self.window["finisher_sent"] = self._finisher_sends() - self.window["finisher_sent"]
        self.window["received"] = self.received - self.window["received"]
        self.window["cpu"] = cpu
        self.window["preempted"] = preempted

    def result(self) -> dict[str, Any]:
        players = [c for c in self.clients if c.state == READY]
        lost = sum(max(0, c.partner.tx - c.rx) for c in players)  # type: ignore[union-attr]
        return {
            "matches_ready": sum(1 for a, b in self.pairs if a.state == READY and b.state == READY),
            "setup_seconds": self.setup_seconds,
            "failures": self.failures,
            "sent_total": sum(c.tx for c in players),
            "received_total": sum(c.rx for c in players),
            "lost": lost,
            "gaps": sum(c.gaps for c in players),
            "reordered": sum(c.reordered for c in players),
            "closed": sum(1 for c in players if c.closed),
            "pings": sum(c.pings for c in players),
            "panels": sum(c.panels for c in players),
            "opponent_panels": sum(c.opponent_panels for c in players),
            "window": self.window,
            "latency": self.latency.to_sparse(),
            "read_latency": self.read_latency.to_sparse(),
            "send_lag": self.send_lag.to_sparse(),
            "panel_rtt": self.panel_rtt.to_sparse(),
            "setup_panel_rtt": self.setup_panel_rtt.to_sparse(),
        }

# ---------------------------------------------------------------------------
# Protocol 046: the 2022 client, with spectators

V046_READY_STATE = encode_json({"menu_state": {
    "cursor": "__Ready", "character": "lip", "character_display_name": "Lip",
    "stage": "pa_stages_fire", "stage_is_random": "pa_stages_fire",
    "panels_dir": "pdp_ta_common", "level": 5, "ranked": False, "loaded": True,
    "wants_ready": True, "ready": True,
}})
V046_NEW_LOGIN = encode_json({"login_request": True, "user_id": "need a new user id"})


def v046_menu_state(*, ranked: bool, ready: bool) -> bytes:
    return encode_json({"menu_state": {
        "cursor": "__Ready", "character": "lip", "character_display_name": "Lip",
        "stage": "pa_stages_fire", "stage_is_random": "pa_stages_fire",
        "panels_dir": "pdp_ta_common", "level": 5, "ranked": ranked, "loaded": True,
        "wants_ready": ready, "ready": ready,
    }})


V046_RANKED_STATE = v046_menu_state(ranked=True, ready=False)
V046_RANKED_READY_STATE = v046_menu_state(ranked=True, ready=True)
RANKED_RETRY_SECONDS = 0.1




class Player046(Client):
    """A 2022 client that plays: logs in, pairs, readies, and plays as a Client does."""

    __slots__ = ("number", "login_sent_at", "ready_sent", "retry_at", "result_at")

    def __init__(self, index: int, name: str, is_first: bool) -> None:
        super().__init__(index, name, is_first)
        self.hello = hello046(name)
        self.number = 0  # 1 or 2, as create_room says
        self.login_sent_at = 0.0
        self.ready_sent = False  # --ranked: the ready menu_state went out
        self.retry_at = 0.0  # --ranked: when to ask for approval again (0: not waiting)
        self.result_at = 0.0  # when character_select came back after game_over


class Spectator046(_clients.Client):
    """A 2022 client that joins a match in progress and receives both players' inputs.

    Player 1's inputs arrive as ``U``, player 2's as ``I``; ``side`` 0 and 1
    below.  Its first input from a side tells where in that player's
    sequence it joined (``base``); from there on, every input is expected.
    """

    __slots__ = (
        "pair", "sources", "inbuf", "need", "rx", "rx_next", "base", "tx_at_grant", "gaps",
        "reordered", "closed", "login_sent_at", "room_number",
    )

    def __init__(self, index: int, name: str, pair: tuple[Player046, Player046]) -> None:
        super().__init__(index, name)
        self.hello = hello046(name)
        self.pair = pair
        self.sources: tuple[Player046, Player046] | None = None  # player 1, player 2
        self.inbuf = bytearray()
        self.need = 0
        self.rx = [0, 0]
        self.rx_next = [0, 0]
        self.base = [-1, -1]  # absolute index of the first input received, per side
        self.tx_at_grant = [0, 0]
        self.gaps = 0
        self.reordered = 0
        self.closed = False
        self.login_sent_at = 0.0
        self.room_number: int | None = None


class Worker046(Worker):
    """Matches of 2022 clients, each watched by ``spectators_per_match`` spectators.

    Players connect with ``H046`` and the name message in one write, log in
    with a new id, pair by mutual ``game_request``, send a ready
    ``menu_state`` and, after ``match_start``, play as :class:`Worker`'s
    players do (no panel requests: 046 clients make their own panels).
    Spectators connect at :attr:`spectate_at` (during the run, so they join
    matches in progress), log in, find their match's room number in a lobby
    list and send ``spectate_request``; from ``spectate_request_granted`` on,
    their inputs' latency and loss are counted apart from the players'.

    ``finish_ranks`` (match id -> rank among the finishing matches, of
    ``finish_total``) names the matches whose game ends during the run: see
    :meth:`schedule_finish`.  With ``ranked`` every player asks for a ranked
    match (ranked, not ready; ready once ``ranked_match_approved`` comes).
    """

    # This dialect's messages; the 2025 worker has its own.
    new_login = V046_NEW_LOGIN
    ready_state = V046_READY_STATE
    ranked_state = V046_RANKED_STATE
    ranked_ready_state = V046_RANKED_READY_STATE

    def __init__(
        self,
        host: str,
        port: int,
        match_ids: list[int],
        name_prefix: str,
        *,
        seed: int,
        spectators_per_match: int = 0,
        connect_concurrency: int = 100,
        kernel_timestamps: bool = True,
        finish_ranks: dict[int, int] | None = None,
        finish_total: int = 0,
        ranked: bool = False,
    ) -> None:
        super().__init__(
            host, port, [], name_prefix, seed=seed, connect_concurrency=connect_concurrency,
            kernel_timestamps=kernel_timestamps,
        )
        self.spectators: list[Spectator046] = []
        self.match_ids = list(match_ids)
        self.finish_ranks = dict(finish_ranks or {})
        self.finish_total = finish_total
        self.ranked = ranked
        self.ranked_retries: list[Player046] = []
        self.ranked_started = 0  # match_start messages saying ranked
        self.games_over_sent = 0
        self.result_rtt = Histogram()  # last game_over of a match -> character_select
        self.finish_spectator_latency: list[Histogram] = []
        self.finish_meta: dict[str, Any] = {}
        for match_id in match_ids:
            # Names of at most 16 letters, digits and underscores, as 046 wants.
            first = Player046(2 * match_id, f"{name_prefix}{match_id}a", True)
            second = Player046(2 * match_id + 1, f"{name_prefix}{match_id}b", False)
            first.partner, second.partner = second, first
            self.clients += (first, second)
            self.pairs.append((first, second))
            for k in range(spectators_per_match):
                self.spectators.append(
                    Spectator046(len(self.spectators), f"{name_prefix}{match_id}s{k}",
                                 (first, second))
                )
        self.spectate_at = math.inf  # set by the caller before run()
        self.spectators_queued = False
        self.spectators_ready = 0
        self.rooms: dict[tuple[str, str], int] = {}  # (a, b) -> room number, from lobby lists
        self.spectator_received = 0
        self.spectator_latency = Histogram()
        self.spectator_read_latency = Histogram()
        self.login_rtt = Histogram()

    # -- players ----------------------------------------------------------------------

    def _json(self, client: Client, body: bytes) -> None:
        if body.startswith(LOBBY_PREFIX):
            if client.state == HANDSHAKE and not client.login_sent_at:  # type: ignore[attr-defined]
                client.login_sent_at = time.monotonic()  # type: ignore[attr-defined]
                self._send(client, self.new_login)
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self._fail(client, "bad_json")
            return
        if "login_successful" in payload:
            if client.state == HANDSHAKE:
                self.login_rtt.record(time.monotonic() - client.login_sent_at)  # type: ignore[attr-defined]
                self._registered(client)
        elif "login_denied" in payload:
            self._fail(client, "login_denied")
        elif "game_request" in payload:
            if client.is_first and client.state == LOBBY:
                client.state = REQUESTED
                self._send_request(client)
        elif "create_room" in payload:
            if client.state == REQUESTED:
                client.number = payload.get("your_player_number", 0)  # type: ignore[attr-defined]
                client.state = ROOM
                self._send(client, self.ranked_state if self.ranked else self.ready_state)
            elif "character_select" in payload and client.finish_sent_at and not (
                client.result_at  # type: ignore[attr-defined]
            ):
                # Back at select after game_over (a ranked game waits for its rating).
                now = time.monotonic()
                client.result_at = now  # type: ignore[attr-defined]
                partner = client.partner
                assert partner is not None
                if partner.finish_sent_at:
                    self.result_rtt.record(
                        now - max(client.finish_sent_at, partner.finish_sent_at)
                    )
        elif "ranked_match_approved" in payload:
            if self.ranked and client.state == ROOM and not client.ready_sent:  # type: ignore[attr-defined]
                client.ready_sent = True  # type: ignore[attr-defined]
                self._send(client, self.ranked_ready_state)
        elif "ranked_match_denied" in payload:
            # Usually the partner's ranked menu_state (or its rating) is not in yet.
            if self.ranked and client.state == ROOM and not (
                client.ready_sent or client.retry_at  # type: ignore[attr-defined]
            ):
                client.retry_at = time.monotonic() + RANKED_RETRY_SECONDS  # type: ignore[attr-defined]
                self.ranked_retries.append(client)  # type: ignore[arg-type]
        elif "match_start" in payload:
            if client.state == ROOM:
                client.state = READY
                self.ready_clients += 1
                if payload.get("ranked") is True:
                    self.ranked_started += 1
        elif "choose_another_name" in payload:
            self._fail(client, "name_refused")
        elif "leave_room" in payload:
            if client.state >= ROOM:
                client.closed = True
                if client.state < READY:
                    self._fail(client, "left_room_during_setup")

    def _ask_ranked_again(self, now: float) -> None:
        waiting = []
        for client in self.ranked_retries:
            if client.retry_at > now:
                waiting.append(client)
                continue
            client.retry_at = 0.0
            if client.state == ROOM and not client.ready_sent:
                self._send(client, self.ranked_state)
        self.ranked_retries = waiting

    # -- finishing games ----------------------------------------------------------------

    def schedule_finish(
        self, finish_at: float, spread: float, margin: float
    ) -> None:
        """Give the finishing matches their game_over time (monotonic).

        The match of rank ``r`` ends at ``finish_at + spread * r / total``: both
        players report ``game_over`` with the same outcome (player 1 wins at
        even ranks, player 2 at odd ones) at their first send slot from then
        on, and send no more inputs.  Inputs sent from ``margin`` seconds before
        ``finish_at`` to ``margin`` seconds after the last game_over are timed
        apart, per second.
        """
        if not self.finish_total:
            return
        for match_id, (first, second) in zip(self.match_ids, self.pairs):
            rank = self.finish_ranks.get(match_id)
            if rank is None:
                continue
            due = finish_at + spread * rank / self.finish_total
            outcome = 1 if rank % 2 == 0 else 2
            for client in (first, second):
                if client.state == READY:
                    client.finish_due, client.outcome = due, outcome
        length = spread + 2 * margin
        seconds = max(1, math.ceil(length))
        self.finish_window_start = time.time() + (finish_at - margin - time.monotonic())
        self.finish_window_length = length
        self.finish_latency = [Histogram() for _ in range(seconds)]
        self.finish_spectator_latency = [Histogram() for _ in range(seconds)]
        self.finish_meta = {"margin": margin, "spread": spread, "seconds": seconds}

    def _send_game_over(self, client: Client, now: float) -> None:
        client.finish_due = -math.inf
        client.finish_sent_at = time.monotonic()
        self.games_over_sent += 1
        self._send(client, self.encode({"game_over": True, "outcome": client.outcome}))

    def finished_pairs(self) -> list[list[Any]]:
        """[player 1's name, player 2's name, outcome] of each game that was ended."""
        pairs = []
        for first, second in self.pairs:
            if first.finish_sent_at and second.finish_sent_at:
                one, two = (first, second) if first.number == 1 else (second, first)  # type: ignore[attr-defined]
                pairs.append([one.name, two.name, first.outcome])
        return pairs

    # -- spectators ------------------------------------------------------------------

    def _poll(self, timeout: float) -> None:
        if self.ranked_retries:
            self._ask_ranked_again(time.monotonic())
        if self.connect_queue or self.retries or not self.spectators_queued:
            now = time.monotonic()
            if not self.spectators_queued and now >= self.spectate_at:
                self.spectators_queued = True
                self.connect_queue += reversed(self.spectators)
            if self.spectators_queued:
                self._start_due_connects(now)
        super()._poll(timeout)

    def _read(self, client: Any) -> None:
        if type(client) is not Spectator046:
            super()._read(client)
            return
        received = self._receive(client, self._spectator_lost)
        if received is None:
            return
        data, arrived_at, read_at = received
        if client.inbuf:
            client.inbuf += data
            if len(client.inbuf) < client.need:
                return
            data = bytes(client.inbuf)
            client.inbuf = bytearray()
        end = len(data)
        position = 0
        while position < end:
            letter = data[position]
            if letter == 85 or letter == 73:  # U: player 1's input, I: player 2's
                if position + 2 > end:
                    client.need = 2
                    break
                if client.sources is not None:
                    self._spectator_input(client, letter == 73, data[position + 1], arrived_at,
                                          read_at)
                position += 2
                continue
            if letter == 74:  # J
                if position + 4 > end:
                    client.need = 4
                    break
                frame_end = position + 4 + int.from_bytes(data[position + 1 : position + 4], "big")
                if frame_end > end:
                    client.need = frame_end - position
                    break
                self._spectator_json(client, data[position + 4 : frame_end])
                position = frame_end
                if client.state == FAILED:
                    return
                continue
            length = SERVER_LENGTHS[letter]
            if length == 0:
                self._spectator_lost(client, "unknown_letter_" + chr(letter))
                return
            if position + length > end:
                client.need = length
                break
            if letter == 69:  # E: ping
                client.pings += 1
                self._send(client, b"F" + data[position + 1 : position + 4])
            elif letter == 78:  # N: version refused
                self._spectator_lost(client, "version_refused")
                return
            position += length
        if position < end:
            client.inbuf = bytearray(data[position:])

    def _spectator_input(
        self, spectator: Spectator046, side: int, symbol: int, arrived_at: float, read_at: float
    ) -> None:
        source = spectator.sources[side]  # type: ignore[index]
        position = SYMBOL_INDEX[symbol]
        if spectator.base[side] < 0:
            # The first live input from this side: the newest this player sent
            # with that symbol (relay is far faster than 64 frames).
            last = source.tx - 1
            spectator.base[side] = last - ((last - position) & 63)
            spectator.rx_next[side] = position
        expected = spectator.rx_next[side]
        if position != expected:
            step = (position - expected) & 63
            if step >= 32 or position < 0:
                spectator.reordered += 1
                spectator.rx[side] += 1
                self.spectator_received += 1
                return
            spectator.gaps += step
        spectator.rx_next[side] = (position + 1) & 63
        spectator.rx[side] += 1
        self.spectator_received += 1
        sent_at = source.sent_at[position]
        self.spectator_latency.record(arrived_at - sent_at)
        self.spectator_read_latency.record(read_at - sent_at)
        offset = sent_at - self.finish_window_start
        if 0.0 <= offset < self.finish_window_length:
            self.finish_spectator_latency[int(offset)].record(arrived_at - sent_at)

    def _spectator_json(self, spectator: Spectator046, body: bytes) -> None:
        state = spectator.state
        if body.startswith(LOBBY_PREFIX):
            if state == HANDSHAKE and not spectator.login_sent_at:
                spectator.login_sent_at = time.monotonic()
                self._send(spectator, self.new_login)
            if state in (HANDSHAKE, LOBBY) and spectator.room_number is None:
                try:
                    rooms = json.loads(body).get("spectatable", [])
                except ValueError:
                    rooms = []
                for room in rooms:
                    self.rooms[(room.get("a"), room.get("b"))] = room.get("roomNumber")
                self._spectate(spectator)
            return
        if state == READY:
            return  # spectators lists, menu states: nothing to do
        try:
            payload = json.loads(body)
        except ValueError:
            self._spectator_lost(spectator, "bad_json")
            return
        if "login_successful" in payload:
            if state == HANDSHAKE:
                self.login_rtt.record(time.monotonic() - spectator.login_sent_at)
                self.in_flight -= 1
                spectator.state = LOBBY
                self._spectate(spectator)
        elif "login_denied" in payload:
            self._spectator_lost(spectator, "login_denied")
        elif "spectate_request_granted" in payload:
            if state == REQUESTED:
                first, second = spectator.pair
                spectator.sources = (first, second) if first.number == 1 else (second, first)
                spectator.tx_at_grant = [spectator.sources[0].tx, spectator.sources[1].tx]
                spectator.state = READY
                self.spectators_ready += 1
        elif "choose_another_name" in payload:
            self._spectator_lost(spectator, "name_refused")
        elif "leave_room" in payload:
            spectator.closed = True

    def _spectate(self, spectator: Spectator046) -> None:
        """Ask to watch the spectator's match, once logged in and its room number is known."""
        if spectator.state != LOBBY:
            return
        first, second = spectator.pair
        names = (first.name, second.name) if first.number == 1 else (second.name, first.name)
        number = self.rooms.get(names)
        if number is None:
            return  # the next lobby list may have it
        spectator.room_number = number
        spectator.state = REQUESTED
        self._send(spectator, self.encode(
            {"spectate_request": {"sender": spectator.name, "roomNumber": number}}
        ))

    def _spectator_lost(self, spectator: Spectator046, reason: str) -> None:
        if spectator.state == READY:
            spectator.closed = True
            self._drop_socket(spectator)
            return
        self._fail(spectator, "spectator_" + reason)  # type: ignore[arg-type]

    def _send_failed(self, client: Any) -> None:
        if type(client) is Spectator046:
            self._spectator_lost(client, "send_failed")
        else:
            self._closed(client)

    # -- results -----------------------------------------------------------------------

    def _watching(self) -> list[Spectator046]:
        return [s for s in self.spectators if s.state == READY and s.sources is not None]

    def _spectator_lost_inputs(self, spectator: Spectator046) -> int:
        lost = 0
        for side in (0, 1):
            source = spectator.sources[side]  # type: ignore[index]
            start = spectator.base[side] if spectator.base[side] >= 0 else spectator.tx_at_grant[side]
            lost += max(0, source.tx - start - spectator.rx[side])
        return lost

    def _drained(self, players: list[Client]) -> bool:
        return super()._drained(players) and all(
            self._spectator_lost_inputs(s) == 0 for s in self._watching() if not s.closed
        )

    def _start_window(self, now: float) -> None:
        super()._start_window(now)
        self.spectator_latency, self.spectator_read_latency = Histogram(), Histogram()
        self.window["spectator_received"] = self.spectator_received
        self.window["spectators_ready_at_start"] = self.spectators_ready

    def _stop_window(self, now: float, cpu: float, preempted: int) -> None:
        super()._stop_window(now, cpu, preempted)
        self.window["spectator_received"] = (
            self.spectator_received - self.window["spectator_received"]
        )

    def result(self) -> dict[str, Any]:
        result = super().result()
        watching = self._watching()
        result.update(
            spectators=len(self.spectators),
            spectators_ready=len(watching),
            spectators_ready_at_window=self.window.get("spectators_ready_at_start", 0),
            spectator_received_total=sum(sum(s.rx) for s in watching),
            spectator_lost=sum(self._spectator_lost_inputs(s) for s in watching),
            spectator_gaps=sum(s.gaps for s in watching),
            spectator_reordered=sum(s.reordered for s in watching),
            spectator_closed=sum(1 for s in watching if s.closed),
            spectator_pings=sum(s.pings for s in self.spectators),
            spectator_latency=self.spectator_latency.to_sparse(),
            spectator_read_latency=self.spectator_read_latency.to_sparse(),
            login_rtt=self.login_rtt.to_sparse(),
        )
        if self.finish_total:
            result.update(
                finish_scheduled=sum(
                    1 for match_id, (first, _) in zip(self.match_ids, self.pairs)
                    if match_id in self.finish_ranks and first.finish_due != math.inf
                ),
                games_over_sent=self.games_over_sent,
                finished_pairs=self.finished_pairs(),
                results_back=sum(1 for c in self.clients if c.result_at),  # type: ignore[attr-defined]
                result_rtt=self.result_rtt.to_sparse(),
                finish_latency=[h.to_sparse() for h in self.finish_latency],
                finish_spectator_latency=[h.to_sparse() for h in self.finish_spectator_latency],
                finish_meta=self.finish_meta,
            )
        if self.ranked:
            result["ranked_matches"] = self.ranked_started // 2
        return result

    def close(self) -> None:
        for spectator in self.spectators:
            self._drop_socket(spectator)  # type: ignore[arg-type]
        super().close()


# ---------------------------------------------------------------------------
# Network version 004: the 2023-2025 clients (end-marker framing)

MARKER = endmarker.MARKER
V2025_INPUT_MESSAGES = [b"I" + bytes([symbol]) + MARKER for symbol in ALPHABET]
V2025_HELLO = b"H004"


class Worker2025(Worker046):
    """Matches of 2025 (stable, 004) clients, with spectators, as :class:`Worker046` plays them.

    Each client sends ``H004`` alone, and its ``login_request`` (a new id)
    when ``H`` comes back, as the real client does; every message after the
    handshake ends with the marker, inputs included (``I`` + symbol + marker,
    9 bytes).  Pings are ``E`` and answered ``E``.  Latency, loss and the
    spectators' catch-up are counted as for 046.
    """

    encode = staticmethod(endmarker.encode_json)
    input_messages = V2025_INPUT_MESSAGES
    new_login = endmarker.encode_json(login_message2025("", "need a new user id"))
    ready_state = endmarker.encode_json({"menu_state": menu_state2025(ready=True)})
    ranked_state = endmarker.encode_json({"menu_state": menu_state2025(ranked=True)})
    ranked_ready_state = endmarker.encode_json(
        {"menu_state": menu_state2025(ranked=True, ready=True)}
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for client in (*self.clients, *self.spectators):
            client.hello = V2025_HELLO

    def _login(self, client: Any) -> None:
        client.login_sent_at = time.monotonic()
        self._send(client, endmarker.encode_json(
            login_message2025(client.name, "need a new user id")
        ))

    def _read(self, client: Any) -> None:
        spectator = type(client) is Spectator046
        received = self._receive(client, self._lost_2025)
        if received is None:
            return
        data, arrived_at, read_at = received
        if client.inbuf:
            client.inbuf += data
            data = bytes(client.inbuf)
            client.inbuf = bytearray()
        end = len(data)
        position = 0
        find = data.find
        while position < end:
            letter = data[position]
            if letter == 73 or letter == 85 or letter == 74:  # I, U, J: ended by the marker
                stop = find(MARKER, position + 1)
                if stop < 0:
                    break
                if letter == 74:
                    body = data[position + 1 : stop]
                    if spectator:
                        self._spectator_json(client, body)
                    else:
                        self._json(client, body)
                    if client.state == FAILED:
                        return
                elif spectator:
                    if client.sources is not None:
                        self._spectator_input(client, letter == 73, data[position + 1],
                                              arrived_at, read_at)
                else:
                    self._input(client, data[position + 1], arrived_at, read_at)
                position = stop + 7
                continue
            if letter == 69:  # E: ping
                client.pings += 1
                self._send(client, b"E")
            elif letter == 72:  # H: the handshake accepted
                if client.state == HANDSHAKE and not client.login_sent_at:
                    self._login(client)
            elif letter == 78:  # N: version refused
                self._lost(client, spectator, "version_refused")
                return
            else:
                self._lost(client, spectator, "unknown_letter_" + chr(letter))
                return
            position += 1
        if position < end:
            client.inbuf = bytearray(data[position:])

    def _lost_2025(self, client: Any, reason: str) -> None:
        self._lost(client, type(client) is Spectator046, reason)

    def _lost(self, client: Any, spectator: bool, reason: str) -> None:
        if spectator:
            self._spectator_lost(client, reason)
        elif reason in ("connection_reset", "closed_by_server"):
            self._closed(client)
        else:
            self._fail(client, reason)


# ---------------------------------------------------------------------------
# One experiment: N matches, in one or several processes


def _split(count: int, parts: int) -> list[list[int]]:
    return [list(range(part, count, parts)) for part in range(parts)]


def finishing_ranks(matches: int, finishing: int) -> dict[int, int]:
    """Match id -> rank of the ``finishing`` matches whose game ends, spread evenly over ids."""
    finishing = max(0, min(finishing, matches))
    return {i * matches // finishing: i for i in range(finishing)} if finishing else {}


def _worker_process(spec: dict[str, Any], pipe: Any) -> None:
    """Body of one generator process: set up, report, wait for the start, play, report."""
    tighten_timer_slack()
    _clients.raise_open_file_limit()
    worker = make_worker(spec, spec["match_ids"], spec["prefix"], spec["seed"])
    # The first process speaks for all: they move in step.
    worker.progress = _clients.Progress(
        enabled=spec["progress_interval"] > 0 and spec["index"] == 0,
        interval=spec["progress_interval"], label="process 1: ",
    )
    try:
        ready = worker.setup(spec["setup_timeout"])
        pipe.send(("ready", ready, worker.unreachable_reason()))
        command = pipe.recv()
        if command[0] == "start":
            _, start_at, measure_at, end_at = command
            worker.spectate_at = start_at + spec["spectator_delay"]
            if isinstance(worker, Worker046):
                worker.schedule_finish(
                    measure_at + spec["finish_at"], spec["finish_spread"], spec["finish_margin"]
                )
            worker.run(
                start_at, measure_at, end_at, drain=spec["drain"],
                panel_interval=spec["panel_interval"],
            )
        pipe.send(("result", worker.result()))
    finally:
        worker.close()


def make_worker(spec: dict[str, Any], match_ids: list[int], prefix: str, seed: int) -> Worker:
    """The worker for ``spec["dialect"]``: 004 players, or 046 players and spectators."""
    common = dict(
        seed=seed, connect_concurrency=spec["connect_concurrency"],
        kernel_timestamps=spec["kernel_timestamps"],
    )
    if spec["dialect"] in ("046", "2025"):
        ranks = spec.get("finish_ranks", {})
        worker_class = Worker2025 if spec["dialect"] == "2025" else Worker046
        return worker_class(
            spec["host"], spec["port"], match_ids, prefix,
            spectators_per_match=spec["spectators_per_match"],
            finish_ranks={m: ranks[m] for m in match_ids if m in ranks},
            finish_total=len(ranks), ranked=spec.get("ranked", False), **common,
        )
    return Worker(spec["host"], spec["port"], match_ids, prefix, **common)


def run_experiment(args: argparse.Namespace, matches: int, tag: str) -> dict[str, Any]:
    """Set up ``matches`` matches, play them, and return the merged report."""
    server_pid = args.server_pid
    server_rss_before = _clients.rss_bytes(server_pid) if server_pid else None
    meter = _clients.CpuMeter(server_pid) if server_pid else None
    machine = _clients.MachineMeter()
    preemptions = _clients.PreemptionMeter(server_pid) if server_pid else None
    setup_timeout = args.setup_timeout if args.setup_timeout else 20.0 + matches * 0.05
    spec_base = {
        "host": args.host, "port": args.port, "prefix": f"lg{tag}p",
        "connect_concurrency": args.connect_concurrency, "setup_timeout": setup_timeout,
        "kernel_timestamps": not args.user_timestamps, "drain": 2.0,
        # 046 clients make their own panels and never ask for them.
        "panel_interval": 0.0 if args.dialect in ("046", "2025") else args.panel_interval,
        "dialect": args.dialect, "spectators_per_match": args.spectators_per_match,
        "spectator_delay": args.spectator_delay,
        "finish_ranks": finishing_ranks(matches, args.finish_matches),
        "finish_at": args.finish_at, "finish_spread": args.finish_spread,
        "finish_margin": args.finish_window, "ranked": args.ranked,
        "progress_interval": 0.0 if args.quiet else args.progress_interval,
    }
    processes = max(1, min(args.processes, matches)) if matches else 1
    shares = _split(matches, processes)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    def on_measure(edge: str) -> None:
        if edge == "start":
            machine.start()
            if meter is not None:
                meter.start()
            if preemptions is not None:
                preemptions.start()
        else:
            machine.stop()
            if meter is not None:
                meter.stop()
            if preemptions is not None:
                preemptions.stop()

    results: list[dict[str, Any]] = []
    ready = 0
    if processes == 1:
        worker = make_worker(spec_base, shares[0], f"lg{tag}p0", seed)
        worker.progress = _clients.Progress(enabled=spec_base["progress_interval"] > 0,
                                            interval=spec_base["progress_interval"])
        try:
            ready = worker.setup(setup_timeout)
            worker.check_reachable()
            start_at = time.monotonic() + 0.2
            worker.spectate_at = start_at + args.spectator_delay
            if isinstance(worker, Worker046):
                worker.schedule_finish(
                    start_at + args.warmup + args.finish_at, args.finish_spread,
                    args.finish_window,
                )
            worker.run(
                start_at, start_at + args.warmup, start_at + args.warmup + args.duration,
                panel_interval=spec_base["panel_interval"], on_measure=on_measure,
            )
            results.append(worker.result())
        finally:
            worker.close()
    else:
        context = multiprocessing.get_context("fork")
        children = []
        for index, share in enumerate(shares):
            parent_end, child_end = context.Pipe()
            spec = dict(spec_base, match_ids=share, prefix=f"lg{tag}p{index}", seed=seed + index,
                        index=index)
            process = context.Process(target=_worker_process, args=(spec, child_end), daemon=True)
            process.start()
            children.append((process, parent_end))
        try:
            unreachable = []
            for process, pipe in children:
                if not pipe.poll(setup_timeout + 30):
                    raise RuntimeError("a generator process did not finish its set-up")
                _, process_ready, reason = pipe.recv()
                ready += process_ready
                unreachable.append(reason)
            if None not in unreachable:
                for _, pipe in children:
                    pipe.send(("stop",))
                raise _clients.ServerUnreachable(args.host, args.port, unreachable[0])
            start_at = time.monotonic() + 0.3
            measure_at = start_at + args.warmup
            end_at = measure_at + args.duration
            for _, pipe in children:
                pipe.send(("start", start_at, measure_at, end_at))
            time.sleep(max(0.0, measure_at - time.monotonic()))
            on_measure("start")
            time.sleep(max(0.0, end_at - time.monotonic()))
            on_measure("stop")
            for process, pipe in children:
                if not pipe.poll(30):
                    raise RuntimeError("a generator process did not report")
                results.append(pipe.recv()[1])
        finally:
            for process, _ in children:
                process.join(5)
                if process.is_alive():
                    process.kill()
    report = merge_results(results, matches=matches, processes=processes)
    report["duration"] = args.duration
    report["warmup"] = args.warmup
    pairs = report.pop("finished_pairs", None)
    if pairs is not None:
        report["finish_at"] = args.finish_at
        if args.database:
            report["stored"] = check_stored(
                args.database, args.replays_directory, pairs, ranked=args.ranked,
                timeout=args.store_timeout,
            )
    if meter is not None:
        report["server_cpu_percent"] = None if meter.percent is None else round(meter.percent, 1)
        report["server_rss_mib"] = _clients.mib(_clients.rss_bytes(server_pid))
        report["server_rss_before_mib"] = _clients.mib(server_rss_before)
        if preemptions is not None and preemptions.count is not None:
            report["server_preempted"] = preemptions.count
    if machine.busy_percent is not None:
        # What the rest of the machine (other people's processes) used meanwhile;
        # approximate, since interrupt time is not always charged to a process.
        others = machine.busy_percent - (report["generator_cpu_percent"] or 0.0)
        if meter is not None and meter.percent is not None:
            others -= meter.percent
        report["machine_busy_percent"] = round(machine.busy_percent, 1)
        report["machine_steal_percent"] = round(machine.steal_percent or 0.0, 1)
        report["other_processes_cpu_percent"] = round(max(0.0, others), 1)
    report["generator_limited"] = generator_limited(report)
    return report


def merge_results(results: list[dict[str, Any]], *, matches: int, processes: int) -> dict[str, Any]:
    names = ["latency", "read_latency", "send_lag", "panel_rtt", "setup_panel_rtt"]
    keys = ["matches_ready", "sent_total", "received_total", "lost", "gaps", "reordered",
            "closed", "pings", "panels", "opponent_panels"]
    if "spectators" in results[0]:  # protocol 046
        names += ["spectator_latency", "spectator_read_latency", "login_rtt"]
        keys += ["spectators", "spectators_ready", "spectators_ready_at_window",
                 "spectator_received_total", "spectator_lost", "spectator_gaps",
                 "spectator_reordered", "spectator_closed", "spectator_pings"]
    histograms = {name: Histogram() for name in names}
    total: dict[str, Any] = {"matches": matches, "processes": processes}
    for key in keys:
        total[key] = sum(result[key] for result in results)
    failures: dict[str, int] = {}
    window_seconds = []
    sent = received = spectator_received = 0
    generator_cpu = 0.0
    preempted = 0
    for result in results:
        for name, histogram in histograms.items():
            histogram.add_sparse(result[name])
        for reason, count in result["failures"].items():
            failures[reason] = failures.get(reason, 0) + count
        window = result["window"]
        if "seconds" in window:
            window_seconds.append(window["seconds"])
            sent += window["sent"]
            received += window["received"]
            spectator_received += window.get("spectator_received", 0)
            generator_cpu += window["cpu"]
            preempted += window["preempted"]
    total["setup_seconds"] = round(max(result["setup_seconds"] for result in results), 2)
    total["failures"] = failures
    seconds = max(window_seconds) if window_seconds else 0.0
    total["window_seconds"] = round(seconds, 2)
    total["sent"] = sent
    total["received"] = received
    if "spectators" in total:
        total["spectator_received"] = spectator_received
    players = 2 * total["matches_ready"]
    total["rate_per_player"] = round(sent / seconds / players, 2) if seconds and players else None
    total["generator_cpu_percent"] = round(100 * generator_cpu / seconds, 1) if seconds else None
    # Involuntary context switches: how often another process took the generator's core.
    total["generator_preempted"] = preempted
    for name, histogram in histograms.items():
        total[name + "_ms"] = histogram.summary_ms()
    if "finish_latency" in results[0]:
        _merge_finish(total, results, seconds)
    return total


def _merge_finish(total: dict[str, Any], results: list[dict[str, Any]], seconds: float) -> None:
    """The finishing games: counts, the result round trip, and the latency around them."""
    meta = next((r["finish_meta"] for r in results if r["finish_meta"]), {})
    for key in ("finish_scheduled", "games_over_sent", "results_back"):
        total[key] = sum(result[key] for result in results)
    total["finished_pairs"] = [pair for result in results for pair in result["finished_pairs"]]
    total["finished_matches"] = len(total["finished_pairs"])
    if "ranked_matches" in results[0]:
        total["ranked_matches"] = sum(result["ranked_matches"] for result in results)
    rtt = Histogram()
    for result in results:
        rtt.add_sparse(result["result_rtt"])
    total["result_rtt_ms"] = rtt.summary_ms()
    total["finish_window"] = {
        "margin": meta.get("margin"), "spread": meta.get("spread"),
    }
    for kind, key in (("players", "finish_latency"), ("spectators", "finish_spectator_latency")):
        count = meta.get("seconds", 0)
        per_second = [Histogram() for _ in range(count)]
        whole = Histogram()
        for result in results:
            for index, sparse in enumerate(result[key]):
                per_second[index].add_sparse(sparse)
                whole.add_sparse(sparse)
        if kind == "spectators" and not whole.count:
            continue
        total["finish_window"][kind] = whole.summary_ms()
        total["finish_window"][kind + "_per_second"] = [
            dict(histogram.summary_ms(), second=round(index - meta["margin"], 3))
            for index, histogram in enumerate(per_second)
        ]
    # Players whose game ended stop sending: the rate is the others'.
    players = 2 * (total["matches_ready"] - total["finish_scheduled"])
    steady = total["sent"] - sum(r["window"].get("finisher_sent", 0) for r in results)
    total["rate_per_player"] = (
        round(steady / seconds / players, 2) if seconds and players > 0 else None
    )


def check_stored(
    database: str, replays_directory: str | None, pairs: list[list[Any]], *, ranked: bool,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Whether each ended game is in the server's database exactly once, as reported.

    ``pairs`` are [player 1, player 2, outcome]; waits up to ``timeout`` for
    storage to catch up.  With ``replays_directory``, each game's replay file
    must exist there, non-empty.
    """
    expected = {(one, two): outcome for one, two, outcome in pairs}
    deadline = time.monotonic() + timeout
    while True:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            rows = connection.execute(
                "SELECT game_id, player1_name, player2_name, winner, decided_by, ranked, rated,"
                " replay_path FROM games"
            ).fetchall()
            history = dict(connection.execute(
                "SELECT game_id, COUNT(*) FROM rating_history WHERE kind = 'game' GROUP BY game_id"
            ).fetchall())
        finally:
            connection.close()
        found: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for row in rows:
            key = (row[1], row[2])
            if key in expected:
                found.setdefault(key, []).append(row)
        if len(found) == len(expected) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    once = sum(1 for games in found.values() if len(games) == 1)
    wrong = rated = replays = 0
    for key, games in found.items():
        for game_id, _, _, winner, decided_by, is_ranked, is_rated, path in games:
            if winner != expected[key] or decided_by != "agreement" or (
                ranked and not (is_ranked and is_rated)
            ):
                wrong += 1
            if is_rated and history.get(game_id) == 2:
                rated += 1
            if path and replays_directory:
                full = os.path.join(replays_directory, path)
                if os.path.isfile(full) and os.path.getsize(full) > 0:
                    replays += 1
    report = {
        "expected": len(expected),
        "stored_once": once,
        "missing": len(expected) - len(found),
        "duplicated": sum(1 for games in found.values() if len(games) > 1),
        "wrong_result": wrong,
        "rated_with_history": rated,
    }
    if replays_directory:
        report["replay_files"] = replays
    report["ok"] = (
        once == len(expected) and wrong == 0
        and (not ranked or rated == len(expected))
        and (not replays_directory or replays == len(expected))
    )
    return report


def generator_limited(report: dict[str, Any]) -> bool:
    """Whether the generator, not the server, kept the schedule from being met."""
    lag = report["send_lag_ms"]["p99"]
    rate = report["rate_per_player"]
    cpu = report["generator_cpu_percent"] or 0.0
    cores = min(report["processes"], len(os.sched_getaffinity(0)))
    return bool(
        (lag is not None and lag > 4.0)
        or (rate is not None and rate < 0.97 * 60)
        or cpu > 95.0 * cores
    )


def passed(report: dict[str, Any], p99_limit_ms: float) -> bool:
    p99 = report["latency_ms"]["p99"]
    if "spectators" in report and not (
        report["spectators_ready"] == report["spectators"]
        and report["spectator_lost"] == report["spectator_gaps"] == 0
        and report["spectator_reordered"] == report["spectator_closed"] == 0
    ):
        return False
    return (
        report["matches_ready"] == report["matches"]
        and report["lost"] == 0
        and report["gaps"] == 0
        and report["reordered"] == 0
        and report["closed"] == 0
        and p99 is not None
        and p99 < p99_limit_ms
    )


# ---------------------------------------------------------------------------
# Output


def format_report(report: dict[str, Any]) -> str:
    def row(name: str, summary: dict[str, Any]) -> str:
        return (
            f"  {name:<28} p50 {_fmt(summary['p50'])}  p99 {_fmt(summary['p99'])}"
            f"  max {_fmt(summary['max'])}  (n={summary['n']})"
        )

    lines = [
        f"matches {report['matches']} (ready {report['matches_ready']}, set-up "
        f"{report['setup_seconds']} s)  window {report['window_seconds']} s after "
        f"{report['warmup']} s warm-up  processes {report['processes']}",
        f"  inputs sent {report['sent']}  received {report['received']}  rate "
        f"{report['rate_per_player']}/s per player  lost {report['lost']}  gaps "
        f"{report['gaps']}  reordered {report['reordered']}  closed {report['closed']}",
        row("latency ms (kernel receipt)", report["latency_ms"]),
        row("latency ms (generator read)", report["read_latency_ms"]),
        row("generator send lag ms", report["send_lag_ms"]),
    ]
    if "spectators" in report:
        lines += [
            f"  spectators {report['spectators']} (watching {report['spectators_ready']}, "
            f"{report['spectators_ready_at_window']} when the window opened)  inputs received "
            f"{report['spectator_received']}  lost {report['spectator_lost']}  gaps "
            f"{report['spectator_gaps']}  reordered {report['spectator_reordered']}  closed "
            f"{report['spectator_closed']}",
            row("to spectators ms (kernel)", report["spectator_latency_ms"]),
            row("to spectators ms (read)", report["spectator_read_latency_ms"]),
            row("login round trip ms", report["login_rtt_ms"]),
        ]
    else:
        lines += [
            row("panel round trip ms", report["panel_rtt_ms"]),
            row("panel round trip ms, before", report["setup_panel_rtt_ms"]),
        ]
    if "finished_matches" in report:
        window = report["finish_window"]
        lines += [
            f"  finishing matches {report['finish_scheduled']} at {report['finish_at']} s into "
            f"the window (over {window['spread']} s): game_over sent {report['games_over_sent']}"
            f", games ended {report['finished_matches']}, back at select "
            f"{report['results_back']} players"
            + (f", ranked matches {report['ranked_matches']}" if "ranked_matches" in report
               else ""),
            row("game_over -> select ms", report["result_rtt_ms"]),
            row(f"latency ms, +-{window['margin']} s", window["players"]),
        ]
        for second in window["players_per_second"]:
            lines.append(row(f"  second {second['second']:+g}", second))
        if "spectators" in window:
            lines.append(row(f"to spectators ms, +-{window['margin']} s", window["spectators"]))
        if "stored" in report:
            lines.append(f"  stored: {report['stored']}")
    lines += [
        f"  generator cpu {report['generator_cpu_percent']}% (of "
        f"{report['processes']} process(es)), preempted {report['generator_preempted']} times",
    ]
    if "server_cpu_percent" in report:
        lines.append(
            f"  server cpu {report['server_cpu_percent']}% of one core  rss "
            f"{report['server_rss_mib']} MiB (before set-up {report['server_rss_before_mib']} MiB)"
            f", preempted {report.get('server_preempted', '-')} times"
        )
    if "machine_busy_percent" in report:
        lines.append(
            f"  machine busy {report['machine_busy_percent']}% of one core, of which other "
            f"processes about {report['other_processes_cpu_percent']}%; steal "
            f"{report['machine_steal_percent']}%"
        )
    if report["failures"]:
        lines.append(f"  failures {report['failures']}")
    if report["generator_limited"]:
        lines.append(
            "  WARNING: the generator fell behind its schedule (saturated, or its core taken "
            "by other processes); the latency may be the generator's, not the server's"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------
# Ramp


def ramp(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Find the largest N with latency p99 under the limit and nothing lost.

    N doubles from ``--ramp-start`` until a step fails (or ``--ramp-max``),
    then ``--ramp-bisect`` bisection steps narrow the bracket.  A step where
    the generator fell behind stops the search: its answer would be the
    generator's limit, not the server's.
    """
    limit = args.ramp_p99_ms
    best = 0
    failed: int | None = None
    stopped_by_generator = False
    step = 0

    def attempt(matches: int) -> bool | None:
        nonlocal step
        step += 1
        report = run_experiment(args, matches, f"{os.getpid() % 1000}r{step}")
        report["ramp_step"] = step
        report["passed"] = passed(report, limit)
        emit(report)
        time.sleep(args.ramp_pause)  # let the server close the previous step's connections
        if report["generator_limited"]:
            return None
        return report["passed"]

    matches = args.ramp_start
    while matches <= args.ramp_max:
        outcome = attempt(matches)
        if outcome is None:
            stopped_by_generator = True
            break
        if not outcome:
            failed = matches
            break
        best = matches
        matches *= 2
    if failed is not None and not stopped_by_generator:
        low, high = best, failed
        for _ in range(args.ramp_bisect):
            middle = (low + high) // 2
            if middle in (low, high):
                break
            outcome = attempt(middle)
            if outcome is None:
                stopped_by_generator = True
                break
            if outcome:
                low = middle
            else:
                high = middle
        best = low
        failed = high
    return {
        "ramp": True,
        "largest_passing_matches": best,
        "smallest_failing_matches": failed,
        "p99_limit_ms": limit,
        "stopped_by_generator": stopped_by_generator,
        "steps": step,
    }


# ---------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Play N matches against a netplay server and measure input latency.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=49569)
    parser.add_argument("--matches", type=int, default=200, help="matches (two clients each)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of play before measuring")
    parser.add_argument("--processes", type=int, default=1,
                        help="generator processes to spread the matches over")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="sample this process's CPU, RSS and preemptions over the measured "
                             "window: preempted counts the involuntary context switches of its "
                             "threads within the window (summed per thread; threads that end "
                             "within the window are left out)")
    parser.add_argument("--setup-timeout", type=float, default=None,
                        help="seconds allowed to connect and pair (default 20 + 0.05 per match)")
    parser.add_argument("--connect-concurrency", type=int, default=100,
                        help="connections being set up at once, per process")
    parser.add_argument("--panel-interval", type=float, default=PANEL_INTERVAL,
                        help="seconds between a player's panel requests; 0: only the first")
    parser.add_argument("--user-timestamps", action="store_true",
                        help="time receipt when the generator reads, not by kernel timestamps")
    parser.add_argument("--seed", type=int, default=None, help="seed of the send phases")
    parser.add_argument("--dialect", choices=("004", "046", "2025"), default="004",
                        help="004: the older clients; 046: the 2022 client, with login; "
                        "2025: the 2023-2025 clients (stable, 004, end-marker framing)")
    parser.add_argument("--spectators-per-match", type=int, default=0,
                        help="046: spectators joining each match in progress")
    parser.add_argument("--spectator-delay", type=float, default=1.0,
                        help="046: seconds of play before the spectators connect")
    parser.add_argument("--finish-matches", type=int, default=0, metavar="N",
                        help="046: N of the matches end their game during the measured window "
                        "(both players send game_over, same outcome) and then idle at select")
    parser.add_argument("--finish-at", type=float, default=10.0, metavar="SECONDS",
                        help="046: seconds into the measured window when the first game ends")
    parser.add_argument("--finish-spread", type=float, default=1.0, metavar="SECONDS",
                        help="046: the finishing games end evenly over this many seconds")
    parser.add_argument("--finish-window", type=float, default=2.0, metavar="SECONDS",
                        help="046: inputs sent this long before the first game_over up to this "
                        "long after the last are reported apart, per second")
    parser.add_argument("--ranked", action="store_true",
                        help="046: every match asks to be ranked (server: --placement-rule "
                        "relaxed) so that finishing games change ratings")
    parser.add_argument("--database", default=None, metavar="PATH",
                        help="046 --finish-matches: after the run, check in the server's SQLite "
                        "file that every ended game was stored exactly once")
    parser.add_argument("--replays-directory", default=None, metavar="DIR",
                        help="with --database: the server's replays directory; each stored "
                        "game's replay file must be there")
    parser.add_argument("--store-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long --database waits for the games to be stored")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per line instead of the text report")
    parser.add_argument("--ramp", action="store_true",
                        help="search the largest N that meets --ramp-p99-ms with no loss")
    parser.add_argument("--ramp-start", type=int, default=100)
    parser.add_argument("--ramp-max", type=int, default=3200)
    parser.add_argument("--ramp-bisect", type=int, default=2, help="bisection steps after doubling")
    parser.add_argument("--ramp-p99-ms", type=float, default=16.7)
    parser.add_argument("--ramp-pause", type=float, default=3.0,
                        help="seconds between ramp steps")
    parser.add_argument("--progress-interval", type=float, default=_clients.PROGRESS_INTERVAL,
                        metavar="SECONDS",
                        help="seconds between progress lines on stderr (%(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.finish_matches:
        if args.dialect not in ("046", "2025") or args.ramp:
            parser.error("--finish-matches needs --dialect 046 or 2025 and no --ramp")
        if not 0 <= args.finish_at <= args.finish_at + args.finish_spread <= args.duration:
            parser.error("the finishing games must end within the measured window")
    tighten_timer_slack()
    soft, _hard = _clients.raise_open_file_limit()
    needed = 2 * (args.ramp_max if args.ramp else args.matches) // max(1, args.processes) + 64
    if needed > soft:
        print(f"warning: {needed} sockets per process may exceed the open-file limit {soft}",
              file=sys.stderr)

    def emit(report: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            print(format_report(report), flush=True)

    try:
        return _run(args, emit)
    except _clients.ServerUnreachable as error:
        return _clients.report_unreachable("loadgen", error)


def _run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> int:
    """The experiment or the ramp of ``args``; the exit status."""
    if args.ramp:
        summary = ramp(args, emit)
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            print(
                f"ramp: largest passing N = {summary['largest_passing_matches']} matches "
                f"(p99 < {summary['p99_limit_ms']} ms, no loss); smallest failing N = "
                f"{summary['smallest_failing_matches']}"
                + ("; stopped: the generator fell behind" if summary["stopped_by_generator"]
                   else ""),
                flush=True,
            )
        return 0
    report = run_experiment(args, args.matches, str(os.getpid() % 100000))
    emit(report)
    ok = report["matches_ready"] == report["matches"] and report["lost"] == 0
    if "spectators" in report:
        ok = ok and report["spectators_ready"] == report["spectators"] and (
            report["spectator_lost"] == 0
        )
    if "stored" in report:
        ok = ok and report["stored"]["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
