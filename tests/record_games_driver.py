#!/usr/bin/env python3
"""Write a stream of finished games into a database; for the durability test.

    record_games_driver.py DATABASE --start N --count M [--pause SECONDS]

Records games ``g<N>`` .. ``g<M-1>`` with ``SqliteStorage.execute``, in
batches of one to three, each game ranked when the relaxed placement rule
approves it.  After each batch commits it prints the batch's game keys, one
per line, and flushes: a printed key is a stored game.  Game ``i`` is the
same whatever run records it, so a run killed at any moment can be started
again from the first key it did not print.  Exits 1 when a batch fails.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netplay.accounts import ratings  # noqa: E402
from netplay.accounts.replays import Decision, FinishedMatch, MatchPlayer, Publicity  # noqa: E402
from netplay.accounts.storage import (  # noqa: E402
    FindPlayers,
    Login,
    LoginResult,
    RankedProfiles,
    RecordGame,
    RecordResult,
    SqliteStorage,
)
from netplay.logs import configure_logging  # noqa: E402

PLAYERS = [f"player{n}" for n in range(10)]


def player_ids(storage: SqliteStorage) -> dict[str, str]:
    outcomes = storage.execute([Login(None, name, at=0.0) for name in PLAYERS])
    for outcome in outcomes:
        if outcome.result not in (LoginResult.NEW_ID, LoginResult.NAME_TAKEN):
            raise SystemExit(f"login failed: {outcome}")
    (found,) = storage.execute([FindPlayers(None, limit=None)])
    return {p.name: p.user_id for p in found.players}


def game(storage: SqliteStorage, ids: dict[str, str], number: int) -> RecordGame:
    rng = random.Random(number)
    first, second = rng.sample(PLAYERS, 2)
    level = rng.choice((5, 5, 5, 8))
    (profiles,) = storage.execute([RankedProfiles((ids[first], ids[second]))])
    approval = ratings.approve_ranked(
        ratings.RankedProfile(first, True, ids[first], True, level, profiles.standings[ids[first]]),
        ratings.RankedProfile(second, True, ids[second], True, 5, profiles.standings[ids[second]]),
        ratings.PlacementRule.RELAXED,
    )

    def side(name: str, inputs: str) -> MatchPlayer:
        return MatchPlayer(name, ids[name], level, "pa_characters_lip", "pdp_ta_common", inputs,
                           Publicity.WITH_MY_NAME)
    match = FinishedMatch(
        players=(side(first, "A" * 50), side(second, "B" * 50)), stage="pa_stages_wind",
        seed=number, ranked=approval.approved, winner=rng.choice((1, 2, 1, 2, 0)),
        decided_by=Decision.AGREEMENT, started_at=1000.0 + number, ended_at=1060.0 + number,
    )
    return RecordGame(f"g{number}", match)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("database")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--pause", type=float, default=0.0, help="between batches, like a lobby")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    storage = SqliteStorage(args.database)
    ids = player_ids(storage)
    number = args.start
    while number < args.count:
        size = min(1 + number % 3, args.count - number)
        batch = [game(storage, ids, n) for n in range(number, number + size)]
        outcomes = storage.execute(batch)
        for operation, outcome in zip(batch, outcomes):
            if outcome.result not in (RecordResult.RECORDED, RecordResult.ALREADY_RECORDED):
                print(f"failed {operation.key}: {outcome.reason}", file=sys.stderr)
                return 1
        sys.stdout.write("".join(f"{operation.key}\n" for operation in batch))
        sys.stdout.flush()
        number += size
        if args.pause:
            time.sleep(args.pause)
    storage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
