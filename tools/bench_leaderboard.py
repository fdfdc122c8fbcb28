#!/usr/bin/env python3
"""Time the leaderboard on a database of many placed players.

Fills a fresh database (a temporary file unless ``--database`` names one that
does not exist yet) with ``--players`` players, all placed, with random
ratings, then runs the ``Leaderboard`` operation through
``SqliteStorage.execute`` ``--runs`` times, as the server would: the best
``--limit`` players and the rank of an asker near the bottom (the slowest
rank to count).  Prints one JSON object: the median and worst times in
milliseconds, and the same for the whole leaderboard (``limit`` None, what
``netplay-admin leaderboard`` exports).  Exits 1 when the worst time of the
limited query exceeds ``--budget-ms``.

Example::

    .venv/bin/python tools/bench_leaderboard.py --players 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netplay.accounts.storage import Leaderboard, SqliteStorage  # noqa: E402
from netplay.logs import configure_logging  # noqa: E402


def fill(path: str, players: int, seed: int) -> list[str]:
    """Create ``players`` placed players directly in SQL; return their ids."""
    SqliteStorage(path).close()  # the schema
    rng = random.Random(seed)
    ids = [str(10**15 + number) for number in range(players)]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO players (user_id, name, name_key, created_at, last_login_at)"
            " VALUES (?, ?, ?, 0, 0)",
            ((user_id, f"player{n}", f"player{n}") for n, user_id in enumerate(ids)),
        )
        db.executemany(
            "INSERT INTO ratings (user_id, rating, placement_done, placement_rating,"
            " ranked_games_played, ranked_games_won) VALUES (?, ?, 1, ?, 30, 15)",
            ((user_id, rating, rating) for user_id in ids
             for rating in [rng.gauss(1500, 200)]),
        )
    return ids


def time_runs(storage: SqliteStorage, operation: Leaderboard, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        (outcome,) = storage.execute([operation])
        times.append((time.perf_counter() - start) * 1000)
        if outcome.error is not None:
            raise SystemExit(f"leaderboard failed: {outcome.error}")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=100, help="rows the lobby asks for")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", help="a new file to fill (default: a temporary one)")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory() as folder:
        path = args.database or os.path.join(folder, "bench.sqlite3")
        if os.path.exists(path):
            parser.error(f"{path} exists; give a new file")
        start = time.perf_counter()
        ids = fill(path, args.players, args.seed)
        fill_seconds = time.perf_counter() - start
        storage = SqliteStorage(path)
        try:
            (outcome,) = storage.execute([Leaderboard(None, limit=None)])
            asker = outcome.entries[-2].user_id  # near the bottom: the longest count
            limited = time_runs(storage, Leaderboard(asker, limit=args.limit), args.runs)
            whole = time_runs(storage, Leaderboard(asker, limit=None), max(1, args.runs // 10))
            (check,) = storage.execute([Leaderboard(asker, limit=args.limit)])
        finally:
            storage.close()
    report = {
        "players": len(ids),
        "limit": args.limit,
        "asker_rank": check.asker_rank,
        "fill_seconds": round(fill_seconds, 2),
        "limited_ms": {"median": round(statistics.median(limited), 3), "max": round(max(limited), 3)},
        "whole_ms": {"median": round(statistics.median(whole), 3), "max": round(max(whole), 3)},
        "budget_ms": args.budget_ms,
    }
    print(json.dumps(report))
    return 0 if max(limited) <= args.budget_ms else 1


if __name__ == "__main__":
    sys.exit(main())
