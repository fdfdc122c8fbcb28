#!/usr/bin/env python3
"""Login storm: K 2022 clients (protocol 046) log in at once; time every answer.

``--dialect 2025``: the 2025 stable client (network version 004) instead,
which sends ``H004`` alone and its ``login_request`` (end-marker framing)
when ``H`` comes back.

Two phases against one server (and so one database):

1. *Seed*: ``--returning`` of the K names connect (a bounded number at a
   time), log in with ``"need a new user id"``, keep the id they are given,
   and disconnect.
2. *Storm*: all K connect at once.  Each sends ``H046`` and its name message
   in one write, as the 2022 client does, and on the first lobby list (the
   server's answer to the name) sends ``login_request``: the returning ones
   with their id from phase 1, the others asking for a new one.

Per connection the tool takes the time from writing ``login_request`` to the
arrival of ``login_successful`` or ``login_denied`` (the kernel's receive
timestamp, ``SO_TIMESTAMPNS``, so a busy tool does not add its own delay),
and reports p50/p99/max, per group and overall, and how many took longer
than ``--limit`` seconds.  Pings are answered; lobby lists are framed but
not parsed.

Example (server with a real database file)::

    .venv/bin/netplay-server --host 127.0.0.1 --port 49569 --database /tmp/storm.sqlite3 &
    taskset -c 1 .venv/bin/python tools/loginstorm.py --port 49569 --clients 2000 \\
        --server-pid $!
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time
from typing import Any

try:  # run as a script: tools/ is on sys.path
    import _clients
except ImportError:  # imported as tools.loginstorm
    from tools import _clients  # type: ignore[no-redef]

from netplay.framing import endmarker
from netplay.framing.length3 import encode_json
from netplay.testing import hello046, login_message2025

CONNECTING, HANDSHAKE = _clients.CONNECTING, _clients.HANDSHAKE
LOBBY_PREFIX, SERVER_LENGTHS = _clients.LOBBY_PREFIX, _clients.SERVER_LENGTHS
# After NEW, CONNECTING and HANDSHAKE (0-2).
LOGGING_IN, ANSWERED, FAILED = range(3, 6)

NEW_USER_ID = "need a new user id"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value, absent from Python 3.11
TIMESTAMP_SPACE = socket.CMSG_SPACE(16)
_timespec = struct.Struct("qq")
RECEIVE_SIZE = 256 * 1024
FILE_MARGIN = 64




class Client(_clients.Client):
    __slots__ = ("user_id", "returning", "inbuf", "connect_at", "registered_at", "login_sent_at",
                 "answered_at", "result", "new_user_id")

    def __init__(self, index: int, name: str, user_id: str | None, returning: bool) -> None:
        super().__init__(index, name)
        self.hello = hello046(name)
        self.user_id = user_id  # None: ask for a new one
        self.returning = returning
        self.inbuf = b""
        self.connect_at = 0.0  # wall-clock times, comparable with kernel timestamps
        self.registered_at = 0.0
        self.login_sent_at = 0.0
        self.answered_at = 0.0
        self.result: str | None = None  # "new_id", "welcome_back", "denied", ...
        self.new_user_id: str | None = None


class Crowd(_clients.EpollClients):
    """Clients that connect, name themselves and log in.  Owns the sockets."""

    FAILED = FAILED

    def __init__(self, host: str, port: int, clients: list[Client], *, concurrency: int) -> None:
        super().__init__(host, port, connect_concurrency=concurrency)
        self.clients = clients
        self.connect_queue = list(reversed(clients))
        self.answered = 0
        self.bytes_received = 0

    def _socket_opened(self, sock: socket.socket, now: float) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def _established(self, client: Client, now: float) -> None:
        client.connect_at = time.time()

    def _fail(self, client: Client, reason: str) -> None:
        if client.state in (CONNECTING, HANDSHAKE, LOGGING_IN):
            self.in_flight -= 1
        client.state = FAILED
        self._count(reason)
        self._drop_socket(client)

    def _send_failed(self, client: Client) -> None:
        self._fail(client, "send_failed")

    def _receive(self, client: Client) -> tuple[bytes, float] | None:
        """What the socket has, after the bytes kept from before, and when it arrived.

        None when there is nothing to handle: no data yet, or the connection ended.
        """
        sock = client.sock
        if sock is None:
            return None
        try:
            data, ancillary, _flags, _address = sock.recvmsg(RECEIVE_SIZE, TIMESTAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._lost(client, "connection_reset")
            return None
        if not data:
            self._lost(client, "closed_by_server")
            return None
        self.bytes_received += len(data)
        arrived_at = time.time()
        if ancillary:
            seconds, nanoseconds = _timespec.unpack(ancillary[0][2])
            arrived_at = seconds + nanoseconds * 1e-9
        if client.inbuf:
            data = client.inbuf + data
            client.inbuf = b""
        return data, arrived_at

    def _read(self, client: Client) -> None:
        received = self._receive(client)
        if received is None:
            return
        data, arrived_at = received
        end, position = len(data), 0
        while position < end:
            letter = data[position]
            if letter == 74:  # J
                if position + 4 > end:
                    break
                frame_end = position + 4 + int.from_bytes(data[position + 1 : position + 4], "big")
                if frame_end > end:
                    break
                self._json(client, data[position + 4 : frame_end], arrived_at)
                if client.state == FAILED:
                    return
                position = frame_end
                continue
            length = SERVER_LENGTHS[letter]
            if length == 0:
                self._fail(client, "unknown_letter_" + chr(letter))
                return
            if position + length > end:
                break
            if letter == 69:  # E: ping
                client.pings += 1
                self._send(client, b"F" + data[position + 1 : position + 4])
            elif letter == 78:  # N: version refused
                self._fail(client, "version_refused")
                return
            position += length
        if position < end:
            client.inbuf = data[position:]

    def _lost(self, client: Client, reason: str) -> None:
        if client.state == ANSWERED:
            self._drop_socket(client)  # answered already: what happens next is not measured
            return
        self._fail(client, reason)

    def _json(self, client: Client, body: bytes, arrived_at: float) -> None:
        if body.startswith(LOBBY_PREFIX):
            if client.state == HANDSHAKE:
                # Named: now the client enters the lobby and logs in.
                client.registered_at = arrived_at
                client.state = LOGGING_IN
                client.login_sent_at = time.time()
                self._send(client, encode_json(
                    {"login_request": True, "user_id": client.user_id or NEW_USER_ID}
                ))
            return
        if client.state not in (HANDSHAKE, LOGGING_IN):
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self._fail(client, "bad_json")
            return
        if "login_successful" in payload or "login_denied" in payload:
            if client.state != LOGGING_IN:
                self._fail(client, "login_reply_before_request")
                return
            client.answered_at = arrived_at
            client.state = ANSWERED
            self.in_flight -= 1
            self.answered += 1
            if "login_denied" in payload:
                client.result = "denied"
            elif "new_user_id" in payload:
                client.result = "new_id"
                client.new_user_id = str(payload["new_user_id"])
            else:
                client.result = "renamed" if payload.get("name_changed") else "welcome_back"
        elif "choose_another_name" in payload:
            self._fail(client, "name_refused")

    def _log_in(self, client: Client, arrived_at: float) -> None:
        client.registered_at = arrived_at
        client.state = LOGGING_IN
        client.login_sent_at = time.time()
        self._send(client, endmarker.encode_json(
            login_message2025(client.name, client.user_id or NEW_USER_ID)
        ))

    def run(self, deadline: float) -> None:
        """Connect and log in until everyone is answered or failed, or the deadline."""
        while time.monotonic() < deadline:
            now = time.monotonic()
            self._start_due_connects(now)
            if not (self.connect_queue or self.retries or self.in_flight):
                return
            self._poll(0.01)


class Crowd2025(Crowd):
    """The same crowd as 2025 clients: ``H004`` alone, the login on ``H``, end markers."""

    def __init__(self, host: str, port: int, clients: list[Client], *, concurrency: int) -> None:
        super().__init__(host, port, clients, concurrency=concurrency)
        for client in clients:
            client.hello = b"H004"

    def _read(self, client: Client) -> None:
        received = self._receive(client)
        if received is None:
            return
        data, arrived_at = received
        end, position = len(data), 0
        while position < end:
            letter = data[position]
            if letter in MARKED_LETTERS:
                stop = data.find(endmarker.MARKER, position + 1)
                if stop < 0:
                    break
                if letter == 74:  # J
                    self._json(client, data[position + 1 : stop], arrived_at)
                    if client.state == FAILED:
                        return
                position = stop + len(endmarker.MARKER)
                continue
            if letter == 72:  # H: the handshake accepted
                if client.state == HANDSHAKE:
                    self._log_in(client, arrived_at)
            elif letter == 69:  # E: ping
                client.pings += 1
                self._send(client, b"E")
            elif letter == 78:  # N: version refused
                self._fail(client, "version_refused")
                return
            else:
                self._fail(client, "unknown_letter_" + chr(letter))
                return
            position += 1
        if position < end:
            client.inbuf = data[position:]


MARKED_LETTERS = frozenset(b"JIU")
CROWDS = {"046": Crowd, "2025": Crowd2025}


def _ms(values: list[float]) -> dict[str, Any]:
    summary = _clients.percentiles([value * 1000.0 for value in values])
    summary["n"] = len(values)
    return summary


def seed_phase(args: argparse.Namespace, names: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Log ``names`` in with new ids, then disconnect; return name -> id and a summary."""
    clients = [Client(index, name, None, False) for index, name in enumerate(names)]
    crowd = CROWDS[args.dialect](args.host, args.port, clients, concurrency=args.seed_concurrency)
    start = time.monotonic()
    try:
        crowd.run(start + args.timeout)
    finally:
        crowd.close()
    crowd.check_reachable()
    ids = {c.name: c.new_user_id for c in clients if c.result == "new_id" and c.new_user_id}
    summary = {
        "clients": len(clients),
        "ids": len(ids),
        "seconds": round(time.monotonic() - start, 2),
        "failures": crowd.failures,
    }
    return ids, summary


