"""Raw non-blocking TCP clients in one epoll loop, shared by the load tools.

loadgen.py and connhold.py drive thousands of simulated players from one
process with the same plumbing: non-blocking sockets in one epoll set,
connects started a bounded number at a time and retried with a growing pause
when refused, ``H004`` and the registration sent in one write, and writes the
kernel will not take kept per client until the socket is writable.  That
plumbing is :class:`EpollClients`; each tool subclasses it (and
:class:`Client`) for what it does with the server's messages.

The tools' figures about processes and the machine (CPU time, resident
memory, preemptions, machine busy and steal time) come from ``psutil``: see
:class:`CpuMeter`, :class:`PreemptionMeter` and :class:`MachineMeter`.

Imported as a sibling module (``import _clients``): a script's own directory
is on ``sys.path``, and the tests put ``tools/`` there before loading a tool.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import statistics
import sys
import time
from typing import Iterable

import psutil

from netplay.framing.length3 import encode_json

# Whole message lengths, server to client; 0: not a letter of that direction.
SERVER_LENGTHS = [0] * 256
for _letter, _length in {
    "H": 1, "N": 1, "E": 4, "P": 121, "O": 121, "Q": 121, "R": 121, "I": 2, "L": 2, "W": 1,
    "U": 2,
}.items():
    SERVER_LENGTHS[ord(_letter)] = _length

LOBBY_PREFIX = b'{"unpaired"'
CONNECT_RETRY_ERRORS = {
    errno.EAGAIN, errno.EADDRNOTAVAIL, errno.ECONNREFUSED, errno.ECONNRESET,
    errno.ETIMEDOUT, errno.ENOBUFS,
}
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLL_ERRORS = select.EPOLLERR | select.EPOLLHUP

# The first client states of every tool; each tool numbers its later states
# (and FAILED) from 3 on.
NEW, CONNECTING, HANDSHAKE = range(3)


def raise_open_file_limit() -> tuple[int, int]:
    """Lift this process's soft limit on open files to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


# Seconds between two progress lines of a tool that runs for a while.
PROGRESS_INTERVAL = 5.0


def percentiles(values: Iterable[float], digits: int = 3) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` (in any order), rounded to ``digits``; None each
    when there are none.

    The one percentile of the tools' reports: ``statistics.quantiles`` with the
    inclusive method (interpolated between the two nearest ranks, never past the
    largest value).  loadgen's latency histogram, which keeps counts rather than
    values, reads its percentiles off the buckets instead.
    """
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p99": None, "max": None}
    if len(ordered) == 1:
        cuts = ordered * 99
    else:
        cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(cuts[49], digits), "p99": round(cuts[98], digits),
            "max": round(ordered[-1], digits)}


# ---------------------------------------------------------------------------
# Process and machine statistics
#
# Every function takes a pid and returns None when the process is gone or not
# readable, so a report degrades to "unknown" instead of failing.


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` so far, in seconds (all its threads)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid``, in bytes."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def open_files(pid: int) -> int | None:
    """How many file descriptors ``pid`` holds open."""
    try:
        return psutil.Process(pid).num_fds()
    except psutil.Error:
        return None


def mib(size: int | None) -> float | None:
    """A byte count in MiB, to 0.1, for a report; None stays None."""
    return None if size is None else round(size / (1 << 20), 1)


def own_cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    times = os.times()
    return times.user + times.system


