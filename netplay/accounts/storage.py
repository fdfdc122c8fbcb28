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

Ranked play (schema 2) keeps each player's standing in ``ratings``, one row
per finished game in ``games`` and each rating change in ``rating_history``.
:class:`RecordGame` stores a game and applies its rating change in the same
transaction, once per game key, using the rules of :mod:`netplay.accounts.ratings`.
Bans are kept per user id in ``bans`` and checked by :class:`Login`.
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

from netplay.accounts import ratings
from netplay.accounts.ratings import LeaderboardEntry, PlacementMatch, Standing
from netplay.accounts.replays import Decision, FinishedMatch

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
    expires_at: float | None = None  # when BANNED: wall-clock end of the ban, None for never
    # The player's public id, once logged in: unique, stable, not a secret.
    public_id: int | None = None
    # Their ranked standing, read with the login: known from the moment the
    # reply is sent, so nothing the server says later depends on when a
    # second query came back.
    standing: Standing | None = None

    @property
    def succeeded(self) -> bool:
        return self.result in (LoginResult.NEW_ID, LoginResult.WELCOME_BACK, LoginResult.RENAMED)


# -- ranked play -----------------------------------------------------------------


@attrs.frozen
class RecordGame:
    """Store a finished game and apply its rating change, once per ``key``.

    ``key`` is the caller's unique name for this game: recording a key again
    changes nothing and answers ``ALREADY_RECORDED``, so a retry cannot count
    a game twice.  The game is rated when it is ranked, has a winner and two
    distinct logged-in players.
    """

    key: str
    match: FinishedMatch
    replay_path: str | None = None  # relative to the replays directory


class RecordResult(enum.Enum):
    RECORDED = "recorded"
    ALREADY_RECORDED = "already_recorded"  # the key was stored before; nothing changed
    UNAVAILABLE = "unavailable"


@attrs.frozen
class RecordGameOutcome:
    """``before``/``after``: each player's standing (None if not logged in).

    ``after`` includes any settlement of a placement this game completed;
    ``settled`` lists every player whose rating that settlement changed, with
    their rating before and after.  For ``ALREADY_RECORDED``, ``before`` and
    ``after`` are both the current standings.
    """

    result: RecordResult
    game_id: int | None = None
    rated: bool = False
    before: tuple[Standing | None, Standing | None] = (None, None)
    after: tuple[Standing | None, Standing | None] = (None, None)
    settled: tuple[tuple[str, float, float], ...] = ()
    reason: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.result is not RecordResult.UNAVAILABLE


@attrs.frozen
class RankedProfiles:
    """The standings of ``user_ids`` (what ranked approval needs)."""

    user_ids: tuple[str, ...]


@attrs.frozen
class RankedProfilesOutcome:
    # Every known id; a player who never played ranked has the default Standing.
    standings: dict[str, Standing] = attrs.field(factory=dict)
    error: str | None = None


@attrs.frozen
class Leaderboard:
    """The best placed players, best first; ``limit`` None for all of them."""

    asker_user_id: str | None
    limit: int | None = 100


@attrs.frozen
class LeaderboardOutcome:
    entries: tuple[LeaderboardEntry, ...] = ()
    asker_rank: int | None = None  # None: the asker is not placed
    error: str | None = None


# -- administration --------------------------------------------------------------


@attrs.frozen
class PlayerRecord:
    user_id: str
    name: str
    created_at: float
    last_login_at: float
    standing: Standing
    banned: bool  # a ban is in force
    ban_expires_at: float | None  # when banned: the end of the ban, None for never
    ban_reason: str | None


@attrs.frozen
class FindPlayers:
    """Players whose id is ``text`` or whose name contains it (any case); None: all."""

    text: str | None
    limit: int | None = 50
    at: float | None = None  # the time bans are checked at; None: now


@attrs.frozen
class PlayersOutcome:
    players: tuple[PlayerRecord, ...] = ()
    error: str | None = None


@attrs.frozen
class Rename:
    user_id: str
    name: str


@attrs.frozen
class AttachReplay:
    """Name the replay file of stored game ``key``, written after the game was stored."""

    key: str
    replay_path: str


@attrs.frozen
class AttachOutcome:
    attached: bool  # False: no game with that key, or the database failed
    reason: str | None = None