def storm_phase(
    args: argparse.Namespace, new_names: list[str], returning: dict[str, str]
) -> dict[str, Any]:
    clients = [Client(i, name, None, False) for i, name in enumerate(new_names)]
    clients += [
        Client(len(new_names) + i, name, user_id, True)
        for i, (name, user_id) in enumerate(returning.items())
    ]
    random.Random(args.seed).shuffle(clients)  # new and returning mixed, as in life
    crowd = CROWDS[args.dialect](
        args.host, args.port, clients, concurrency=args.connect_concurrency or len(clients)
    )
    pid = args.server_pid
    meter = _clients.started_cpu_meter(pid)
    own_cpu = _clients.own_cpu_seconds()
    start = time.monotonic()
    try:
        crowd.run(start + args.timeout)
    finally:
        elapsed = time.monotonic() - start
        own = _clients.own_cpu_seconds()
        crowd.close()
    crowd.check_reachable()
    answered = [c for c in clients if c.state == ANSWERED]
    login = [c.answered_at - c.login_sent_at for c in answered]
    report: dict[str, Any] = {
        "clients": len(clients),
        "new": len(new_names),
        "returning": len(returning),
        "answered": len(answered),
        "results": {},
        "login_ms": _ms(login),
        "login_new_ms": _ms([c.answered_at - c.login_sent_at for c in answered if not c.returning]),
        "login_returning_ms": _ms(
            [c.answered_at - c.login_sent_at for c in answered if c.returning]
        ),
        "over_limit": sum(1 for seconds in login if seconds > args.limit)
        + (len(clients) - len(answered)),
        "limit_seconds": args.limit,
        "registered_ms": _ms([c.registered_at - c.connect_at for c in clients if c.registered_at]),
        "connect_to_login_reply_ms": _ms([c.answered_at - c.connect_at for c in answered]),
        "storm_seconds": round(
            max(c.answered_at for c in answered) - min(c.connect_at for c in answered), 3
        ) if answered else None,
        "failures": crowd.failures,
        "bytes_received": crowd.bytes_received,
        "tool_cpu_percent": round(100 * (own - own_cpu) / max(elapsed, 1e-9), 1),
    }
    for client in answered:
        key = f"{'returning' if client.returning else 'new'}_{client.result}"
        report["results"][key] = report["results"].get(key, 0) + 1
    if meter is not None:
        meter.stop()
        report["server_cpu_percent"] = None if meter.percent is None else round(meter.percent, 1)
        report["server_cpu_seconds"] = None if meter.cpu is None else round(meter.cpu, 2)
    return report


