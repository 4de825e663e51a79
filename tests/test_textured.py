"""Textured MNIST: the LfF protocol of Colored MNIST with ten background textures as the bias, on the fake MNIST of
conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdebias.cli import main
from diffdebias.config import DataConfig, load_config
from diffdebias.data import SOURCES, DatasetError, dataset_key, load_dataset, train_key
from diffdebias.data import textured as textured_module
from diffdebias.data.mnist import load_pkl_gz
from diffdebias.data.textured import LEVEL, NAMES, render_textured
from test_corrupted import check_split

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# phase-invariant features: mean absolute difference between background pixels (dy, dx) apart, over a half-plane
LAGS = [(dy, dx) for dy in range(8) for dx in range(-7, 8) if (dy, dx) > (0, 0)]


def config(fake_mnist, **kwargs) -> DataConfig:
    return DataConfig(name="textured_mnist", mnist_path=str(fake_mnist), **kwargs)


def background_features(images: torch.Tensor, grey: np.ndarray) -> np.ndarray:
    """(N, 1 + len(LAGS)): the mean background level and, for each lag, the mean absolute difference between two
    background pixels that far apart. The digit's pixels (``grey`` > 0) take no part."""
    x = images[:, 0].numpy().astype(np.float64) / 255
    bg = grey == 0
    out = [(x * bg).sum((1, 2)) / bg.sum((1, 2))]
    for dy, dx in LAGS:
        a = np.s_[:, :28 - dy, max(0, -dx):28 - max(0, dx)]
        b = np.s_[:, dy:, max(0, dx):28 - max(0, -dx)]
        both = bg[a] & bg[b]
        out.append((np.abs(x[a] - x[b]) * both).sum((1, 2)) / np.maximum(both.sum((1, 2)), 1))
    return np.stack(out, 1)


def nearest_mean_accuracy(features: np.ndarray, bias: np.ndarray) -> float:
    """Class means of the textures on the even images, accuracy of the nearest mean on the odd ones (the bias values
    run in dataset order within each class: a first half would miss some)."""
    half = np.arange(len(bias)) % 2 == 0
    means = np.stack([features[half & (bias == k)].mean(0) for k in range(10)])
    pred = ((features[~half, None] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == bias[~half]).mean())


def test_builds_lff_splits(fake_mnist):
    cfg = config(fake_mnist, conflict_ratio=0.2)
    d = load_dataset(cfg)
    assert (len(d.train), len(d.valid), len(d.test)) == (1350, 150, 400)
    assert d.name == "textured_mnist" and d.class_names == [str(i) for i in range(10)]
    assert d.num_classes == d.num_bias == 10
    for split in (d.train, d.valid, d.test):
        assert split.images.shape[1:] == (3, 28, 28) and split.images.dtype == torch.uint8
        assert torch.equal(split.images[:, 0], split.images[:, 1]) and torch.equal(split.images[:, 0],
                                                                                    split.images[:, 2])  # grey
    check_split(d.train, 0.2)  # exact aligned counts per class, the rest spread evenly over the nine others
    check_split(d.valid, 0.2)
    check_split(d.test, 0.9)  # unbiased: textures uniform over the ten
    for c in range(10):  # every class over all ten textures, as evenly as its count allows
        per_texture = torch.bincount(d.test.bias[d.test.labels == c], minlength=10)
        assert int(per_texture.max() - per_texture.min()) <= 1
    # the test split is MNIST's test file in order, each digit over its texture: the stroke stays on top
    grey = load_pkl_gz(fake_mnist).test_images
    out = d.test.images[:, 0]
    assert torch.all(out >= grey) and int(out[grey == 0].max()) <= round(255 * LEVEL)
    assert torch.equal(out[grey == 255], grey[grey == 255])
    # deterministic: built again from nothing, the same tensors
    again = SOURCES["textured_mnist"].build(cfg)
    for name in ("train", "valid", "test"):
        assert torch.equal(again.split(name).images, d.split(name).images)
        assert torch.equal(again.split(name).bias, d.split(name).bias)
    # an image with a given texture is the same at another ratio (its generator is keyed by its index)
    other = load_dataset(config(fake_mnist, conflict_ratio=0.05))
    assert torch.equal(other.train.labels, d.train.labels)
    same = other.train.bias == d.train.bias
    assert 0 < int(same.sum()) < len(same) and torch.equal(other.train.images[same], d.train.images[same])
    assert not torch.equal(other.train.images[~same], d.train.images[~same])
    assert torch.equal(other.test.images, d.test.images)  # the test split does not depend on the ratio
    # another data.seed draws other phases
    reseeded = load_dataset(config(fake_mnist, conflict_ratio=0.2, seed=1))
    assert torch.equal(reseeded.test.bias, d.test.bias) and not torch.equal(reseeded.test.images, d.test.images)


