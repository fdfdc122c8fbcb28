"""Persistent data: players and their ids, behind one small interface.

Theory of operation
-------------------
The lobby never touches a database.  When it needs one it returns a
``actions.Store`` holding an *operation* (a frozen value of this module, such
as :class:`Login`); the trio edge hands a batch of operations to
:meth:`Storage.execute` in a worker thread and feeds each *outcome* back to the
lobby.  A backend implements :class:`Storage`: run every operation of a batch
in one transaction (one disk sync for a whole burst of logins), each operation
isolated so that one failure does not undo the others.

:class:`SqliteStorage` is the backend: the standard library's ``sqlite3``, in
WAL mode, with a schema versioned by ``PRAGMA user_version`` and migrated
forward at start-up, one transaction per migration step.
"""

from __future__ import annotations

import enum
import secrets
import sqlite3
import threading
import time
from typing import Callable, Protocol, Sequence

import attrs
import structlog

log = structlog.get_logger("netplay.storage")

MEMORY = ":memory:"
# User ids are decimal strings below 2**53, so that a client that turns one
# into a (double precision) number still reads it exactly.
_USER_ID_LOW = 10**15
_USER_ID_HIGH = 2**53
# How long a statement waits for another process's lock before it fails.
BUSY_TIMEOUT_MS = 5000


class StorageError(Exception):
    """The database cannot be used: the message says why, in one line."""


# -- operations and outcomes ---------------------------------------------------


@attrs.frozen
class Login:
    """Log ``name`` in under ``user_id``; None asks for a new id."""

    user_id: str | None
    name: str
    # Wall-clock seconds stored as the login time; None: when it runs.
    at: float | None = None


@attrs.frozen
class ImportPlayer:
    """Add a player under a known id (from another server, or a recorded session)."""

    user_id: str
    name: str
    at: float | None = None


@attrs.frozen
class ImportOutcome:
    imported: bool
    reason: str | None = None


class LoginResult(enum.Enum):
    NEW_ID = "new_id"  # a new player; ``user_id`` is theirs from now on
    WELCOME_BACK = "welcome_back"  # a known id under its own name
    RENAMED = "renamed"  # a known id under a new name; ``old_name`` was its name
    NAME_TAKEN = "name_taken"  # another id owns this name
    UNKNOWN_ID = "unknown_id"  # no player has this id
    BANNED = "banned"  # the id is banned; ``reason`` says why
    UNAVAILABLE = "unavailable"  # the database failed; ``reason`` says how


@attrs.frozen
class LoginOutcome:
    result: LoginResult
    user_id: str | None = None
    old_name: str | None = None
    reason: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.result in (LoginResult.NEW_ID, LoginResult.WELCOME_BACK, LoginResult.RENAMED)


Operation = Login | ImportPlayer
Outcome = LoginOutcome | ImportOutcome


def failed_outcome(operation: Operation, reason: str) -> Outcome:
    """What an operation that could not run at all comes back as."""
    if type(operation) is ImportPlayer:
        return ImportOutcome(False, reason)
    return LoginOutcome(LoginResult.UNAVAILABLE, reason=reason)


class Storage(Protocol):
    """A database of players.  Every method is blocking: call it off the event loop."""

    def execute(self, operations: Sequence[Operation]) -> list[Outcome]:
        """Run ``operations`` in order, in one transaction where the backend can.

        Never raises for a failure of one operation: its outcome says so.
        """
        ...

    def close(self) -> None: ...


def name_key(name: str) -> str:
    """Names are owned regardless of case: "Alice" and "alice" are one name."""
    return name.casefold()


def new_user_id() -> str:
    return str(secrets.randbelow(_USER_ID_HIGH - _USER_ID_LOW) + _USER_ID_LOW)


# -- SQLite --------------------------------------------------------------------