class AdminResult(enum.Enum):
    DONE = "done"
    UNKNOWN_ID = "unknown_id"
    NAME_TAKEN = "name_taken"  # Rename: another id owns this name
    NOT_BANNED = "not_banned"  # Unban: no ban in force
    UNAVAILABLE = "unavailable"


@attrs.frozen
class AdminOutcome:
    result: AdminResult
    old_name: str | None = None  # Rename
    reason: str | None = None  # UNAVAILABLE: why

    @property
    def succeeded(self) -> bool:
        return self.result is AdminResult.DONE


@attrs.frozen
class Ban:
    """Ban ``user_id`` until ``expires_at`` (wall-clock seconds; None: for ever)."""

    user_id: str
    reason: str
    expires_at: float | None
    at: float | None = None  # when it is made; None: now


@attrs.frozen
class Unban:
    """Lift every ban of ``user_id`` in force."""

    user_id: str
    at: float | None = None


@attrs.frozen
class GameRecord:
    game_id: int
    key: str
    ended_at: float
    user_ids: tuple[str | None, str | None]
    names: tuple[str, str]
    levels: tuple[int, int]
    characters: tuple[str, str]
    winner: int
    decided_by: Decision
    ranked: bool
    rated: bool
    replay_path: str | None


@attrs.frozen
class PlayerGames:
    """The latest games of ``user_id``, newest first."""

    user_id: str
    limit: int | None = 50


@attrs.frozen
class GamesOutcome:
    games: tuple[GameRecord, ...] = ()
    error: str | None = None


Operation = (
    Login | ImportPlayer | RecordGame | AttachReplay | RankedProfiles | Leaderboard | FindPlayers
    | Rename | Ban | Unban | PlayerGames
)
Outcome = (
    LoginOutcome | ImportOutcome | RecordGameOutcome | AttachOutcome | RankedProfilesOutcome
    | LeaderboardOutcome | PlayersOutcome | AdminOutcome | GamesOutcome
)


