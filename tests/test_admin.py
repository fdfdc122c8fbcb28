import csv
import io
import sqlite3
import time

import pytest
from helpers import logging_restored

from netplay.accounts import admin, storage
from netplay.accounts.ratings import Standing
from netplay.accounts.replays import Decision, FinishedMatch, MatchPlayer, Publicity
from netplay.accounts.storage import Login, LoginResult, RecordGame, SqliteStorage


@pytest.fixture(autouse=True)
def isolated_logging(monkeypatch):
    """``main`` configures logging globally and caches loggers: put back the test
    suite's set-up, and give storage a logger only this test caches."""
    with logging_restored(monkeypatch, storage):
        yield


@pytest.fixture
def database(tmp_path):
    """A database with three players, two of them placed, and one game."""
    path = str(tmp_path / "netplay.sqlite3")
    store = SqliteStorage(path)
    ids = {}
    for name in ("alice", "bob", "carol"):
        (outcome,) = store.execute([Login(None, name, at=1_700_000_000.0)])
        ids[name] = outcome.user_id
    store._store_standing(ids["alice"], Standing(rating=1650.4, placement_done=True,
                                                 ranked_games_played=40, ranked_games_won=25))
    store._store_standing(ids["bob"], Standing(rating=1720.5, placement_done=True,
                                               ranked_games_played=33, ranked_games_won=20))
    store._store_standing(ids["carol"], Standing(ranked_games_played=4))

    def side(name):
        return MatchPlayer(name, ids[name], 7, "pa_characters_lip", "pdp_ta_common", "AAAA",
                           Publicity.WITH_MY_NAME)
    store.execute([RecordGame("game-1", FinishedMatch(
        (side("alice"), side("carol")), "pa_stages_wind", 3, False, 2, Decision.AGREEMENT,
        1_700_000_100.0, 1_700_000_200.0,
    ), replay_path="v046/2023/11/14/alice-vs-carol/game.txt")])
    store.close()
    return path, ids


def run_admin(capsys, *argv):
    status = admin.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_help_explains_every_command(capsys):
    status, out, _ = run_admin(capsys, "--help")
    assert status == 0
    for command in ("players", "rename", "ban", "unban", "leaderboard", "games", "check"):
        assert f"\n  {command} " in out
    assert "exit status" in out


def test_a_missing_database_is_a_one_line_error_with_status_2(capsys, tmp_path):
    status, out, err = run_admin(capsys, "--database", str(tmp_path / "nope.sqlite3"), "players")
    assert status == 2 and out == ""
    assert err == f"netplay-admin: error: no database at {tmp_path / 'nope.sqlite3'}\n"
    assert not (tmp_path / "nope.sqlite3").exists()


def test_an_unknown_command_is_a_usage_error(capsys, database):
    status, _, err = run_admin(capsys, "--database", database[0], "explode")
    assert status == 2 and "invalid choice" in err


def test_list_and_search_players(capsys, database):
    path, ids = database
    status, out, _ = run_admin(capsys, "--database", path, "players")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("user_id\tname\trating")
    assert [line.split("\t")[1:3] for line in lines[1:]] == [
        ["alice", "1650"], ["bob", "1721"], ["carol", "placement 4/30"]
    ]
    status, out, _ = run_admin(capsys, "--database", path, "players", "ROL")
    assert [line.split("\t")[0] for line in out.splitlines()[1:]] == [ids["carol"]]
    status, out, _ = run_admin(capsys, "--database", path, "players", "zzz")
    assert (status, out) == (0, "no player found\n")


def test_rename(capsys, database):
    path, ids = database
    status, out, _ = run_admin(capsys, "--database", path, "rename", ids["bob"], "Robert")
    assert (status, out) == (0, f"renamed {ids['bob']}: bob -> Robert\n")
    status, _, err = run_admin(capsys, "--database", path, "rename", ids["bob"], "ALICE")
    assert status == 1 and err == "netplay-admin: error: another player has the name ALICE\n"
    status, _, err = run_admin(capsys, "--database", path, "rename", "123", "zed")
    assert status == 1 and err == "netplay-admin: error: no player has the id 123\n"
    status, _, err = run_admin(capsys, "--database", path, "rename", ids["bob"], "bad name!")
    assert status == 2 and "alphanumeric" in err


