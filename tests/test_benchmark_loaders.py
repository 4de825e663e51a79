"""The loaders of the published benchmarks (Waterbirds, CelebA, BFFHQ, BAR, Dogs & Cats), each on a small tree the
test writes in the public on-disk layout: counts per split, class and bias; aligned = the majority cells; errors that
print the expected tree; and one-epoch runs from the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffdebias.cli import main
from diffdebias.config import DataConfig
from diffdebias.data import DatasetError, dataset_key, load_dataset
from diffdebias.evaluation.metrics import HEADLINE_METRICS

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male "
    "Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()


def image(path: Path, label: int, bias: int = 0, size: tuple[int, int] = (8, 8)) -> None:
    """A tiny image whose left half shows the label and right half the bias (so a model can learn either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:, : size[0] // 2, label % 3] = 60 + 50 * label
    arr[:, size[0] // 2 :, (bias + 1) % 3] = 200
    Image.fromarray(arr).save(path)


def counts(s) -> dict:
    """Size, per class, and per (label, bias) cell of a split."""
    out = {"n": len(s), "per_class": torch.bincount(s.labels, minlength=2).tolist()}
    if s.bias is not None:
        out["cells"] = torch.bincount(2 * s.labels + s.bias, minlength=4).tolist()
    return out


# ---------------------------------------------------------------------------------------------------------- fixtures
# Cells are (label, bias) counts in the order (0,0), (0,1), (1,0), (1,1).
WATERBIRDS = {"train": (6, 2, 1, 4), "valid": (2, 2, 2, 2), "test": (2, 2, 1, 1)}


def write_waterbirds(root: Path) -> Path:
    """metadata.csv (img_id,img_filename,y,split,place,place_filename) and CUB-style species folders; the images are
    10x12, so they are resized and centre-cropped."""
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    k = 0
    for split_code, split in enumerate(("train", "valid", "test")):
        for cell, n in enumerate(WATERBIRDS[split]):
            y, place = divmod(cell, 2)
            for _ in range(n):
                k += 1
                rel = f"{'001.Black_footed_Albatross' if y else '002.Laysan_Albatross'}/bird_{k:04d}.jpg"
                image(root / rel, y, place, size=(10, 12))
                rows.append(f"{k},{rel},{y},{split_code},{place},/l/lake/natural/{k}.jpg")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


# (blond, male) counts: (dark female, dark male, blond female, blond male)
CELEBA = {"train": (4, 4, 3, 1), "valid": (1, 1, 1, 1), "test": (2, 2, 1, 1)}


def write_celeba(root: Path, names: list[str] = CELEBA_ATTRIBUTES) -> Path:
    """torchvision's flat layout: the two text files and img_align_celeba/ (9x11 images)."""
    attrs, part = [], []
    k = 0
    for code, split in enumerate(("train", "valid", "test")):
        for cell, n in enumerate(CELEBA[split]):
            blond, male = divmod(cell, 2)
            for _ in range(n):
                k += 1
                name = f"{k:06d}.jpg"
                image(root / "img_align_celeba" / name, blond, male, size=(9, 11))
                values = {a: (-1) ** (i % 3 == 0) for i, a in enumerate(names)}
                values["Blond_Hair"], values["Male"] = (1 if blond else -1), (1 if male else -1)
                attrs.append(name + "".join(f" {values[a]:2d}" for a in names))
                part.append(f"{name} {code}")
    (root / "list_attr_celeba.txt").write_text(f"{k}\n{' '.join(names)} \n" + "\n".join(attrs) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return root


def write_named(folder: Path, cells: dict[tuple[int, int], int], start: int, by_label: bool = False) -> int:
    """``n`` images ``<id>_<label>_<bias>.png`` per (label, bias) cell in ``folder`` (in ``folder/<label>/`` with
    ``by_label``); returns the next free id."""
    for (y, b), n in cells.items():
        for _ in range(n):
            image((folder / str(y) if by_label else folder) / f"{start:05d}_{y}_{b}.png", y, b)
            start += 1
    return start


def write_bffhq(root: Path) -> Path:
    """0.5pct/{align,conflict}/<y>/, valid/ and test/ flat, at the root."""
    k = write_named(root / "0.5pct" / "align", {(0, 0): 5, (1, 1): 4}, 0, by_label=True)
    k = write_named(root / "0.5pct" / "conflict", {(0, 1): 1, (1, 0): 2}, k, by_label=True)
    k = write_named(root / "valid", {(0, 0): 2, (1, 1): 2}, k)
    write_named(root / "test", {(0, 0): 2, (0, 1): 3, (1, 0): 3, (1, 1): 2}, k)
    return root


def write_dogs_cats(root: Path) -> Path:
    """1pct/{align,conflict}/<y>/ and 1pct/valid/ (flat), test/<y>/ at the root."""
    k = write_named(root / "1pct" / "align", {(0, 0): 4, (1, 1): 5}, 0, by_label=True)
    k = write_named(root / "1pct" / "conflict", {(0, 1): 1, (1, 0): 1}, k, by_label=True)
    k = write_named(root / "1pct" / "valid", {(0, 0): 2, (0, 1): 1, (1, 1): 2}, k)
    write_named(root / "test", {(0, 0): 2, (0, 1): 2, (1, 0): 2, (1, 1): 2}, k, by_label=True)
    return root


BAR_CLASSES = ["climbing", "diving", "fishing", "pole vaulting", "racing", "throwing"]


def write_bar(root: Path) -> Path:
    """Flat train/ (5 per class) and test/ (2 per class) of <class>_<idx>.jpg."""
    k = 0
    for split, n in (("train", 5), ("test", 2)):
        for c, name in enumerate(BAR_CLASSES):
            for _ in range(n):
                image(root / split / f"{name}_{k}.jpg", c % 2, size=(12, 8))
                k += 1
    return root


WRITERS = {"waterbirds": write_waterbirds, "celeba": write_celeba, "bffhq": write_bffhq, "bar": write_bar,
           "dogs_cats": write_dogs_cats}
RATIOS = {"bffhq": 0.005, "dogs_cats": 0.01}


def config(name: str, root: Path, **kw) -> DataConfig:
    kw.setdefault("image_size", 8)
    kw.setdefault("conflict_ratio", RATIOS.get(name, 0.01))
    return DataConfig(name=name, root=str(root), **kw).validate()


def load(name: str, root: Path, **kw):
    return load_dataset(config(name, root, **kw), log=lambda *_: None)


# ------------------------------------------------------------------------------------------------ counts per split
def test_waterbirds_counts_and_groups(tmp_path):
    splits = load("waterbirds", write_waterbirds(tmp_path / "wb"))
    assert splits.class_names == ["landbird", "waterbird"] and splits.num_bias == 2
    for split, cells in WATERBIRDS.items():
        assert counts(splits.split(split))["cells"] == list(cells)
    assert counts(splits.train) == {"n": 13, "per_class": [8, 5], "cells": [6, 2, 1, 4]}
    train = splits.train
    assert int(train.aligned_mask().sum()) == 10  # land birds on land, water birds on water: the majority cells
    assert tuple(train.images.shape) == (13, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.paths[0].startswith("002.Laysan_Albatross/")


def test_celeba_counts_and_aligned_cells(tmp_path):
    splits = load("celeba", write_celeba(tmp_path / "celeba"))
    assert CELEBA_ATTRIBUTES.index("Blond_Hair") == 9 and CELEBA_ATTRIBUTES.index("Male") == 20
    assert splits.class_names == ["not blond", "blond"]
    # bias = "not Male": cells (label, bias) = (dark, male), (dark, female), (blond, male), (blond, female)
    assert counts(splits.train) == {"n": 12, "per_class": [8, 4], "cells": [4, 4, 1, 3]}
    assert counts(splits.valid) == {"n": 4, "per_class": [2, 2], "cells": [1, 1, 1, 1]}
    assert counts(splits.test) == {"n": 6, "per_class": [4, 2], "cells": [2, 2, 1, 1]}
    # 000001-000004 are dark female, 000005-000008 dark male, 000009-000011 blond female (write_celeba's order)
    at = {p: (int(y), int(b)) for p, y, b in zip(splits.train.paths, splits.train.labels, splits.train.bias)}
    blond_female, dark_male = at["img_align_celeba/000009.jpg"], at["img_align_celeba/000005.jpg"]
    assert blond_female == (1, 1) and dark_male == (0, 0)  # aligned: label == bias
    assert at["img_align_celeba/000001.jpg"] == (0, 1) and at["img_align_celeba/000012.jpg"] == (1, 0)


def test_celeba_finds_attributes_by_name(tmp_path):
    """The attributes are looked up on the name line: another column order gives the same labels."""
    a = load("celeba", write_celeba(tmp_path / "a"))
    b = load("celeba", write_celeba(tmp_path / "b", names=CELEBA_ATTRIBUTES[::-1]))
    for split in ("train", "valid", "test"):
        assert torch.equal(a.split(split).labels, b.split(split).labels)
        assert torch.equal(a.split(split).bias, b.split(split).bias)


def test_bffhq_counts(tmp_path):
    splits = load("bffhq", write_bffhq(tmp_path / "bffhq"))
    assert counts(splits.train) == {"n": 12, "per_class": [6, 6], "cells": [5, 1, 2, 4]}
    assert counts(splits.valid) == {"n": 4, "per_class": [2, 2], "cells": [2, 0, 0, 2]}
    assert counts(splits.test) == {"n": 10, "per_class": [5, 5], "cells": [2, 3, 3, 2]}  # all of test/ is kept
    assert splits.train.paths[0] == "0.5pct/align/0/00000_0_0.png"


def test_dogs_cats_counts(tmp_path):
    splits = load("dogs_cats", write_dogs_cats(tmp_path / "dnc"))
    assert counts(splits.train) == {"n": 11, "per_class": [5, 6], "cells": [4, 1, 1, 5]}
    assert counts(splits.valid) == {"n": 5, "per_class": [3, 2], "cells": [2, 1, 0, 2]}
    assert counts(splits.test) == {"n": 8, "per_class": [4, 4], "cells": [2, 2, 2, 2]}
    assert all(p.startswith("1pct/valid/") for p in splits.valid.paths)


def test_bar_counts_and_seeded_valid(tmp_path):
    root = write_bar(tmp_path / "bar")
    splits = load("bar", root, valid_fraction=0.2)
    assert splits.class_names == BAR_CLASSES and splits.num_bias == 0
    assert all(s.bias is None for s in (splits.train, splits.valid, splits.test))
    for split, n in (("train", 4), ("valid", 1), ("test", 2)):
        assert torch.bincount(splits.split(split).labels, minlength=6).tolist() == [n] * 6
    assert any(p.startswith("train/pole vaulting_") for p in splits.train.paths)
    again = load("bar", root, valid_fraction=0.2)
    other = load("bar", root, valid_fraction=0.2, seed=1)
    assert again.valid.paths == splits.valid.paths and other.valid.paths != splits.valid.paths


# --------------------------------------------------------------------------------------------------------- errors
MISSING = {  # what each test removes, and words of the tree the error must print
    "waterbirds": ("metadata.csv", ["metadata.csv", "img_id,img_filename,y,split,place"]),
    "celeba": ("list_eval_partition.txt", ["list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba/"]),
    "bffhq": ("valid", ["0.5pct/", "align/0/", "conflict/1/", "valid/", "test/"]),
    "bar": ("test", ["train/", "test/", "<class>_<idx>.jpg"]),
    "dogs_cats": ("test", ["1pct/", "align/0/", "valid/", "test/0/"]),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_missing_file_prints_the_expected_tree(tmp_path, name):
    root = WRITERS[name](tmp_path / name)
    missing, words = MISSING[name]
    (shutil.rmtree if (root / missing).is_dir() else Path.unlink)(root / missing)
    with pytest.raises(DatasetError) as e:
        load(name, root)
    msg = str(e.value)
    assert str(root / missing) in msg and "put the files here:" in msg and f"{root}/   (data.root)" in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize("name", list(WRITERS))
def test_root_and_image_size_are_required(tmp_path, name):
    with pytest.raises(DatasetError, match="does not exist[^$]*put the files here:"):
        load(name, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="data.root is not set"):
        load_dataset(DataConfig(name=name, image_size=8))
    with pytest.raises(DatasetError, match=r"set data.image_size \(the papers use 224\)"):
        load(name, WRITERS[name](tmp_path / name), image_size=None)


def test_malformed_rows_are_named(tmp_path):
    wb = write_waterbirds(tmp_path / "wb")
    meta = wb / "metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines[:3] + [lines[3].replace(",0,0,", ",0,7,", 1)] + lines[4:]) + "\n")
    with pytest.raises(DatasetError, match=r"metadata.csv, row 4: split '7' is not 0, 1 or 2"):
        load("waterbirds", wb)
    meta.write_text("img_id,img_filename,y,split\n1,a.jpg,0,0\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) place"):
        load("waterbirds", wb)
    meta.write_text("img_id,img_filename,y,split,place\n1,nope/a.jpg,0,0,0\n")
    with pytest.raises(DatasetError, match=r"metadata.csv, row 2: image file not found: .*nope/a.jpg"):
        load("waterbirds", wb)

    celeba = write_celeba(tmp_path / "celeba")
    attr = celeba / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    assert lines[6].startswith("000005.jpg")  # a dark male: Male is 1
    attr.write_text("\n".join(lines[:6] + [lines[6].replace("  1", "  0")] + lines[7:]) + "\n")
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt, line 7: Blond_Hair=-1, Male=0; values are -1"):
        load("celeba", celeba)
    attr.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match="line 1 says 22 images but 21 are listed"):
        load("celeba", celeba)
    attr.write_text("\n".join([lines[0], lines[1].replace("Blond_Hair", "Blonde")] + lines[2:]) + "\n")
    with pytest.raises(DatasetError, match="line 2: no attribute Blond_Hair"):
        load("celeba", celeba)


def test_folder_layout_errors(tmp_path):
    root = write_bffhq(tmp_path / "bffhq")
    with pytest.raises(DatasetError, match=r"no folder .*1pct/ for data.conflict_ratio=0.01 \(found: 0.5pct\)"):
        load("bffhq", root, conflict_ratio=0.01)
    moved = root / "0.5pct" / "align" / "0" / "00004_0_0.png"
    moved.rename(root / "0.5pct" / "align" / "1" / moved.name)
    with pytest.raises(DatasetError, match=r"align/1/00004_0_0.png: label 0 in its name, but it lies in the folder "
                                           r"of label 1"):
        load("bffhq", root)
    (root / "0.5pct" / "align" / "1" / moved.name).rename(root / "0.5pct" / "align" / "0" / "00004_0_1.png")
    with pytest.raises(DatasetError, match=r"00004_0_1.png: label 0 and bias 1 in its name, but align/ holds "
                                           r"bias-aligned"):
        load("bffhq", root)
    (root / "0.5pct" / "align" / "0" / "00004_0_1.png").rename(root / "0.5pct" / "align" / "0" / "00004_0.png")
    with pytest.raises(DatasetError, match=r"00004_0.png: its name is not <id>_<label>_<bias>.png"):
        load("bffhq", root)

    bar = write_bar(tmp_path / "bar")
    image(bar / "train" / "swimming_99.jpg", 0)
    with pytest.raises(DatasetError, match=r"train/swimming_99.jpg: its name is not <class>_<idx>.jpg"):
        load("bar", bar)


def test_identity_covers_names_and_content(tmp_path):
    root = write_dogs_cats(tmp_path / "dnc")
    cfg = config("dogs_cats", root)
    key = dataset_key(cfg)
    assert dataset_key(config("dogs_cats", root, image_size=16)) != key
    test0 = root / "test" / "0"
    first = sorted(test0.iterdir())[0]
    first.rename(test0 / first.name.replace("_0_0.png", "_0_1.png"))  # the same bytes, another bias
    assert dataset_key(cfg) != key
    key = dataset_key(cfg)
    image(sorted(test0.iterdir())[0], 1, 1)  # other pixels
    assert dataset_key(cfg) != key
    bar = write_bar(tmp_path / "bar")
    assert dataset_key(config("bar", bar, seed=1)) != dataset_key(config("bar", bar))


# --------------------------------------------------------------------------------------------------------- CLI runs
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_one_epoch_cli_run_writes_the_benchmarks_metrics(tmp_path, name):
    root = WRITERS[name](tmp_path / name)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": f"tiny-{name}", "method": "erm",
        "data": {"name": name, "root": str(root), "conflict_ratio": RATIOS.get(name, 0.01), "valid_fraction": 0.4},
        "classifier": {"arch": "mlp", "epochs": 1, "batch_size": 8, "select": "last"},
    }))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--set", "data.image_size=8"]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    d = load(name, root, valid_fraction=0.4)  # the run's split of every image is saved, a seeded one included
    assert (out / "data" / "split.csv").read_text().count("\n") == 1 + len(d.train) + len(d.valid) + len(d.test)
    for key in HEADLINE_METRICS[name]:
        assert 0.0 <= test[key] <= 1.0, key
    if name == "waterbirds":  # the "average accuracy": test group accuracies weighted by the training shares
        shares = [[WATERBIRDS["train"][2 * y + place] for place in (0, 1)] for y in (0, 1)]
        weighted = sum(test["group_accuracy"][y][b] * shares[y][b] for y in (0, 1) for b in (0, 1))
        assert test["adjusted_accuracy"] == pytest.approx(weighted / sum(WATERBIRDS["train"]))
        assert test["worst_group_accuracy"] == min(min(row) for row in test["group_accuracy"])


def test_data_check_prints_counts_per_group(tmp_path, capsys):
    root = write_waterbirds(tmp_path / "wb")
    cfg = tmp_path / "wb.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"name": "waterbirds", "root": str(root), "image_size": 8}}))
    assert main(["data", "check", str(cfg)]) == 0
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert train["per_group"] == [list(WATERBIRDS["train"][:2]), list(WATERBIRDS["train"][2:])]  # [y][place]
    assert train["per_class"] == [8, 5] and train["aligned"] == 6 + 4