def test_identity(fake_mnist):
    cfg = config(fake_mnist)
    key = dataset_key(cfg)
    assert key != dataset_key(DataConfig(name="cmnist", mnist_path=str(fake_mnist)))
    dataset_order = config(fake_mnist, valid_bias_order="dataset")
    assert train_key(dataset_order) == train_key(cfg) and dataset_key(dataset_order) != key
    assert dataset_key(config(fake_mnist, color_std=0.1)) == key  # a Colored MNIST field: not read
    assert SOURCES["textured_mnist"].identity(cfg)["version"] == textured_module.VERSION
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset(config(fake_mnist, image_size=32))


def test_phase_varies_per_image():
    grey = np.zeros((80, 28, 28), dtype=np.uint8)
    bias = np.repeat(np.arange(10), 8)
    seeds = np.stack([np.zeros(80, int), np.zeros(80, int), np.arange(80)], 1)
    out = render_textured(grey, bias, seeds)
    assert out.shape == (80, 3, 28, 28) and out.dtype == np.uint8 and out.max() <= round(255 * LEVEL)
    for k in range(10):  # eight images with the same texture: not all at one phase
        assert len({out[i].tobytes() for i in range(8 * k, 8 * k + 8)}) > 1, NAMES[k]
        assert out[8 * k].std() > 10, f"{NAMES[k]} is nearly flat"
    assert np.array_equal(render_textured(grey[:1], bias[:1], seeds[:1]), out[:1])  # alone, the same


def test_textures_are_told_apart_from_background_pixels(fake_mnist, monkeypatch):
    """A nearest-mean classifier on phase-invariant statistics of the background pixels alone separates the ten
    textures of the test split; with two textures made the same, it cannot."""
    grey = load_pkl_gz(fake_mnist).test_images.numpy()  # the test split is MNIST's test file in order
    d = load_dataset(config(fake_mnist))
    bias = d.test.bias.numpy()
    assert nearest_mean_accuracy(background_features(d.test.images, grey), bias) > 0.95
    seeds = np.stack([np.zeros(len(bias), int), np.ones(len(bias), int), np.arange(len(bias))], 1)
    assert np.array_equal(render_textured(grey, bias, seeds), d.test.images.numpy())
    coinciding = (*textured_module.TEXTURES[:9], textured_module.TEXTURES[8])  # grid drawn as blobs
    monkeypatch.setattr(textured_module, "TEXTURES", coinciding)
    same = torch.from_numpy(render_textured(grey, bias, seeds))
    assert nearest_mean_accuracy(background_features(same, grey), bias) <= 0.95


def test_configs_are_the_cmnist_ones_but_for_the_dataset():
    for name, method in (("erm", "erm"), ("ddb_cmnist_settings", "ddb")):
        path = CONFIGS / "textured_mnist" / f"{name}.yaml"
        assert path.read_text().startswith("#")
        cfg, reference = load_config(path), load_config(CONFIGS / "cmnist" / f"{method}.yaml")
        assert cfg.data.name == "textured_mnist" and cfg.method == method
        cfg.name, cfg.data.name = reference.name, reference.data.name
        assert cfg == reference


def test_the_ddb_config_drops_only_the_colour_priors():
    """textured_mnist/ddb.yaml is Colored MNIST's DDB config with the two choices its comment names changed: the
    diffusion model at the images' size, a ResNet-8 amplifier without flips (and no reference amplifiers)."""
    cfg = load_config(CONFIGS / "textured_mnist" / "ddb.yaml")
    reference = load_config(CONFIGS / "cmnist" / "ddb.yaml", [
        "data.name=textured_mnist", "diffusion.image_size=0", "diffusion.steps=2000", "sampling.steps=20",
        "amplifier.arch=resnet8", "amplifier.epochs=100", "amplifier.batch_size=64", "amplifier.weight_decay=0",
        "amplifier.flip=false", "ddb.references=false"])
    reference.name = cfg.name
    assert cfg == reference


def test_one_epoch_erm_run(tmp_path, fake_mnist):
    out = tmp_path / "run"
    assert main(["run", str(CONFIGS / "textured_mnist" / "erm.yaml"), "--out", str(out), "--quiet",
                 "--set", f"data.mnist_path={fake_mnist}", "--set", "classifier.epochs=1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "textured_mnist"
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["unbiased_accuracy"] <= 1.0
