"""Schema 2: ranked standings, games, bans, and the operations on them."""

import random
import sqlite3

import attrs
import pytest

from netplay.accounts import ratings, storage
from netplay.accounts.ratings import RatingBook, Standing
from netplay.accounts.replays import Decision, FinishedMatch, MatchPlayer, Publicity
from netplay.accounts.storage import (
    AdminOutcome,
    AdminResult,
    Ban,
    FindPlayers,
    Leaderboard,
    Login,
    LoginResult,
    PlayerGames,
    RankedProfiles,
    RecordGame,
    RecordResult,
    Rename,
    SqliteStorage,
    Unban,
)


def counter_ids():
    numbers = iter(range(10**15, 2**53))
    return lambda: str(next(numbers))


@pytest.fixture
def store():
    database = SqliteStorage(storage.MEMORY, make_user_id=counter_ids())
    yield database
    database.close()


def run(store, operation):
    (outcome,) = store.execute([operation])
    return outcome


def new_player(store, name, at=1000.0):
    outcome = run(store, Login(None, name, at=at))
    assert outcome.result is LoginResult.NEW_ID
    return outcome.user_id


def game(first, second, winner=1, *, ranked=True, names=("a", "b"), decided_by=Decision.AGREEMENT,
         ended_at=2000.0):
    def side(user_id, name):
        return MatchPlayer(name, user_id, 5, "pa_characters_lip", "pdp_ta_common", "AAAA",
                           Publicity.WITH_MY_NAME)
    return FinishedMatch(
        players=(side(first, names[0]), side(second, names[1])), stage="pa_stages_wind", seed=77,
        ranked=ranked, winner=winner, decided_by=decided_by, started_at=ended_at - 60,
        ended_at=ended_at,
    )


def stored_standings(store):
    return run(store, FindPlayers(None, limit=None))


# -- migrations ---------------------------------------------------------------------


def tables(path):
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_an_empty_file_is_migrated_to_the_current_schema(tmp_path):
    path = tmp_path / "empty.sqlite3"
    path.write_bytes(b"")
    database = SqliteStorage(str(path))
    assert database.schema_version == storage.SCHEMA_VERSION == 3
    database.close()
    assert {"players", "ratings", "games", "rating_history", "bans"} <= tables(path)


def test_a_version_1_database_keeps_its_players(tmp_path):
    path = str(tmp_path / "v1.sqlite3")
    with sqlite3.connect(path) as db:
        db.executescript(storage.MIGRATIONS[0])
        db.execute("INSERT INTO players VALUES ('1000000000000001', 'Alice', 'alice', 1.0, 2.0)")
        db.execute("PRAGMA user_version = 1")
    database = SqliteStorage(path)
    assert database.schema_version == storage.SCHEMA_VERSION
    outcome = run(database, Login("1000000000000001", "Alice", at=3.0))
    assert outcome.result is LoginResult.WELCOME_BACK
    assert outcome.public_id == 1
    (alice,) = run(database, FindPlayers("alice")).players
    assert (alice.name, alice.created_at, alice.standing) == ("Alice", 1.0, Standing())
    database.close()


def test_a_database_from_a_newer_server_is_refused(tmp_path):
    path = str(tmp_path / "future.sqlite3")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(storage.StorageError, match="newer"):
        SqliteStorage(path)


# -- games and ratings -----------------------------------------------------------------


def test_a_ranked_game_between_placed_players_is_stored_and_rated_once(store):
    a, b = new_player(store, "a"), new_player(store, "b")
    placed = Standing(rating=1600, placement_done=True, ranked_games_played=30, ranked_games_won=9)
    store._store_standing(a, placed)
    store._store_standing(b, attrs.evolve(placed, rating=1400))
    outcome = run(store, RecordGame("room-1-game-1", game(a, b, winner=2), "v046/x.txt"))
    assert outcome.result is RecordResult.RECORDED and outcome.rated
    expected = ratings.rate_game(placed, attrs.evolve(placed, rating=1400), 2)
    assert outcome.after == expected
    assert outcome.after[1].rating == pytest.approx(1400 + 10 * (1 - 1 / (1 + 10 ** 0.5)))
    assert ratings.rating_entry(outcome.after[1], outcome.before[1]) == {
        "old": 1400, "new": 1408, "difference": 8, "league": "Silver"
    }
    again = run(store, RecordGame("room-1-game-1", game(a, b, winner=2)))
    assert again.result is RecordResult.ALREADY_RECORDED
    assert again.after == expected
    assert run(store, RankedProfiles((a, b))).standings == {a: expected[0], b: expected[1]}
    (record,) = run(store, PlayerGames(b)).games
    assert (record.key, record.winner, record.rated, record.replay_path) == (
        "room-1-game-1", 2, True, "v046/x.txt"
    )


