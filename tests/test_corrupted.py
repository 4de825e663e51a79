"""Corrupted CIFAR-10 and Corrupted Fashion-MNIST on files the tests write in the real layouts (no real data)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from diffdebias.config import DataConfig
from diffdebias.data import DatasetError, dataset_key, load_dataset, train_key
from diffdebias.data import corrupted as corrupted_module
from diffdebias.data.corrupted import CIFAR10_FILES, FMNIST_FILES, read_cifar_batch
from diffdebias.data.corruptions import NAMES, corrupt


def structured_images(n: int, size: int, seed: int, grey: bool = False) -> np.ndarray:
    """uint8 (n, size, size, 3): a smooth colour gradient and a bright block, so every corruption has something to
    change (mid-range values, edges, colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        base = 40 + 120 * (yy * rng.uniform(0.3, 1) + xx * rng.uniform(0, 0.5))[..., None] * rng.uniform(0.5, 1, 3)
        r, c = rng.integers(2, size // 2, 2)
        base[r:r + size // 3, c:c + size // 3] = rng.uniform(150, 230, 3)
        out[i] = base.astype(np.uint8)
    return np.repeat(out[..., :1], 3, axis=3) if grey else out


def balanced_labels(per_class: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


class Py2Pickler(pickle._Pickler):
    """What Python 2's cPickle wrote into the real CIFAR-10 batches: str keys and array bytes as BINSTRING (read
    back as latin-1 str), numpy's old ``numpy.core`` module names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_binstring(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        size = bytes([len(data)]) if len(data) < 256 else struct.pack("<i", len(data))
        self.write((pickle.SHORT_BINSTRING if len(data) < 256 else pickle.BINSTRING) + size + data)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_binstring

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_cifar_batch(path, images: np.ndarray, labels: np.ndarray, py2: bool = False) -> None:
    """The python-batch format: a pickled dict, 'data' uint8 (N, 3072) in channel-major order, 'labels' a list.
    Python 3 (protocol 2, bytes keys) or as Python 2 wrote the real files."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1).copy()
    if py2:
        with open(path, "wb") as f:
            Py2Pickler(f, protocol=2).dump({"batch_label": "training batch", "labels": labels.tolist(), "data": data})
        return
    batch = {b"batch_label": b"test batch", b"labels": labels.tolist(), b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar_root(tmp_path):
    """torchvision's cifar-10-batches-py: 5 x 20 training images (the first batch as Python 2 wrote them), 50 test
    images, batches.meta."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = structured_images(100, 32, 0), balanced_labels(10, 0)
    for b in range(5):
        write_cifar_batch(folder / f"data_batch_{b + 1}", train_x[20 * b:20 * b + 20], train_y[20 * b:20 * b + 20],
                          py2=b == 0)
    write_cifar_batch(folder / "test_batch", structured_images(50, 32, 1), balanced_labels(5, 1))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": 20}, f, protocol=2)
    return tmp_path / "cifar"


@pytest.fixture
def fmnist_root(tmp_path, monkeypatch):
    """The four gzipped IDX files of Fashion-MNIST: 600 training and 500 test images; the system folder is hidden."""
    monkeypatch.setattr(corrupted_module, "FMNIST_SYSTEM_DIRS", (tmp_path / "no-system-copy",))
    root = tmp_path / "fmnist"
    root.mkdir()
    for prefix, n, seed in (("train", 60, 2), ("t10k", 50, 3)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", structured_images(10 * n, 28, seed, grey=True)[..., 0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", balanced_labels(n, seed))
    return root


def expected_aligned(n: int, c: int, ratio: float) -> int:
    """LfF's milestones: class c's own value takes the ranks from round(n * c * ratio / 9) to
    round(n * (c * ratio / 9 + 1 - ratio))."""
    before = float(np.cumsum(np.full(c, ratio / 9))[-1]) if c else 0.0
    return int(np.round(n * (before + (1 - ratio))) - np.round(n * before))


def check_split(split, ratio: float) -> None:
    """Exact aligned count per class; the rest spread evenly over the nine other corruptions."""
    for c in range(10):
        in_class = split.labels == c
        n = int(in_class.sum())
        assert int((split.bias[in_class] == c).sum()) == expected_aligned(n, c, ratio)
        others = torch.bincount(split.bias[in_class & (split.bias != c)], minlength=10)
        others = others[torch.arange(10) != c]
        assert int(others.max() - others.min()) <= 1


def check_splits(d, ratio: float, size: int) -> None:
    assert d.num_classes == d.num_bias == 10
    assert d.train.images.shape[1:] == (3, size, size) and d.train.images.dtype == torch.uint8
    check_split(d.train, ratio)
    check_split(d.valid, ratio)
    check_split(d.test, 0.9)  # unbiased: corruptions uniform over the ten


def test_fmnist_builds_lff_splits(fmnist_root):
    cfg = DataConfig(name="corrupted_fmnist", root=str(fmnist_root), conflict_ratio=0.2)
    d = load_dataset(cfg)
    assert (len(d.train), len(d.valid), len(d.test)) == (540, 60, 500)
    assert d.class_names[0] == "T-shirt/top" and d.name == "corrupted_fmnist"
    check_splits(d, 0.2, 28)
    for c in range(10):  # test: 50 per class, each corruption exactly 5 times
        assert torch.bincount(d.test.bias[d.test.labels == c], minlength=10).tolist() == [5] * 10
    # an image with a given corruption is the same at another ratio (its generator is keyed by its index)
    other = load_dataset(DataConfig(name="corrupted_fmnist", root=str(fmnist_root), conflict_ratio=0.05))
    assert torch.equal(other.train.labels, d.train.labels)
    same = other.train.bias == d.train.bias
    assert 0 < int(same.sum()) < len(same) and torch.equal(other.train.images[same], d.train.images[same])
    assert not torch.equal(other.train.images[~same], d.train.images[~same])
    # the cache key follows the files' content, and the training split's key ignores the valid order
    key = dataset_key(cfg)
    shuffled = DataConfig(name="corrupted_fmnist", root=str(fmnist_root), conflict_ratio=0.2,
                          valid_bias_order="dataset")
    assert train_key(shuffled) == train_key(cfg) and dataset_key(shuffled) != key
    write_idx(fmnist_root / "t10k-labels-idx1-ubyte.gz", balanced_labels(50, 9))
    assert dataset_key(cfg) != key


def test_cifar_builds_from_python_batches(cifar_root):
    for b in (1, 2):  # Python 2's format and Python 3's
        x, y = read_cifar_batch(cifar_root / "cifar-10-batches-py" / f"data_batch_{b}")
        assert x.shape == (20, 32, 32, 3) and np.array_equal(x, structured_images(100, 32, 0)[20 * b - 20:20 * b])
        assert y.tolist() == balanced_labels(10, 0)[20 * b - 20:20 * b].tolist()
    for root in (cifar_root, cifar_root / "cifar-10-batches-py"):  # the torchvision root, or the folder itself
        d = load_dataset(DataConfig(name="corrupted_cifar10", root=str(root), conflict_ratio=0.1))
        assert (len(d.train), len(d.valid), len(d.test)) == (90, 10, 50)
        check_splits(d, 0.1, 32)
        assert d.class_names[9] == "truck"


@pytest.mark.parametrize("kind", range(len(NAMES)))
def test_corruption_changes_the_image_and_is_deterministic(kind):
    for size, grey in ((32, False), (28, True)):
        images = structured_images(3, size, 5, grey=grey)
        rngs = [np.random.default_rng([7, 0, i]) for i in range(3)]
        out = corrupt(images, kind, rngs)
        assert out.shape == images.shape and out.dtype == np.uint8
        for i in range(3):
            changed = (out[i] != images[i]).any(axis=2).mean()
            assert changed > 0.01, f"{NAMES[kind]} leaves a {size} px image almost unchanged"
            again = corrupt(images[i:i + 1], kind, [np.random.default_rng([7, 0, i])])  # alone, same generator
            assert np.array_equal(again[0], out[i])
        if NAMES[kind] in ("snow", "frost", "fog", "spatter", "elastic"):  # random: another generator differs
            assert not np.array_equal(corrupt(images, kind, [np.random.default_rng([8, 0, i]) for i in range(3)]), out)


def test_cifar_unpickler_refuses_code(cifar_root, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = cifar_root / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DatasetError, match="data_batch_3.*system"):
        load_dataset(DataConfig(name="corrupted_cifar10", root=str(cifar_root)))
    assert not marker.exists()


def test_missing_sources_name_where_they_looked(tmp_path, monkeypatch):
    system = tmp_path / "no-system-copy"
    monkeypatch.setattr(corrupted_module, "FMNIST_SYSTEM_DIRS", (system,))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset(DataConfig(name="corrupted_fmnist", root=str(empty)))
    msg = str(e.value)
    assert str(empty) in msg and str(system) in msg and str(empty / "FashionMNIST" / "raw") in msg
    assert all(f in msg for f in FMNIST_FILES)
    with pytest.raises(DatasetError) as e:
        load_dataset(DataConfig(name="corrupted_cifar10", root=str(empty)))
    msg = str(e.value)
    assert str(empty / "cifar-10-batches-py") in msg and all(f in msg for f in CIFAR10_FILES)
    with pytest.raises(DatasetError, match="data.root is not set"):
        load_dataset(DataConfig(name="corrupted_cifar10"))


def test_fmnist_torchvision_raw_folder(fmnist_root, tmp_path):
    """torchvision's FashionMNIST/raw under data.root, uncompressed files."""
    root = tmp_path / "tv"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FMNIST_FILES:
        (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress((fmnist_root / name).read_bytes()))
    assert corrupted_module.fmnist_files(DataConfig(name="corrupted_fmnist", root=str(root)))[0].parent == raw