def failed_outcome(operation: Operation, reason: str) -> Outcome:
    """What an operation that could not run at all comes back as."""
    if type(operation) is ImportPlayer:
        return ImportOutcome(False, reason)
    if isinstance(operation, RecordGame):
        return RecordGameOutcome(RecordResult.UNAVAILABLE, reason=reason)
    if isinstance(operation, RankedProfiles):
        return RankedProfilesOutcome(error=reason)
    if isinstance(operation, Leaderboard):
        return LeaderboardOutcome(error=reason)
    if isinstance(operation, FindPlayers):
        return PlayersOutcome(error=reason)
    if isinstance(operation, (Rename, Ban, Unban)):
        return AdminOutcome(AdminResult.UNAVAILABLE, reason=reason)
    if isinstance(operation, PlayerGames):
        return GamesOutcome(error=reason)
    if isinstance(operation, AttachReplay):
        return AttachOutcome(False, reason)
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
    # 2: ranked play, games, bans.
    """
    CREATE TABLE ratings (
        user_id TEXT PRIMARY KEY REFERENCES players (user_id),
        rating REAL NOT NULL,
        placement_done INTEGER NOT NULL CHECK (placement_done IN (0, 1)),
        placement_rating REAL NOT NULL,
        ranked_games_played INTEGER NOT NULL,
        ranked_games_won INTEGER NOT NULL
    );
    -- The leaderboard: placed players, best first, read in index order.
    CREATE INDEX ratings_leaderboard ON ratings (rating DESC, user_id) WHERE placement_done = 1;
    CREATE TABLE games (
        game_id INTEGER PRIMARY KEY,
        game_key TEXT NOT NULL UNIQUE,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        player1_id TEXT REFERENCES players (user_id),
        player2_id TEXT REFERENCES players (user_id),
        player1_name TEXT NOT NULL,
        player2_name TEXT NOT NULL,
        player1_level INTEGER NOT NULL,
        player2_level INTEGER NOT NULL,
        player1_character TEXT NOT NULL,
        player2_character TEXT NOT NULL,
        stage TEXT NOT NULL,
        seed INTEGER NOT NULL,
        -- The outcome: the winning player's number, 0 for a draw.
        winner INTEGER NOT NULL CHECK (winner IN (0, 1, 2)),
        decided_by TEXT NOT NULL
            CHECK (decided_by IN ('agreement', 'disagreement', 'timeout', 'disconnect')),
        ranked INTEGER NOT NULL CHECK (ranked IN (0, 1)),
        rated INTEGER NOT NULL CHECK (rated IN (0, 1)),
        -- For a rated game: each player's rating it was rated against (the
        -- provisional one in placement) and whether they were placed; what
        -- settles a placement when it completes.
        player1_rating_before REAL,
        player2_rating_before REAL,
        player1_placed_before INTEGER,
        player2_placed_before INTEGER,
        replay_path TEXT
    );
    CREATE INDEX games_player1 ON games (player1_id, game_id);
    CREATE INDEX games_player2 ON games (player2_id, game_id);
    CREATE TABLE rating_history (
        game_id INTEGER NOT NULL REFERENCES games (game_id),
        user_id TEXT NOT NULL REFERENCES players (user_id),
        -- 'game': the game itself; 'settlement': a placement it completed.
        kind TEXT NOT NULL CHECK (kind IN ('game', 'settlement')),
        rating_before REAL NOT NULL,
        rating_after REAL NOT NULL,
        placement_rating_before REAL NOT NULL,
        placement_rating_after REAL NOT NULL,
        PRIMARY KEY (game_id, user_id, kind)
    );
    CREATE INDEX rating_history_player ON rating_history (user_id, game_id);
    CREATE TABLE bans (
        ban_id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES players (user_id),
        reason TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,  -- NULL: never
        lifted_at REAL  -- set when an administrator lifts it
    );
    CREATE INDEX bans_player ON bans (user_id);
    """,
    # 3: public ids, the small numbers the 2025 clients show and put in replays.
    """
    CREATE TABLE public_ids (
        public_id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL UNIQUE REFERENCES players (user_id)
    );
    INSERT INTO public_ids (user_id) SELECT user_id FROM players ORDER BY created_at, user_id;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStorage:
    """:class:`Storage` in one SQLite file (or in memory with ``":memory:"``).

    Opening checks the file, switches it to WAL and migrates the schema;
    any problem is a :class:`StorageError` naming the file.  The connection
    may be used from any one thread at a time; a lock makes sure of it.
    """

    def __init__(
        self, path: str, *, make_user_id: Callable[[], str] = new_user_id,
        busy_timeout: float = BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        self.path = path
        self._make_user_id = make_user_id
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None,
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
        migrated = False
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                # Another process (netplay-admin, say) may have taken this step
                # while this one waited for the lock.
                if self.schema_version >= target:
                    db.execute("COMMIT")
                    continue
                for statement in _statements(MIGRATIONS[target - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            migrated = True
        if migrated:
            log.info("database_migrated", path=self.path, version=SCHEMA_VERSION, previous=version)

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
        handler = _HANDLERS.get(type(operation))
        if handler is not None:
            return handler(self, operation)
        raise TypeError(f"unknown storage operation {operation!r}")

    def _attach_replay(self, operation: AttachReplay) -> AttachOutcome:
        cursor = self._db.execute(
            "UPDATE games SET replay_path = ? WHERE game_key = ?",
            (operation.replay_path, operation.key),
        )
        if cursor.rowcount != 1:
            return AttachOutcome(False, "no game with this key")
        return AttachOutcome(True)

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
                return LoginOutcome(
                    LoginResult.NEW_ID, user_id=user_id, public_id=self._public_id(user_id),
                    standing=self._standing(user_id),
                )
        row = db.execute(
            "SELECT name FROM players WHERE user_id = ?", (login.user_id,)
        ).fetchone()
        if row is None:
            return LoginOutcome(LoginResult.UNKNOWN_ID)
        ban = self._active_ban(login.user_id, login.at)
        if ban is not None:
            return LoginOutcome(
                LoginResult.BANNED, user_id=login.user_id, reason=ban[0], expires_at=ban[1]
            )
        (stored_name,) = row
        if owner is not None and owner[0] != login.user_id:
            return LoginOutcome(LoginResult.NAME_TAKEN, user_id=login.user_id)
        db.execute(
            "UPDATE players SET name = ?, name_key = ?, last_login_at = ? WHERE user_id = ?",
            (login.name, key, at, login.user_id),
        )
        public_id = self._public_id(login.user_id)
        standing = self._standing(login.user_id)
        if stored_name != login.name:
            return LoginOutcome(
                LoginResult.RENAMED, user_id=login.user_id, old_name=stored_name,
                public_id=public_id, standing=standing,
            )
        return LoginOutcome(
            LoginResult.WELCOME_BACK, user_id=login.user_id, public_id=public_id,
            standing=standing,
        )

    def _public_id(self, user_id: str) -> int:
        """The player's public id, given on first use (players imported later have none yet)."""
        row = self._db.execute(
            "SELECT public_id FROM public_ids WHERE user_id = ?", (user_id,)
        ).fetchone()
        if row is not None:
            return row[0]
        cursor = self._db.execute("INSERT INTO public_ids (user_id) VALUES (?)", (user_id,))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

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

    # -- ranked play -------------------------------------------------------------

    def _standing(self, user_id: str) -> Standing:
        row = self._db.execute(
            "SELECT rating, placement_done, placement_rating, ranked_games_played,"
            " ranked_games_won FROM ratings WHERE user_id = ?",
            (user_id,),
        ).fetchone()
        if row is None:
            return Standing()
        rating, done, placement_rating, played, won = row
        return Standing(rating, bool(done), placement_rating, played, won)

    def _store_standing(self, user_id: str, standing: Standing) -> None:
        self._db.execute(
            "INSERT INTO ratings (user_id, rating, placement_done, placement_rating,"
            " ranked_games_played, ranked_games_won) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET rating = excluded.rating,"
            " placement_done = excluded.placement_done,"
            " placement_rating = excluded.placement_rating,"
            " ranked_games_played = excluded.ranked_games_played,"
            " ranked_games_won = excluded.ranked_games_won",
            (user_id, standing.rating, int(standing.placement_done), standing.placement_rating,
             standing.ranked_games_played, standing.ranked_games_won),
        )

    def _history(self, game_id: int, user_id: str, kind: str, before: Standing, after: Standing) -> None:
        self._db.execute(
            "INSERT INTO rating_history (game_id, user_id, kind, rating_before, rating_after,"
            " placement_rating_before, placement_rating_after) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (game_id, user_id, kind, before.rating, after.rating, before.placement_rating,
             after.placement_rating),
        )

    def _known(self, user_id: str | None) -> Standing | None:
        return None if user_id is None else self._standing(user_id)

    def _record_game(self, operation: RecordGame) -> RecordGameOutcome:
        db = self._db
        match = operation.match
        first, second = match.players
        ids = (first.user_id, second.user_id)
        row = db.execute(
            "SELECT game_id, rated FROM games WHERE game_key = ?", (operation.key,)
        ).fetchone()
        if row is not None:
            current = (self._known(ids[0]), self._known(ids[1]))
            return RecordGameOutcome(
                RecordResult.ALREADY_RECORDED, game_id=row[0], rated=bool(row[1]),
                before=current, after=current,
            )
        before = (self._known(ids[0]), self._known(ids[1]))
        rated = (
            match.ranked and match.winner in (1, 2)
            and ids[0] is not None and ids[1] is not None and ids[0] != ids[1]
        )
        if match.ranked and not rated and match.winner in (1, 2):
            log.warning("ranked_game_not_rated", key=operation.key, user_ids=ids)
        rated_with = [None, None]
        placed_with = [None, None]
        if rated:
            for index in (0, 1):
                rated_with[index] = before[index].current_rating
                placed_with[index] = int(before[index].placement_done)
        game_id = db.execute(
            "INSERT INTO games (game_key, started_at, ended_at, player1_id, player2_id,"
            " player1_name, player2_name, player1_level, player2_level, player1_character,"
            " player2_character, stage, seed, winner, decided_by, ranked, rated,"
            " player1_rating_before, player2_rating_before, player1_placed_before,"
            " player2_placed_before, replay_path)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (operation.key, match.started_at, match.ended_at, ids[0], ids[1], first.name,
             second.name, first.level, second.level, first.character, second.character,
             match.stage, match.seed, match.winner, match.decided_by.value, int(match.ranked),
             int(rated), rated_with[0], rated_with[1], placed_with[0], placed_with[1],
             operation.replay_path),
        ).lastrowid
        if not rated:
            return RecordGameOutcome(
                RecordResult.RECORDED, game_id=game_id, before=before, after=before
            )
        after = ratings.rate_game(before[0], before[1], match.winner)
        for index in (0, 1):
            self._store_standing(ids[index], after[index])
            self._history(game_id, ids[index], "game", before[index], after[index])
        settled: list[tuple[str, float, float]] = []
        for index in (0, 1):
            if ratings.completed_placement(before[index], after[index]):
                settled.extend(self._settle_placement(game_id, ids[index], after[index].rating))
        return RecordGameOutcome(
            RecordResult.RECORDED, game_id=game_id, rated=True, before=before,
            after=(self._standing(ids[0]), self._standing(ids[1])), settled=tuple(settled),
        )

    def _settle_placement(
        self, game_id: int, user_id: str, final_rating: float
    ) -> list[tuple[str, float, float]]:
        """Give the placed opponents of ``user_id``'s placement games their share."""
        rows = self._db.execute(
            "SELECT game_id, player2_id, player2_rating_before, winner = 2 FROM games"
            " WHERE player1_id = :id AND rated = 1"
            " AND player1_placed_before = 0 AND player2_placed_before = 1"
            " UNION ALL"
            " SELECT game_id, player1_id, player1_rating_before, winner = 1 FROM games"
            " WHERE player2_id = :id AND rated = 1"
            " AND player2_placed_before = 0 AND player1_placed_before = 1"
            " ORDER BY game_id",
            {"id": user_id},
        ).fetchall()
        matches = [PlacementMatch(opponent, rating, bool(won)) for _, opponent, rating, won in rows]
        opponents = {m.opponent_user_id: self._standing(m.opponent_user_id) for m in matches}
        current = {user: standing.rating for user, standing in opponents.items()}
        settled = []
        for opponent, rating in ratings.settle_placement(final_rating, matches, current).items():
            before = opponents[opponent]
            after = attrs.evolve(before, rating=rating)
            self._store_standing(opponent, after)
            self._history(game_id, opponent, "settlement", before, after)
            settled.append((opponent, before.rating, rating))
        return settled

    def _ranked_profiles(self, operation: RankedProfiles) -> RankedProfilesOutcome:
        standings = {}
        for user_id in operation.user_ids:
            known = self._db.execute(
                "SELECT 1 FROM players WHERE user_id = ?", (user_id,)
            ).fetchone()
            if known is not None:
                standings[user_id] = self._standing(user_id)
        return RankedProfilesOutcome(standings)

    def _leaderboard(self, operation: Leaderboard) -> LeaderboardOutcome:
        db = self._db
        limit = -1 if operation.limit is None else operation.limit
        rows = db.execute(
            "SELECT r.user_id, p.name, r.rating, r.ranked_games_played, r.ranked_games_won"
            " FROM ratings AS r INDEXED BY ratings_leaderboard"
            " JOIN players AS p ON p.user_id = r.user_id"
            " WHERE r.placement_done = 1 ORDER BY r.rating DESC, r.user_id LIMIT ?",
            (limit,),
        ).fetchall()
        entries = tuple(
            LeaderboardEntry(rank, user_id, name, rating, played, won)
            for rank, (user_id, name, rating, played, won) in enumerate(rows, start=1)
        )
        asker_rank = None
        if operation.asker_user_id is not None:
            for entry in entries:
                if entry.user_id == operation.asker_user_id:
                    asker_rank = entry.rank
            asker = self._standing(operation.asker_user_id)
            if asker_rank is None and asker.placement_done:
                (better,) = db.execute(
                    "SELECT count(*) FROM ratings INDEXED BY ratings_leaderboard"
                    " WHERE placement_done = 1 AND rating >= ?"
                    " AND (rating > ? OR user_id < ?)",
                    (asker.rating, asker.rating, operation.asker_user_id),
                ).fetchone()
                asker_rank = better + 1
        return LeaderboardOutcome(entries, asker_rank)

    # -- administration -------------------------------------------------------------

    def _active_ban(self, user_id: str, at: float | None) -> tuple[str, float | None] | None:
        """The reason and end of a ban of ``user_id`` in force at ``at``, if any."""
        now = time.time() if at is None else at
        return self._db.execute(
            "SELECT reason, expires_at FROM bans WHERE user_id = ? AND lifted_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?)"
            " ORDER BY expires_at IS NULL DESC, expires_at DESC LIMIT 1",
            (user_id, now),
        ).fetchone()

    def _find_players(self, operation: FindPlayers) -> PlayersOutcome:
        limit = -1 if operation.limit is None else operation.limit
        if operation.text is None:
            rows = self._db.execute(
                "SELECT user_id, name, created_at, last_login_at FROM players"
                " ORDER BY name_key LIMIT ?",
                (limit,),
            ).fetchall()
        else:
            pattern = "%" + _escape_like(name_key(operation.text)) + "%"
            rows = self._db.execute(
                "SELECT user_id, name, created_at, last_login_at FROM players"
                " WHERE user_id = ? OR name_key LIKE ? ESCAPE '\\'"
                " ORDER BY user_id != ?, name_key LIMIT ?",
                (operation.text, pattern, operation.text, limit),
            ).fetchall()
        players = []
        for user_id, name, created_at, last_login_at in rows:
            ban = self._active_ban(user_id, operation.at)
            players.append(PlayerRecord(
                user_id, name, created_at, last_login_at, self._standing(user_id),
                banned=ban is not None, ban_expires_at=ban[1] if ban else None,
                ban_reason=ban[0] if ban else None,
            ))
        return PlayersOutcome(tuple(players))

    def _exists(self, user_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM players WHERE user_id = ?", (user_id,)).fetchone()
        return row is not None

    def _rename(self, operation: Rename) -> AdminOutcome:
        db = self._db
        row = db.execute(
            "SELECT name FROM players WHERE user_id = ?", (operation.user_id,)
        ).fetchone()
        if row is None:
            return AdminOutcome(AdminResult.UNKNOWN_ID)
        key = name_key(operation.name)
        owner = db.execute("SELECT user_id FROM players WHERE name_key = ?", (key,)).fetchone()
        if owner is not None and owner[0] != operation.user_id:
            return AdminOutcome(AdminResult.NAME_TAKEN, old_name=row[0])
        db.execute(
            "UPDATE players SET name = ?, name_key = ? WHERE user_id = ?",
            (operation.name, key, operation.user_id),
        )
        return AdminOutcome(AdminResult.DONE, old_name=row[0])

    def _ban(self, operation: Ban) -> AdminOutcome:
        if not self._exists(operation.user_id):
            return AdminOutcome(AdminResult.UNKNOWN_ID)
        at = time.time() if operation.at is None else operation.at
        self._db.execute(
            "INSERT INTO bans (user_id, reason, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (operation.user_id, operation.reason, at, operation.expires_at),
        )
        return AdminOutcome(AdminResult.DONE)

    def _unban(self, operation: Unban) -> AdminOutcome:
        if not self._exists(operation.user_id):
            return AdminOutcome(AdminResult.UNKNOWN_ID)
        at = time.time() if operation.at is None else operation.at
        lifted = self._db.execute(
            "UPDATE bans SET lifted_at = ? WHERE user_id = ? AND lifted_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (at, operation.user_id, at),
        ).rowcount
        return AdminOutcome(AdminResult.DONE if lifted else AdminResult.NOT_BANNED)

    def _player_games(self, operation: PlayerGames) -> GamesOutcome:
        limit = -1 if operation.limit is None else operation.limit
        rows = self._db.execute(
            "SELECT game_id, game_key, ended_at, player1_id, player2_id, player1_name,"
            " player2_name, player1_level, player2_level, player1_character, player2_character,"
            " winner, decided_by, ranked, rated, replay_path FROM games"
            " WHERE game_id IN (SELECT game_id FROM games WHERE player1_id = :id"
            " UNION SELECT game_id FROM games WHERE player2_id = :id)"
            " ORDER BY game_id DESC LIMIT :limit",
            {"id": operation.user_id, "limit": limit},
        ).fetchall()
        return GamesOutcome(tuple(
            GameRecord(
                game_id, key, ended_at, (id1, id2), (name1, name2), (level1, level2),
                (character1, character2), winner, Decision(decided_by), bool(ranked),
                bool(rated), replay_path,
            )
            for (game_id, key, ended_at, id1, id2, name1, name2, level1, level2, character1,
                 character2, winner, decided_by, ranked, rated, replay_path) in rows
        ))


_HANDLERS: dict[type, Callable] = {
    RecordGame: SqliteStorage._record_game,
    AttachReplay: SqliteStorage._attach_replay,
    RankedProfiles: SqliteStorage._ranked_profiles,
    Leaderboard: SqliteStorage._leaderboard,
    FindPlayers: SqliteStorage._find_players,
    Rename: SqliteStorage._rename,
    Ban: SqliteStorage._ban,
    Unban: SqliteStorage._unban,
    PlayerGames: SqliteStorage._player_games,
}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
