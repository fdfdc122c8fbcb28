#!/usr/bin/env python3
"""Hold K idle registered connections, or storm the lobby with K players.

Hold mode (default): K clients connect (a bounded number at a time), send
``H004`` and a registration with a unique name in one write, and answer every
``ELOL`` with ``FLOL``.  A client counts as registered when its first lobby
list arrives.  After every client registered, they all stay idle for
``--hold`` seconds (longer than the server's idle timeout, so only answered
pings keep them alive); the report says how many are still open, and with
``--server-pid`` the server's RSS before, after, and per held connection.

Storm mode (``--storm``): K players connect at once, as fast as the kernel
takes them.  The report gives the time from the first connect until every
one of them has received a lobby list holding all K names.

The clients are kept cheap so that thousands fit in one process: one epoll
loop, one shared receive buffer, and J frames are not parsed except for the
latest complete lobby list of each read (storm mode) and the rare frame
that is not a lobby list.  A lobby list of thousands of names is larger
than one read, so its pieces are gathered until it is whole.

Examples::

    taskset -c 1 .venv/bin/python tools/connhold.py --port 49569 --clients 10000 \\
        --hold 15 --server-pid "$(pgrep -f netplay-server)"
    taskset -c 1 .venv/bin/python tools/connhold.py --port 49569 --storm --clients 2000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

try:  # run as a script: tools/ is on sys.path
    import _clients
except ImportError:  # imported as tools.connhold
    from tools import _clients  # type: ignore[no-redef]

from netplay.framing.length3 import encode_json

# Plain globals: the per-message code looks these up on every read.
CONNECTING, HANDSHAKE = _clients.CONNECTING, _clients.HANDSHAKE
LOBBY_PREFIX, SERVER_LENGTHS = _clients.LOBBY_PREFIX, _clients.SERVER_LENGTHS

RECEIVE_BUFFER = 256 * 1024
PROGRESS_INTERVAL = 5.0
FILE_MARGIN = 64  # descriptors kept for everything that is not a client socket

# After NEW, CONNECTING and HANDSHAKE (0-2).
REGISTERED, FAILED = range(3, 5)
LOBBY_HEAD = len(LOBBY_PREFIX)


class Client(_clients.Client):
    __slots__ = (
        "tail", "json_left", "json_body", "json_kind", "registered_at", "complete_at", "open",
    )

    def __init__(self, index: int, name: str) -> None:
        super().__init__(index, name)
        self.tail = b""  # the start of a message split by the end of a read
        self.json_left = 0  # bytes of the current J body still to come
        self.json_body: bytearray | None = None  # the J body gathered so far, if kept
        self.json_kind: str | None = None  # "lobby" or "other", once its head is known
        self.registered_at = 0.0
        self.complete_at = 0.0  # storm: when a list with every name arrived
        self.open = False


class Crowd(_clients.EpollClients):
    """K clients in one epoll loop.  Owns the sockets; :meth:`close` closes them."""

    FAILED = FAILED  # this tool's state number for a client that gave up, for the base class

    def __init__(
        self,
        host: str,
        port: int,
        count: int,
        name_prefix: str,
        *,
        storm: bool,
        connect_concurrency: int,
    ) -> None:
        super().__init__(host, port, connect_concurrency=connect_concurrency)
        self.storm = storm
        self.clients = [Client(index, f"{name_prefix}{index}") for index in range(count)]
        self.buffer = bytearray(RECEIVE_BUFFER)
        self.view = memoryview(self.buffer)
        self.connect_queue = list(reversed(self.clients))
        self.registered = 0
        self.complete = 0
        self.closed = 0
        self.bytes_received = 0
        self.lists_checked = 0
        self.first_connect_at = 0.0
        self.connected_at = 0.0  # when the last connection was established
        # Storm: which names a complete list must hold, and the shortest such list.
        names = [client.name for client in self.clients]
        self.names = set(names)
        self.full_list_length = len(encode_json({"unpaired": sorted(names)})) - 4
        self.verdicts: dict[bytes, bool] = {}
        self.show_progress = False
        self.next_progress = time.monotonic() + PROGRESS_INTERVAL

    # -- connections ------------------------------------------------------------

    def _socket_opened(self, sock: socket.socket, now: float) -> None:
        if not self.first_connect_at:
            self.first_connect_at = now

    def _established(self, client: Client, now: float) -> None:
        self.connected_at = now
        client.open = True

    def _lost(self, client: Client, reason: str) -> None:
        """The server closed the connection (or it broke)."""
        if client.state == HANDSHAKE:
            reason += "_before_registration"
        if client.state in (CONNECTING, HANDSHAKE):
            self.in_flight -= 1
        if client.open:
            self.closed += 1
            client.open = False
        if client.state != REGISTERED:
            client.state = FAILED
        self._count(reason)
        self._drop_socket(client)

    def _send_failed(self, client: Client) -> None:
        self._lost(client, "send_failed")

    # -- incoming bytes ------------------------------------------------------------

    def _read(self, client: Client) -> None:
        sock = client.sock
        if sock is None:
            return
        now = time.monotonic()
        try:
            size = sock.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost(client, "connection_reset")
            return
        if size == 0:
            self._lost(client, "closed_by_server")
            return
        self.bytes_received += size
        data: Any = self.view[:size]
        if client.tail:
            data = client.tail + bytes(data)
            client.tail = b""
        end = len(data)
        position = 0
        latest: Any = None  # storm: the last complete lobby list of this read
        if client.json_left:
            take = min(client.json_left, end)
            if client.json_body is not None:
                client.json_body += data[:take]
                if client.json_kind is None:
                    self._classify(client)
            client.json_left -= take
            position = take
            if not client.json_left:
                latest = self._finish_json(client, now)
        while position < end:
            letter = data[position]
            if letter == 74:  # J
                if end - position < 4:
                    client.tail = bytes(data[position:end])
                    break
                start = position + 4
                stop = start + int.from_bytes(data[position + 1 : start], "big")
                if stop <= end:
                    if data[start : start + LOBBY_HEAD] == LOBBY_PREFIX:
                        self._lobby_list(client, now)
                        latest = (start, stop)
                    else:
                        self._other_json(client, bytes(data[start:stop]))
                        if client.sock is None:
                            return
                    position = stop
                    continue
                client.json_left = stop - end
                client.json_body = bytearray(data[start:end])
                client.json_kind = None
                self._classify(client)
                break
            length = SERVER_LENGTHS[letter]
            if length == 0:
                self._lost(client, "unknown_letter")
                return
            if end - position < length:
                client.tail = bytes(data[position:end])
                break
            if letter == 69:  # E: a ping
                client.pings += 1
                self._send(client, b"F" + bytes(data[position + 1 : position + 4]))
            elif letter == 78:  # N: version refused
                self._lost(client, "version_refused")
                return
            position += length
        if self.storm and latest is not None and not client.complete_at:
            body = bytes(data[latest[0] : latest[1]]) if isinstance(latest, tuple) else latest
            self._check_list(client, body, now)

    def _classify(self, client: Client) -> None:
        body = client.json_body
        assert body is not None
        if len(body) < LOBBY_HEAD:
            return
        if body[:LOBBY_HEAD] == LOBBY_PREFIX:
            client.json_kind = "lobby"
            if not self.storm:
                client.json_body = None  # only its arrival matters
        else:
            client.json_kind = "other"

    def _finish_json(self, client: Client, now: float) -> bytes | None:
        body, kind = client.json_body, client.json_kind
        client.json_body, client.json_kind = None, None
        if kind is None and body is not None:
            kind = "lobby" if bytes(body[:LOBBY_HEAD]) == LOBBY_PREFIX else "other"
        if kind == "lobby":
            self._lobby_list(client, now)
            return bytes(body) if body is not None else None
        if body is not None:
            self._other_json(client, bytes(body))
        return None

    def _lobby_list(self, client: Client, now: float) -> None:
        if client.state == HANDSHAKE:
            client.state = REGISTERED
            client.registered_at = now
            self.registered += 1
            self.in_flight -= 1

    def _other_json(self, client: Client, body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            self._count("bad_json")
            return
        if "choose_another_name" in payload:
            self._lost(client, "name_refused")

    def _check_list(self, client: Client, body: bytes, now: float) -> None:
        """Storm: whether this lobby list holds every name (cached: all clients get the same bytes)."""
        if len(body) < self.full_list_length:
            return  # too short to hold every name
        verdict = self.verdicts.get(body)
        if verdict is None:
            self.lists_checked += 1
            try:
                names = json.loads(body).get("unpaired", [])
            except ValueError:
                names = []
            verdict = self.names.issubset(names)
            if len(self.verdicts) > 64:
                self.verdicts.clear()
            self.verdicts[body] = verdict
        if verdict:
            client.complete_at = now
            self.complete += 1

    # -- the loop ---------------------------------------------------------------

    def progress(self, now: float) -> None:
        """One line on stderr every few seconds, for long set-ups."""
        if now < self.next_progress:
            return
        self.next_progress = now + PROGRESS_INTERVAL
        if not self.first_connect_at:
            return
        complete = f"{self.complete} hold the full list, " if self.storm else ""
        print(
            f"  ... {now - self.first_connect_at:.0f} s: {self.registered} registered, "
            f"{complete}{self.closed} closed, {self.bytes_received / 1e6:.0f} MB received",
            file=sys.stderr, flush=True,
        )

    def step(self, timeout: float) -> None:
        now = time.monotonic()
        if self.show_progress:
            self.progress(now)
        self._start_due_connects(now)
        self._poll(timeout)

    def settled(self) -> bool:
        """Nothing more can happen to the set-up: every client registered or failed."""
        return not (self.connect_queue or self.retries or self.in_flight)

    def failed(self) -> int:
        return sum(1 for client in self.clients if client.state == FAILED)

    def held(self) -> int:
        return sum(1 for client in self.clients if client.state == REGISTERED and client.open)


# ---------------------------------------------------------------------------


def hold(args: argparse.Namespace, crowd: Crowd) -> dict[str, Any]:
    pid = args.server_pid
    report: dict[str, Any] = {"mode": "hold", "clients": args.clients}
    rss_before = _clients.rss_bytes(pid) if pid else None
    setup_meter = _clients.started_cpu_meter(pid)
    start = time.monotonic()
    setup_cpu = _clients.own_cpu_seconds()
    deadline = start + args.setup_timeout
    while not crowd.settled() and time.monotonic() < deadline:
        crowd.step(0.01)
    crowd.check_reachable()
    setup_seconds = time.monotonic() - start
    setup_cpu_end = _clients.own_cpu_seconds()
    report["registered"] = crowd.registered
    report["setup_seconds"] = round(setup_seconds, 2)
    report["client_cpu_percent_during_setup"] = round(
        100 * (setup_cpu_end - setup_cpu) / max(setup_seconds, 1e-9), 1
    )
    report["bytes_received_during_setup"] = crowd.bytes_received
    if setup_meter is not None and setup_meter.stop() is not None:
        report["server_cpu_percent_during_setup"] = round(setup_meter.percent or 0.0, 1)
    # Let the last lobby broadcasts go out before sampling memory.
    settle_end = time.monotonic() + args.settle
    while time.monotonic() < settle_end:
        crowd.step(0.01)
    rss_registered = _clients.rss_bytes(pid) if pid else None
    meter = _clients.started_cpu_meter(pid)
    own_cpu = _clients.own_cpu_seconds()
    hold_end = time.monotonic() + args.hold
    while time.monotonic() < hold_end:
        crowd.step(min(0.05, max(0.0, hold_end - time.monotonic())))
    own = _clients.own_cpu_seconds()
    held = crowd.held()
    report.update(
        held=held,
        closed_by_server=crowd.closed,
        hold_seconds=args.hold,
        pings_answered=sum(client.pings for client in crowd.clients),
        bytes_received=crowd.bytes_received,
        failures=crowd.failures,
        client_cpu_percent_during_hold=round(
            100 * (own - own_cpu) / args.hold, 1
        ) if args.hold else None,
    )
    if pid:
        rss_after = _clients.rss_bytes(pid)
        report.update(
            server_rss_before_mib=_clients.mib(rss_before),
            server_rss_registered_mib=_clients.mib(rss_registered),
            server_rss_after_mib=_clients.mib(rss_after),
            server_open_files=_clients.open_files(pid),
        )
        if meter is not None and meter.stop() is not None:
            report["server_cpu_percent_during_hold"] = round(meter.percent or 0.0, 1)
        if rss_before is not None and rss_after is not None and held:
            report["server_rss_per_connection_kib"] = round(
                (rss_after - rss_before) / held / 1024, 2
            )
    report["all_held"] = held == args.clients
    return report


def storm(args: argparse.Namespace, crowd: Crowd) -> dict[str, Any]:
    pid = args.server_pid
    rss_before = _clients.rss_bytes(pid) if pid else None
    meter = _clients.started_cpu_meter(pid)
    own_cpu = _clients.own_cpu_seconds()
    deadline = time.monotonic() + args.setup_timeout
    while crowd.complete < args.clients:
        if time.monotonic() >= deadline:
            break
        if crowd.settled() and crowd.failed():
            break  # some players failed: a complete list can never come
        crowd.step(0.01)
    finished = time.monotonic()
    own = _clients.own_cpu_seconds()
    first = crowd.first_connect_at
    completions = [c.complete_at - first for c in crowd.clients if c.complete_at]
    registrations = [c.registered_at - first for c in crowd.clients if c.registered_at]
    report: dict[str, Any] = {
        "mode": "storm",
        "clients": args.clients,
        "registered": crowd.registered,
        "complete": crowd.complete,
        "all_complete": crowd.complete == args.clients,
        "storm_seconds": round(max(completions), 3) if crowd.complete == args.clients else None,
        "last_connected_seconds": round(crowd.connected_at - first, 3) if first else None,
        "registered_seconds": _clients.percentiles(registrations),
        "complete_seconds": _clients.percentiles(completions),
        "bytes_received": crowd.bytes_received,
        "lists_parsed": crowd.lists_checked,
        "failures": crowd.failures,
        "closed_by_server": crowd.closed,
        "client_cpu_percent": round(
            100 * (own - own_cpu) / max(1e-9, finished - first), 1
        ) if first else None,
    }
    if meter is not None:
        meter.stop()
        report["server_cpu_percent"] = None if meter.percent is None else round(meter.percent, 1)
        report["server_cpu_seconds"] = None if meter.cpu is None else round(meter.cpu, 2)
        report["server_rss_before_mib"] = _clients.mib(rss_before)
        report["server_rss_after_mib"] = _clients.mib(_clients.rss_bytes(pid))
    return report


def format_report(report: dict[str, Any]) -> str:
    if report["mode"] == "hold":
        lines = [
            f"hold: {report['held']}/{report['clients']} held after {report['hold_seconds']} s "
            f"idle ({report['registered']} registered in {report['setup_seconds']} s; "
            f"{report['closed_by_server']} closed by the server)",
            f"  pings answered {report['pings_answered']}  bytes received "
            f"{report['bytes_received']} ({report['bytes_received_during_setup']} while "
            f"joining)  client cpu {report['client_cpu_percent_during_setup']}% joining, "
            f"{report['client_cpu_percent_during_hold']}% holding",
        ]
        if "server_rss_after_mib" in report:
            lines.append(
                f"  server rss {report['server_rss_before_mib']} MiB before, "
                f"{report['server_rss_registered_mib']} MiB registered, "
                f"{report['server_rss_after_mib']} MiB after the hold: "
                f"{report.get('server_rss_per_connection_kib', '-')} KiB per connection; "
                f"open files {report['server_open_files']}; cpu "
                f"{report.get('server_cpu_percent_during_setup', '-')}% joining, "
                f"{report.get('server_cpu_percent_during_hold', '-')}% holding"
            )
    else:
        complete = report["complete_seconds"]
        registered = report["registered_seconds"]
        lines = [
            f"storm: {report['complete']}/{report['clients']} players hold the full list; "
            f"last one {report['storm_seconds']} s after the first connect",
            f"  all connected after {report['last_connected_seconds']} s; registered p50 "
            f"{_seconds(registered['p50'])} p99 {_seconds(registered['p99'])} max "
            f"{_seconds(registered['max'])} s; full list p50 {_seconds(complete['p50'])} p99 "
            f"{_seconds(complete['p99'])} s",
            f"  bytes received {report['bytes_received']}  lists parsed {report['lists_parsed']}"
            f"  client cpu {report['client_cpu_percent']}%",
        ]
        if "server_cpu_percent" in report:
            lines.append(
                f"  server cpu {report['server_cpu_percent']}% of one core "
                f"({report['server_cpu_seconds']} s)  rss {report['server_rss_before_mib']} -> "
                f"{report['server_rss_after_mib']} MiB"
            )
    if report["failures"]:
        lines.append(f"  failures {report['failures']}")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Hold many idle registered connections, or storm the lobby.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=49569)
    parser.add_argument("--clients", type=int, default=1000, help="K, the number of clients")
    parser.add_argument("--storm", action="store_true",
                        help="join all at once and time until everyone holds the full list")
    parser.add_argument("--hold", type=float, default=15.0,
                        help="hold mode: seconds to stay idle after everyone registered")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="hold mode: seconds between the last registration and the hold")
    parser.add_argument("--setup-timeout", type=float, default=None,
                        help="seconds allowed to register (storm: to complete); "
                             "default 30 + 10 per thousand clients")
    parser.add_argument("--connect-concurrency", type=int, default=None,
                        help="connections being set up at once (hold: 1000, storm: all)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="sample this process's RSS and CPU (with psutil)")
    parser.add_argument("--name-prefix", default=None, help="prefix of the unique names")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.setup_timeout is None:
        args.setup_timeout = 30.0 + args.clients / 100.0
    soft, hard = _clients.raise_open_file_limit()
    if args.clients + FILE_MARGIN > soft:
        print(
            f"warning: {args.clients} clients need about {args.clients + FILE_MARGIN} open "
            f"files, above this process's limit of {soft} (hard limit {hard}); "
            "the clients past it will fail",
            file=sys.stderr,
        )
    concurrency = args.connect_concurrency or (args.clients if args.storm else 1000)
    prefix = args.name_prefix or f"{'s' if args.storm else 'h'}{os.getpid() % 10000}_"
    crowd = Crowd(
        args.host, args.port, args.clients, prefix, storm=args.storm,
        connect_concurrency=concurrency,
    )
    crowd.show_progress = not args.quiet
    try:
        report = storm(args, crowd) if args.storm else hold(args, crowd)
    except _clients.ServerUnreachable as error:
        return _clients.report_unreachable("connhold", error)
    finally:
        crowd.close()
    report["open_file_limit"] = soft
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    ok = report["all_complete"] if args.storm else report["all_held"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
