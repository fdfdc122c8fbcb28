"""The trio edge: listeners, one nursery per connection, the snapshot timer.

Everything the server decides is decided by ``core.ServerCore``; this module
moves bytes between streams and the core and keeps time.  Each connection
runs three tasks in its own nursery: a reader that feeds the core, the only
writer of its stream (fed by a bounded queue), and a heartbeat timer.  A
connection that fails in any way ends alone; the others never notice.
"""

from __future__ import annotations

import collections
import contextvars
import fcntl
import math
import os
import secrets
import socket
import struct
import termios
import threading
import time
from functools import partial
from typing import Any, Protocol

import attrs
import structlog
import trio

from netplay import poller
from netplay.accounts import storage
from netplay.actions import Action, Close, PauseReading, ResumeReading, Send, Store
from netplay.config import Config
from netplay.core import ServerCore
from netplay.framing.endmarker import MARKER
from netplay.lobbies import results
from netplay.lobbies.v046 import InputRoute
from netplay.stats import INPUT_LETTER, RELAY_SAMPLE_EVERY

log = structlog.get_logger("netplay.server")

RECEIVE_SIZE = 65536
# 2025 inputs as the per-frame path relays them: one is at least this long;
# in a backlog, each after the first follows a marker.
_MARKED_INPUT_MIN = len(b"I?") + len(MARKER)
_NEXT_INPUT, _NEXT_INPUT_AS_U = MARKER + b"I", MARKER + b"U"
# After a refusal or a protocol error: how long to read and discard the
# client's remaining bytes after our last message, so that closing does not
# turn into a reset that could destroy that message in flight.
LINGER_SECONDS = 1.0
# How soon a lobby snapshot is retried for a player still reading an older one.
HELD_BACK_RETRY_SECONDS = 0.1
# The longest a closing connection may spend flushing and lingering.
CLOSE_FLUSH_SECONDS = 2.0
# Storage operations waiting for the database; past this they fail at once.
MAX_PENDING_STORAGE_OPERATIONS = 10_000
# Operations run in one transaction: a login storm costs a few disk syncs.
MAX_STORAGE_BATCH = 500
# Outcomes handed to the lobby between two chances for the relay to run.
OUTCOMES_PER_ROUND = 8
# Replay files: written this many at a time, with this pause between rounds
# (building one is a millisecond of Python), at most this many waiting.
REPLAYS_PER_ROUND = 1
REPLAY_ROUND_PAUSE = 0.02
MAX_PENDING_REPLAYS = 10_000
# The storage worker thread's nice value: below the event loop (see
# :func:`yield_to_event_loop`).
STORAGE_THREAD_NICE = 10

_thread_state = threading.local()


def yield_to_event_loop() -> None:
    """Give the calling worker thread a lower CPU priority than the event loop; once per thread.

    A batch of finished games is CPU work in the worker thread (replay files,
    rating updates) on the core the event loop relays inputs on.  At equal
    priority the event loop waits for the worker's slice to end whenever it
    wakes (up to a whole burst between two of the worker's system calls under
    a real-time policy, which has no time slices).  Lowered, the worker runs
    when the loop waits, and the loop gets the core as soon as it wakes; the
    GIL then comes back within ``sys.getswitchinterval()``.  Linux schedules
    threads one by one, so this leaves the loop's own priority alone.
    """
    if getattr(_thread_state, "lowered", False):
        return
    _thread_state.lowered = True
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:  # e.g. started under chrt -f
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), STORAGE_THREAD_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: run as it is
        pass


def _in_worker_thread(function: Any) -> Any:
    yield_to_event_loop()
    return function()


class Recorder(Protocol):
    """What the server tells a session recorder (see ``recording``)."""

    def connected(self, connection_id: int, peer: str, now: float) -> None: ...
    def received(self, connection_id: int, data: bytes, now: float) -> None: ...
    def sent(self, connection_id: int, data: bytes, now: float) -> None: ...
    def end_of_stream(self, connection_id: int, now: float) -> None: ...
    def closed(self, connection_id: int, reason: str, now: float) -> None: ...


