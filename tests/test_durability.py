"""Games survive the server being killed at any moment, each stored exactly once.

A real process (tests/record_games_driver.py) records a stream of games and
prints each game's key once its batch has committed.  It is killed with
SIGKILL at random moments, restarted from the first key it did not print,
and finally run to the end.  Then every printed key must be stored exactly
once, and every stored standing must equal the replay of the stored games.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from netplay.accounts.ratings import RatingBook, Standing

DRIVER = Path(__file__).resolve().parent / "record_games_driver.py"
GAMES = 5000
KILLS = 6
PAUSE = 0.001  # between batches: each run lasts long enough to be killed mid-stream


def start(database: Path, output: Path, first: int) -> subprocess.Popen:
    with open(output, "ab") as stdout:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), str(database), "--start", str(first),
             "--count", str(GAMES), "--pause", str(PAUSE)],
            stdout=stdout, stderr=subprocess.PIPE,
        )


def printed_keys(output: Path) -> list[str]:
    text = output.read_text()
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]  # a last line without "\n" is unfinished


def test_killed_writers_lose_no_printed_game_and_count_none_twice(tmp_path):
    database, output = tmp_path / "games.sqlite3", tmp_path / "printed.txt"
    output.touch()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    deadline = time.monotonic() + 25
    first, kills = 0, 0
    while kills < KILLS and first < GAMES:
        process = start(database, output, first)
        time.sleep(rng.uniform(0.05, 0.45))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += process.returncode == -signal.SIGKILL
        keys = printed_keys(output)
        if keys:
            first = int(keys[-1][1:]) + 1
        assert time.monotonic() < deadline
    process = start(database, output, first)
    _, errors = process.communicate(timeout=max(1, deadline - time.monotonic()))
    assert process.returncode == 0, errors.decode()
    assert kills == KILLS

    printed = printed_keys(output)
    assert set(printed) == {f"g{n}" for n in range(GAMES)}
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = [key for (key,) in db.execute("SELECT game_key FROM games")]
        rated = db.execute(
            "SELECT player1_id, player2_id, winner FROM games WHERE rated = 1 ORDER BY game_id"
        ).fetchall()
        standings = {
            user_id: Standing(rating, bool(done), placement_rating, played, won)
            for user_id, rating, done, placement_rating, played, won in db.execute(
                "SELECT user_id, rating, placement_done, placement_rating, ranked_games_played,"
                " ranked_games_won FROM ratings"
            )
        }
        players = [user_id for (user_id,) in db.execute("SELECT user_id FROM players")]
    assert sorted(stored) == sorted(set(printed))  # each game exactly once
    book = RatingBook()
    for first_id, second_id, winner in rated:
        book.record(first_id, second_id, winner)
    assert len(rated) > 100 and any(s.placement_done for s in standings.values())
    for user_id in players:
        assert standings.get(user_id, Standing()) == book.standing(user_id)