# Each entry takes the schema from version N to N + 1.  Never edit one that
# has shipped: add the next.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE players (
        user_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        last_login_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStorage:
    """:class:`Storage` in one SQLite file (or in memory with ``":memory:"``).

    Opening checks the file, switches it to WAL and migrates the schema;
    any problem is a :class:`StorageError` naming the file.  The connection
    may be used from any one thread at a time; a lock makes sure of it.
    """

    def __init__(self, path: str, *, make_user_id: Callable[[], str] = new_user_id) -> None:
        self.path = path
        self._make_user_id = make_user_id
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise StorageError(f"cannot open database {path}: {error}") from None
        try:
            self._prepare()
        except sqlite3.Error as error:
            self._db.close()
            raise StorageError(f"cannot use database {path}: {error}") from None

    def _prepare(self) -> None:
        db = self._db
        # A file that is not a database fails here, before anything is written.
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if self.path != MEMORY:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"journal mode is {mode}, not wal")
        # FULL: a game or a login that was answered survives a power cut too,
        # not only a crash of this process; batches keep it to one sync each.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, one transaction per step."""
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this server's {SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[target - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            log.info("database_migrated", path=self.path, version=target)

    # -- the interface -----------------------------------------------------------

    def execute(self, operations: Sequence[Operation]) -> list[Outcome]:
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                log.error("database_unavailable", path=self.path, error=str(error))
                return [failed_outcome(op, str(error)) for op in operations]
            outcomes = []
            for operation in operations:
                db.execute("SAVEPOINT operation")
                try:
                    outcomes.append(self._run(operation))
                    db.execute("RELEASE operation")
                except sqlite3.Error as error:
                    db.execute("ROLLBACK TO operation")
                    db.execute("RELEASE operation")
                    log.error(
                        "database_operation_failed", operation=type(operation).__name__,
                        error=str(error),
                    )
                    outcomes.append(failed_outcome(operation, str(error)))
            try:
                db.execute("COMMIT")
            except sqlite3.Error as error:
                # Nothing of the batch is stored: no outcome may claim otherwise.
                log.error("database_commit_failed", path=self.path, error=str(error))
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                return [failed_outcome(op, str(error)) for op in operations]
            return outcomes

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- operations ----------------------------------------------------------------

    def _run(self, operation: Operation) -> Outcome:
        if type(operation) is Login:
            return self._login(operation)
        if type(operation) is ImportPlayer:
            return self._import(operation)
        raise TypeError(f"unknown storage operation {operation!r}")

    def _login(self, login: Login) -> LoginOutcome:
        db = self._db
        at = login.at if login.at is not None else time.time()
        key = name_key(login.name)
        owner = db.execute("SELECT user_id FROM players WHERE name_key = ?", (key,)).fetchone()
        if login.user_id is None:
            if owner is not None:
                return LoginOutcome(LoginResult.NAME_TAKEN)
            while True:
                user_id = self._make_user_id()
                try:
                    db.execute(
                        "INSERT INTO players (user_id, name, name_key, created_at, last_login_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (user_id, login.name, key, at, at),
                    )
                except sqlite3.IntegrityError:
                    continue  # the random id is taken; draw another
                return LoginOutcome(LoginResult.NEW_ID, user_id=user_id)
        row = db.execute(
            "SELECT name FROM players WHERE user_id = ?", (login.user_id,)
        ).fetchone()
        if row is None:
            return LoginOutcome(LoginResult.UNKNOWN_ID)
        (stored_name,) = row
        if owner is not None and owner[0] != login.user_id:
            return LoginOutcome(LoginResult.NAME_TAKEN, user_id=login.user_id)
        db.execute(
            "UPDATE players SET name = ?, name_key = ?, last_login_at = ? WHERE user_id = ?",
            (login.name, key, at, login.user_id),
        )
        if stored_name != login.name:
            return LoginOutcome(LoginResult.RENAMED, user_id=login.user_id, old_name=stored_name)
        return LoginOutcome(LoginResult.WELCOME_BACK, user_id=login.user_id)


    def _import(self, player: ImportPlayer) -> ImportOutcome:
        at = player.at if player.at is not None else time.time()
        try:
            self._db.execute(
                "INSERT INTO players (user_id, name, name_key, created_at, last_login_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (player.user_id, player.name, name_key(player.name), at, at),
            )
        except sqlite3.IntegrityError as error:
            return ImportOutcome(False, f"id or name already stored: {error}")
        return ImportOutcome(True)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit first)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements
