"""Datasets are validated when built (and when read from the cache), and the cache key covers the images."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffdebias.config import DataConfig
from diffdebias.data import (
    DatasetError,
    ImageSet,
    Splits,
    _save,
    cache_dir,
    dataset_key,
    generic,
    load_dataset,
    validate_splits,
)
from diffdebias.data.generic import files_identity, load_csv_dataset, resolve_files
from diffdebias.data.mnist import load_mnist


def write_csv(root, lines, name="bad.csv"):
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def with_split(n, split_of):
    """Rows of the fixture's first ``n`` images (label i % 3), the split of each given by ``split_of(i)``."""
    return ["path,label,split"] + [f"{i}.png,{['cat', 'dog', 'owl'][i % 3]},{split_of(i)}" for i in range(n)]


def assert_error(csv, match, root=None, **kwargs):
    with pytest.raises(DatasetError) as e:
        load_csv_dataset(csv, root or csv.parent, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(csv) in msg
    for m in [match] if isinstance(match, str) else match:
        assert m in msg, msg
    return msg


def test_no_test_split(image_folder):
    _, root = image_folder
    csv = write_csv(root, with_split(30, lambda i: "valid" if i >= 24 else "train"))
    assert_error(csv, ["the test split is empty", "no row has split=test", "add rows with split=test",
                       "drop the split column", "data.valid_fraction/data.test_fraction"])


def test_no_valid_split(image_folder):
    _, root = image_folder
    csv = write_csv(root, with_split(30, lambda i: "test" if i >= 24 else "train"))
    assert_error(csv, ["the valid split is empty", "split=valid"])


def test_seeded_split_too_small(image_folder):
    _, root = image_folder
    csv = write_csv(root, ["path,label"] + [f"{i}.png,{['cat', 'dog', 'owl'][i % 3]}" for i in range(9)])
    # three images per class: round(3 * 0.2) = 1 to test, round(2 * 0.1) = 0 to valid
    assert_error(csv, ["the valid split is empty", "too few images per class", "data.valid_fraction",
                       "smallest class: 3 images"])
    assert load_csv_dataset(csv, root, valid_fraction=0.5).valid.labels.numel() == 3
    assert_error(csv, ["the test split is empty", "data.test_fraction is 0.0: raise it"], test_fraction=0.0,
                 valid_fraction=0.5)


def test_single_class(image_folder):
    _, root = image_folder
    csv = write_csv(root, ["path,label"] + [f"{i}.png,cat" for i in range(20)])
    assert_error(csv, ["every row has label 'cat'", "at least two classes"])


def test_duplicated_row(image_folder):
    _, root = image_folder
    lines = ["path,label"] + [f"{i}.png,{i % 3}" for i in range(30)]
    lines.append("4.png,1")  # row 32 repeats row 6
    assert_error(write_csv(root, lines), ["rows 6 and 32", "'4.png'", "listed twice"])


def test_same_path_two_labels(image_folder):
    _, root = image_folder
    lines = ["path,label"] + [f"{i}.png,{['cat', 'dog', 'owl'][i % 3]}" for i in range(30)]
    lines[3] = "5.png,cat"  # row 4 lists the image of row 7 (a 'owl') as a cat
    assert_error(write_csv(root, lines), ["rows 4 and 7", "'5.png'", "two different labels", "'cat' (row 4)",
                                          "'owl' (row 7)"])


def test_dot_slash_is_the_same_file(image_folder):
    _, root = image_folder
    lines = ["path,label"] + [f"{i}.png,{i % 3}" for i in range(30)]
    lines.append("./2.png,2")
    assert_error(write_csv(root, lines), ["rows 4 and 32", "'2.png' (row 4) and './2.png' (row 32)", "listed twice"])
    lines[-1] = "sub/../2.png,2"
    (root / "sub").mkdir()
    assert_error(write_csv(root, lines), ["rows 4 and 32", "listed twice"])


def test_image_in_two_splits(image_folder):
    _, root = image_folder
    lines = with_split(30, lambda i: "test" if i >= 24 else "valid" if i >= 18 else "train")
    lines.append("0.png,cat,test")
    assert_error(write_csv(root, lines), ["rows 2 and 32", "'0.png'", "in one split"])


def test_validate_splits_checks_cached_tensors():
    def part(n, paths=None, labels=None):
        return ImageSet(torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
                        torch.arange(n) % 2 if labels is None else labels, None, paths)

    ok = Splits(part(4, ["a", "b", "c", "d"]), part(2, ["e", "f"]), part(2, ["g", "h"]), 2, 0, ["x", "y"])
    validate_splits(ok, "here")
    with pytest.raises(DatasetError, match="here: image c is listed in both the train and test splits"):
        validate_splits(Splits(ok.train, ok.valid, part(2, ["g", "c"]), 2, 0), "here")
    with pytest.raises(DatasetError, match="here: the valid split is empty; give the valid split images"):
        validate_splits(Splits(ok.train, part(0, []), ok.test, 2, 0), "here")
    with pytest.raises(DatasetError, match="only 1 class"):
        validate_splits(Splits(part(2, labels=torch.zeros(2, dtype=torch.long)), ok.valid, ok.test, 1, 0), "here")
    with pytest.raises(DatasetError, match="class 'y' \\(label 1\\) has no training sample"):
        validate_splits(Splits(part(2, labels=torch.zeros(2, dtype=torch.long)), ok.valid, ok.test, 2, 0, ["x", "y"]),
                        "here")


def test_old_cache_is_validated_too(fake_mnist, tmp_path):
    cfg = DataConfig(name="cmnist", mnist_path=str(fake_mnist))
    d = load_dataset(cfg)
    (path,) = cache_dir(cfg).glob("cmnist-*.safetensors")
    empty = ImageSet(d.test.images[:0], d.test.labels[:0], d.test.bias[:0])
    _save(path, Splits(d.train, d.valid, empty, d.num_classes, d.num_bias, d.class_names, name=d.name))
    with pytest.raises(DatasetError, match=f"cmnist dataset \\(data.mnist_path={fake_mnist}\\): the test split is"):
        load_dataset(cfg)


def test_decompression_bomb(image_folder, monkeypatch):
    csv, root = image_folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 12x12 images stay under it
    Image.new("RGB", (40, 40), (1, 2, 3)).save(root / "7.png")  # 1600 px: over the limit, under twice it: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = load_csv_dataset(csv, root, image_size=12)
    assert len(d.train) + len(d.valid) + len(d.test) == 60
    Image.new("RGB", (50, 50), (1, 2, 3)).save(root / "7.png")  # 2500 px: over twice the limit, an error
    msg = assert_error(csv, ["row 9: image", "7.png", "too large to decode safely"], root,
                       image_size=12)
    assert "MAX_IMAGE_PIXELS" in msg


@pytest.mark.parametrize("size", [-4, 0])
def test_bad_image_size_names_the_field(image_folder, size):
    csv, root = image_folder
    with pytest.raises(DatasetError, match=f"data.csv: data.image_size must be a positive side in pixels.*got {size}"
                       ) as e:
        load_dataset(DataConfig(name="csv", csv=str(csv), root=str(root), image_size=size))
    assert "row" not in str(e.value)  # no image is blamed


def test_missing_image_in_key_names_the_row(image_folder):
    csv, root = image_folder
    (root / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"data.csv, row 5: image file not found: .*3.png"):
        dataset_key(DataConfig(name="csv", csv=str(csv), root=str(root)))


def pixels_of(d, name):
    for part in (d.train, d.valid, d.test):
        if name in part.paths:
            return part.images[part.paths.index(name)]
    raise KeyError(name)


def test_overwritten_image_rebuilds(image_folder):
    csv, root = image_folder
    cfg = DataConfig(name="csv", csv=str(csv), root=str(root))
    before = dataset_key(cfg)
    d = load_dataset(cfg)
    new = np.full((12, 12, 3), 77, dtype=np.uint8)
    Image.fromarray(new).save(root / "5.png")
    assert dataset_key(cfg) != before
    assert torch.equal(pixels_of(load_dataset(cfg), "5.png"), torch.from_numpy(new).permute(2, 0, 1))
    assert not torch.equal(pixels_of(d, "5.png"), pixels_of(load_dataset(cfg), "5.png"))


def test_overwrite_with_same_size_and_mtime(image_folder, monkeypatch):
    csv, root = image_folder
    Image.open(root / "5.png").save(root / "5.png", compress_level=0)  # uncompressed: the size depends on the shape
    cfg = DataConfig(name="csv", csv=str(csv), root=str(root))
    st = (root / "5.png").stat()
    before = dataset_key(cfg)
    load_dataset(cfg)
    os.utime(root / "5.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touch keeps the bytes, and the key
    assert dataset_key(cfg) == before
    new = np.full((12, 12, 3), 200, dtype=np.uint8)
    Image.fromarray(new).save(root / "5.png", compress_level=0)
    os.utime(root / "5.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (root / "5.png").stat().st_size == st.st_size
    assert dataset_key(cfg) != before  # the small dataset is content-hashed
    assert torch.equal(pixels_of(load_dataset(cfg), "5.png"), torch.from_numpy(new).permute(2, 0, 1))
    # above the content limit only size and mtime count: a new mtime changes the key, the restored one does not
    monkeypatch.setattr(generic, "HASH_CONTENT_LIMIT", 0)
    files = resolve_files(generic.read_rows(csv), root, str(csv))
    by_stat = files_identity(files)
    assert by_stat["by"] == "size+mtime"
    os.utime(root / "5.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert files_identity(files) != by_stat
    os.utime(root / "5.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files_identity(files) == by_stat


def test_missing_mnist_path_is_an_error(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr("diffdebias.data.mnist.offline_package_file", lambda: called.append(1))
    missing = tmp_path / "nope" / "mnist.pkl.gz"
    cfg = DataConfig(name="cmnist", mnist_path=str(missing))
    for action in (lambda: load_dataset(cfg), lambda: dataset_key(cfg), lambda: load_mnist(str(missing))):
        with pytest.raises(DatasetError, match=f"data.mnist_path={missing}: no such file or folder"):
            action()
    assert not called  # never falls back to the bundled MNIST


def test_unreadable_mnist_path_is_an_error(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(b"not a gzip file")
    with pytest.raises(DatasetError, match=f"data.mnist_path={bad}: cannot be read as MNIST") as e:
        load_dataset(DataConfig(name="cmnist", mnist_path=str(bad)))
    assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match=f"data.mnist_path={tmp_path}: cannot be read as MNIST"):
        load_mnist(str(tmp_path))  # a folder without torchvision's MNIST files


def test_replaced_mnist_file_changes_the_key(fake_mnist):
    cfg = DataConfig(name="cmnist", mnist_path=str(fake_mnist))
    before = dataset_key(cfg)
    st = fake_mnist.stat()
    os.utime(fake_mnist, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert dataset_key(cfg) != before
    assert dataset_key(DataConfig(name="cmnist")) == dataset_key(DataConfig(name="cmnist"))  # bundled: no stat
