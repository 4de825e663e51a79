"""Shared fixtures: tiny datasets the tests make themselves (no download, no real MNIST needed)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from diffdebias.devices import reset_accelerator


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 28x28 'digits': class c lights up a class-specific block pattern, as float32 multiples of 1/256."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 4)
        images[i, 2 + 8 * r : 8 + 8 * r, 2 + 6 * col : 8 + 6 * col] = rng.integers(150, 256) / 256
        images[i, 12:16, 4:24] = rng.integers(60, 120) / 256  # a shared stroke
    return images.reshape(n, 784), labels.astype(np.int64)


@pytest.fixture
def fake_mnist(tmp_path):
    """A mnist.pkl.gz with the classic (train, val, test) layout and 1,200 / 300 / 400 images."""
    parts = [fake_digits(n, s) for n, s in ((1200, 0), (300, 1), (400, 2))]
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(parts), f)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """A generic dataset: 60 coloured 12x12 PNGs in 3 classes, with a bias column (colour) and no split column."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    rows = ["path,label,bias"]
    for i in range(60):
        y = i % 3
        b = y if rng.random() < 0.9 else (y + 1) % 3
        img = np.zeros((12, 12, 3), dtype=np.uint8)
        img[2 + 3 * y : 5 + 3 * y, 2:10] = colors[b]
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append(f"{i}.png,{['cat', 'dog', 'owl'][y]},{b}")
    csv = tmp_path / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv, root


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own dataset cache, a fresh accelerate state, and one thread: the models are tiny, and two
    OpenMP threads spin-wait badly when other processes share the cores."""
    monkeypatch.setenv("DIFFDEBIAS_CACHE", str(tmp_path / "cache"))
    reset_accelerator()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    reset_accelerator()
