"""Device and process placement through accelerate: no tensor is moved to a GPU by hand."""

from __future__ import annotations

from contextlib import nullcontext

import torch

_ACCELERATOR = None


def accelerator(device: str = "auto"):
    """The process's Accelerator (accelerate allows one state per process); ``device`` = auto | cpu | cuda | mps."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        if device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"unknown device '{device}' (known: auto, cpu, cuda, mps)")
        _ACCELERATOR = Accelerator(cpu=device == "cpu")
    return _ACCELERATOR


def reset_accelerator() -> None:
    """Forget the process's Accelerator (tests that need a fresh one)."""
    global _ACCELERATOR
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    _ACCELERATOR = None


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for; fp32 otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision '{precision}' (known: fp32, bf16)")
    return nullcontext()


def cpu_workers(device: torch.device, requested: int = 0) -> int:
    """How many batches to run side by side: ``requested`` if set, else one per intra-op thread on a CPU (a small
    U-Net's ops are too short to spread over several threads, whole batches are not) and 1 on a GPU."""
    if requested > 0:
        return requested
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


def map_batches(fn, items, workers: int) -> list:
    """``[fn(x) for x in items]`` with ``workers`` threads, each op single-threaded meanwhile (torch releases the GIL
    inside ops, so whole batches run in parallel); results in the order of ``items``."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, len(items))) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)
