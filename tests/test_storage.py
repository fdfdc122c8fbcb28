"""Player storage in SQLite: login outcomes, batches, schema versions, and bad files."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from netplay.accounts import storage
from netplay.accounts.storage import Login, LoginResult, SqliteStorage, StorageError


@pytest.fixture
def database(tmp_path):
    opened = SqliteStorage(str(tmp_path / "players.sqlite3"))
    yield opened
    opened.close()


def login(database, user_id, name):
    (outcome,) = database.execute([Login(user_id, name, at=1.0)])
    return outcome


def test_new_ids_are_distinct_decimal_strings_below_2_to_53(database):
    ids = {login(database, None, f"p{n}").user_id for n in range(50)}
    assert len(ids) == 50
    assert all(i.isdigit() and int(i) < 2**53 for i in ids)


def test_every_login_outcome(database):
    first = login(database, None, "alice")
    user_id = first.user_id
    assert login(database, user_id, "alice") == storage.LoginOutcome(
        LoginResult.WELCOME_BACK, user_id=user_id, public_id=first.public_id,
        standing=storage.Standing(),
    )
    assert first.standing == storage.Standing()  # read with the login, never a second query
    assert login(database, None, "ALICE").result is LoginResult.NAME_TAKEN
    assert login(database, "999", "bob").result is LoginResult.UNKNOWN_ID
    renamed = login(database, user_id, "alicia")
    assert (renamed.result, renamed.old_name) == (LoginResult.RENAMED, "alice")
    # The old name is free again; the new one is owned.
    assert login(database, None, "alice").result is LoginResult.NEW_ID
    other = login(database, None, "carol").user_id
    assert login(database, other, "Alicia").result is LoginResult.NAME_TAKEN


def test_public_ids_are_small_distinct_and_stable(tmp_path):
    path = str(tmp_path / "players.sqlite3")
    database = SqliteStorage(path)
    outcomes = [login(database, None, f"p{n}") for n in range(5)]
    assert [o.public_id for o in outcomes] == [1, 2, 3, 4, 5]
    database.close()
    again = SqliteStorage(path)
    assert login(again, outcomes[2].user_id, "p2").public_id == 3
    assert login(again, outcomes[2].user_id, "renamed").public_id == 3


def test_migration_gives_existing_players_public_ids(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    database = SqliteStorage(path)
    user_id = login(database, None, "alice").user_id
    database.close()
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE public_ids")
        raw.execute("PRAGMA user_version = 2")
    migrated = SqliteStorage(path)
    assert migrated.schema_version == storage.SCHEMA_VERSION
    assert login(migrated, user_id, "alice").public_id == 1


def test_id_collision_draws_another(tmp_path):
    drawn = iter(["1000000000000001", "1000000000000001", "1000000000000002"])
    database = SqliteStorage(str(tmp_path / "d.sqlite3"), make_user_id=lambda: next(drawn))
    assert login(database, None, "a").user_id == "1000000000000001"
    assert login(database, None, "b").user_id == "1000000000000002"


def test_players_survive_a_restart(tmp_path):
    path = str(tmp_path / "players.sqlite3")
    first = SqliteStorage(path)
    user_id = login(first, None, "alice").user_id
    first.close()
    again = SqliteStorage(path)
    assert login(again, user_id, "alice").result is LoginResult.WELCOME_BACK
    assert again.schema_version == storage.SCHEMA_VERSION
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_one_failing_operation_does_not_undo_the_others(database, monkeypatch):
    real = database._login

    def flaky(operation):
        if operation.name == "boom":
            raise sqlite3.OperationalError("disk I/O error")
        return real(operation)

    monkeypatch.setattr(database, "_login", flaky)
    outcomes = database.execute(
        [Login(None, "a"), Login(None, "boom"), Login(None, "c")]
    )
    assert [o.result for o in outcomes] == [
        LoginResult.NEW_ID, LoginResult.UNAVAILABLE, LoginResult.NEW_ID
    ]
    assert login(database, outcomes[2].user_id, "c").result is LoginResult.WELCOME_BACK


def test_locked_database_fails_the_batch_cleanly(tmp_path, monkeypatch):
    path = str(tmp_path / "players.sqlite3")
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 100)
    database = SqliteStorage(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        database._db.execute("PRAGMA busy_timeout=100")
        (outcome,) = database.execute([Login(None, "a")])
        assert outcome.result is LoginResult.UNAVAILABLE
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert login(database, None, "a").result is LoginResult.NEW_ID


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "players.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="players.sqlite3"):
        SqliteStorage(str(path))
    assert path.read_bytes().startswith(b"this is not")  # left as it was


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="cannot open database"):
        SqliteStorage(str(tmp_path / "missing" / "players.sqlite3"))


def test_a_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "players.sqlite3")
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={storage.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StorageError, match="newer"):
        SqliteStorage(path)


def test_migration_from_an_empty_file_creates_the_schema(tmp_path):
    path = tmp_path / "players.sqlite3"
    path.touch()
    database = SqliteStorage(str(path))
    assert database.schema_version == storage.SCHEMA_VERSION
    assert login(database, None, "a").result is LoginResult.NEW_ID


def test_batches_from_many_threads_are_serialised(database):
    names = [f"t{n}_{k}" for n in range(4) for k in range(25)]
    results = []

    def work(chunk):
        results.extend(database.execute([Login(None, name) for name in chunk]))

    threads = [threading.Thread(target=work, args=(names[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 100 and all(r.result is LoginResult.NEW_ID for r in results)


def test_a_replay_is_attached_to_its_stored_game_by_key(database):
    from test_storage_ranked import game

    (recorded,) = database.execute([storage.RecordGame("run:1:1", game(None, None, ranked=False))])
    assert recorded.result is storage.RecordResult.RECORDED
    attached, unknown = database.execute([
        storage.AttachReplay("run:1:1", "v046/x.txt"), storage.AttachReplay("nope", "y.txt"),
    ])
    assert attached.attached and not unknown.attached
