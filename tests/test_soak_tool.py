"""The soak tool against a real server process: a short run must find nothing wrong."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import socket
import subprocess
import sys
import threading
from typing import Any, Iterator

import pytest
import trio

TOOLS = pathlib.Path(__file__).resolve().parent.parent / "tools"


def load_soak_tool(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(TOOLS))  # for the tools' shared helpers
    spec = importlib.util.spec_from_file_location("soak", TOOLS / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ServerProcess:
    """``python -m netplay`` on a free loopback port; its JSON log lines are collected."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "netplay", "--database", ":memory:", "--replays-directory", "", "--host", "127.0.0.1", "--port", "0",
             "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.lines: list[dict[str, Any]] = []
        self.port: int | None = None
        self.listening = threading.Event()
        # Drained all along, so that a full pipe never blocks the server's logging.
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "unparsed", "text": raw.decode(errors="replace")}
            self.lines.append(line)
            if line.get("event") == "listening":
                self.port = int(line["port"])
                self.listening.set()
        self.listening.set()

    def stop(self) -> int:
        """SIGTERM, then the exit status (a graceful shutdown exits 0)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.reader.join(timeout=5)


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    server = ServerProcess()
    try:
        assert server.listening.wait(timeout=20), "the server did not start"
        assert server.port is not None, f"no listening line: {server.lines[-5:]}"
        yield server
    finally:
        server.stop()


def test_short_soak_with_thirty_clients_finds_no_violation(server_process, monkeypatch):
    soak = load_soak_tool(monkeypatch)
    options = soak.Options(
        port=server_process.port, clients=30, duration=5.0,
        server_pid=server_process.process.pid, seed=20240611,
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
    errors = [line for line in server_process.lines if line.get("level") in ("error", "critical")]
    assert errors == []


def test_soak_tool_exits_one_when_no_server_answers(monkeypatch, capsys):
    soak = load_soak_tool(monkeypatch)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = soak.main(["--port", str(port), "--clients", "1", "--duration", "1"])
    assert status == 1
    assert "cannot reach the server" in capsys.readouterr().err


def test_soak_tool_prints_progress_lines_on_stderr_while_it_runs(server_process):
    completed = subprocess.run(
        [sys.executable, str(TOOLS / "soak.py"), "--port", str(server_process.port),
         "--clients", "4", "--duration", "1.5", "--progress-interval", "0.4", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    progress = [line for line in completed.stderr.splitlines() if line.startswith("  ... ")]
    assert len(progress) >= 2, completed.stderr
    assert all("episodes" in line and "violations" in line for line in progress)
    json.loads(completed.stdout)
