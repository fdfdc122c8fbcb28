"""Finished games: the replay file and the database row, written off the event loop.

The 046 lobby ends a match with a :class:`FinishGame` operation.  The edge
runs it with the storage operations of the same batch (:func:`run_batch`, in
the storage worker thread): the replay file is written first, so that the
stored game can name it, then the game and its rating change are stored in
one transaction.  A replay that cannot be written is logged and the game is
stored without one; a game is never lost for its replay.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import structlog

from netplay import storage
from netplay.replays import FinishedMatch, Skipped, build_replay, sync_replays, write_replay

log = structlog.get_logger("netplay.results")


@attrs.frozen
class FinishGame:
    """Write ``match``'s replay and store it as game ``key`` (see ``storage.RecordGame``).

    ``room`` lets the lobby find the room the outcome belongs to.
    """

    key: str
    room: int
    match: FinishedMatch


def run_batch(
    database: storage.Storage,
    operations: Sequence[object],
    replays_directory: str | None,
) -> list[object]:
    """Run a batch of storage operations and :class:`FinishGame`; blocking.

    Returns one outcome per operation, in order; a :class:`FinishGame`'s is
    the ``RecordGameOutcome`` of its game.
    """
    prepared = [
        _record(operation, replays_directory) if type(operation) is FinishGame else operation
        for operation in operations
    ]
    if replays_directory and any(
        type(op) is storage.RecordGame and op.replay_path is not None for op in prepared
    ):
        # One flush for the batch's files, before the games that name them are stored.
        try:
            sync_replays(replays_directory)
        except OSError as error:
            log.error("replays_not_synced", directory=replays_directory, error=str(error))
    return database.execute(prepared)  # type: ignore[arg-type]


def _record(finish: FinishGame, replays_directory: str | None) -> storage.RecordGame:
    path = None
    if replays_directory:
        replay = build_replay(finish.match)
        if isinstance(replay, Skipped):
            log.info("replay_skipped", game=finish.key, reason=replay.reason.value)
        else:
            try:
                path = write_replay(replays_directory, replay, sync=False)
            except OSError as error:
                log.error("replay_not_written", game=finish.key, error=str(error))
    return storage.RecordGame(finish.key, finish.match, path)
