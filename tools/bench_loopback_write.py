#!/usr/bin/env python3
"""What one small TCP write costs this machine's kernel: the floor under the relay.

Opens ``--sockets`` loopback connections, drains them from a child process
on another core, and writes one 9-byte 2025 input message to each in turn
from this process for ``--seconds``, three rounds; prints the CPU time this
process spent per write.  The relay writes each input once to the opponent
and once to each spectator, so at 200 matches with 2 spectators each
(72,000 writes a second) this number times 72,000 is the share of a core
the server spends in the kernel before any of its own code runs::

    python tools/bench_loopback_write.py [--sockets 400] [--seconds 2] [--pause 0.002]

``--pause`` sleeps after each pass over the sockets, so that the reader
sleeps between messages as real clients do and every write wakes it.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import time

MESSAGE = b"IA" + "\u2190J\u2190".encode()


def drain(sockets: list[socket.socket], core: int) -> None:
    os.sched_setaffinity(0, {core})
    poller = select.epoll()
    for sock in sockets:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
    while True:
        for fd, _ in poller.poll(1.0):
            try:
                os.read(fd, 65536)
            except BlockingIOError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--pause", type=float, default=0.002)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    listener = socket.create_server(("127.0.0.1", 0), backlog=args.sockets)
    port = listener.getsockname()[1]
    readers = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.sockets)]
    writers = [listener.accept()[0] for _ in range(args.sockets)]
    for sock in writers:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    child = os.fork()
    if child == 0:
        drain(readers, cores[-1])
        os._exit(0)
    try:
        os.sched_setaffinity(0, {cores[0]})
        descriptors = [sock.fileno() for sock in writers]
        write = os.write
        for _ in range(3):
            writes, started, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < args.seconds:
                for fd in descriptors:
                    write(fd, MESSAGE)
                writes += len(descriptors)
                if args.pause:
                    time.sleep(args.pause)
            spent = time.process_time() - cpu
            print(f"{writes} writes of {len(MESSAGE)} bytes to {args.sockets} sockets: "
                  f"{spent / writes * 1e6:.2f} us of CPU per write "
                  f"({spent / writes * 72_000 * 100:.0f} % of a core at 72,000 a second)")
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