def format_report(report: dict[str, Any]) -> str:
    def row(name: str, summary: dict[str, Any]) -> str:
        return (f"  {name:<32} p50 {_fmt(summary['p50'])}  p99 {_fmt(summary['p99'])}  "
                f"max {_fmt(summary['max'])}  (n={summary['n']})")

    seed = report["seed"]
    storm = report["storm"]
    lines = [
        f"seed: {seed['ids']}/{seed['clients']} ids created in {seed['seconds']} s"
        + (f"  failures {seed['failures']}" if seed["failures"] else ""),
        f"storm: {storm['answered']}/{storm['clients']} answered ({storm['new']} new, "
        f"{storm['returning']} returning) in {storm['storm_seconds']} s; "
        f"{storm['over_limit']} over {storm['limit_seconds']} s or unanswered",
        f"  results {storm['results']}",
        row("login_request -> reply ms", storm["login_ms"]),
        row("  new ids", storm["login_new_ms"]),
        row("  returning ids", storm["login_returning_ms"]),
        row("connect -> lobby list ms", storm["registered_ms"]),
        row("connect -> login reply ms", storm["connect_to_login_reply_ms"]),
        f"  tool cpu {storm['tool_cpu_percent']}%  bytes received {storm['bytes_received']}",
    ]
    if "server_cpu_percent" in storm:
        lines.append(f"  server cpu {storm['server_cpu_percent']}% of one core "
                     f"({storm['server_cpu_seconds']} s)")
    if storm["failures"]:
        lines.append(f"  failures {storm['failures']}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Storm a server with 2022-client logins, new and returning, and time them.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=49569)
    parser.add_argument("--clients", type=int, default=2000, help="K, connections in the storm")
    parser.add_argument("--returning", type=int, default=None,
                        help="of them, how many log in with an id made in the seed phase "
                             "(default half)")
    parser.add_argument("--limit", type=float, default=2.0,
                        help="seconds a login answer may take (counted in over_limit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per phase")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds between the phases, for the server to let the names go")
    parser.add_argument("--seed-concurrency", type=int, default=200,
                        help="seed phase: connections being set up at once")
    parser.add_argument("--connect-concurrency", type=int, default=None,
                        help="storm: connections being set up at once (default: all)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="sample this process's CPU during the storm")
    parser.add_argument("--name-prefix", default=None,
                        help="start of every name (default: fresh per run, so that new "
                             "names are new to the database)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the connect order")
    parser.add_argument("--dialect", choices=sorted(CROWDS), default="046",
                        help="046: the 2022 client; 2025: the 2025 stable client (004)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    returning = args.clients // 2 if args.returning is None else args.returning
    if not 0 <= returning <= args.clients:
        print("error: --returning must be between 0 and --clients", file=sys.stderr)
        return 2
    soft, _hard = _clients.raise_open_file_limit()
    if args.clients + FILE_MARGIN > soft:
        print(f"warning: {args.clients} clients may exceed the open-file limit {soft}",
              file=sys.stderr)
    # Names: at most 16 letters, digits and underscores (the 2022 client's rule).
    prefix = args.name_prefix or f"ls{random.randrange(36**4):x}"
    returning_names = [f"{prefix}r{i}" for i in range(returning)]
    new_names = [f"{prefix}n{i}" for i in range(args.clients - returning)]
    if any(len(name) > 16 for name in returning_names + new_names):
        print("error: names would exceed 16 characters; use a shorter --name-prefix",
              file=sys.stderr)
        return 2
    try:
        ids, seed_summary = seed_phase(args, returning_names)
        time.sleep(args.pause)
        storm = storm_phase(args, new_names, ids)
    except _clients.ServerUnreachable as error:
        return _clients.report_unreachable("loginstorm", error)
    report = {"mode": "login_storm", "seed": seed_summary, "storm": storm}
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    ok = len(ids) == returning and storm["answered"] == args.clients and not storm["over_limit"]
    ok = ok and set(storm["results"]) <= {"new_new_id", "returning_welcome_back"}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
