"""Smoke tests of the load tools (tools/loadgen.py, tools/connhold.py, tools/loginstorm.py).

Each tool runs for a second or two, with a handful of clients, against one
real server started as a subprocess on 127.0.0.1, and its JSON report is
checked for sane numbers.  The server pings after 0.2 s of silence and drops
after 1 s, so a hold of 1.5 s proves the idle clients answer their pings.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import ROOT, LoggingProcess, load_tool, server_command, tool_command


def _serve(log_path: Path, *options: str) -> Iterator[tuple[int, int]]:
    """(port, pid) of a server on 127.0.0.1, stopped with SIGTERM at the end."""
    with LoggingProcess(server_command(*options), log_path) as server:
        assert server.port is not None
        yield server.port, server.pid


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    yield from _serve(log_path, "--ping-interval", "0.2", "--idle-timeout", "1.0")


@pytest.fixture(scope="module")
def server046(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """Silent 046 clients are pinged once a second at the soonest: a longer idle timeout."""
    log_path = tmp_path_factory.mktemp("server046") / "server.log"
    yield from _serve(log_path, "--ping-interval", "1.0", "--idle-timeout", "3.0")


def run_tool(script: str, *args: object, timeout: float = 30) -> list[dict[str, Any]]:
    """Run a tool with --json; return every JSON line it printed."""
    completed = subprocess.run(
        tool_command(script.removesuffix(".py"), *map(str, args), "--json"),
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    reports = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert reports, f"no report; exit {completed.returncode}; stderr:\n{completed.stderr}"
    return reports


def test_loadgen_plays_matches_without_loss_and_measures_latency(server):
    port, pid = server
    [report] = run_tool(
        "loadgen.py", "--port", port, "--matches", 4, "--processes", 2,
        "--warmup", 0.5, "--duration", 1.5, "--server-pid", pid,
    )
    assert report["matches_ready"] == 4
    assert report["failures"] == {}
    assert report["lost"] == report["gaps"] == report["reordered"] == report["closed"] == 0
    assert report["received_total"] == report["sent_total"] > 0
    # 8 players at 60 Hz for 1.5 s; a busy machine may delay some sends.
    assert 45 <= report["rate_per_player"] <= 65
    assert report["sent"] > 0.7 * 8 * 60 * 1.5
    latency = report["latency_ms"]
    assert latency["n"] > 0 and 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 2000
    assert report["panels"] >= 8 and report["opponent_panels"] >= 8  # each first P and its O
    assert report["send_lag_ms"]["n"] == report["sent"]
    assert report["server_cpu_percent"] is not None and report["server_rss_mib"] > 1
    assert report["server_cpu_percent"] > 0 and report["server_rss_before_mib"] > 1
    assert report["server_preempted"] >= 0  # involuntary switches of its threads in the window
    assert report["machine_busy_percent"] > 0 and report["machine_steal_percent"] >= 0


def test_loadgen_ramp_reports_each_step_and_a_summary(server):
    port, _ = server
    *steps, summary = run_tool(
        "loadgen.py", "--port", port, "--ramp", "--ramp-start", 1, "--ramp-max", 2,
        "--ramp-pause", 0.1, "--warmup", 0.2, "--duration", 0.8, "--ramp-p99-ms", 1000,
    )
    assert summary["ramp"] is True
    assert 1 <= len(steps) == summary["steps"] <= 2
    assert [step["matches"] for step in steps] == [1, 2][: len(steps)]
    for step in steps:
        assert step["lost"] == 0 and step["matches_ready"] == step["matches"]
    if not summary["stopped_by_generator"]:
        assert summary["largest_passing_matches"] == 2


@pytest.mark.parametrize("dialect", ["046", "2025"])
def test_loadgen_players_and_spectators_each_get_their_latency(server046, dialect):
    """The 2022 clients, and the 2025 ones with their end-marker framing."""
    port, pid = server046
    [report] = run_tool(
        "loadgen.py", "--port", port, "--dialect", dialect, "--matches", 3,
        "--spectators-per-match", 2, "--spectator-delay", 0.3, "--warmup", 1.0,
        "--duration", 1.0, "--server-pid", pid,
    )
    assert report["matches_ready"] == 3 and report["failures"] == {}
    assert report["lost"] == report["gaps"] == report["reordered"] == report["closed"] == 0
    assert report["spectators"] == report["spectators_ready"] == 6
    assert report["spectator_lost"] == report["spectator_gaps"] == 0
    assert report["spectator_reordered"] == report["spectator_closed"] == 0
    # Each spectator receives both players' inputs: U for player 1, I for player 2.
    assert report["spectator_received_total"] > 0.7 * 6 * 2 * 60 * 1.5
    for name in ("latency_ms", "spectator_latency_ms"):
        latency = report[name]
        assert latency["n"] > 0 and 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 2000
    assert report["login_rtt_ms"]["n"] == 12  # 6 players and 6 spectators logged in
    assert report["panels"] == 0  # these clients make their own panels
    assert report["spectator_pings"] >= 6  # silent for over a second, pinged, and answered


def test_loadgen_046_finishing_ranked_games_are_stored_once_with_replays(tmp_path):
    """--finish-matches: some games end mid-run; their latency window and storage are checked."""
    database, replays = tmp_path / "games.sqlite3", tmp_path / "replays"
    server = _serve(
        tmp_path / "server.log", "--ping-interval", "1.0", "--idle-timeout", "3.0",
        "--placement-rule", "relaxed", "--database", str(database),
        "--replays-directory", str(replays),
    )
    port, pid = next(server)
    try:
        [report] = run_tool(
            "loadgen.py", "--port", port, "--dialect", "046", "--matches", 4,
            "--finish-matches", 2, "--finish-at", 0.5, "--finish-spread", 0.2,
            "--finish-window", 0.5, "--ranked", "--warmup", 0.5, "--duration", 1.5,
            "--server-pid", pid, "--database", database, "--replays-directory", replays,
        )
    finally:
        server.close()
    assert report["matches_ready"] == 4 and report["failures"] == {}
    assert report["ranked_matches"] == 4
    assert report["finish_scheduled"] == report["finished_matches"] == 2
    assert report["games_over_sent"] == 4 and report["results_back"] == 4
    assert report["result_rtt_ms"]["n"] == 4
    assert report["lost"] == report["gaps"] == report["reordered"] == report["closed"] == 0
    assert 45 <= report["rate_per_player"] <= 65  # the two matches still playing
    window = report["finish_window"]
    assert window["players"]["n"] > 0
    assert [second["second"] for second in window["players_per_second"]] == [-0.5, 0.5]
    assert report["stored"] == {
        "expected": 2, "stored_once": 2, "missing": 0, "duplicated": 0, "wrong_result": 0,
        "rated_with_history": 2, "replay_files": 2, "ok": True,
    }


@pytest.mark.parametrize("dialect", ["046", "2025"])
def test_loginstorm_answers_new_and_returning_logins(server046, dialect):
    port, pid = server046
    [report] = run_tool(
        "loginstorm.py", "--port", port, "--clients", 40, "--pause", 0.3, "--timeout", 20,
        "--server-pid", pid, "--dialect", dialect,
    )
    assert report["seed"]["ids"] == 20
    storm = report["storm"]
    assert storm["answered"] == 40 and storm["failures"] == {}
    assert storm["results"] == {"new_new_id": 20, "returning_welcome_back": 20}
    assert storm["login_ms"]["n"] == 40 and storm["login_returning_ms"]["n"] == 20
    assert 0 < storm["login_ms"]["p50"] <= storm["login_ms"]["max"] < 2000
    assert storm["over_limit"] == 0


def test_connhold_holds_idle_clients_that_answer_pings(server):
    port, pid = server
    [report] = run_tool(
        "connhold.py", "--port", port, "--clients", 40, "--hold", 1.5, "--settle", 0.2,
        "--server-pid", pid,
    )
    assert report["registered"] == report["held"] == 40
    assert report["all_held"] and report["closed_by_server"] == 0
    assert report["pings_answered"] >= 40  # the hold outlasts the idle timeout
    assert report["server_open_files"] >= 40
    assert report["server_rss_after_mib"] > 1 and report["server_rss_before_mib"] > 1
    assert report["server_cpu_percent_during_hold"] >= 0


def test_connhold_storm_ends_with_everyone_holding_the_full_list(server):
    port, pid = server
    [report] = run_tool(
        "connhold.py", "--port", port, "--storm", "--clients", 60, "--setup-timeout", 10,
        "--server-pid", pid,
    )
    assert report["all_complete"] and report["complete"] == 60
    assert report["failures"] == {}
    assert 0 < report["storm_seconds"] < 10
    assert report["lists_parsed"] >= 1


def test_latency_histogram_percentiles_are_upper_bucket_edges():
    loadgen = load_tool("loadgen")
    histogram = loadgen.Histogram()
    for bucket in range(100):  # one value in the middle of each of the first 100 buckets
        histogram.record((bucket * 10 + 5) / 1e6)
    histogram.record(0.2505)  # past 100 ms the buckets are 1 ms wide
    assert histogram.count == 101
    assert histogram.percentile(0.5) == pytest.approx(510e-6)  # rank 51: bucket 50
    assert histogram.percentile(0.99) == pytest.approx(1000e-6)  # rank 100: bucket 99
    assert histogram.maximum() == pytest.approx(0.251)
    merged = loadgen.Histogram()
    merged.add_sparse(histogram.to_sparse())
    assert merged.counts == histogram.counts


def test_loadgen_prints_progress_lines_on_stderr_while_it_runs(server):
    port, _ = server
    completed = subprocess.run(
        tool_command("loadgen", "--port", str(port), "--matches", "1", "--warmup", "0.2",
                     "--duration", "1.5", "--progress-interval", "0.4", "--json"),
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    progress = [line for line in completed.stderr.splitlines() if line.startswith("  ... ")]
    assert len(progress) >= 2, completed.stderr
    assert any("inputs sent" in line for line in progress)
    json.loads(completed.stdout)  # stdout keeps only the report


def test_a_recording_of_a_loaded_server_replays_in_process(tmp_path, start_server):
    """Matches, spectators, finished games and everyone leaving at once, recorded by
    the server under load, replay byte for byte in process."""
    from netplay.recording.record import read_session
    from netplay.recording.replay import replay_in_process_sync

    directory = tmp_path / "recorded"
    server = start_server("--record", str(directory), "--seed", "5")
    [report] = run_tool(
        "loadgen.py", "--port", server.port, "--matches", 6, "--dialect", "046",
        "--spectators-per-match", 2, "--finish-matches", 3, "--finish-at", 0.5,
        "--warmup", 0.3, "--duration", 1.5, timeout=60,
    )
    assert report["matches_ready"] == 6 and report["lost"] == 0
    assert server.stop() == 0
    [path] = directory.glob("*.session")
    session = read_session(str(path))
    closes = [event.text for event in session.events if event.kind == "close"]
    assert len(closes) == 6 * 4 and "server_shutdown" not in closes
    result = replay_in_process_sync(session)
    assert result.ok, result.report()
    assert result.messages > 6 * 2 * 60