@pytest.mark.parametrize(
    "change", [{"winner": 0, "decided_by": Decision.DISAGREEMENT}, {"ranked": False}]
)
def test_draws_and_casual_games_are_stored_but_not_rated(store, change):
    a, b = new_player(store, "a"), new_player(store, "b")
    outcome = run(store, RecordGame("k", attrs.evolve(game(a, b), **change)))
    assert outcome.result is RecordResult.RECORDED and not outcome.rated
    assert outcome.after == (Standing(), Standing())
    assert len(run(store, PlayerGames(a)).games) == 1


def test_a_game_of_players_who_are_not_logged_in_is_stored(store):
    outcome = run(store, RecordGame("k", game(None, None)))
    assert outcome.result is RecordResult.RECORDED and not outcome.rated
    assert outcome.after == (None, None)


def test_one_failing_game_does_not_undo_the_others_of_its_batch(store):
    a, b = new_player(store, "a"), new_player(store, "b")
    outcomes = store.execute([
        RecordGame("good-1", game(a, b)),
        RecordGame("bad", game(a, "no such player")),
        RecordGame("good-2", game(b, a)),
    ])
    assert [o.result for o in outcomes] == [
        RecordResult.RECORDED, RecordResult.UNAVAILABLE, RecordResult.RECORDED
    ]
    assert "FOREIGN KEY" in outcomes[1].reason
    assert [g.key for g in run(store, PlayerGames(a)).games] == ["good-2", "good-1"]


@pytest.mark.parametrize("rule", list(ratings.PlacementRule))
def test_stored_ratings_equal_the_replay_of_the_games(store, rule):
    """A long random season, placements completing and settling included."""
    rng = random.Random(2022)
    ids = [new_player(store, f"p{n}") for n in range(8)]
    # Under the 2022 rule somebody must be placed for anything to be ranked.
    for user_id in ids[:2]:
        store._store_standing(user_id, Standing(rating=1500, placement_done=True))
    book = RatingBook()
    for user_id in ids[:2]:
        book.standings[user_id] = Standing(rating=1500, placement_done=True)
    for number in range(600):
        first, second = rng.sample(ids, 2)
        profiles = run(store, RankedProfiles((first, second))).standings
        approval = ratings.approve_ranked(
            ratings.RankedProfile("x", True, first, True, 5, profiles[first]),
            ratings.RankedProfile("y", True, second, True, 5, profiles[second]),
            rule,
        )
        winner = rng.choice((1, 2, 1, 2, 0))
        run(store, RecordGame(f"g{number}", game(first, second, winner, ranked=approval.approved)))
        if approval.approved and winner:
            book.record(first, second, winner)
    stored = {p.user_id: p.standing for p in stored_standings(store).players}
    assert stored == {user_id: book.standing(user_id) for user_id in ids}
    assert sum(s.placement_done for s in stored.values()) >= 4


def test_completing_placement_settles_the_placed_opponent(store):
    newcomer, placed = new_player(store, "newcomer"), new_player(store, "placed")
    store._store_standing(placed, Standing(rating=1500, placement_done=True))
    for number in range(29):
        outcome = run(store, RecordGame(f"g{number}", game(newcomer, placed, winner=1)))
        assert outcome.settled == ()
    assert ratings.rating_entry(outcome.after[0])["placement_match_progress"] == (
        "29/30 placement matches played."
    )
    outcome = run(store, RecordGame("g29", game(newcomer, placed, winner=1)))
    final = outcome.after[0].rating
    assert outcome.after[0].placement_done
    ((who, before, after),) = outcome.settled
    assert (who, before) == (placed, 1500)
    assert after == pytest.approx(1500 - 300 / (1 + 10 ** ((1500 - final) / -400)))
    assert outcome.after[1].rating == after
    assert ratings.rating_entry(outcome.after[0], outcome.before[0])["old"] == 0


# -- leaderboard ----------------------------------------------------------------------


def test_leaderboard_lists_placed_players_best_first_and_finds_the_asker(store):
    ids = {}
    for name, rating, done in [("low", 1200, True), ("top", 1900.5, True), ("mid", 1500, True),
                               ("newbie", 2500, False), ("mid2", 1500, True)]:
        ids[name] = new_player(store, name)
        store._store_standing(ids[name], Standing(rating=rating, placement_done=done))
    board = run(store, Leaderboard(ids["low"], limit=10))
    assert [(e.rank, e.name) for e in board.entries] == [
        (1, "top"), (2, "mid"), (3, "mid2"), (4, "low")
    ]
    assert board.asker_rank == 4
    assert ratings.leaderboard_report(board.entries, ids["low"])["leaderboard_report"][3] == {
        "user_name": "low", "rating": 1200, "is_you": True
    }
    short = run(store, Leaderboard(ids["mid2"], limit=1))
    assert [e.name for e in short.entries] == ["top"] and short.asker_rank == 3
    assert run(store, Leaderboard(ids["newbie"], limit=1)).asker_rank is None


