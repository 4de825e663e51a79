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
