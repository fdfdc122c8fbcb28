"""``python -m netplay`` and the ``netplay-server`` command.

Stop signals are caught before the rest of the package (trio, structlog,
SQLite) is imported, so SIGINT or SIGTERM at any moment of start-up ends
the server cleanly; see ``netplay/signals.py``.
"""

import sys

from netplay.operations.signals import StopSignals


def run() -> None:
    """Console script entry point."""
    # Never restored: until the process exits, a late signal is only noted.
    stop_signals = StopSignals().install()
    from netplay.cli import main

    sys.exit(main(stop_signals=stop_signals))


if __name__ == "__main__":
    run()
