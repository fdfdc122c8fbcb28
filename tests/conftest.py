"""Test-wide set-up: quiet structlog, and fixtures several modules use."""

import socket

import pytest
import structlog
from helpers import logging_restored


def _discard(logger, method_name, event_dict):
    raise structlog.DropEvent


# Tests run without the command line's logging set-up.  Every level passes the
# filter so that structlog.testing.capture_logs sees info lines; outside a
# capture the lines are discarded.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(0),
    processors=[_discard],
    cache_logger_on_first_use=False,
)


@pytest.fixture
def isolated_logging(monkeypatch):
    """Let ``main`` configure logging, then put back the test suite's set-up.

    ``main`` configures structlog globally and caches the loggers it uses, so
    the module's logger is swapped for a fresh one that only this test caches.
    """
    from netplay import cli

    with logging_restored(monkeypatch, cli):
        yield


@pytest.fixture
def start_server(tmp_path):
    """Start server processes (``helpers.server_command`` with the options given);
    every one is stopped at teardown."""
    from helpers import LoggingProcess, server_command

    started = []

    def start(*options: str):
        server = LoggingProcess(server_command(*options), tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def occupied_port():
    """A loopback port on which something else is already listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
