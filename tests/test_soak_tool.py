"""The soak tool against a real server process: a short run must find nothing wrong."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Iterator

import pytest
import trio
from helpers import LoggingProcess, load_tool, server_command, tool_command


@pytest.fixture
def server_process(tmp_path) -> Iterator[LoggingProcess]:
    with LoggingProcess(server_command(), tmp_path / "server.log") as server:
        yield server


def test_short_soak_with_thirty_clients_finds_no_violation(server_process):
    soak = load_tool("soak")
    options = soak.Options(
        port=server_process.port, clients=30, duration=5.0,
        server_pid=server_process.pid, seed=20240611,
    )
    report = trio.run(soak.soak, options)
    assert report.violations == {}, report.render()
    actions = report.actions
    for done in ("registrations", "rooms_created", "matches_started", "inputs_received",
                 "panel_messages_received", "lobby_lists_checked", "control_handshakes"):
        assert actions[done] > 0, f"nothing of {done}:\n{report.render()}"
    assert sum(count for kind, count in actions.items() if kind.startswith("misbehaved_")) > 0
    assert report.rss_start is not None and report.rss_end is not None
    assert server_process.stop() == 0
    errors = [line for line in server_process.records() if line.get("level") in ("error", "critical")]
    assert errors == []


def test_soak_tool_exits_one_when_no_server_answers(capsys):
    soak = load_tool("soak")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = soak.main(["--port", str(port), "--clients", "1", "--duration", "1"])
    assert status == 1
    assert "cannot reach the server" in capsys.readouterr().err


def test_soak_tool_prints_progress_lines_on_stderr_while_it_runs(server_process):
    completed = subprocess.run(
        tool_command("soak", "--port", str(server_process.port), "--clients", "4",
                     "--duration", "1.5", "--progress-interval", "0.4", "--json"),
        capture_output=True, text=True, timeout=60,
    )
    progress = [line for line in completed.stderr.splitlines() if line.startswith("  ... ")]
    assert len(progress) >= 2, completed.stderr
    assert all("episodes" in line and "violations" in line for line in progress)
    json.loads(completed.stdout)
