"""The on-disk dataset cache: one safetensors file, written without a second copy in memory and read back either into
RAM or memory-mapped, so a dataset larger than the machine's memory trains from the page cache.

safetensors' own ``save_file`` serialises every tensor to bytes first (twice the dataset in memory) and ``load_file``
reads the whole file. This module writes the same format (8-byte header length, JSON header, one contiguous buffer)
tensor by tensor, and maps the large tensors instead of reading them. Files stay readable by any safetensors reader.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from ..runs import atomic_path
from .base import Splits
from .validate import SPLITS

DTYPES = {torch.uint8: ("U8", np.uint8), torch.int64: ("I64", np.int64), torch.float32: ("F32", np.float32)}
NUMPY = {code: np_type for code, np_type in DTYPES.values()}


def _header(specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], meta: Mapping | None) -> tuple[bytes, dict]:
    """The header bytes of a store holding tensors of these dtypes and shapes, in this order, and each one's byte
    range in the buffer."""
    header: dict = {"__metadata__": {"meta": json.dumps(meta or {})}}
    offset = 0
    for name, (dtype, shape) in specs.items():
        if dtype not in DTYPES:
            raise TypeError(f"{name}: dtype {dtype} is not one the dataset store writes")
        size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPES[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the buffer starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text, {k: v["data_offsets"] for k, v in header.items() if k[:2] != "__"}


def write_store(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
    """Write ``tensors`` as a safetensors file, atomically, each copied straight from its memory into the file."""
    head, _ = _header({k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}, meta)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(head)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))


@contextmanager
def allocated_store(path: str | os.PathLike, specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                    meta: Mapping | None = None) -> Iterator[dict[str, np.ndarray]]:
    """A store of tensors with these dtypes and shapes, given as writable arrays mapped onto the file: a builder
    fills them chunk by chunk, so a dataset larger than memory is never whole in RAM. The file appears at ``path``
    only when the block succeeds."""
    head, offsets = _header(specs, meta)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(head)
            f.truncate(len(head) + max((end for _, end in offsets.values()), default=0))
        arrays = {name: np.memmap(tmp, dtype=DTYPES[dtype][1], mode="r+", offset=len(head) + offsets[name][0],
                                  shape=shape) if offsets[name][1] > offsets[name][0]
                  else np.empty(shape, DTYPES[dtype][1]) for name, (dtype, shape) in specs.items()}
        yield arrays
        for a in arrays.values():
            if isinstance(a, np.memmap):
                a.flush()


def release(array: np.ndarray) -> None:
    """Write the pages of the file mapping under ``array`` (an ``np.memmap`` or a view of one) back to the file and
    drop them from this process: a builder that fills a mapped store chunk by chunk keeps neither its resident memory
    nor the machine's dirty pages growing with the dataset. Reading them again maps them back from the file. An
    array in ordinary memory is left alone."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, mmap.mmap):
        base.flush()
        if hasattr(mmap, "MADV_DONTNEED"):  # a shared file mapping: the data stays in the file and page cache
            base.madvise(mmap.MADV_DONTNEED)


def splits_layout(splits: Splits) -> tuple[dict[str, torch.Tensor], dict]:
    """How :class:`Splits` lie in a dataset cache file (``data.read_splits`` reads them back): every split's tensors
    as ``<split>.images/.labels/.bias``, a further bias attribute as ``<split>.extra_bias.<name>`` (its names, in
    order, in the metadata's ``extra_bias``, present only where a split has some: a dataset without them writes the
    bytes it always wrote), and the metadata (classes, bias count, name, paths)."""
    tensors, meta = {}, {"num_classes": splits.num_classes, "num_bias": splits.num_bias,
                         "class_names": splits.class_names, "name": splits.name, "paths": {}}
    for name in SPLITS:
        s = splits.split(name)
        tensors[f"{name}.images"] = s.images
        tensors[f"{name}.labels"] = s.labels
        if s.bias is not None:
            tensors[f"{name}.bias"] = s.bias
        if s.paths is not None:
            meta["paths"][name] = s.paths
        if s.extra_bias is not None:
            meta.setdefault("extra_bias", {})[name] = list(s.extra_bias)
            for attr, values in s.extra_bias.items():
                tensors[f"{name}.extra_bias.{attr}"] = values
    return tensors, meta


def placeholder_images(n: int, channels: int, side: int) -> torch.Tensor:
    """An (n, C, S, S) uint8 tensor that takes no memory (every element is one zero byte): the images of a
    :class:`Splits` that :func:`write_splits` fills on disk."""
    return torch.zeros((), dtype=torch.uint8).expand(n, channels, side, side)


def write_splits(path: str | os.PathLike, splits: Splits, fill: Callable[[str, np.ndarray], None]) -> None:
    """Write a dataset cache file (:func:`splits_layout`) whose images never are in memory: ``splits`` gives every
    tensor but the images, whose shapes alone count (:func:`placeholder_images`), and ``fill(split, out)`` writes each
    split's images into ``out``, its (N, C, S, S) array mapped onto the new file. The file appears at ``path`` only
    when every split is filled; it is byte for byte what :func:`write_store` writes of the filled splits."""
    tensors, meta = splits_layout(splits)
    with allocated_store(path, {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}, meta) as arrays:
        for name, t in tensors.items():
            if not name.endswith(".images"):
                arrays[name][...] = t.numpy()
        for name in SPLITS:
            fill(name, arrays[f"{name}.images"])


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its buffer starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def read_store(path: str | os.PathLike, mapped: set[str] = frozenset()) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a store and its metadata. Names in ``mapped`` are memory-mapped (copy-on-write: a tensor a
    caller writes to changes its own pages, never the file); the others are read into memory."""
    header, start = read_header(path)
    meta = json.loads(header.pop("__metadata__", {}).get("meta", "{}"))
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            begin, end = info["data_offsets"]
            dtype, shape = NUMPY[info["dtype"]], tuple(info["shape"])
            if name in mapped and end > begin:
                array = np.memmap(path, dtype=dtype, mode="c", offset=start + begin, shape=shape)
            else:
                f.seek(start + begin)
                array = np.frombuffer(bytearray(f.read(end - begin)), dtype=dtype).reshape(shape)
            out[name] = torch.from_numpy(array)
    return out, meta


def fits_in_memory(nbytes: int, share: float = 0.5) -> bool:
    """Whether ``nbytes`` takes at most ``share`` of the machine's physical memory (unknown memory: yes)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return True
    return nbytes <= share * total


def image_bytes(path: str | os.PathLike) -> int:
    """Bytes of the image tensors in a store, from its header alone."""
    header, _ = read_header(path)
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k.endswith(".images"))


