"""torch's CPU thread count on a shared machine: leave the cores other processes keep busy to them (issue #40).

torch runs an op's pieces on all its intra-op threads (GNU OpenMP here) and waits for the last one. When another
process holds a core, a thread that lost its core holds up every op until the kernel runs it again, and a small
U-Net's many short ops crawl. On a 2-core machine beside one busy process at normal priority, two threads trained the
demo's diffusion model at 0.31x their idle speed; one thread ran there at 0.59x the idle two-thread speed, about the
share of the cores left (``benchmarks/fairness.py``, docs/results.md). :func:`fair_threads` therefore picks the
thread count from the cores left free. A busy process at ``nice 19`` cost two threads little (0.92x), so niced
processes are not counted.

The OpenMP wait policy is left alone: ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once instead of spinning
~3 ms) ran 0.73x as fast on the idle machine and no better beside a busy process (0.33x); ``ACTIVE`` (0.26x) and
shorter ``GOMP_SPINCOUNT`` values did not help either. Whoever wants a policy must set it in the environment before
``import torch`` (before Python starts, in a notebook): libgomp reads it once, when torch loads it, and ignores later
changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def choose_threads(current: int, usable: int, others: float) -> int:
    """Threads for ``usable`` cores of which other processes keep ``others`` busy: the free cores, rounded (a core
    half taken counts as taken), at least 1 and at most ``current``."""
    return max(1, min(current, int(usable - others + 0.5)))


def _busy_ticks(cpus: set[int]) -> int:
    """Clock ticks the CPUs in ``cpus`` spent on processes at normal or higher priority (user, system, interrupts,
    and time the hypervisor gave to other machines), from ``/proc/stat``; ``nice`` time is left out."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                user, _nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
                total += user + system + irq + softirq + steal
    return total


def others_busy(window: float = 0.5) -> float | None:
    """Cores that other processes at normal or higher priority keep busy, over ``window`` seconds, on the CPUs this
    process may run on (this process' own CPU time is subtracted); None where there is no ``/proc/stat``."""
    try:
        cpus = os.sched_getaffinity(0)
        t0, own0, busy0 = time.perf_counter(), time.process_time(), _busy_ticks(cpus)
        time.sleep(window)
        t1, own1, busy1 = time.perf_counter(), time.process_time(), _busy_ticks(cpus)
    except (OSError, AttributeError, ValueError):  # no /proc (macOS, Windows) or no sched_getaffinity
        return None
    busy = (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - (own1 - own0)
    return max(0.0, busy) / (t1 - t0)


def fair_threads(window: float = 0.5, log: Callable[[str], None] | None = None) -> int:
    """Lower torch's intra-op threads to the cores other processes leave free; returns the thread count in use.

    Call it once before heavy work (it sleeps ``window`` seconds to measure). It never raises the count, and does
    nothing when ``OMP_NUM_THREADS`` is set (the user's or a launcher's choice, e.g. torchrun's 1 per process) or
    where the load cannot be read. ``log`` gets one line when the count is lowered.
    """
    import torch

    current = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or current <= 1:
        return current
    others = others_busy(window)
    if others is None:
        return current
    threads = choose_threads(current, len(os.sched_getaffinity(0)), others)
    if threads < current:
        torch.set_num_threads(threads)
        if log is not None:
            log(f"diffdebias: {threads} torch thread(s) instead of {current}: other processes keep {others:.1f} of "
                f"{len(os.sched_getaffinity(0))} cores busy (set OMP_NUM_THREADS to choose)")
    return threads
