"""The tools in tools/ fail with one clear line and exit status 1 when they cannot work."""

from __future__ import annotations

import json
import subprocess

from helpers import tool_command

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


# -- record_proxy.py ------------------------------------------------------------------------


def test_record_proxy_on_a_busy_port_says_so_and_leaves_no_file(tmp_path, occupied_port):
    out = tmp_path / "proxy.session"
    completed = run_tool("record_proxy", "--listen", str(occupied_port), "--listen-host",
                         "127.0.0.1", "--upstream", "127.0.0.1:9", "--out", str(out),
                         "--log-format", "json")
    record = json.loads(assert_one_line_error(completed))
    assert record["event"] == "cannot_listen"
    assert record["port"] == occupied_port and record["host"] == "127.0.0.1"
    assert not out.exists()


def test_record_proxy_with_an_unwritable_out_file_says_so(tmp_path):
    out = tmp_path / "missing" / "proxy.session"
    completed = run_tool("record_proxy", "--listen", "0", "--upstream", "127.0.0.1:9",
                         "--out", str(out), "--log-format", "json")
    record = json.loads(assert_one_line_error(completed))
    assert record["event"] == "cannot_record"
    assert str(out) in record["error"]
