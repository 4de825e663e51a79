"""Device and process placement through accelerate: no tensor is moved to a GPU by hand."""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import torch

_ACCELERATOR = None
_GROUP = None  # the stage protocol's process group, in a process launched as one of several
STAGE_WAIT = timedelta(days=7)  # how long the other processes wait for a stage the main process computes alone


def accelerator(device: str = "auto"):
    """The process's Accelerator (accelerate allows one state per process); ``device`` = auto | cpu | cuda | mps."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        if device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"unknown device '{device}' (known: auto, cpu, cuda, mps)")
        # on a machine without a GPU, accelerate joins the launcher's processes only when told to use the CPU
        no_gpu = device == "auto" and launched() and not torch.cuda.is_available()
        _ACCELERATOR = Accelerator(cpu=device == "cpu" or no_gpu)
    return _ACCELERATOR


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_group(device: str = "auto"):
    """The group of the processes a launcher started together, made on first use (by every one of them: it is a
    collective) after the process's Accelerator, which joins them; None in a single process. It is a gloo group
    whatever the accelerator's backend, so the processes exchange decisions on the CPU, and its timeout is
    :data:`STAGE_WAIT`: the others wait there while the main process computes a stage alone, possibly for hours."""
    global _GROUP
    if _GROUP is None and launched():
        import torch.distributed as dist

        accelerator(device)
        _GROUP = dist.new_group(backend="gloo", timeout=STAGE_WAIT)
    return _GROUP


def is_main() -> bool:
    """Whether this process writes the run's files and prints: the only one, or the launcher's rank 0."""
    return not launched() or int(os.environ.get("RANK", "0")) == 0


def leave_launch() -> None:
    """Make this process one of several independent ones (bench shards a launcher started): without the launcher's
    variables, accelerate runs it as a single process, on the GPU of its local rank where there are GPUs."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())


def share(obj: Any) -> Any:
    """The main process's ``obj``, on every process of the group (``obj`` itself in a single process)."""
    if _GROUP is None:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_GROUP)
    return box[0]


def barrier() -> None:
    """Wait until every process of the group gets here (nothing in a single process)."""
    if _GROUP is not None:
        import torch.distributed as dist

        dist.barrier(group=_GROUP)


def end_processes() -> None:
    """Finish a launched run on every process together, then close its process groups (nothing in a single process).

    Without it a process that is done (the others only read stages; the main one still writes the report) exits
    first and tears its gloo group down at interpreter exit while its peers still hold connections to it, which can
    abort the process (SIGABRT, "terminate called without an active exception")."""
    global _GROUP
    if _GROUP is None:
        return
    import torch.distributed as dist

    dist.barrier(group=_GROUP)
    dist.destroy_process_group(_GROUP)
    _GROUP = None
    accelerator().end_training()  # the launcher's default group


def shard_sizes(n: int, procs: int) -> list[int]:
    """Sizes of ``procs`` contiguous parts of ``n`` items, the first ones one larger where ``n`` does not divide."""
    return [n // procs + (r < n % procs) for r in range(procs)]


def my_part(n: int) -> slice:
    """This process's contiguous part of ``n`` items among the processes of the accelerator (all of them in one)."""
    acc = accelerator()
    sizes = shard_sizes(n, acc.num_processes)
    lo = sum(sizes[: acc.process_index])
    return slice(lo, lo + sizes[acc.process_index])


def gather_parts(part: torch.Tensor, n: int) -> torch.Tensor:
    """Every process's :func:`my_part` of an ``n``-row tensor, concatenated in rank order (detached; ``part``
    itself in one process). Parts may differ in size by one row: they are padded for the collective."""
    acc = accelerator()
    if acc.num_processes == 1:
        return part.detach()
    import torch.distributed as dist

    sizes = shard_sizes(n, acc.num_processes)
    padded = part.detach().new_zeros((sizes[0], *part.shape[1:]), device=acc.device)  # NCCL gathers on the GPU
    padded[: len(part)] = part.detach()
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:k] for o, k in zip(out, sizes)]).to(part.device)


def with_parts_gathered(part: torch.Tensor, n: int) -> torch.Tensor:
    """The whole ``n``-row tensor that the processes computed in parts, with this process's own part still in the
    autograd graph: a loss of the whole batch computed from it is the same number on every process, and its gradient
    reaches this process's parameters through this process's samples only (data parallelism sums the rest)."""
    if accelerator().num_processes == 1:
        return part
    whole, mine = gather_parts(part, n), my_part(n)
    return torch.cat([whole[: mine.start], part, whole[mine.stop :]])


def reset_accelerator() -> None:
    """Forget the process's Accelerator (tests that need a fresh one)."""
    global _ACCELERATOR
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    _ACCELERATOR = None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX-BF16 or AVX512-BF16), where bf16 autocast pays off. Cached:
    :func:`autocast` asks on every batch, and the answer may come from reading /proc/cpuinfo."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        if (amx and amx()) or (avx and avx()):
            return True
    except RuntimeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16`` for ``precision`` in fp32 | bf16 | auto on ``device``.

    ``auto`` picks bf16 only where it was measured faster: CUDA with bf16 support, or a CPU with AMX/AVX512-BF16.
    On an AVX2-only CPU bf16 autocast emulates the arithmetic and ran 5-11x slower than fp32 for the ``cpu`` U-Net
    (``benchmarks/diffusion_speed.py --extras``).
    """
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"unknown precision '{precision}' (known: fp32, bf16, auto)")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` (fp32 | bf16 | auto) resolves to bf16 on ``device``; fp32 otherwise."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
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
