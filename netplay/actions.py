"""What the sans-IO core asks the I/O edge to do."""

from __future__ import annotations

import attrs


@attrs.frozen
class Send:
    """Deliver ``data`` to connection ``player``, after everything queued before it.

    A ``snapshot`` is a whole lobby state: a newer one makes an older one that
    still waits in the same queue worthless, so the edge may drop the older.
    """

    player: int
    data: bytes
    snapshot: bool = False


@attrs.frozen
class Close:
    """Flush what is queued for connection ``player``, then close it."""

    player: int
    reason: str


@attrs.frozen
class Store:
    """Run a storage ``operation`` (see ``storage``) off the event loop.

    The edge hands the outcome back to ``ServerCore.stored`` with the same
    ``player`` and ``operation``; the connection may be gone by then.
    """

    player: int
    operation: object


@attrs.frozen
class PauseReading:
    """Stop reading connection ``player``: its messages wait for the rate limit.

    Back-pressure: the client's own socket buffers fill and it slows down;
    nothing it sent is lost.  A :class:`ResumeReading` follows.
    """

    player: int


@attrs.frozen
class ResumeReading:
    """Read connection ``player`` again after a :class:`PauseReading`."""

    player: int


Action = Send | Close | Store | PauseReading | ResumeReading
