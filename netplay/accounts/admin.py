"""``netplay-admin``: look after the server's database from the command line.

Every command works on the same SQLite file as the server and may run while
the server does.  Exit status: 0 done, 1 the command failed (unknown id, name
taken, database locked or damaged), 2 a usage error or no database file.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sqlite3
import sys
import time
from typing import Sequence, TextIO

from netplay.accounts import ratings, storage
from netplay.dialects.v046 import name_refusal
from netplay.logs import configure_logging

PROGRAM = "netplay-admin"
DEFAULT_DATABASE = "netplay.sqlite3"
_DURATION = re.compile(r"(\d+)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

EPILOG = """\
commands:
  players [TEXT]          list players, or those whose id is TEXT or whose name
                          contains TEXT (any case): id, name, rating or placement
                          progress, ranked games played and won, last login, ban
  rename USER_ID NAME     give a player another name (the 2022 client's name rules)
  ban USER_ID --reason TEXT (--for DURATION | --forever)
                          refuse the player's logins; DURATION is a number and a
                          unit: 90s, 30m, 12h, 7d, 2w; the reason is shown to them
  unban USER_ID           lift the player's bans in force
  leaderboard [--output FILE]
                          the placed players, best first, as CSV (standard output
                          by default)
  games USER_ID           a player's latest games, newest first, with their replay
                          files (relative to the server's replays directory)
  check                   schema version, SQLite integrity check and row counts,
                          read-only

Commands other than check bring an older schema up to date first, as the server
does at start-up.

exit status: 0 done; 1 the command failed (unknown id, name taken, database locked
or damaged); 2 usage error or no database file.
"""


class AdminError(Exception):
    """A failure to report in one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Look after a netplay server's database: players, bans, leaderboard, games.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database", default=DEFAULT_DATABASE, metavar="PATH",
        help=f"the server's SQLite database (default: {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--wait", type=float, default=storage.BUSY_TIMEOUT_MS / 1000, metavar="SECONDS",
        help="how long to wait for the server's write lock before giving up (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the storage's log lines")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    players = commands.add_parser("players", help="list or search players")
    players.add_argument("text", nargs="?", help="a user id or part of a name")
    players.add_argument("--limit", type=_positive, default=50, help="at most this many (default: 50)")

    rename = commands.add_parser("rename", help="give a player another name")
    rename.add_argument("user_id")
    rename.add_argument("name")

    ban = commands.add_parser("ban", help="ban a player by user id")
    ban.add_argument("user_id")
    ban.add_argument("--reason", required=True, help="shown to the player when a login is refused")
    length = ban.add_mutually_exclusive_group(required=True)
    length.add_argument("--for", dest="duration", type=_duration, metavar="DURATION",
                        help="e.g. 90s, 30m, 12h, 7d, 2w")
    length.add_argument("--forever", action="store_true", help="until lifted with unban")

    unban = commands.add_parser("unban", help="lift a player's bans")
    unban.add_argument("user_id")

    board = commands.add_parser("leaderboard", help="export the leaderboard as CSV")
    board.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    board.add_argument("--limit", type=_positive, default=None, help="only the best N")

    games = commands.add_parser("games", help="a player's games and replay files")
    games.add_argument("user_id")
    games.add_argument("--limit", type=_positive, default=50, help="at most this many (default: 50)")

    commands.add_parser("check", help="schema version and integrity, read-only")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a duration like 30m, 12h or 7d: {text!r}")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    configure_logging(level="info" if args.verbose else "critical", stream=sys.stderr)
    try:
        if not os.path.isfile(args.database):
            raise AdminError(f"no database at {args.database}", status=2)
        if args.command == "check":
            return check(args.database, sys.stdout)
        database = _open(args.database, args.wait)
        try:
            return COMMANDS[args.command](database, args, sys.stdout)
        finally:
            database.close()
    except AdminError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return error.status


def _open(path: str, wait: float) -> storage.SqliteStorage:
    try:
        return storage.SqliteStorage(path, busy_timeout=wait)
    except storage.StorageError as error:
        raise AdminError(_explain(str(error))) from None


def _explain(reason: str) -> str:
    if "locked" in reason or "busy" in reason:
        return f"{reason} (another process holds the write lock; try again or raise --wait)"
    return reason


def _run(database: storage.SqliteStorage, operation: storage.Operation) -> storage.Outcome:
    (outcome,) = database.execute([operation])
    failure = getattr(outcome, "error", None)
    if failure is None and getattr(outcome, "result", None) in (
        storage.AdminResult.UNAVAILABLE, storage.RecordResult.UNAVAILABLE
    ):
        failure = outcome.reason
    if failure is not None:
        raise AdminError(f"database {database.path}: {_explain(failure)}")
    return outcome


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _rating_text(standing: ratings.Standing) -> str:
    if standing.placement_done:
        return str(ratings.round_rating(standing.rating))
    return f"placement {standing.placement_games_played}/{ratings.PLACEMENT_MATCH_COUNT_REQUIREMENT}"


# -- commands -------------------------------------------------------------------


def players(database: storage.SqliteStorage, args: argparse.Namespace, out: TextIO) -> int:
    outcome = _run(database, storage.FindPlayers(args.text, limit=args.limit))
    if not outcome.players:
        print("no player found", file=out)
        return 0
    print("user_id\tname\trating\tranked_played\tranked_won\tlast_login\tban", file=out)
    for player in outcome.players:
        ban = ""
        if player.banned:
            ban = f"until {_when(player.ban_expires_at)}: {player.ban_reason}"
        standing = player.standing
        print(
            f"{player.user_id}\t{player.name}\t{_rating_text(standing)}\t"
            f"{standing.ranked_games_played}\t{standing.ranked_games_won}\t"
            f"{_when(player.last_login_at)}\t{ban}",
            file=out,
        )
    return 0


def rename(database: storage.SqliteStorage, args: argparse.Namespace, out: TextIO) -> int:
    refusal = name_refusal(args.name)
    if refusal is not None:
        raise AdminError(f"cannot use the name {args.name!r}: {refusal}", status=2)
    outcome = _run(database, storage.Rename(args.user_id, args.name))
    _check_admin_result(outcome, args.user_id, args.name)
    print(f"renamed {args.user_id}: {outcome.old_name} -> {args.name}", file=out)
    return 0


def ban(database: storage.SqliteStorage, args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    expires_at = None if args.forever else now + args.duration
    outcome = _run(database, storage.Ban(args.user_id, args.reason, expires_at, at=now))
    _check_admin_result(outcome, args.user_id)
    print(f"banned {args.user_id} until {_when(expires_at)}: {args.reason}", file=out)
    return 0


def unban(database: storage.SqliteStorage, args: argparse.Namespace, out: TextIO) -> int:
    outcome = _run(database, storage.Unban(args.user_id))
    if outcome.result is storage.AdminResult.NOT_BANNED:
        raise AdminError(f"{args.user_id} is not banned")
    _check_admin_result(outcome, args.user_id)
    print(f"unbanned {args.user_id}", file=out)
    return 0


def _check_admin_result(outcome: storage.AdminOutcome, user_id: str, name: str = "") -> None:
    if outcome.result is storage.AdminResult.UNKNOWN_ID:
        raise AdminError(f"no player has the id {user_id}")
    if outcome.result is storage.AdminResult.NAME_TAKEN:
        raise AdminError(f"another player has the name {name}")


def leaderboard(database: storage.SqliteStorage, args: argparse.Namespace, out: TextIO) -> int:
    outcome = _run(database, storage.Leaderboard(None, limit=args.limit))
    if args.output is None:
        _write_leaderboard(outcome.entries, out)
        return 0
    try:
        with open(args.output, "w", newline="", encoding="utf-8") as file:
            _write_leaderboard(outcome.entries, file)
    except OSError as error:
        raise AdminError(f"cannot write {args.output}: {error.strerror}") from None
    print(f"wrote {len(outcome.entries)} players to {args.output}", file=sys.stderr)
    return 0


def _write_leaderboard(entries: Sequence[ratings.LeaderboardEntry], file: TextIO) -> None:
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(
        ["rank", "user_id", "name", "rating", "exact_rating", "ranked_games_played",
         "ranked_games_won", "league"]
    )
    for entry in entries:
        shown = ratings.round_rating(entry.rating)
        writer.writerow([
            entry.rank, entry.user_id, entry.name, shown, repr(entry.rating),
            entry.ranked_games_played, entry.ranked_games_won, ratings.league(shown),
        ])


def games(database: storage.SqliteStorage, args: argparse.Namespace, out: TextIO) -> int:
    known = _run(database, storage.FindPlayers(args.user_id, limit=1)).players
    if not known or known[0].user_id != args.user_id:
        raise AdminError(f"no player has the id {args.user_id}")
    outcome = _run(database, storage.PlayerGames(args.user_id, limit=args.limit))
    if not outcome.games:
        print("no game found", file=out)
        return 0
    print("game\tended\tplayer1\tplayer2\tresult\tdecided_by\tmode\treplay", file=out)
    for game in outcome.games:
        result = "draw" if game.winner == 0 else f"P{game.winner} won"
        mode = "ranked (rated)" if game.rated else ("ranked" if game.ranked else "casual")
        print(
            f"{game.game_id}\t{_when(game.ended_at)}\t{game.names[0]} L{game.levels[0]}\t"
            f"{game.names[1]} L{game.levels[1]}\t{result}\t{game.decided_by.value}\t{mode}\t"
            f"{game.replay_path or '-'}",
            file=out,
        )
    return 0


def check(path: str, out: TextIO) -> int:
    """Report the schema version and SQLite's integrity check without writing."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise AdminError(f"cannot open database {path}: {error}") from None
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
        counts = {}
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in ("players", "ratings", "games", "bans"):
            if table in tables:
                counts[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error as error:
        raise AdminError(f"cannot use database {path}: {_explain(str(error))}") from None
    finally:
        db.close()
    status = 0
    if version > storage.SCHEMA_VERSION:
        note = f"newer than this program's {storage.SCHEMA_VERSION}"
        status = 1
    elif version < storage.SCHEMA_VERSION:
        note = f"older than {storage.SCHEMA_VERSION}: the server migrates it at start-up"
    else:
        note = "current"
    print(f"schema version: {version} ({note})", file=out)
    if problems == ["ok"]:
        print("integrity: ok", file=out)
    else:
        print(f"integrity: {len(problems)} problem(s)", file=out)
        for problem in problems:
            print(f"  {problem}", file=out)
        status = 1
    for table, count in counts.items():
        print(f"{table}: {count} rows", file=out)
    return status


COMMANDS = {
    "players": players,
    "rename": rename,
    "ban": ban,
    "unban": unban,
    "leaderboard": leaderboard,
    "games": games,
}


def run() -> None:
    """Console script entry point."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): not worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    sys.exit(status)
