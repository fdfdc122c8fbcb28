"""The real server process: the lines an operator relies on, and stop signals.

SIGINT and SIGTERM at every moment of the server's life end it cleanly.
"Cleanly" is what a service manager and an operator need: exit status 0, a
``stopped`` line last, no traceback.  Signals are sent as soon as a moment is
seen (the log file is watched every millisecond); whenever exactly they land,
the outcome must be the same, so a slow machine shifts the moments but does
not make the tests fail.
"""

from __future__ import annotations

import signal
import time

import pytest
from helpers import LoggingProcess, server_command

# (name, log event to wait for, None: the handler is installed; extra delay in seconds)
MOMENTS = [
    ("when_caught", None, 0.0),
    ("shortly_after_caught", None, 0.03),
    ("at_first_log_line", "", 0.0),
    ("at_database_opened", "database_migrated", 0.0),
    ("at_listening", "listening", 0.0),
    ("after_listening", "listening", 0.05),
]


def wait_for_moment(server: LoggingProcess, event: str | None, delay: float) -> None:
    if event is None:
        server.wait_until_catching(signal.SIGTERM)
    else:
        server.wait_for_record(event or None, poll=0.001)
    if delay:
        time.sleep(delay)  # any moment will do: the outcome must not depend on it


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize(("moment", "event", "delay"), MOMENTS, ids=[m[0] for m in MOMENTS])
def test_stop_signal_at_any_moment_of_start_up_exits_zero_without_traceback(
    tmp_path, signum, moment, event, delay
):
    database = tmp_path / "players.sqlite3"
    server = LoggingProcess(server_command("--database", str(database)),
                            tmp_path / "server.log", wait_for=None)
    try:
        wait_for_moment(server, event, delay)
        server.send_signal(signum)
        server.process.wait(timeout=15)
    finally:
        status = server.stop()
    log = server.text()
    assert status == 0, log
    assert "Traceback" not in log
    assert server.events()[-1] == "stopped", log
    received = [r for r in server.records() if r["event"] == "signal_received"]
    assert [r["signal"] for r in received] == [signum.name]


@pytest.mark.parametrize("level", ["warning", "error"])
def test_the_listening_line_says_the_port_whatever_the_log_level(tmp_path, level):
    with LoggingProcess(server_command("--log-level", level), tmp_path / "server.log") as server:
        assert server.port and server.port > 0  # from the listening line
        server.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    records = server.records()
    assert [r["event"] for r in records] == ["listening", "signal_received", "stopped"]
    assert {r["level"] for r in records} == {"info"}
    assert records[0]["logger"] == "netplay.cli"
