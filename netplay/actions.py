"""What the sans-IO core asks the I/O edge to do."""

from __future__ import annotations

import attrs


@attrs.frozen
class Send:
    """Deliver ``data`` to connection ``player``, after everything queued before it."""

    player: int
    data: bytes


@attrs.frozen
class Close:
    """Flush what is queued for connection ``player``, then close it."""

    player: int
    reason: str


Action = Send | Close
