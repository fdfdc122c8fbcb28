"""Replay a recorded session against a server and report the first divergence.

Usage::

    python tools/replay.py SESSION_FILE --server HOST:PORT [--timeout S]
    python tools/replay.py SESSION_FILE --in-process [--seed N]

``--server`` replays live over TCP against a running server (start it with
the session's seed, ``netplay-server --seed N``, for panels to match):
messages are compared one by one, heartbeat pings skipped.  ``--in-process``
replays against a fresh server inside this process, on a virtual clock, and
compares every byte.  Exit status: 0 the server sent what was recorded, 1 it
diverged (the report names the connection, the message index, the expected
and the actual message), 2 usage, file or connection problems.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import structlog
import trio

# The proxy's HOST:PORT type, so both tools read an address the same way.
try:  # run as a script: tools/ is on sys.path
    from record_proxy import host_port
except ImportError:  # imported as tools.replay
    from tools.record_proxy import host_port  # type: ignore[no-redef]

from netplay.recording.record import SessionFormatError, read_session
from netplay.recording.replay import ReplayError, replay_in_process_sync, replay_live


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replay.py", description="Replay a recorded session and compare what the server sends."
    )
    parser.add_argument("session", metavar="SESSION_FILE")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", type=host_port, metavar="HOST:PORT",
                        help="replay live over TCP against this server")
    target.add_argument("--in-process", action="store_true",
                        help="replay against an in-process server on a virtual clock")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="live: longest wait for an expected message, in seconds (5)")
    parser.add_argument("--seed", type=int, default=None,
                        help="in-process: seed of the server (default: the recorded one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        session = read_session(args.session)
    except (OSError, SessionFormatError) as error:
        print(f"replay: cannot read {args.session}: {error}", file=sys.stderr)
        return 2
    try:
        if args.in_process:
            result = replay_in_process_sync(session, seed=args.seed)
        else:
            host, port = args.server
            result = trio.run(lambda: replay_live(session, host, port, timeout=args.timeout))
    except ReplayError as error:
        # Live, the one ReplayError is a first connection that fails: no server there.
        print(f"replay: {error}", file=sys.stderr)
        return 1 if args.server else 2
    print(f"{args.session}: {result.report()}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    # The in-process server logs like any server; only its warnings matter here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sys.exit(main())
