"""diffdebias.threads: torch's thread count follows the cores other processes leave free (issue #40)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from diffdebias import threads


@pytest.mark.parametrize(("current", "usable", "others", "expected"), [
    (2, 2, 0.0, 2),   # idle: torch's default
    (2, 2, 0.4, 2),   # a little background noise
    (2, 2, 0.6, 1),   # a core mostly taken counts as taken
    (2, 2, 1.0, 1),   # one busy process on a 2-core machine
    (2, 2, 3.0, 1),   # never below one thread
    (8, 8, 2.2, 6),
    (4, 16, 0.0, 4),  # never above the current count
])
def test_choose_threads(current, usable, others, expected):
    assert threads.choose_threads(current, usable, others) == expected


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_fair_threads_lowers_the_count_when_cores_are_busy(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads, "others_busy", lambda window: 1.0)
    torch.set_num_threads(2)
    lines = []
    assert threads.fair_threads(log=lines.append) == 1
    assert torch.get_num_threads() == 1
    assert len(lines) == 1 and "1 torch thread" in lines[0]
    # an idle machine keeps the count
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "others_busy", lambda window: 0.1)
    assert threads.fair_threads() == 2 and torch.get_num_threads() == 2


def test_fair_threads_keeps_the_users_choice(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "others_busy", lambda window: 5.0)
    torch.set_num_threads(2)
    assert threads.fair_threads() == 2 and torch.get_num_threads() == 2


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_others_busy_sees_a_busy_process():
    """A busy child at normal priority counts, as most of a core (less if the machine is crowded)."""
    code = "print(flush=True)\nwhile True:\n    pass\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # it is looping now
        busy = threads.others_busy(0.5)
    finally:
        child.kill()
        child.wait()
    assert busy is not None and busy >= 0.3
