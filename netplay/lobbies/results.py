"""Finished games: the database row first, the replay file after, both off the event loop.

The 046 lobby ends a match with a :class:`FinishGame` operation.  The edge
runs it with the storage operations of the same batch (:func:`run_batch`, in
the storage worker thread): the game and its rating change are stored in one
transaction, and the players get their new ratings at once.  The replay file
is work for later (:func:`write_replays`): the edge writes replays a few at a
time, paced so that a burst of finished games never delays the relay, then
names each file in its game's row.  A replay that cannot be written is logged
and its game keeps no file; a game is never lost for its replay.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import structlog

from netplay.accounts import storage
from netplay.accounts.replays import (
    FinishedMatch,
    Skipped,
    build_replay,
    sync_replays,
    write_replay,
)

log = structlog.get_logger("netplay.results")


@attrs.frozen
class FinishGame:
    """Store ``match`` as game ``key`` (see ``storage.RecordGame``); its replay follows.

    ``room`` lets the lobby find the room the outcome belongs to.
    """

    key: str
    room: int
    match: FinishedMatch


def run_batch(database: storage.Storage, operations: Sequence[object]) -> list[object]:
    """Run a batch of storage operations and :class:`FinishGame`; blocking.

    Returns one outcome per operation, in order; a :class:`FinishGame`'s is
    the ``RecordGameOutcome`` of its game.
    """
    prepared = [
        storage.RecordGame(op.key, op.match) if type(op) is FinishGame else op
        for op in operations
    ]
    return database.execute(prepared)  # type: ignore[arg-type]


def write_replays(
    database: storage.Storage, games: Sequence[FinishGame], directory: str
) -> int:
    """Write the replay files of ``games`` (stored already), sync them once, name them
    in their rows; blocking.  Returns how many files were written."""
    attached = []
    for game in games:
        replay = build_replay(game.match)
        if isinstance(replay, Skipped):
            log.info("replay_skipped", game=game.key, reason=replay.reason.value)
            continue
        try:
            path = write_replay(directory, replay, sync=False)
        except OSError as error:
            log.error("replay_not_written", game=game.key, error=str(error))
            continue
        attached.append(storage.AttachReplay(game.key, path))
    if not attached:
        return 0
    try:
        sync_replays(directory)
    except OSError as error:
        log.error("replays_not_synced", directory=directory, error=str(error))
    for outcome, attach in zip(database.execute(attached), attached):
        if not outcome.attached:  # type: ignore[union-attr]
            log.error("replay_not_attached", game=attach.key, reason=outcome.reason)  # type: ignore[union-attr]
    return len(attached)