def test_ban_refuses_logins_until_unbanned(capsys, database):
    path, ids = database
    status, out, _ = run_admin(capsys, "--database", path, "ban", ids["bob"], "--reason",
                               "abusive chat", "--for", "7d")
    assert status == 0 and out.startswith(f"banned {ids['bob']} until ")
    store = SqliteStorage(path)
    (outcome,) = store.execute([Login(ids["bob"], "bob", at=time.time())])
    assert (outcome.result, outcome.reason) == (LoginResult.BANNED, "abusive chat")
    assert outcome.expires_at == pytest.approx(time.time() + 7 * 86400, abs=60)
    status, out, _ = run_admin(capsys, "--database", path, "players", ids["bob"])
    assert "abusive chat" in out
    assert run_admin(capsys, "--database", path, "unban", ids["bob"])[:2] == (0, f"unbanned {ids['bob']}\n")
    (outcome,) = store.execute([Login(ids["bob"], "bob", at=time.time())])
    assert outcome.result is LoginResult.WELCOME_BACK
    store.close()
    status, _, err = run_admin(capsys, "--database", path, "unban", ids["bob"])
    assert status == 1 and "not banned" in err


def test_ban_needs_a_reason_and_a_length(capsys, database):
    path, ids = database
    assert run_admin(capsys, "--database", path, "ban", ids["bob"], "--reason", "x")[0] == 2
    assert run_admin(capsys, "--database", path, "ban", ids["bob"], "--reason", "x", "--for", "soon")[0] == 2
    status, out, _ = run_admin(capsys, "--database", path, "ban", ids["bob"], "--reason", "x", "--forever")
    assert status == 0 and "until never" in out
    status, _, err = run_admin(capsys, "--database", path, "ban", "42", "--reason", "x", "--forever")
    assert status == 1 and err == "netplay-admin: error: no player has the id 42\n"


def test_leaderboard_export_to_csv(capsys, database, tmp_path):
    path, ids = database
    output = tmp_path / "board.csv"
    status, _, err = run_admin(capsys, "--database", path, "leaderboard", "--output", str(output))
    assert status == 0 and err == f"wrote 2 players to {output}\n"
    rows = list(csv.DictReader(output.open()))
    assert [(r["rank"], r["name"], r["rating"], r["league"]) for r in rows] == [
        ("1", "bob", "1721", "Platinum"), ("2", "alice", "1650", "Platinum")
    ]
    assert float(rows[0]["exact_rating"]) == 1720.5
    status, out, _ = run_admin(capsys, "--database", path, "leaderboard", "--limit", "1")
    assert len(list(csv.reader(io.StringIO(out)))) == 2


def test_games_of_a_player(capsys, database):
    path, ids = database
    status, out, _ = run_admin(capsys, "--database", path, "games", ids["carol"])
    assert status == 0
    (line,) = out.splitlines()[1:]
    assert line.split("\t")[2:] == [
        "alice L7", "carol L7", "P2 won", "agreement", "casual",
        "v046/2023/11/14/alice-vs-carol/game.txt",
    ]
    assert run_admin(capsys, "--database", path, "games", ids["bob"])[1] == "no game found\n"
    assert run_admin(capsys, "--database", path, "games", "77")[0] == 1


def test_check_reports_version_integrity_and_counts(capsys, database):
    status, out, _ = run_admin(capsys, "--database", database[0], "check")
    assert status == 0
    assert out.splitlines()[:3] == ["schema version: 3 (current)", "integrity: ok", "players: 3 rows"]


def test_check_of_an_old_database_does_not_migrate_it(capsys, tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(storage.MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
    status, out, _ = run_admin(capsys, "--database", str(path), "check")
    assert status == 0 and "schema version: 1 (older than 3" in out
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1


@pytest.mark.parametrize("command", [["check"], ["players"]])
def test_a_file_that_is_not_a_database_is_a_one_line_error(capsys, tmp_path, command):
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database, just some text that is long enough" * 100)
    status, _, err = run_admin(capsys, "--database", str(path), *command)
    assert status == 1
    assert err.count("\n") == 1 and "not a database" in err


def test_a_locked_database_is_a_one_line_error(capsys, database):
    path, ids = database
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        status, _, err = run_admin(capsys, "--database", path, "--wait", "0.05", "ban", ids["bob"],
                                   "--reason", "x", "--forever")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert status == 1
    assert err.count("\n") == 1 and "database is locked" in err


def test_the_leaderboard_benchmark_runs_and_reports(capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "bench_leaderboard.py"
    spec = importlib.util.spec_from_file_location("bench_leaderboard", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--players", "3000", "--runs", "3", "--limit", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["players"] == 3000 and report["asker_rank"] == 2999
    assert report["limited_ms"]["max"] <= 50
