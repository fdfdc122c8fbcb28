"""SIGINT and SIGTERM, caught from the first moment of start-up.

Python's defaults are wrong for a server that is being started: SIGTERM kills
the process outright (status -15) and SIGINT raises ``KeyboardInterrupt``
wherever the interpreter happens to be (a traceback, status 1).  So the
command line's entry point installs :class:`StopSignals` before it imports
anything heavy; it only notes which signal came.  The server opens trio's
signal receiver before it starts anything (see ``netplay.cli.serve``) and
then looks at what was noted, so no signal falls between the two.

Standard library only: this module is imported before trio and structlog.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Notes SIGINT and SIGTERM while nobody else listens for them.

    :meth:`install` replaces the handlers of both signals; :meth:`restore`
    puts back the ones that were there.  A noted signal is in :attr:`first`.
    The handler does nothing else, so it is safe at any moment.
    """

    def __init__(self) -> None:
        self.first: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._note)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.first is None:
            self.first = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.restore()
