import pytest
import torch
from PIL import Image

from diffdebias.config import DataConfig
from diffdebias.data import DatasetError, load_dataset
from diffdebias.data.generic import load_csv_dataset


def test_loads_class_names_bias_and_seeded_split(image_folder):
    csv, root = image_folder
    d = load_csv_dataset(csv, root, seed=3)
    assert d.class_names == ["cat", "dog", "owl"]
    assert len(d.train) + len(d.valid) + len(d.test) == 60
    assert len(d.test) == 12  # 20 % of each class of 20
    assert d.train.images.shape[1:] == (3, 12, 12)
    assert d.num_bias == 3
    again = load_csv_dataset(csv, root, seed=3)
    assert again.train.paths == d.train.paths
    other = load_csv_dataset(csv, root, seed=4)
    assert other.train.paths != d.train.paths


def test_resizes_any_image_size(image_folder):
    csv, root = image_folder
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "0.png")
    with pytest.raises(DatasetError, match="row 2: image size"):
        load_csv_dataset(csv, root)
    d = load_csv_dataset(csv, root, image_size=8)
    assert d.train.images.shape[1:] == (3, 8, 8)


def write(tmp_path, text, name="bad.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "rows,message",
    [
        ("path,label\nmissing.png,0\n", "row 2: image file not found"),
        ("path,label\n0.png,0\nnotimage.png,1\n", "row 3: unreadable image"),
        ("path,label\n0.png,0\n1.png,1.5\n", "row 3: label '1.5'"),
        ("path,label\n0.png,0\n1.png,dog\n", "row 3: label 'dog' is not an integer"),
        ("path,label\n../outside.png,0\n", "row 2: path '../outside.png' escapes the image root"),
        ("path,label\n0.png,\n", "row 2: empty 'label'"),
        ("path,label,split\n0.png,0,train\n1.png,1,training\n", "row 3: split 'training'"),
        ("path,label,split\n0.png,0,train\n1.png,1,test\n", "class '1' (label 1) has no training sample"),
        ("file,label\n0.png,0\n", "missing required column(s) path"),
    ],
)
def test_csv_errors_name_the_row(image_folder, rows, message):
    csv, root = image_folder
    (root / "notimage.png").write_text("this is not a png")
    (root.parent / "outside.png").write_bytes((root / "0.png").read_bytes())
    bad = write(root, rows)
    with pytest.raises(DatasetError) as e:
        load_csv_dataset(bad, root)
    assert message in str(e.value)
    assert "bad.csv" in str(e.value)


def test_dataset_config_and_cache(image_folder):
    csv, root = image_folder
    cfg = DataConfig(name="csv", csv=str(csv), root=str(root))
    d = load_dataset(cfg)
    d2 = load_dataset(cfg)
    assert d.fingerprint == d2.fingerprint
    assert torch.equal(d.test.images, d2.test.images)
    assert d2.train.paths == d.train.paths
    with pytest.raises(DatasetError, match="data.csv"):
        load_dataset(DataConfig(name="csv"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset(DataConfig(name="imagenet"))