@attrs.define(eq=False)
class Link:
    """The I/O side of one connection."""

    id: int
    stream: trio.abc.Stream
    cancel_scope: trio.CancelScope
    queue: collections.deque[bytes | memoryview] = attrs.Factory(collections.deque)
    queued_bytes: int = 0
    data_ready: trio.Event = attrs.Factory(trio.Event)
    close_reason: str | None = None
    end_of_stream: trio.Event = attrs.Factory(trio.Event)
    dead: bool = False
    # The socket's descriptor when the stream is a TCP socket: lets a relayed
    # message be written at once, without waking the writer task.
    fd: int | None = None
    # True while the writer task is inside send_all; no direct write then.
    sending: bool = False
    # The lobby snapshot still waiting in ``queue``, if any.
    queued_snapshot: bytes | None = None
    # Ended by the server (a write found the peer gone, or it was dropped):
    # nothing more is read or written, the lobby is told (see ``_end``).
    broken: bool = False
    # The lobby has been told and the end recorded.
    ended: bool = False
    # Set while the core holds this connection's messages for the rate limit:
    # nothing more is read, so the client's socket buffers push back.
    reading_paused: bool = False
    reading_resumed: trio.Event = attrs.Factory(trio.Event)


def unsent_bytes(fd: int) -> int:
    """Bytes written to a socket that the kernel has not yet sent."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def peer_of(stream: trio.abc.Stream) -> tuple[str, int]:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return ("memory", 0)
    try:
        address = sock.getpeername()
    except OSError:
        return ("unknown", 0)
    return (str(address[0]), int(address[1]))


class Server:
    """One netplay server: a core, its connections, and the timers around it."""

    def __init__(
        self,
        config: Config,
        *,
        seed: int,
        recorder: Recorder | None = None,
        database: storage.Storage | None = None,
        database_in_thread: bool = True,
        replays_directory: str | None = None,
        wall_clock_offset: float | None = None,
    ) -> None:
        """``database`` is the caller's to close; without one, players live in memory.

        ``wall_clock_offset``: wall-clock seconds minus trio's clock, for the
        times the lobbies tell clients or store; None reads the wall clock
        when :meth:`run` starts.  A recording fixes it, and so does its replay.

        ``database_in_thread`` False runs storage calls on the event loop itself,
        which keeps a virtual clock (tests, in-process replay) deterministic.
        ``replays_directory`` None writes no replay files.
        """
        self.config = config
        self.core = ServerCore(config, seed=seed, run_id=secrets.token_hex(6))
        self.replays_directory = replays_directory
        # Stored games whose replay files are still to be written.
        self._replays_send, self._replays_receive = trio.open_memory_channel[results.FinishGame](
            MAX_PENDING_REPLAYS
        )
        self.counters = self.core.counters
        self._traffic = self.counters.traffic
        # When :meth:`run` started, on trio's clock and on the wall clock.
        self.started_at: float | None = None
        self.started_wall: float | None = None
        self.recorder = recorder
        self._wall_clock_offset = wall_clock_offset
        if database is None:
            database, database_in_thread = storage.SqliteStorage(storage.MEMORY), False
        self.database = database
        self.database_in_thread = database_in_thread
        self._storage_send, self._storage_receive = trio.open_memory_channel[Store](
            MAX_PENDING_STORAGE_OPERATIONS
        )
        self.links: dict[int, Link] = {}
        self._nursery: trio.Nursery | None = None
        self._accept_scope = trio.CancelScope()
        self._snapshot_wanted = trio.Event()
        self._tick_wanted = trio.Event()
        self._last_snapshot = -math.inf
        self._shutdown = trio.Event()
        self._poller: poller.ReadPoller | None = None
        # Connections ended by the server, for the lobby to learn (``_end``),
        # and how deep we are in carrying out actions.
        self._ending: list[Link] = []
        self._executing = 0
        self.port: int | None = None

    # -- running ------------------------------------------------------------

    async def run(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`shutdown`; then close every connection within the grace time."""
        self.started_at, self.started_wall = trio.current_time(), time.time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Stored and shown times are wall-clock; the lobbies are fed trio's clock.
            offset = self._wall_clock_offset
            if offset is None:
                offset = time.time() - trio.current_time()
            for lobby in (self.core.lobby046, self.core.lobby2025):
                lobby.wall_clock_offset = offset
            nursery.start_soon(self._snapshot_loop)
            nursery.start_soon(self._storage_loop)
            nursery.start_soon(self._replay_loop)
            nursery.start_soon(self._tick_loop)
            if poller.available():
                self._poller = poller.ReadPoller(coalesce=self.config.read_coalesce)
                nursery.start_soon(self._poller.run)
            if listeners:
                self.port = listeners[0].socket.getsockname()[1]
                nursery.start_soon(self._accept_loop, listeners)
            task_status.started(self)
            await self._shutdown.wait()
            self._accept_scope.cancel()
            log.info("shutting_down", connections=len(self.links))
            for connection_id in list(self.links):
                self._execute(self.core.request_close(connection_id, "server_shutdown"))
            with trio.move_on_after(self.config.shutdown_grace):
                while self.links:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def storage_pending(self) -> int:
        """Storage operations waiting for the database."""
        return self._storage_send.statistics().current_buffer_used

    def shutdown(self) -> None:
        """Stop accepting and close every connection (see :meth:`run`)."""
        self._shutdown.set()

    def open_stream(self, stream: trio.abc.Stream, peer: tuple[str, int] | None = None) -> None:
        """Serve one already connected stream (a socket, or a memory stream in tests)."""
        assert self._nursery is not None, "the server is not running"
        self._nursery.start_soon(self.serve_stream, stream, peer)

    async def _accept_loop(self, listeners: list[trio.SocketListener]) -> None:
        with self._accept_scope:
            await trio.serve_listeners(self.serve_stream, listeners, handler_nursery=self._nursery)

    # -- one connection ---------------------------------------------------------

    async def serve_stream(
        self, stream: trio.abc.Stream, peer: tuple[str, int] | None = None
    ) -> None:
        """Serve one connection until it ends.  Owns and closes ``stream``."""
        host, port = peer or peer_of(stream)
        now = trio.current_time()
        connection_id = self.core.open_connection(host, now)
        if connection_id is None:
            await trio.aclose_forcefully(stream)
            return
        sock = getattr(stream, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        structlog.contextvars.bind_contextvars(player=connection_id, peer=f"{host}:{port}")
        if self.recorder is not None:
            self.recorder.connected(connection_id, f"{host}:{port}", now)
        log.info("connected")
        reason = "ended"
        try:
            async with trio.open_nursery() as nursery:
                link = Link(connection_id, stream, nursery.cancel_scope)
                if sock is not None:
                    link.fd = sock.fileno()
                self.links[connection_id] = link
                nursery.start_soon(self._reader, link)
                nursery.start_soon(self._writer, link)
                nursery.start_soon(self._heartbeat, link)
        except Exception:
            # Our own bug: end this connection only, with the whole story logged.
            log.exception("connection_failed")
            reason = "internal_error"
        finally:
            link = self.links.pop(connection_id)
            link.dead = True
            reason = link.close_reason or reason
            self.counters.connections_closed[reason] += 1
            if self.recorder is not None and not link.ended:
                self.recorder.closed(connection_id, reason, trio.current_time())
            link.ended = True
            self._execute(self.core.close_connection(connection_id))
            with trio.move_on_after(1, shield=True):
                await stream.aclose()
            log.info("disconnected", reason=reason)

    async def _reader(self, link: Link) -> None:
        """Read the connection until it ends; hand every chunk to the core."""
        if link.fd is not None and self._poller is not None:
            await self._read_through_poller(link)
            return
        while True:
            try:
                data = await link.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._on_bytes(link, None, trio.current_time())
                return
            self._on_bytes(link, data, trio.current_time())
            if not data:
                return
            while link.reading_paused:
                await link.reading_resumed.wait()

    async def _read_through_poller(self, link: Link) -> None:
        assert link.fd is not None and self._poller is not None
        # The poller's task does the reading; running the handling in this
        # connection's context keeps its log lines bound to it.
        context = contextvars.copy_context()
        relay_target, deliver, connection_id = self.core.relay_target, self._deliver, link.id
        relay = self._relay
        traffic, current_time = self._traffic, trio.current_time
        latency = traffic.relay_latency["direct"]

        def on_bytes(data: bytes | None, now: float) -> None:
            if link.broken:
                return  # ended by the server: what its peer still sent is moot
            try:
                if data and self.recorder is None:
                    # The per-frame path, kept free of everything else.
                    target = relay_target(connection_id, data, now)
                    if target is not None:
                        if type(target) is int:
                            deliver(target, data)
                        else:
                            relay(target, data)
                        if traffic.relay_countdown:
                            traffic.relay_countdown -= 1
                        else:
                            traffic.relay_countdown = RELAY_SAMPLE_EVERY - 1
                            latency.observe(current_time() - now)
                        return
                    context.run(self._receive, link, data, now)  # no relay: the full path
                    return
                context.run(self._on_bytes, link, data, now)
            except Exception:
                context.run(log.exception, "connection_failed")
                link.close_reason = "internal_error"
                link.cancel_scope.cancel()

        self._poller.add(link.fd, on_bytes)
        try:
            await link.end_of_stream.wait()
            await trio.sleep_forever()  # the writer or a drop ends the connection
        finally:
            self._poller.remove(link.fd)

    def _on_bytes(self, link: Link, data: bytes | None, now: float) -> None:
        """What the reader got: bytes, b"" at end of stream, None when reset."""
        if link.broken:
            return  # ended by the server: what its peer still sent is moot
        core, recorder = self.core, self.recorder
        if data is None:
            link.close_reason = link.close_reason or "connection_reset"
            link.end_of_stream.set()
            link.cancel_scope.cancel()
            return
        if not data:
            link.end_of_stream.set()
            if recorder is not None:
                recorder.end_of_stream(link.id, now)
            if link.close_reason is None:
                # The opponent learns at once; what is queued is still flushed,
                # since a half-closed client may well be reading its replies.
                self._execute(core.close_connection(link.id))
                self._request_close(link, "end_of_stream")
            return
        if recorder is not None:
            recorder.received(link.id, data, now)
        target = core.relay_target(link.id, data, now)
        if target is None:
            self._receive(link, data, now)
        elif type(target) is not int:
            self._relay(target, data)
            self._sample_relay("direct", now)
        else:
            self._deliver(target, data)
            self._sample_relay("direct", now)

    def _sample_relay(self, path: str, read_at: float) -> None:
        """Time one relayed input in RELAY_SAMPLE_EVERY, from its read to now."""
        traffic = self._traffic
        if traffic.relay_countdown:
            traffic.relay_countdown -= 1
        else:
            traffic.relay_countdown = RELAY_SAMPLE_EVERY - 1
            traffic.relay_latency[path].observe(trio.current_time() - read_at)

    def _relay(self, route: InputRoute, data: bytes) -> None:
        """046 or 2025 inputs, usually one: to the opponent as they came, to spectators as ``U``/``I``.

        Several inputs in ``data`` (a backlog) go in one write to each recipient.
        """
        deliver = self._deliver
        as_spectators = route.as_spectators
        if as_spectators:
            count = len(data) >> 1
        else:
            count = data.count(MARKER) if len(data) > _MARKED_INPUT_MIN else 1
        self._executing += 1  # a connection that fails here ends after the whole relay
        try:
            deliver(route.opponent, data)
            if route.spectators:
                if count == 1:
                    if as_spectators:
                        as_spectator = as_spectators[data[1]]
                    else:  # a 2025 input: its body under the letter the spectator reads
                        as_spectator = data if route.spectator_letter == b"I" else b"U" + data[1:]
                elif as_spectators:
                    as_spectator = b"".join([as_spectators[letter] for letter in data[1::2]])
                elif route.spectator_letter == b"I":
                    as_spectator = data
                else:
                    as_spectator = b"U" + data[1:].replace(_NEXT_INPUT, _NEXT_INPUT_AS_U)
                for spectator in route.spectators:
                    deliver(spectator, as_spectator)
            if count > 1:
                # Each delivery counted one message; each recipient got ``count``.
                sent = self._traffic.sent_messages
                sent[data[0]] += count - 1
                if route.spectators:
                    sent[as_spectator[0]] += (count - 1) * len(route.spectators)
        finally:
            self._executing -= 1
        if self._ending and not self._executing:
            self._settle()

    def _receive(self, link: Link, data: bytes, now: float) -> None:
        """Bytes that are not a lone relayed input: decode and act on every message."""
        traffic = self._traffic
        inputs_sent = traffic.sent_messages[INPUT_LETTER]
        self._execute(self.core.receive(link.id, data, now))
        if traffic.sent_messages[INPUT_LETTER] != inputs_sent:
            # An input relayed through the decoder: sampled like the per-frame path.
            self._sample_relay("decoded", now)

    async def _writer(self, link: Link) -> None:
        stream, queue = link.stream, link.queue
        while True:
            if not queue:
                if link.close_reason is not None:
                    break
                await link.data_ready.wait()
                link.data_ready = trio.Event()
                continue
            if len(queue) == 1:
                data = queue.popleft()
            else:
                data = b"".join(queue)
                queue.clear()
            link.queued_snapshot = None
            link.sending = True
            if self.recorder is not None:
                self.recorder.sent(link.id, bytes(data), trio.current_time())
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken(link)
                return
            finally:
                link.sending = False
            link.queued_bytes -= len(data)
        # Close requested and everything flushed: half-close, and give the peer
        # a moment to read our last bytes before the socket goes away.
        try:
            await stream.send_eof()  # type: ignore[attr-defined]
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.move_on_after(LINGER_SECONDS):
            await link.end_of_stream.wait()
        link.cancel_scope.cancel()

    async def _heartbeat(self, link: Link) -> None:
        core = self.core
        while True:
            actions, wake_at = core.heartbeat(link.id, trio.current_time())
            self._execute(actions)
            await trio.sleep_until(wake_at)

    # -- carrying out the core's decisions ----------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        self._executing += 1
        try:
            self._execute_each(actions)
        finally:
            self._executing -= 1
        if self._ending and not self._executing:
            self._settle()

    def _execute_each(self, actions: list[Action]) -> None:
        for action in actions:
            if type(action) is Send:
                self._deliver(action.player, action.data, action.snapshot)
            elif type(action) is Store:
                self._store(action)
            elif type(action) is PauseReading:
                self._pause_reading(action.player, True)
            elif type(action) is ResumeReading:
                self._pause_reading(action.player, False)
            else:
                assert isinstance(action, Close)
                link = self.links.get(action.player)
                if link is not None:
                    self._request_close(link, action.reason)
        if self.core.snapshot_due:
            self._snapshot_wanted.set()
        if self.core.deadlines_changed:
            self._tick_wanted.set()

    def _pause_reading(self, connection_id: int, paused: bool) -> None:
        link = self.links.get(connection_id)
        if link is None or link.reading_paused is paused:
            return
        link.reading_paused = paused
        if link.fd is not None and self._poller is not None:
            try:
                if paused:
                    self._poller.pause(link.fd)
                else:
                    self._poller.resume(link.fd)
            except OSError:
                pass  # the socket is already closed: nothing to read anyway
        if not paused:
            link.reading_resumed.set()
            link.reading_resumed = trio.Event()

    def _store(self, action: Store) -> None:
        try:
            self._storage_send.send_nowait(action)
        except trio.WouldBlock:
            log.warning("storage_queue_full", limit=MAX_PENDING_STORAGE_OPERATIONS)
            self.counters.storage_failures["queue_full"] += 1
            outcome = storage.failed_outcome(action.operation, "too many pending operations")  # type: ignore[arg-type]
            self._execute(
                self.core.stored(action.player, action.operation, outcome, trio.current_time())
            )

    async def _storage_loop(self) -> None:
        """Run storage operations in batches, off the event loop, and hand back their outcomes."""
        async for first in self._storage_receive:
            batch = [first]
            while len(batch) < MAX_STORAGE_BATCH:
                try:
                    batch.append(self._storage_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            operations = [action.operation for action in batch]
            counters = self.counters
            started = time.perf_counter()
            try:
                run = partial(results.run_batch, self.database, operations)
                if self.database_in_thread:
                    outcomes = await trio.to_thread.run_sync(_in_worker_thread, run)
                else:
                    outcomes = run()
            except Exception as error:
                log.exception("storage_failed", operations=len(operations))
                outcomes = [storage.failed_outcome(op, str(error)) for op in operations]  # type: ignore[arg-type]
                counters.storage_failures["error"] += len(operations)
            # Wall time, not trio's: a virtual clock would hide the database's cost.
            counters.storage_batches.observe(time.perf_counter() - started)
            counters.storage_operations += len(operations)
            for index, (action, outcome) in enumerate(zip(batch, outcomes)):
                if self.database_in_thread and index and not index % OUTCOMES_PER_ROUND:
                    # A burst of finished games renders a select screen each:
                    # let the relay run between them.
                    await trio.lowlevel.checkpoint()
                now = trio.current_time()
                self._execute(self.core.stored(action.player, action.operation, outcome, now))
                if type(action.operation) is results.FinishGame and self.replays_directory:
                    try:
                        self._replays_send.send_nowait(action.operation)
                    except trio.WouldBlock:
                        log.warning("replay_dropped", game=action.operation.key,
                                    reason="too many replays waiting")

    async def _replay_loop(self) -> None:
        """Write replay files a few at a time, with pauses, so a burst never delays the relay."""
        async for first in self._replays_receive:
            games = [first]
            while len(games) < REPLAYS_PER_ROUND:
                try:
                    games.append(self._replays_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            directory = self.replays_directory
            assert directory is not None
            write = partial(results.write_replays, self.database, games, directory)
            try:
                if self.database_in_thread:
                    await trio.to_thread.run_sync(_in_worker_thread, write)
                    await trio.sleep(REPLAY_ROUND_PAUSE)
                else:
                    write()
            except Exception:
                log.exception("replays_failed", games=len(games))

    async def _tick_loop(self) -> None:
        """Call the core's ``tick`` at each of its deadlines, and only then."""
        while True:
            with trio.move_on_at(self.core.next_deadline()) as waiting:
                await self._tick_wanted.wait()
                self._tick_wanted = trio.Event()
            if waiting.cancelled_caught:
                self._execute(self.core.tick(trio.current_time()))

    def _deliver(self, connection_id: int, data: bytes, snapshot: bool = False) -> None:
        link = self.links.get(connection_id)
        if link is None or link.dead:
            return
        if link.broken:
            self._discard(link, data)
            return
        traffic = self._traffic
        letter = data[0]
        traffic.sent_messages[letter] += 1
        traffic.sent_bytes[letter] += len(data)
        if snapshot and link.queued_snapshot is not None:
            # A client that reads slowly gets the latest lobby, not every lobby.
            link.queue.remove(link.queued_snapshot)
            link.queued_bytes -= len(link.queued_snapshot)
            link.queued_snapshot = None
        if link.fd is not None and not link.queue and not link.sending:
            # Nothing ahead of it: write now, queue only what the socket refuses.
            try:
                written = os.write(link.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self._broken(link)
                self._discard(link, data)
                return
            if written and self.recorder is not None:
                self.recorder.sent(connection_id, data[:written], trio.current_time())
            if written == len(data):
                return
            if written:
                # Part of it is on the wire: the rest must follow as it is.  A
                # view, not a copy: a lobby list is shared by every recipient.
                data = memoryview(data)[written:]  # type: ignore[assignment]
                snapshot = False
        # One message always fits in an empty queue, however large the lobby grows.
        if link.queued_bytes and link.queued_bytes + len(data) > self.config.max_queued_bytes:
            self._drop(link, "send_queue_full", queued=link.queued_bytes)
            return
        if snapshot:
            link.queued_snapshot = data
        link.queue.append(data)
        link.queued_bytes += len(data)
        link.data_ready.set()

    def _request_close(self, link: Link, reason: str) -> None:
        if link.close_reason is None:
            link.close_reason = reason
            # Flushing to a client that does not read must not keep it forever.
            link.cancel_scope.deadline = min(
                link.cancel_scope.deadline, trio.current_time() + CLOSE_FLUSH_SECONDS
            )
        link.data_ready.set()

    def _broken(self, link: Link) -> None:
        """A write found the peer gone: the connection ends as if it had reset."""
        self._end(link, "connection_reset")

    def _end(self, link: Link, reason: str) -> None:
        """End a connection now, without flushing; the lobby learns at :meth:`_settle`.

        Not in the middle of whatever the write that failed was part of (the
        relay of one input to a room, say): when that is done, as if the
        connection had ended between two events.  A recording then holds the
        end where it took effect, and a replay reproduces the order.
        """
        if link.broken:
            return
        link.broken = True
        link.close_reason = link.close_reason or reason
        link.queue.clear()
        link.queued_bytes = 0
        link.queued_snapshot = None
        link.cancel_scope.cancel()
        self._ending.append(link)
        if not self._executing:
            self._settle()

    def _settle(self) -> None:
        """Tell the lobby of the connections :meth:`_end` ended, and record their end."""
        while self._ending:
            link = self._ending.pop(0)
            if link.ended:
                continue
            link.ended = True
            if self.recorder is not None:
                self.recorder.closed(link.id, link.close_reason or "ended", trio.current_time())
            self._execute(self.core.close_connection(link.id))

    def _discard(self, link: Link, data: bytes) -> None:
        """Data for a connection whose peer has gone, until the lobby knows."""
        if self.recorder is not None:
            # Sent, as far as the server knows; a replay, whose client is
            # still there, receives it.
            self.recorder.sent(link.id, bytes(data), trio.current_time())

    def _drop(self, link: Link, reason: str, *, quiet: bool = False, **context: Any) -> None:
        """End a connection now, without flushing, and tell its opponent."""
        if not quiet:
            log.warning("connection_dropped", dropped=link.id, reason=reason, **context)
        self._end(link, reason)

    async def _snapshot_loop(self) -> None:
        """Broadcast lobby snapshots, coalescing the changes of each interval.

        Every player in the lobby gets the whole list, so a round costs
        players x list bytes: the next round waits at least as long as the
        byte budget needs to pay for this one, and a player whose earlier list
        is still on its way is held back until it has read it.
        """
        config = self.config
        next_round = -math.inf
        while True:
            await self._snapshot_wanted.wait()
            self._snapshot_wanted = trio.Event()
            await trio.sleep_until(max(next_round, self._last_snapshot + self.core.snapshot_delay()))
            now = self._last_snapshot = trio.current_time()
            actions = self.core.snapshots(self._ready_for_snapshot)
            sent = sum(len(action.data) for action in actions)  # type: ignore[union-attr]
            next_round = now + sent / config.snapshot_bytes_per_second
            if self.core.snapshot_due:
                # Someone was held back: give it time to read before trying again.
                next_round = max(next_round, now + HELD_BACK_RETRY_SECONDS)
            self._execute(actions)

    def _ready_for_snapshot(self, connection_id: int) -> bool:
        link = self.links.get(connection_id)
        if link is None:
            return False
        backlog = link.queued_bytes
        if link.fd is not None:
            try:
                backlog += unsent_bytes(link.fd)
            except OSError:
                pass
        return backlog <= self.config.snapshot_backlog_limit


async def open_listeners(config: Config) -> list[trio.SocketListener]:
    return await trio.open_tcp_listeners(config.port, host=config.host or None)
