"""The process and machine figures of the load tools (tools/_clients.py, on psutil).

Each is read from a real child process doing known work: a busy child must
show CPU time, memory and, pinned to a core another busy process holds,
preemptions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Iterator

import pytest
from helpers import load_tool

stats = load_tool("_clients")
CORE = min(os.sched_getaffinity(0))
SPIN = "print('ready', flush=True)\nwhile True: pass"
# Two threads spin on the core given as argv[1] until told to stop over stdin:
# "end" stops the first (and waits for it), end of input the second.
THREADS = """
import os, sys, threading
os.sched_setaffinity(0, {int(sys.argv[1])})
stops = [threading.Event(), threading.Event()]
def spin(stop):
    while not stop.is_set():
        sum(range(1000))
threads = [threading.Thread(target=spin, args=(stop,)) for stop in stops]
for thread in threads:
    thread.start()
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "end":
        stops[0].set()
        threads[0].join()
        print("ended", flush=True)
stops[1].set()
threads[1].join()
"""


def _spawn(*command: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *command], preexec_fn=lambda: os.sched_setaffinity(0, {CORE}),
        **options,
    )


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen]:
    """A child process busy on one core, once its interpreter is running."""
    process = _spawn("-c", SPIN, stdout=subprocess.PIPE)
    try:
        # Until it says so, the child may still be starting (a few KiB of memory).
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        yield process
    finally:
        process.kill()
        process.wait()


def test_cpu_meter_sees_a_busy_child_use_the_cpu(spinner):
    meter = stats.started_cpu_meter(spinner.pid)
    time.sleep(0.5)
    percent = meter.stop()
    assert percent is not None and 10 < percent <= 110
    assert meter.cpu > 0 and meter.wall >= 0.5
    assert stats.cpu_seconds(spinner.pid) > 0


def test_memory_and_descriptors_of_a_live_child(spinner):
    rss = stats.rss_bytes(spinner.pid)
    assert rss is not None and rss > 1 << 20  # a Python interpreter: several MiB
    assert stats.mib(rss) > 1
    assert stats.open_files(spinner.pid) >= 3  # stdin, stdout, stderr
    assert stats.own_cpu_seconds() > 0


def test_figures_of_a_process_that_is_gone_are_unknown():
    process = _spawn("-c", "pass")
    process.wait()
    assert stats.cpu_seconds(process.pid) is None
    assert stats.rss_bytes(process.pid) is None
    assert stats.open_files(process.pid) is None
    assert stats.thread_preemptions(process.pid) is None
    meter = stats.CpuMeter(process.pid)
    meter.start()
    assert meter.stop() is None and meter.percent is None
    preemptions = stats.PreemptionMeter(process.pid)
    preemptions.start()
    assert preemptions.stop() is None
    assert stats.mib(None) is None


def test_machine_meter_counts_a_busy_child(spinner):
    machine = stats.MachineMeter()
    machine.start()
    time.sleep(0.5)
    machine.stop()
    assert machine.busy_percent is not None and machine.busy_percent > 10
    assert machine.steal_percent is not None and machine.steal_percent >= 0


def test_preemptions_count_every_thread_and_never_go_down_when_one_ends(spinner):
    """A thread preempted many times that ends within the window must not make the
    count negative (a sum over the live threads at each end would): the figure is
    what the threads alive at the end did within the window."""
    child = _spawn("-c", THREADS, str(CORE), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the spinning threads share the core with ``spinner``
        meter = stats.PreemptionMeter(child.pid)
        meter.start()
        before = stats.thread_preemptions(child.pid)
        assert before is not None and len(before) == 3  # the main thread and two spinners
        child.stdin.write("end\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ended"
        time.sleep(0.3)
        after = stats.thread_preemptions(child.pid)
        count = meter.stop()
        assert after is not None and len(after) == 2
        # The ended thread took switches with it: the live sum went down ...
        ended = sum(before[key] for key in before.keys() - after.keys())
        assert ended > 0
        # ... but the count is what the remaining threads did meanwhile, and the
        # spinner left over was preempted within the window.
        grown = sum(after[key] - before[key] for key in after.keys() & before.keys())
        assert count is not None and count > 0
        assert count >= grown > 0
    finally:
        child.stdin.close()
        child.wait(10)