def test_the_leaderboard_query_reads_the_index(store):
    plan = store._db.execute(
        "EXPLAIN QUERY PLAN SELECT r.user_id FROM ratings AS r INDEXED BY ratings_leaderboard"
        " JOIN players AS p ON p.user_id = r.user_id WHERE r.placement_done = 1"
        " ORDER BY r.rating DESC, r.user_id LIMIT 5"
    ).fetchall()
    text = " ".join(row[-1] for row in plan)
    assert "ratings_leaderboard" in text and "TEMP B-TREE" not in text


# -- administration and bans ------------------------------------------------------------


def test_a_banned_id_cannot_log_in_until_the_ban_ends(store):
    alice = new_player(store, "alice")
    assert run(store, Ban(alice, "griefing", expires_at=5000.0, at=1000.0)).succeeded
    outcome = run(store, Login(alice, "alice", at=4999.0))
    assert (outcome.result, outcome.reason, outcome.expires_at) == (
        LoginResult.BANNED, "griefing", 5000.0
    )
    assert not outcome.succeeded
    assert run(store, Login(alice, "alice", at=5000.0)).result is LoginResult.WELCOME_BACK


def test_a_permanent_ban_wins_over_a_timed_one_and_unban_lifts_both(store):
    bob = new_player(store, "bob")
    run(store, Ban(bob, "spam", expires_at=9000.0, at=1.0))
    run(store, Ban(bob, "cheating", expires_at=None, at=2.0))
    outcome = run(store, Login(bob, "bob", at=10.0))
    assert (outcome.reason, outcome.expires_at) == ("cheating", None)
    (record,) = run(store, FindPlayers(bob, at=10.0)).players
    assert record.banned and record.ban_reason == "cheating"
    assert run(store, Unban(bob, at=20.0)) == AdminOutcome(AdminResult.DONE)
    assert run(store, Unban(bob, at=21.0)) == AdminOutcome(AdminResult.NOT_BANNED)
    assert run(store, Login(bob, "bob", at=22.0)).result is LoginResult.WELCOME_BACK


def test_admin_operations_on_an_unknown_id(store):
    for operation in [Ban("404", "x", None), Unban("404"), Rename("404", "x")]:
        assert run(store, operation).result is AdminResult.UNKNOWN_ID


def test_rename_keeps_names_unique_regardless_of_case(store):
    carol, dave = new_player(store, "carol"), new_player(store, "dave")
    assert run(store, Rename(carol, "Dave")).result is AdminResult.NAME_TAKEN
    assert run(store, Rename(carol, "Caroline")) == AdminOutcome(AdminResult.DONE, old_name="carol")
    assert run(store, Login(carol, "Caroline", at=5.0)).result is LoginResult.WELCOME_BACK


def test_find_players_by_id_or_part_of_the_name(store):
    ids = [new_player(store, name) for name in ("Ann_1", "annie", "bo%b")]
    assert [p.name for p in run(store, FindPlayers("ANN")).players] == ["Ann_1", "annie"]
    assert [p.name for p in run(store, FindPlayers("_")).players] == ["Ann_1"]
    assert [p.name for p in run(store, FindPlayers("%")).players] == ["bo%b"]
    assert [p.user_id for p in run(store, FindPlayers(ids[1])).players] == [ids[1]]



def test_a_step_another_process_took_while_this_one_waited_is_not_taken_again(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "race.sqlite3")
    with sqlite3.connect(path) as db:
        db.executescript(storage.MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
    SqliteStorage(path).close()  # the other process: migrates to the latest
    real = SqliteStorage.schema_version.fget
    reads = []

    def first_read_is_stale(self):  # as read before the other process took the lock
        reads.append(1)
        return 1 if len(reads) == 1 else real(self)

    monkeypatch.setattr(SqliteStorage, "schema_version", property(first_read_is_stale))
    late = SqliteStorage(path)  # would fail on "table ratings already exists"
    assert real(late) == storage.SCHEMA_VERSION
    late.close()


def test_an_imported_player_logs_in_under_the_known_id(store):
    (outcome,) = store.execute([storage.ImportPlayer("1234567890123456", "eve", at=1.0)])
    assert outcome.imported
    assert run(store, Login("1234567890123456", "eve", at=2.0)).result is LoginResult.WELCOME_BACK
