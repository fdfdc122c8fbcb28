"""The whole server without I/O: connections, handshake, heartbeat, limits, lobby.

Theory of operation
-------------------
The trio edge (``server``) owns sockets and clocks and calls into one
:class:`ServerCore`, passing the current time.  Every call returns a list of
actions (``actions.Send`` / ``actions.Close``) that the edge carries out in
order.  Because nothing here reads a clock or touches a socket, the same core
runs over TCP, over memory streams on a virtual clock, and under a fuzzer.

A connection moves through :class:`Phase`: it must open with ``H`` +
version; an accepted version picks the connection's dialect and hands it to
the lobby, a refused one is answered ``N`` and closed.  Frames that break the
framing (unknown letter, oversized J frame, anything before ``H``) close the
connection; frames that are merely wrong (bad JSON, a message not valid in the
player's state) are logged and ignored.  Log lines about one connection are
rate-limited, so a flood of bad messages costs one line, not one per message.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Callable

import attrs
import structlog

from netplay.accounts.ratings import PlacementRule
from netplay.actions import Action, Close, PauseReading, ResumeReading, Send
from netplay.config import Config
from netplay.dialects import v046 as dialect046
from netplay.dialects import v2025 as dialect2025
from netplay.dialects.classic import Dialect, parse_command
from netplay.errors import RemoteProtocolError
from netplay.framing import endmarker
from netplay.framing import messages as m
from netplay.framing.length3 import Decoder
from netplay.lobbies.classic import Lobby, PlayerState
from netplay.lobbies.results import FinishGame
from netplay.lobbies.v046 import InputRoute, Lobby046
from netplay.lobbies.v2025 import Lobby2025, parse_engine_groups
from netplay.stats import Counters

log = structlog.get_logger("netplay.core")

CLIENT_PING = b"ELOL"
DOCUMENT_PING = b"W"
HELLO_ACCEPTED = b"H"
HELLO_REFUSED = b"N"
_INPUT_LETTER = ord("I")
_MARKER_SIZE = len(endmarker.MARKER)
# A 2025 input message on the per-frame path: a letter, 1 to 64 input bytes, the marker.
_MARKED_INPUT_MIN, _MARKED_INPUT_MAX = 1 + 1 + _MARKER_SIZE, 1 + 64 + _MARKER_SIZE
# The largest read of several whole inputs that still takes the per-frame
# path: the backlog a client builds in a stall of a few seconds.
_BACKLOG_MAX = 4096
# What an input costs of the token bucket, other messages costing 1: a client
# that stalled sends every input it owes at once and must not wait for them,
# and relaying one is cheap.  At the default rate: 9,600 a second, 160 times
# what a client sends, after a burst of 38,400 (ten minutes of play).
INPUT_COST = 1 / 32

_SIGNS_OF_LIFE = frozenset({m.Pong, m.Heartbeat, m.ClientPing})

PINGS = {Dialect.DOCUMENT: DOCUMENT_PING, Dialect.V2025: endmarker.PING}

# The 2022 client counts pings and logs in only before its third: never
# more than one a second, whatever the ping interval.
V046_MIN_PING_INTERVAL = 1.0
# The 2023-2025 clients answer nothing while they load a match (a spectator
# joining loads both players' characters and stages): 5 s on a quiet machine,
# over 11 s on a busy one.  They are not dropped before this much silence.
V2025_MIN_IDLE_TIMEOUT = 15.0

# Per connection, at most this many lines about refused messages per window.
REFUSAL_LOG_LINES = 3
REFUSAL_LOG_WINDOW = 10.0


class Phase(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    # ``H004``/``H005`` of either family, accepted: the first frame tells which.
    AWAITING_DIALECT = "awaiting_dialect"
    OPEN = "open"  # version accepted; the lobby knows the player
    CLOSING = "closing"  # refused or broken; waiting for the edge to close


@attrs.define(eq=False)
class Connection:
    id: int
    host: str
    decoder: Decoder | endmarker.Decoder
    opened_at: float
    last_received: float
    phase: Phase = Phase.AWAITING_HELLO
    dialect: Dialect = Dialect.CLIENTS
    last_ping: float = -math.inf
    # Token bucket over incoming messages.
    tokens: float = 0.0
    tokens_at: float = 0.0
    # Over the rate, the connection's messages wait in its decoder (never
    # dropped) until the bucket refills at ``resume_at``.
    resume_at: float = -math.inf
    held_since: float = math.inf
    delayed_in_flood: int = 0
    # Rate limit of the refusal log lines.
    refusals_window_start: float = -math.inf
    refusals_in_window: int = 0
    # The version of an ambiguous hello, and the first bytes after it.
    hello_version: str = ""
    after_hello: bytes = b""


class ServerCore:
    """Every connection of one server and the lobby they share.  Sans-IO."""

    def __init__(self, config: Config, *, seed: int, run_id: str = "") -> None:
        """``run_id`` names this server run in stored games (see ``Lobby046``)."""
        self.config = config
        self.seed = seed
        # What happens, counted for the metrics and the status page (see ``stats``).
        self.counters = Counters()
        self._traffic = self.counters.traffic
        results = self.counters.recent_results
        self.lobby = Lobby(seed=seed, max_name_length=config.max_name_length, results=results)
        self.lobby046 = Lobby046(
            seed=seed,
            max_spectators_per_room=config.max_spectators_per_room,
            game_over_timeout=config.game_over_timeout,
            placement_rule=PlacementRule(config.placement_rule),
            leaderboard_limit=config.leaderboard_limit,
            run_id=run_id,
            results=results,
        )
        self.lobby2025 = Lobby2025(
            seed=seed,
            engine_groups=parse_engine_groups(config.v2025_engine_groups),
            max_spectators_per_room=config.max_spectators_per_room,
            game_over_timeout=config.game_over_timeout,
            placement_rule=PlacementRule(config.placement_rule),
            leaderboard_limit=config.leaderboard_limit,
            run_id=run_id,
            results=results,
        )
        # One database, one account online at a time, whichever client it uses.
        self.lobby046.share_names_with(self.lobby2025)
        self.connections: dict[int, Connection] = {}
        self.connections_per_host: dict[str, int] = {}
        self._next_id = 1
        # Connections whose messages wait for the rate limit (see ``_throttle``).
        self._throttled: set[int] = set()
        self._throttle_changed = False

    # -- connection life cycle ------------------------------------------------

    def open_connection(self, host: str, now: float) -> int | None:
        """Admit a new connection from ``host``; None if a connection limit is reached."""
        config = self.config
        if len(self.connections) >= config.max_connections:
            log.warning("connection_refused", reason="max_connections", host=host)
            self.counters.connections_refused["max_connections"] += 1
            return None
        count = self.connections_per_host.get(host, 0)
        if count >= config.max_connections_per_ip and not config.unlimited_ip(host):
            log.warning("connection_refused", reason="max_connections_per_ip", host=host)
            self.counters.connections_refused["max_connections_per_ip"] += 1
            return None
        self.counters.connections_opened += 1
        connection_id = self._next_id
        self._next_id += 1
        self.connections_per_host[host] = count + 1
        self.connections[connection_id] = Connection(
            id=connection_id,
            host=host,
            decoder=Decoder(max_json_length=config.max_json_length),
            opened_at=now,
            last_received=now,
            tokens=config.message_burst,
            tokens_at=now,
        )
        return connection_id

    def close_connection(self, connection_id: int) -> list[Action]:
        """The connection is gone (closed, reset, dropped); tell whoever must know."""
        connection = self.connections.pop(connection_id, None)
        if connection is None:
            return []
        remaining = self.connections_per_host[connection.host] - 1
        if remaining:
            self.connections_per_host[connection.host] = remaining
        else:
            del self.connections_per_host[connection.host]
        if connection.held_since != math.inf:
            log.warning("message_flood_ended", delayed=connection.delayed_in_flood, held=False)
        self._throttled.discard(connection_id)
        if connection.refusals_in_window > REFUSAL_LOG_LINES:
            log.info(
                "message_refusals_suppressed",
                count=connection.refusals_in_window - REFUSAL_LOG_LINES,
            )
        return self._leave_lobby(connection)

    def _leave_lobby(self, connection: Connection, reason: str | None = None) -> list[Action]:
        """``reason``: why the server closes it (None: the connection failed or ended)."""
        if connection.dialect is Dialect.V046:
            return self.lobby046.disconnect(connection.id)
        if connection.dialect is Dialect.V2025:
            return self.lobby2025.disconnect(connection.id, reason)
        return self.lobby.disconnect(connection.id)  # type: ignore[return-value]

    def request_close(self, connection_id: int, reason: str) -> list[Action]:
        """Close a connection on the server's own initiative (e.g. shutdown)."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.phase is Phase.CLOSING:
            return []
        return self._closing(connection, [], reason)

    # -- incoming bytes -------------------------------------------------------

    def relay_target(
        self, connection_id: int, data: bytes, now: float
    ) -> int | InputRoute | None:
        """The per-frame path: where a chunk of whole inputs, and nothing else, goes.

        Returns the opponent's connection id when ``data`` is one whole ``I``
        message from a player in a match of the older dialects; for a 046 or
        2025 player, the match's :class:`InputRoute` (the opponent gets
        ``data``, each spectator the same inputs under its letter, see
        ``Server._relay``), with the inputs already recorded for late
        spectators.  For those two, ``data`` may hold several inputs: the
        backlog of a stall, relayed at the cost of one.  None when ``data``
        must go through :meth:`receive`, which is also where inputs over the
        rate limit wait their turn.  A single input allocates nothing.
        """
        if not data or data[0] != _INPUT_LETTER:
            return None
        if len(data) != 2:
            if data[-1] >= 0x80:  # the end marker's last byte: 2025 inputs
                return self._relay_target2025(connection_id, data, now)
            return self._relay_target_backlog046(connection_id, data, now)
        connection = self.connections.get(connection_id)
        if connection is None or connection.decoder.buffered:
            return None
        if connection.dialect is Dialect.V2025 or connection.phase is not Phase.OPEN:
            return None
        if connection.dialect is Dialect.V046:
            route = self.lobby046.input_route(connection_id, data[1])
            if route is None or connection.phase is not Phase.OPEN:
                return None
            if not self._admit(connection, now, INPUT_COST):
                return None
            connection.last_received = now
            self._traffic.relayed_inputs += 1
            route.record(data[1])
            return route
        target = self.lobby.input_target(connection_id)
        if target is None or connection.phase is not Phase.OPEN:
            return None
        if not self._admit(connection, now, INPUT_COST):
            return None
        connection.last_received = now
        self._traffic.relayed_inputs += 1
        return target

    def _relay_target2025(self, connection_id: int, data: bytes, now: float) -> InputRoute | None:
        """The per-frame path of a 2025 player: ``data`` is whole ASCII ``I`` + marker messages.

        Usually one; several when the client's inputs queued up (a stall on
        either side), which are then relayed as they came, in one write each.
        """
        size = len(data)
        if size < _MARKED_INPUT_MIN or size > _BACKLOG_MAX:
            return None
        connection = self._relaying(connection_id, Dialect.V2025)
        if connection is None:
            return None
        # Whole messages, nothing after the last; an ASCII body is valid UTF-8.
        end = data.find(endmarker.MARKER, 1)
        if end == size - _MARKER_SIZE:
            body = data[1:end]
            if size > _MARKED_INPUT_MAX or not body.isascii():
                return None
            bodies = [body]
        else:
            bodies = _marked_input_bodies(data)
            if bodies is None:
                return None
        route = self.lobby2025.input_route(connection_id)
        if route is None or not self._admit_inputs(connection, now, len(bodies)):
            return None
        if not route.record_bodies(bodies):
            return None  # the full path refuses what does not fit, with its reason
        connection.last_received = now
        self._traffic.relayed_inputs += len(bodies)
        return route

    def _relay_target_backlog046(
        self, connection_id: int, data: bytes, now: float
    ) -> InputRoute | None:
        """Several whole 2022 inputs in one read, the backlog of a stall: relayed together."""
        size = len(data)
        if size & 1 or size > _BACKLOG_MAX:
            return None
        connection = self._relaying(connection_id, Dialect.V046)
        if connection is None:
            return None
        count = size >> 1
        if data[::2] != b"I" * count:
            return None
        letters = data[1::2]
        route = self.lobby046.inputs_route(connection_id, letters)
        if route is None or not self._admit_inputs(connection, now, count):
            return None
        for letter in letters:
            route.record(letter)
        connection.last_received = now
        self._traffic.relayed_inputs += count
        return route

    def _relaying(self, connection_id: int, dialect: Dialect) -> Connection | None:
        """The connection, if it is open, of ``dialect``, and holds no partial message."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.dialect is not dialect:
            return None
        if connection.phase is not Phase.OPEN or connection.decoder.buffered:
            return None
        return connection

    def _admit_inputs(self, connection: Connection, now: float, count: int) -> bool:
        """Admit ``count`` inputs at once, only if the bucket would admit each in turn."""
        if count == 1:
            return self._admit(connection, now, INPUT_COST)
        if not self._admit(connection, now, 0.0):
            return False
        if connection.tokens - (count - 1) * INPUT_COST < 0.999_999:
            return False  # some would wait: the full path holds them
        connection.tokens -= count * INPUT_COST
        return True

    def receive(self, connection_id: int, data: bytes, now: float) -> list[Action]:
        """Bytes arrived from a connection; return what to do about them."""
        connection = self.connections.get(connection_id)
        # Gone or closing: bytes read in the same instant that the connection
        # was dropped (by another task) are of no interest any more.
        if connection is None or connection.phase is Phase.CLOSING:
            return []
        connection.last_received = now
        if connection.phase is Phase.AWAITING_DIALECT:
            return self._choose_dialect(connection, data, now)
        connection.decoder.receive_data(data)
        if connection.resume_at > now:
            return self._hold(connection)
        return self._drain(connection, now)

    def _drain(self, connection: Connection, now: float) -> list[Action]:
        """Handle the messages in the connection's decoder, as far as its rate allows."""
        decoder = connection.decoder
        traffic = self._traffic
        actions: list[Action] = []
        while True:
            if not self._admit(connection, now, 0.0):
                if decoder.buffered:
                    self._throttle(connection, now, actions)
                    actions.extend(self._hold(connection))
                elif connection.held_since != math.inf:
                    self._flood_ended(connection, now, actions)
                return actions
            try:
                frame = decoder.next_frame()
            except RemoteProtocolError as error:
                if connection.phase is Phase.AWAITING_HELLO:
                    log.warning("protocol_error", reason="expected_hello", got=error.reason)
                    self.counters.protocol_errors["expected_hello"] += 1
                    return self._closing(connection, actions, "expected_hello")
                if error.fatal:
                    log.warning("protocol_error", reason=error.reason, **error.context)
                    self.counters.protocol_errors[error.reason] += 1
                    return self._closing(connection, actions, error.reason)
                traffic.received_messages[decoder.last_letter] += 1
                traffic.received_bytes[decoder.last_letter] += decoder.last_length
                self._charge(connection, 1.0)
                self._log_refusal(connection, error, now)
                continue
            if frame is None:
                if connection.held_since != math.inf:
                    self._flood_ended(connection, now, actions)
                return actions
            traffic.received_messages[decoder.last_letter] += 1
            traffic.received_bytes[decoder.last_letter] += decoder.last_length
            self._charge(connection, INPUT_COST if decoder.last_letter == _INPUT_LETTER else 1.0)
            self._dispatch(connection, frame, actions, now)
            if connection.phase is Phase.CLOSING:
                return actions
            if connection.phase is Phase.AWAITING_DIALECT or decoder is not connection.decoder:
                # The hello chose a decoder (or left the choice to the next
                # frame): what followed it in this read goes there.
                rest = decoder.take_buffered()
                if rest:
                    actions.extend(self.receive(connection.id, rest, now))
                return actions

    def _dispatch(self, connection: Connection, frame: Any, actions: list[Action], now: float) -> None:
        if connection.phase is Phase.AWAITING_HELLO:
            if type(frame) in _SIGNS_OF_LIFE:
                return  # e.g. a pong to a ping sent before the client said hello
            if type(frame) is not m.Hello:
                log.warning("protocol_error", reason="expected_hello", got=type(frame).__name__)
                self.counters.protocol_errors["expected_hello"] += 1
                self._closing(connection, actions, "expected_hello")
                return
            self._hello(connection, frame, actions)
            return
        kind = type(frame)
        if kind in _SIGNS_OF_LIFE:
            return  # already noted as life
        if kind is m.Hello:
            self._log_refusal(
                connection, RemoteProtocolError("hello_repeated", fatal=False), now
            )
            return
        if connection.dialect is Dialect.V046:
            self._dispatch046(connection, frame, actions, now)
            return
        if connection.dialect is Dialect.V2025:
            self._dispatch2025(connection, frame, actions, now)
            return
        try:
            if kind is m.Json:
                frame = parse_command(frame.payload)
            actions.extend(self.lobby.handle(connection.id, frame, now))
        except RemoteProtocolError as error:
            self._log_refusal(connection, error, now)

    def _dispatch046(
        self, connection: Connection, frame: Any, actions: list[Action], now: float
    ) -> None:
        lobby = self.lobby046
        kind = type(frame)
        try:
            if kind is m.Input:
                actions.extend(lobby.handle_input(connection.id, frame.raw))
                return
            if kind is not m.Json:
                # P, Q and L belong to the older dialects; the 2022 client never sends them.
                raise RemoteProtocolError("message_not_in_dialect", fatal=False, message=kind.__name__)
            command = dialect046.parse_command(
                frame.payload, registered=lobby.is_registered(connection.id)
            )
            self._command(connection, lobby, command, actions, now)
        except RemoteProtocolError as error:
            self._log_refusal(connection, error, now)

    def _command(
        self, connection: Connection, lobby: Lobby046 | Lobby2025, command: Any,
        actions: list[Action], now: float,
    ) -> None:
        """A parsed command of a lobby with logins: the ones that end the connection, or the lobby's."""
        kind = type(command)
        if kind is m.Logout:
            log.info("logout")
            self._closing(connection, actions, "logout")
        elif kind is m.ErrorReport:
            # The client crashed: it sends its error and gives up the connection.
            # Logged whole when short, as the panel-game server keeps it; the
            # text is the client's, so it is a field, never the message.
            log.warning("client_error_report", size=command.size, report=command.text)
            self._closing(connection, actions, "client_error_report")
        else:
            actions.extend(lobby.handle(connection.id, command, now))

    def _dispatch2025(
        self, connection: Connection, frame: Any, actions: list[Action], now: float
    ) -> None:
        lobby = self.lobby2025
        kind = type(frame)
        try:
            if kind is endmarker.MarkedInput:
                actions.extend(lobby.handle_input(connection.id, frame))
                return
            if kind is not m.Json:
                raise RemoteProtocolError(
                    "message_not_in_dialect", fatal=False, message=kind.__name__
                )
            self._command(connection, lobby, dialect2025.parse_command(frame.payload), actions, now)
        except RemoteProtocolError as error:
            self._log_refusal(connection, error, now)

    def _choose_dialect(self, connection: Connection, data: bytes, now: float) -> list[Action]:
        """After an ``H004``/``H005`` both families send: their first frame tells them apart.

        The 2013 clients' frames are ``J`` + a 3-byte length whose first byte
        is 0 at every length we accept; the 2025 clients' are ``J`` + JSON,
        which starts with ``{``.  Both were answered ``H`` already.  A first
        byte other than ``J`` is the 2013 family's: the 2025 clients log in first.
        """
        seen = connection.after_hello + data
        if not seen:
            return []
        if seen[:1] == b"J" and len(seen) < 2:
            connection.after_hello = seen
            return []
        connection.after_hello = b""
        version = connection.hello_version
        if seen[:2] == b"J{":
            self._open(connection, Dialect.V2025, version)
        else:
            # Anything else is the older family's (whose decoder refuses
            # what it cannot read, such as a length past the limit).
            self._open(connection, Dialect.CLIENTS, version)
        return self.receive(connection.id, seen, now)

    def _open(self, connection: Connection, dialect: Dialect, version: str) -> None:
        connection.phase = Phase.OPEN
        connection.dialect = dialect
        if dialect is Dialect.V046:
            self.lobby046.connect(connection.id)
        elif dialect is Dialect.V2025:
            connection.decoder = endmarker.Decoder(max_body_length=self.config.max_json_length)
            self.lobby2025.connect(connection.id, version)
        else:
            self.lobby.connect(connection.id, dialect, int(version))
        log.info("dialect_chosen", version=version, dialect=dialect.value)

    def _hello(self, connection: Connection, hello: m.Hello, actions: list[Action]) -> None:
        version = hello.version
        config = self.config
        if version in config.v2025_versions and version in config.client_versions:
            connection.phase = Phase.AWAITING_DIALECT
            connection.hello_version = version
            log.info("hello_accepted", version=version, dialect="by_first_frame")
            actions.append(Send(connection.id, HELLO_ACCEPTED))
            return
        if version in self.config.v2025_versions:
            dialect = Dialect.V2025
        elif version in self.config.client_versions:
            dialect = Dialect.CLIENTS
        elif version in self.config.document_versions:
            dialect = Dialect.DOCUMENT
        elif version in self.config.v046_versions:
            dialect = Dialect.V046
        else:
            log.info("hello_refused", version=version)
            actions.append(Send(connection.id, HELLO_REFUSED))
            self._closing(connection, actions, "version_refused")
            return
        self._open(connection, dialect, version)
        log.info("hello_accepted", version=version, dialect=dialect.value)
        actions.append(Send(connection.id, HELLO_ACCEPTED))

    def _closing(self, connection: Connection, actions: list[Action], reason: str) -> list[Action]:
        """Leave the lobby now (the opponent learns at once); the edge closes after flushing."""
        phase, connection.phase = connection.phase, Phase.CLOSING
        if phase is Phase.OPEN:
            actions.extend(self._leave_lobby(connection, reason))
            if connection.dialect is Dialect.V046:
                # The 2022 client notices a close only when data comes with
                # it; without this last frame it would hang on its screen.
                actions.append(Send(connection.id, dialect046.farewell(reason)))
        actions.append(Close(connection.id, reason))
        return actions

    # -- limits and log hygiene -----------------------------------------------

    def _admit(self, connection: Connection, now: float, cost: float) -> bool:
        """Token bucket: whether a message may be handled now; takes ``cost`` if so.

        A message needs a whole token to start, so that an empty bucket holds
        every kind alike; inputs then cost only :data:`INPUT_COST`.
        """
        config = self.config
        tokens = connection.tokens + (now - connection.tokens_at) * config.max_messages_per_second
        if tokens > config.message_burst:
            tokens = config.message_burst
        connection.tokens_at = now
        # The tolerance keeps a refill computed to the instant from falling
        # short by a rounding error, and the connection from waiting forever.
        if tokens >= 0.999_999 and connection.resume_at <= now:
            connection.tokens = tokens - cost
            return True
        connection.tokens = tokens
        return False

    def _charge(self, connection: Connection, cost: float) -> None:
        connection.tokens -= cost
        if connection.held_since != math.inf:
            connection.delayed_in_flood += 1
            self.counters.messages_delayed["flood"] += 1

    def _throttle(self, connection: Connection, now: float, actions: list[Action]) -> None:
        """Over the rate: handle nothing more, and read nothing more, until the
        bucket has a token again."""
        config = self.config
        connection.resume_at = now + max(
            (1.0 - connection.tokens) / config.max_messages_per_second, 1e-6
        )
        self._throttled.add(connection.id)
        self._throttle_changed = True
        if connection.held_since == math.inf:
            connection.held_since = now
            connection.delayed_in_flood = 0
            actions.append(PauseReading(connection.id))
            log.warning(
                "message_flood", player=connection.id,
                limit_per_second=config.max_messages_per_second, burst=config.message_burst,
            )

    def _hold(self, connection: Connection) -> list[Action]:
        """Messages wait for the rate; past ``max_held_bytes`` of them, the sender is closed.

        The edge stops reading a held connection, so this takes an edge that
        cannot (or bytes read before it did) to happen.
        """
        held = connection.decoder.buffered
        if held <= self.config.max_held_bytes:
            return []
        log.warning(
            "message_flood_closed", player=connection.id, held_bytes=held,
            limit=self.config.max_held_bytes, delayed=connection.delayed_in_flood,
        )
        connection.held_since = math.inf  # said above, with the count
        return self._closing(connection, [], "message_flood")

    def _flood_ended(self, connection: Connection, now: float, actions: list[Action]) -> None:
        actions.append(ResumeReading(connection.id))
        log.warning(
            "message_flood_ended", player=connection.id, delayed=connection.delayed_in_flood,
            held_for=round(now - connection.held_since, 3),
        )
        connection.held_since = math.inf

    def _log_refusal(self, connection: Connection, error: RemoteProtocolError, now: float) -> None:
        self.counters.messages_refused[error.reason] += 1
        if now - connection.refusals_window_start >= REFUSAL_LOG_WINDOW:
            if connection.refusals_in_window > REFUSAL_LOG_LINES:
                log.info(
                    "message_refusals_suppressed",
                    count=connection.refusals_in_window - REFUSAL_LOG_LINES,
                )
            connection.refusals_window_start = now
            connection.refusals_in_window = 0
        connection.refusals_in_window += 1
        if connection.refusals_in_window <= REFUSAL_LOG_LINES:
            log.info("message_refused", reason=error.reason, **error.context)

    # -- time ---------------------------------------------------------------

    def heartbeat(self, connection_id: int, now: float) -> tuple[list[Action], float]:
        """Pings and timeouts due at ``now``; returns the actions and when to call again."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.phase is Phase.CLOSING:
            return [], math.inf
        config = self.config
        silent_since = connection.last_received
        # Every rule compares ``now`` with the very deadline it returns, so a
        # call at the returned time always acts (no rounding gap to spin in).
        idle_timeout = config.idle_timeout
        if connection.dialect is Dialect.V2025 and idle_timeout < V2025_MIN_IDLE_TIMEOUT:
            idle_timeout = V2025_MIN_IDLE_TIMEOUT
        idle_deadline = silent_since + idle_timeout
        if now >= idle_deadline:
            log.info("connection_idle", silent_for=round(now - silent_since, 3))
            return self._closing(connection, [], "idle_timeout"), math.inf
        deadlines = [idle_deadline]
        if connection.phase is Phase.AWAITING_DIALECT:
            # No ping: neither family could read the other's.
            handshake_deadline = connection.opened_at + config.handshake_timeout
            if now >= handshake_deadline:
                log.info("handshake_timeout")
                return self._closing(connection, [], "handshake_timeout"), math.inf
            return [], min(idle_deadline, handshake_deadline)
        if connection.phase is Phase.AWAITING_HELLO:
            handshake_deadline = connection.opened_at + config.handshake_timeout
            if now >= handshake_deadline:
                log.info("handshake_timeout")
                return self._closing(connection, [], "handshake_timeout"), math.inf
            deadlines.append(handshake_deadline)
        elif not self._registered(connection):
            registration_deadline = connection.opened_at + config.registration_timeout
            if now >= registration_deadline:
                log.info("registration_timeout")
                return self._closing(connection, [], "registration_timeout"), math.inf
            deadlines.append(registration_deadline)
        actions: list[Action] = []
        interval = config.ping_interval
        if connection.dialect is Dialect.V046:
            interval = max(interval, V046_MIN_PING_INTERVAL)
        ping_due = max(silent_since, connection.last_ping) + interval
        if now >= ping_due:
            ping = PINGS.get(connection.dialect, CLIENT_PING)
            actions.append(Send(connection_id, ping))
            connection.last_ping = now
            ping_due = now + interval
        deadlines.append(ping_due)
        return actions, min(deadlines)

    def _registered(self, connection: Connection) -> bool:
        if connection.dialect is Dialect.V046:
            return self.lobby046.is_registered(connection.id)
        if connection.dialect is Dialect.V2025:
            return self.lobby2025.is_registered(connection.id)
        return self.lobby.players[connection.id].state is not PlayerState.UNREGISTERED

    # -- storage and lobby timers --------------------------------------------------

    def stored(
        self, connection_id: int, operation: object, outcome: object, now: float
    ) -> list[Action]:
        """The outcome of a ``Store`` action, for the connection that caused it."""
        # The lobby knows whether the connection is still there, and some
        # outcomes (a stored game) matter whoever is.
        return self._lobby_of(connection_id, operation).stored(
            connection_id, operation, outcome, now
        )

    def _lobby_of(self, connection_id: int, operation: object) -> Lobby046 | Lobby2025:
        """The lobby that asked for ``operation`` on behalf of ``connection_id``."""
        if type(operation) is FinishGame:
            return self.lobby2025 if operation.key.split(":")[1:2] == ["2025"] else self.lobby046
        connection = self.connections.get(connection_id)
        if connection is not None and connection.dialect is Dialect.V2025:
            return self.lobby2025
        return self.lobby046

    def tick(self, now: float) -> list[Action]:
        """Deadlines due at ``now`` (the lobbies', held messages'); the edge calls
        this at :meth:`next_deadline`."""
        actions = self.lobby046.tick(now) + self.lobby2025.tick(now)
        if self._throttled:
            due = [c for c in self._throttled if self.connections[c].resume_at <= now]
            for connection_id in sorted(due):
                self._throttled.discard(connection_id)
                connection = self.connections[connection_id]
                if connection.phase is not Phase.CLOSING:
                    actions.extend(self._drain(connection, now))
        return actions

    def next_deadline(self) -> float:
        """When :meth:`tick` is next due; clears :attr:`deadlines_changed`."""
        self.lobby046.deadlines_changed = False
        self.lobby2025.deadlines_changed = False
        self._throttle_changed = False
        deadline = min(self.lobby046.next_deadline(), self.lobby2025.next_deadline())
        for connection_id in self._throttled:
            deadline = min(deadline, self.connections[connection_id].resume_at)
        return deadline

    @property
    def deadlines_changed(self) -> bool:
        """Whether a deadline was set since the last :meth:`next_deadline`."""
        return (
            self.lobby046.deadlines_changed
            or self.lobby2025.deadlines_changed
            or self._throttle_changed
        )

    # -- lobby snapshots -------------------------------------------------------

    @property
    def snapshot_due(self) -> bool:
        return self.lobby.snapshot_due or self.lobby046.snapshot_due or self.lobby2025.snapshot_due

    def snapshot_delay(self) -> float:
        """How long the edge waits between two lobby broadcasts now."""
        return self.config.snapshot_delay(
            len(self.lobby.names) + len(self.lobby046.names) + len(self.lobby2025.names)
        )

    def snapshots(self, may_send: Callable[[int], bool] | None = None) -> list[Action]:
        """Lobby snapshots due now, marked so a newer one supersedes an unsent older one.

        ``may_send`` holds back connections still busy with an earlier one.
        """
        return [
            Send(send.player, send.data, snapshot=True)
            for lobby in (self.lobby, self.lobby046, self.lobby2025)
            for send in lobby.snapshots(may_send)
        ]


def _marked_input_bodies(data: bytes) -> list[bytes] | None:
    """The bodies of ``data`` if it is only whole ASCII ``I`` messages, else None."""
    if not data.endswith(endmarker.MARKER):
        return None
    bodies = []
    for message in data[:-_MARKER_SIZE].split(endmarker.MARKER):
        size = len(message)
        if size < 2 or size > 65 or message[0] != _INPUT_LETTER or not message.isascii():
            return None
        bodies.append(message[1:])
    return bodies
