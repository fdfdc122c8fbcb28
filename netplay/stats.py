"""What the server counts about itself, as plain numbers.  Sans-IO.

Theory of operation
-------------------
The core, the lobbies and the trio edge count what happens into the values
of this module: plain ints, lists of ints indexed by message letter, and
:class:`Histogram` bucket counts.  Counting costs an integer increment and
creates no object that the garbage collector tracks, so it may sit on the
per-frame path.  Nothing here knows an exposition format: ``metrics`` reads
these values when a scrape asks for them, and ``status`` when the status
page does.  Gauges of current state (players, rooms) are not counted at all:
they are read from the lobbies at scrape time.
"""

from __future__ import annotations

import bisect
import collections

import attrs

# Letters are bytes: one slot per possible first byte of a message.
LETTER_SLOTS = 256
INPUT_LETTER = ord("I")
INPUT_MESSAGE_LENGTH = 2
# Relay latency is measured on one relayed input in this many.
RELAY_SAMPLE_EVERY = 16
# Finished matches remembered for the status page.
RECENT_RESULTS = 20

# Bucket bounds, in seconds.
RELAY_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Histogram:
    """Counts of observations per bucket, their sum and their number.

    ``counts[i]`` holds observations at most ``bounds[i]`` and above the
    bound before it (not cumulative); the last slot holds those above every
    bound.  Observing allocates nothing the garbage collector tracks.
    """

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at most that)`` per bucket, ``inf`` last."""
        running = 0
        result = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            result.append((bound, running))
        return result


class Traffic:
    """Messages and bytes per letter, both ways, and the relay latency.

    ``relayed_inputs`` counts the inputs that took the per-frame path; they
    are in no other received count (see :meth:`received`).
    """

    __slots__ = (
        "received_messages", "received_bytes", "sent_messages", "sent_bytes",
        "relayed_inputs", "relay_countdown", "relay_latency",
    )

    def __init__(self) -> None:
        self.received_messages = [0] * LETTER_SLOTS
        self.received_bytes = [0] * LETTER_SLOTS
        self.sent_messages = [0] * LETTER_SLOTS
        self.sent_bytes = [0] * LETTER_SLOTS
        self.relayed_inputs = 0
        self.relay_countdown = 0
        # By path: "direct" is the per-frame path, "decoded" a relay that
        # went through the decoder (046 inputs, several messages in one read).
        self.relay_latency = {
            "direct": Histogram(RELAY_LATENCY_BUCKETS),
            "decoded": Histogram(RELAY_LATENCY_BUCKETS),
        }

    def received(self) -> dict[str, tuple[int, int]]:
        """``{letter: (messages, bytes)}`` received, for every letter seen."""
        messages, sizes = list(self.received_messages), list(self.received_bytes)
        messages[INPUT_LETTER] += self.relayed_inputs
        sizes[INPUT_LETTER] += self.relayed_inputs * INPUT_MESSAGE_LENGTH
        return _by_letter(messages, sizes)

    def sent(self) -> dict[str, tuple[int, int]]:
        """``{letter: (messages, bytes)}`` sent, for every letter seen."""
        return _by_letter(self.sent_messages, self.sent_bytes)


def _by_letter(messages: list[int], sizes: list[int]) -> dict[str, tuple[int, int]]:
    return {
        chr(letter) if 32 < letter < 127 else f"0x{letter:02x}": (count, sizes[letter])
        for letter, count in enumerate(messages)
        if count
    }


@attrs.frozen
class MatchResult:
    """One finished match, as the status page lists it.

    ``outcome`` is 1 or 2 (that player won), 0 (a draw) or None (the dialect
    does not say who won); ``ended_at`` is the server's clock.
    """

    dialect: str
    room: int
    players: tuple[str, str]
    outcome: int | None
    decided_by: str
    seconds: float | None
    ended_at: float


@attrs.define(eq=False)
class Counters:
    """Every count of one server, shared by its core, its lobbies and its edge."""

    traffic: Traffic = attrs.Factory(Traffic)
    connections_opened: int = 0
    # By reason; reasons are names the code chooses, so each set stays small.
    connections_refused: collections.Counter[str] = attrs.Factory(collections.Counter)
    http_connections_refused: collections.Counter[str] = attrs.Factory(collections.Counter)
    connections_closed: collections.Counter[str] = attrs.Factory(collections.Counter)
    protocol_errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    messages_refused: collections.Counter[str] = attrs.Factory(collections.Counter)
    # Messages handled late, held back by the rate limit ("flood").
    messages_delayed: collections.Counter[str] = attrs.Factory(collections.Counter)
    storage_batches: Histogram = attrs.Factory(lambda: Histogram(STORAGE_BUCKETS))
    storage_operations: int = 0
    # Operations that came back failed: "error" (the database raised) or
    # "queue_full" (too many waiting; never run).
    storage_failures: collections.Counter[str] = attrs.Factory(collections.Counter)
    loop_lag: Histogram = attrs.Factory(lambda: Histogram(LOOP_LAG_BUCKETS))
    gc_pauses: tuple[Histogram, ...] = attrs.Factory(
        lambda: tuple(Histogram(GC_PAUSE_BUCKETS) for _ in range(3))
    )
    recent_results: collections.deque[MatchResult] = attrs.Factory(
        lambda: collections.deque(maxlen=RECENT_RESULTS)
    )
