"""Corrupted CIFAR-10 and Corrupted Fashion-MNIST: LfF's type-0 corruptions as the bias (data/corruptions.py).

Corruption k goes with class k, in :data:`~.corruptions.NAMES` order; train, valid and the unbiased test split follow
the LfF protocol of Colored MNIST (:func:`~.protocol.build_biased_splits`). Each image's corruption draws from its
own ``np.random.default_rng([data.seed, source, index])`` (source 0 for the training file, 1 for the test file, the
index in that file), so an image with a given corruption is the same at every conflict ratio and in either split.

- ``corrupted_cifar10``: the python batches of torchvision's ``cifar-10-batches-py`` folder, at ``data.root`` or in
  it; 32 x 32 RGB. The batches are pickles, read with an unpickler that rebuilds numpy arrays and plain containers
  only (:class:`~.mnist.ArrayUnpickler`).
- ``corrupted_fmnist``: the four IDX files of Fashion-MNIST, looked for in ``data.root``, then in
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), then in ``data.root/FashionMNIST/raw``
  (torchvision); gzipped or not. The grey images are made RGB by repeating the channel and kept at 28 x 28.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from .base import DatasetError, Splits
from .generic import files_identity
from .mnist import ArrayUnpickler, read_idx
from .protocol import build_biased_splits

VERSION = 1  # bump when the corruptions or the build change what a config's images are

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz")
FMNIST_SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)  # Debian's dataset-fashion-mnist


def _not_found(name: str, looked: list[tuple[Path, str]], files: tuple[str, ...], hint: str) -> DatasetError:
    where = "\n".join(f"  {folder}{'   (' + why + ')' if why else ''}" for folder, why in looked)
    return DatasetError(f"{name}: source files not found. Looked in:\n{where or '  (nowhere: data.root is not set)'}\n"
                        f"for the files: {', '.join(files)}\n{hint}")


def _root(cfg: DataConfig) -> Path | None:
    return Path(cfg.root).expanduser() if cfg.root else None


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name``, or the same file uncompressed (torchvision keeps both in its raw folder)."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def cifar10_files(cfg: DataConfig) -> list[Path]:
    root = _root(cfg)
    looked = [] if root is None else [(root, "data.root"), (root / "cifar-10-batches-py", "")]
    for folder, _ in looked:
        if all((folder / f).is_file() for f in CIFAR10_FILES):
            return [folder / f for f in CIFAR10_FILES]
    raise _not_found("corrupted_cifar10", looked, CIFAR10_FILES,
                     "set data.root to torchvision's cifar-10-batches-py folder (or the folder holding it), from "
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")


def fmnist_files(cfg: DataConfig) -> list[Path]:
    root = _root(cfg)
    looked = [] if root is None else [(root, "data.root")]
    looked += [(d, "Debian's dataset-fashion-mnist") for d in FMNIST_SYSTEM_DIRS]
    if root is not None:
        looked.append((root / "FashionMNIST" / "raw", "torchvision"))
    for folder, _ in looked:
        found = [_find(folder, f) for f in FMNIST_FILES]
        if all(found):
            return found
    raise _not_found("corrupted_fmnist", looked, FMNIST_FILES,
                     "install them with `apt-get install dataset-fashion-mnist`, or set data.root to a folder that "
                     "holds them (gzipped or not)")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch -> (N, 32, 32, 3) uint8 images and (N,) labels; anything else in the pickle than
    numpy arrays and plain containers is refused before it runs, and a malformed batch is a :class:`DatasetError`."""
    try:
        with open(path, "rb") as f:
            batch = ArrayUnpickler(f, what=str(path), encoding="latin1").load()
        if not isinstance(batch, dict):
            raise ValueError(f"it holds a {type(batch).__name__}, not a dict")
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise ValueError(f"it has no 'data' and 'labels' (keys: {', '.join(map(str, batch))})")
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ValueError(f"its data is {data.dtype} {data.shape} for {len(labels)} labels, not uint8 (N, 3072)")
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same error, naming the file
        raise DatasetError(f"{path}: cannot be read as a CIFAR-10 python batch: {e}") from e
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _load_cifar10(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(f) for f in files]
    train_x, train_y = (np.concatenate(v) for v in zip(*parts[:5]))
    return train_x, train_y, *parts[5]


def _load_fmnist(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for f in files:
        try:
            arrays.append(read_idx(f))
        except (OSError, ValueError, EOFError) as e:
            raise DatasetError(f"{f}: cannot be read as a Fashion-MNIST IDX file: {e}") from e
    train_x, train_y, test_x, test_y = arrays
    for x, y, what in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"Fashion-MNIST {what} files hold images {x.shape} and labels {y.shape}, not "
                               f"(N, 28, 28) and (N,)")
    rgb = [np.repeat(x[..., None], 3, axis=3) for x in (train_x, test_x)]
    return rgb[0], train_y.astype(np.int64), rgb[1], test_y.astype(np.int64)


DATASETS = {  # data.name -> (find the files, read them, class names)
    "corrupted_cifar10": (cifar10_files, _load_cifar10, CIFAR10_CLASSES),
    "corrupted_fmnist": (fmnist_files, _load_fmnist, FMNIST_CLASSES),
}


def _check_size(cfg: DataConfig, name: str) -> None:
    native = 32 if name == "corrupted_cifar10" else 28
    if cfg.image_size not in (None, native):
        raise DatasetError(f"{name}: data.image_size={cfg.image_size}, but its images stay at their own "
                           f"{native} x {native} (the corruptions' constants are for that size): unset it")


def _train_identity(cfg: DataConfig, name: str) -> dict:
    _check_size(cfg, name)
    files = DATASETS[name][0](cfg)
    return {
        "name": name,
        "conflict_ratio": cfg.conflict_ratio,
        "valid_fraction": cfg.valid_fraction,
        "seed": cfg.seed,
        "folder": str(files[0].parent.resolve()),
        "source_files": files_identity(files, name),
        "version": VERSION,
    }


def _build(cfg: DataConfig, name: str) -> Splits:
    from .corruptions import corrupt_all

    _check_size(cfg, name)
    find, load, classes = DATASETS[name]
    train_x, train_y, test_x, test_y = load(find(cfg))
    for labels, what in ((train_y, "training"), (test_y, "test")):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(f"{name}: {what} labels outside 0..{len(classes) - 1}")
    images = {"train": (0, train_x), "test": (1, test_x)}

    def render(source: str, index: torch.Tensor, bias: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        source_id, pool = images[source]
        idx = index.numpy()
        seeds = np.stack([np.full(len(idx), cfg.seed), np.full(len(idx), source_id), idx], axis=1)
        out = corrupt_all(pool[idx], bias.numpy(), seeds)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    return build_biased_splits(torch.from_numpy(train_y), torch.from_numpy(test_y), render, cfg.conflict_ratio,
                               cfg.valid_fraction, cfg.seed, cfg.valid_bias_order, list(classes), name)


def functions(name: str) -> tuple[Callable[[DataConfig], dict], Callable[[DataConfig], Splits],
                                  Callable[[DataConfig], dict]]:
    """``(identity, build, train_identity)`` of ``name`` (a :data:`DATASETS` key), for its ``data.Source``; the
    training split's identity leaves out how the valid split's bias values are ordered."""

    def train_identity(cfg: DataConfig) -> dict:
        return _train_identity(cfg, name)

    def identity(cfg: DataConfig) -> dict:
        return {**_train_identity(cfg, name), "valid_bias_order": cfg.valid_bias_order}

    def build(cfg: DataConfig) -> Splits:
        return _build(cfg, name)

    return identity, build, train_identity
