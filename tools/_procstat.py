"""CPU time and memory of a process, read from /proc (Linux only).

Shared by the load tools.  Every function takes a pid and returns None when
the process is gone or /proc is not readable, so a report degrades to
"unknown" instead of failing.
"""

from __future__ import annotations

import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` so far, in seconds (all threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after
    # its closing parenthesis.  utime and stime are fields 14 and 15.
    fields = text[text.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (VmRSS), in bytes."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def preemptions(pid: int) -> int | None:
    """Involuntary context switches of ``pid`` so far, over all its threads.

    Each one is a moment another runnable process took the CPU from it:
    a measure of how much a shared machine disturbed a measurement.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"nonvoluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def mib(size: int | None) -> float | None:
    """A byte count from here in MiB, to 0.1, for a report; None stays None."""
    return None if size is None else round(size / (1 << 20), 1)


def open_files(pid: int) -> int | None:
    """How many file descriptors ``pid`` holds open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class CpuMeter:
    """CPU use of one process over a window, as a percentage of one core.

    ``start()`` and ``stop()`` bracket the window; ``percent`` is
    (CPU seconds spent in the window) / (wall seconds of the window) * 100.
    The kernel counts CPU time in clock ticks (usually 10 ms), so windows of a
    few seconds or more are needed for a figure within a percent or two.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu_start: float | None = None
        self._wall_start = 0.0
        self.cpu: float | None = None
        self.wall = 0.0

    def start(self) -> None:
        self._wall_start = time.monotonic()
        self._cpu_start = cpu_seconds(self.pid)

    def stop(self) -> float | None:
        """End the window; return the CPU percentage (None if unknown)."""
        end = cpu_seconds(self.pid)
        self.wall = time.monotonic() - self._wall_start
        if end is None or self._cpu_start is None or self.wall <= 0:
            self.cpu = None
            return None
        self.cpu = end - self._cpu_start
        return self.percent

    @property
    def percent(self) -> float | None:
        if self.cpu is None or self.wall <= 0:
            return None
        return 100.0 * self.cpu / self.wall


def started_cpu_meter(pid: int | None) -> CpuMeter | None:
    """A :class:`CpuMeter` on ``pid`` with its window open; None when no pid was given."""
    if not pid:
        return None
    meter = CpuMeter(pid)
    meter.start()
    return meter


def own_cpu_seconds() -> float:
    """User plus system CPU time of this process so far (from os.times, not /proc)."""
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine so far, summed over all cores.

    Busy is user + nice + system + irq + softirq; steal is time the hypervisor
    gave to someone else.  Idle and iowait are not busy.
    """
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    values = [int(value) for value in fields[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values + [0] * (8 - len(values))
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


class MachineMeter:
    """Busy and stolen CPU of the whole machine over a window, in percent of one core."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None
        self._wall_start = 0.0
        self.busy_percent: float | None = None
        self.steal_percent: float | None = None

    def start(self) -> None:
        self._wall_start = time.monotonic()
        self._start = machine_busy_seconds()

    def stop(self) -> None:
        end = machine_busy_seconds()
        wall = time.monotonic() - self._wall_start
        if end is None or self._start is None or wall <= 0:
            return
        self.busy_percent = 100.0 * (end[0] - self._start[0]) / wall
        self.steal_percent = 100.0 * (end[1] - self._start[1]) / wall
