"""The tools in tools/: one clear line and exit status 1 when they cannot work; their shared
summaries."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Iterator

import pytest
from helpers import ROOT, load_tool, tool_command

TOOL_TIMEOUT = 30


def run_tool(tool: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tool_command(tool, *options), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TOOL_TIMEOUT)


def assert_one_line_error(completed: subprocess.CompletedProcess[str]) -> str:
    """Status 1, no traceback, and one line on stderr: that line."""
    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    return lines[0]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that was free a moment ago: nothing listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield port


# -- no server ------------------------------------------------------------------------------

SESSION = str(ROOT / "tests" / "sessions" / "classic_match.session")

# Each tool that talks to a server, with what it needs besides the address.
WITHOUT_A_SERVER = {
    "loadgen": lambda port: ["--port", port, "--matches", "2", "--duration", "1"],
    "connhold": lambda port: ["--port", port, "--clients", "2"],
    "loginstorm": lambda port: ["--port", port, "--clients", "2"],
    "soak": lambda port: ["--port", port, "--clients", "2", "--duration", "1"],
    "replay": lambda port: [SESSION, "--server", f"127.0.0.1:{port}"],
}


@pytest.mark.parametrize("tool", sorted(WITHOUT_A_SERVER))
def test_a_tool_without_a_server_says_so_in_one_line_and_exits_one(tool, closed_port):
    completed = run_tool(tool, *WITHOUT_A_SERVER[tool](str(closed_port)))
    line = assert_one_line_error(completed)
    assert line.startswith(f"{tool}: cannot ")
    assert f"127.0.0.1:{closed_port}" in line
    assert completed.stdout == ""  # no report of nothing


# -- record_proxy.py ------------------------------------------------------------------------


def test_record_proxy_on_a_busy_port_says_so_and_leaves_no_file(tmp_path, occupied_port):
    out = tmp_path / "proxy.session"
    completed = run_tool("record_proxy", "--listen", str(occupied_port), "--listen-host",
                         "127.0.0.1", "--upstream", f"127.0.0.1:{occupied_port}", "--out", str(out),
                         "--log-format", "json")
    record = json.loads(assert_one_line_error(completed))
    assert record["event"] == "cannot_listen"
    assert record["port"] == occupied_port and record["host"] == "127.0.0.1"
    assert not out.exists()


def test_record_proxy_with_an_unwritable_out_file_says_so(tmp_path, occupied_port):
    out = tmp_path / "missing" / "proxy.session"
    # A listening socket accepts connections (its backlog): a stand-in upstream.
    completed = run_tool("record_proxy", "--listen", "0", "--upstream", f"127.0.0.1:{occupied_port}",
                         "--out", str(out), "--log-format", "json")
    record = json.loads(assert_one_line_error(completed))
    assert record["event"] == "cannot_record"
    assert str(out) in record["error"]


# -- the shared percentile -------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks_and_handle_few_values():
    clients = load_tool("_clients")
    assert clients.percentiles([]) == {"p50": None, "p99": None, "max": None}
    assert clients.percentiles([0.25]) == {"p50": 0.25, "p99": 0.25, "max": 0.25}
    summary = clients.percentiles(reversed(range(1, 101)))  # any order
    assert summary == {"p50": 50.5, "p99": 99.01, "max": 100}