class CpuMeter:
    """CPU use of one process over a window, as a percentage of one core.

    ``start()`` and ``stop()`` bracket the window; ``percent`` is
    (CPU seconds spent in the window) / (wall seconds of the window) * 100.
    The kernel counts CPU time in clock ticks (usually 10 ms), so windows of a
    few seconds or more are needed for a figure within a percent or two.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu_start: float | None = None
        self._wall_start = 0.0
        self.cpu: float | None = None
        self.wall = 0.0

    def start(self) -> None:
        self._wall_start = time.monotonic()
        self._cpu_start = cpu_seconds(self.pid)

    def stop(self) -> float | None:
        """End the window; return the CPU percentage (None if unknown)."""
        end = cpu_seconds(self.pid)
        self.wall = time.monotonic() - self._wall_start
        if end is None or self._cpu_start is None or self.wall <= 0:
            self.cpu = None
            return None
        self.cpu = end - self._cpu_start
        return self.percent

    @property
    def percent(self) -> float | None:
        if self.cpu is None or self.wall <= 0:
            return None
        return 100.0 * self.cpu / self.wall


def started_cpu_meter(pid: int | None) -> CpuMeter | None:
    """A :class:`CpuMeter` on ``pid`` with its window open; None when no pid was given."""
    if not pid:
        return None
    meter = CpuMeter(pid)
    meter.start()
    return meter


def thread_preemptions(pid: int) -> dict[tuple[int, float], int] | None:
    """Involuntary context switches so far of each thread of ``pid``.

    Keyed by (thread id, thread start time), so that a thread id the kernel
    hands out again is a new thread.  Linux only: elsewhere, or when the
    process is gone, None.
    """
    process = _process(pid)
    if process is None:
        return None
    try:
        threads = process.threads()
    except psutil.Error:
        return None
    counts: dict[tuple[int, float], int] = {}
    for thread in threads:
        try:
            task = psutil.Process(thread.id)  # on Linux, a thread id reads as a process
            counts[(thread.id, task.create_time())] = task.num_ctx_switches().involuntary
        except psutil.Error:  # the thread ended meanwhile
            continue
    return counts


class PreemptionMeter:
    """Involuntary context switches of one process's threads over a window.

    Each is a moment the scheduler took the CPU from one of the threads while
    it could still run: another process, or another thread of its own (the
    server's storage worker runs at a lower priority than its event loop).
    ``count`` sums, over the threads alive when the window ends, the switches
    each had within the window (all of them for a thread started within it).
    A thread that ended within the window is not counted: once a thread is
    gone, its figures are added up where only the process itself can read them
    (``getrusage``).  Read thread by thread because a process's own figure
    (``/proc/PID/status``) is its main thread's alone; and differenced thread
    by thread, so that a thread that ends cannot make the count go down (as a
    sum over the live threads at each end of the window did).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start: dict[tuple[int, float], int] | None = None
        self.count: int | None = None

    def start(self) -> None:
        self._start = thread_preemptions(self.pid)
        self.count = None

    def stop(self) -> int | None:
        """End the window; return the count (None if unknown)."""
        end = thread_preemptions(self.pid)
        if end is None or self._start is None:
            self.count = None
        else:
            start = self._start
            self.count = sum(max(0, switches - start.get(key, 0)) for key, switches in end.items())
        return self.count


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, summed over all cores.

    Busy is user + nice + system + irq + softirq; steal is time the hypervisor
    gave to someone else.  Idle and iowait are not busy.  Fields a system does
    not have (irq, softirq and steal outside Linux) count as 0.
    """
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system
    busy += getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    return busy, getattr(times, "steal", 0.0)


class MachineMeter:
    """Busy and stolen CPU of the whole machine over a window, in percent of one core."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None
        self._wall_start = 0.0
        self.busy_percent: float | None = None
        self.steal_percent: float | None = None

    def start(self) -> None:
        self._wall_start = time.monotonic()
        self._start = machine_busy_seconds()

    def stop(self) -> None:
        end = machine_busy_seconds()
        wall = time.monotonic() - self._wall_start
        if self._start is None or wall <= 0:
            return
        self.busy_percent = 100.0 * (end[0] - self._start[0]) / wall
        self.steal_percent = 100.0 * (end[1] - self._start[1]) / wall


class ServerUnreachable(Exception):
    """Not one connection to the server was established; every attempt failed to connect.

    A tool reports it as one line, ``TOOL: cannot reach the server at HOST:PORT: REASON``,
    and exits with status 1, instead of a report of nothing but failures.
    """

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot reach the server at {host}:{port}: {reason}")


def report_unreachable(tool: str, error: ServerUnreachable) -> int:
    """Print ``error`` as the tool's one line on stderr; the exit status (1)."""
    print(f"{tool}: {error}", file=sys.stderr, flush=True)
    return 1


class Progress:
    """One line on stderr every :data:`PROGRESS_INTERVAL` seconds while a tool runs.

    ``due(now)`` is cheap enough for a tight loop; ``say(now, text)`` prints
    ``  ... <seconds since start> s: <text>`` and schedules the next line.
    Disabled (``--quiet``, or in a worker that is not the first), it says nothing.
    """

    def __init__(self, *, enabled: bool = True, label: str = "",
                 interval: float = PROGRESS_INTERVAL) -> None:
        self.enabled = enabled
        self.label = label
        self.interval = interval
        self.start = time.monotonic()
        self.next_at = self.start + interval

    def due(self, now: float) -> bool:
        return self.enabled and now >= self.next_at

    def say(self, now: float, text: str) -> None:
        self.next_at = now + self.interval
        print(f"  ... {self.label}{now - self.start:.0f} s: {text}", file=sys.stderr, flush=True)


class Client:
    """The connection state every simulated player has; the tools add their own slots."""

    __slots__ = ("index", "name", "sock", "fd", "state", "out", "attempts", "retry_at", "pings",
                 "hello")

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = NEW
        self.out = b""  # bytes the kernel would not take yet
        self.attempts = 0
        self.retry_at = 0.0
        self.pings = 0
        self.hello = b"H004" + encode_json({"name": name, "level": 5, "character": "lip"})


class EpollClients:
    """Clients in one epoll set.  Owns the sockets; :meth:`close` closes them.

    A subclass sets ``FAILED`` (its number for a client that gave up), fills
    ``clients`` and ``connect_queue``, and defines :meth:`_read` and
    :meth:`_send_failed`; it may extend :meth:`_socket_opened` and
    :meth:`_established`.
    """

    FAILED: int

    def __init__(self, host: str, port: int, *, connect_concurrency: int) -> None:
        self.address = (host, port)
        self.connect_concurrency = connect_concurrency
        self.epoll = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.clients: list = []
        self.connect_queue: list = []  # popped from the end
        self.retries: list = []
        self.in_flight = 0  # connecting, or connected and not yet registered
        self.failures: dict[str, int] = {}
        self.established = 0  # connections that got through, ever

    def unreachable_reason(self) -> str | None:
        """Why the server cannot be reached (``Connection refused``), if no connection
        ever got through and connects failed; else None."""
        failed = [reason for reason in self.failures if reason.startswith("connect_")]
        if self.established or not failed:
            return None
        name = failed[0].removeprefix("connect_")
        code = getattr(errno, name, None)
        return os.strerror(code) if isinstance(code, int) else name

    def check_reachable(self) -> None:
        """Raise :class:`ServerUnreachable` if :meth:`unreachable_reason` has one."""
        reason = self.unreachable_reason()
        if reason is not None:
            raise ServerUnreachable(*self.address, reason)

    def _count(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    # -- connecting ---------------------------------------------------------------

    def _start_due_connects(self, now: float) -> None:
        """Queue the retries whose pause is over, then connect up to the concurrency bound."""
        if self.retries:
            due = [client for client in self.retries if client.retry_at <= now]
            if due:
                self.retries = [client for client in self.retries if client.retry_at > now]
                self.connect_queue += due
        while self.connect_queue and self.in_flight < self.connect_concurrency:
            self._start_connect(self.connect_queue.pop(), now)

    def _start_connect(self, client: Client, now: float) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:  # EMFILE: out of descriptors
            client.state = self.FAILED
            code = error.errno or 0
            self._count("socket_" + errno.errorcode.get(code, str(code)))
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket_opened(sock, now)
        error = sock.connect_ex(self.address)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self._retry(client, now, error)
            return
        client.sock, client.fd, client.state = sock, sock.fileno(), CONNECTING
        self.in_flight += 1
        self.by_fd[client.fd] = client
        self.epoll.register(client.fd, EPOLLOUT)

    def _socket_opened(self, sock: socket.socket, now: float) -> None:
        """A new socket, before its connect: a place for a tool's own options."""

    def _retry(self, client: Client, now: float, error: int) -> None:
        """Try again later after a refused connect, unless it cannot help."""
        client.attempts += 1
        if client.attempts > 10 or error not in CONNECT_RETRY_ERRORS:
            client.state = self.FAILED
            self._count("connect_" + errno.errorcode.get(error, str(error)))
            return
        client.state = NEW
        client.retry_at = now + 0.05 * client.attempts
        self.retries.append(client)

    def _connected(self, client: Client, now: float) -> None:
        """The connect finished: retry if it failed, else say hello and register."""
        assert client.sock is not None
        error = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.in_flight -= 1
            self._drop_socket(client)
            self._retry(client, now, error)
            return
        self.established += 1
        self._established(client, now)
        client.state = HANDSHAKE
        self.epoll.modify(client.fd, EPOLLIN)
        self._send(client, client.hello)

    def _established(self, client: Client, now: float) -> None:
        """The connection is up; called before the hello goes out (a send may fail)."""

    def _drop_socket(self, client: Client) -> None:
        if client.sock is None:
            return
        try:
            self.epoll.unregister(client.fd)
        except (OSError, ValueError):
            pass
        self.by_fd.pop(client.fd, None)
        client.sock.close()
        client.sock, client.fd = None, -1

    # -- sending ------------------------------------------------------------------

    def _send(self, client: Client, data: bytes) -> None:
        """Send, or keep what the kernel would not take and send it when writable."""
        sock = client.sock
        if sock is None:
            return
        if client.out:
            client.out += data
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._send_failed(client)
            return
        if sent < len(data):
            client.out = data[sent:]
            self.epoll.modify(client.fd, EPOLLIN | EPOLLOUT)

    def _flush(self, client: Client) -> None:
        sock = client.sock
        if sock is None:
            return
        try:
            sent = sock.send(client.out)
        except BlockingIOError:
            return
        except OSError:
            self._send_failed(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self.epoll.modify(client.fd, EPOLLIN)

    def _send_failed(self, client: Client) -> None:
        raise NotImplementedError

    # -- the loop -----------------------------------------------------------------

    def _read(self, client: Client) -> None:
        raise NotImplementedError

    def _poll(self, timeout: float) -> None:
        """Handle what the epoll set reports within ``timeout`` seconds."""
        by_fd = self.by_fd
        for fd, events in self.epoll.poll(timeout):
            client = by_fd.get(fd)
            if client is None:
                continue
            if client.state == CONNECTING:
                self._connected(client, time.monotonic())
                continue
            if events & (EPOLLIN | EPOLL_ERRORS):
                self._read(client)
            if events & EPOLLOUT and client.out:
                self._flush(client)

    def close(self) -> None:
        for client in self.clients:
            self._drop_socket(client)
        self.epoll.close()
