#!/usr/bin/env python3
"""The core's per-frame path alone: nanoseconds per ``relay_target`` call.

Sets up one match in process (2013 clients, then 2022 clients) and times
``ServerCore.relay_target`` for one player's inputs at 60 a second of
virtual time, five rounds each; prints the best and the median round.  No
sockets, so the numbers compare two builds without the machine's network
noise::

    python tools/bench_relay_path.py [CHECKOUT]

``CHECKOUT`` (default: this one) is the directory holding the ``netplay``
package to measure, e.g. a ``git worktree`` of an older commit.
"""

from __future__ import annotations

import os
import sys
import time

CHECKOUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.abspath(CHECKOUT))

import trio  # noqa: E402

from netplay.testing import (  # noqa: E402
    connect046,
    connect_in_process,
    pair_up,
    pair_up046,
    running_server,
    start_match,
    start_match046,
)

ROUNDS, CALLS = 5, 100_000


def _time(core, connection_id: int) -> tuple[float, float]:
    target, now, rounds = core.relay_target, trio.current_time(), []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for index in range(CALLS):
            target(connection_id, b"IA", now + index / 60)
        now += CALLS / 60
        rounds.append((time.perf_counter() - started) / CALLS * 1e9)
    rounds.sort()
    return rounds[0], rounds[ROUNDS // 2]


async def main() -> None:
    async with running_server() as server:
        alice, bob = connect_in_process(server), connect_in_process(server)
        await alice.register("alice")
        await bob.register("bob")
        await pair_up(alice, bob, "alice", "bob")
        await start_match(alice, bob)
        best, median = _time(server.core, next(iter(server.core.connections)))
        print(f"2013 clients: relay_target best {best:.0f} ns, median {median:.0f} ns")
    async with running_server() as server:
        bob, carol = connect046(server), connect046(server)
        await bob.join("bob")
        await bob.login()
        await carol.join("carol")
        await carol.login()
        await pair_up046(bob, carol)
        await start_match046(bob, carol)
        playing = next(c for c in server.core.connections
                       if server.core.lobby046.input_route(c, ord("A")) is not None)
        best, median = _time(server.core, playing)
        print(f"046 clients:  relay_target best {best:.0f} ns, median {median:.0f} ns")


if __name__ == "__main__":
    import logging

    logging.disable(logging.CRITICAL)
    trio.run(main)
