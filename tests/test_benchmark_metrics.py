"""The benchmarks' metrics (training-share adjusted accuracy, UrbanCars' I.D. accuracy and gaps), more than one bias
attribute per image, and the UrbanCars and ImageNet-9/A loaders on fixtures in their public layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffdebias.cli import main
from diffdebias.config import DataConfig
from diffdebias.data import DatasetError, describe, load_dataset
from diffdebias.data.base import ImageSet
from diffdebias.data.imagenet9 import CLASS_OF, WNIDS
from diffdebias.data.urbancars import group_folders
from diffdebias.evaluation.metrics import accuracy_metrics, headline_metrics, urbancars_metrics


def test_adjusted_accuracy_weights_cells_by_training_shares():
    # test cells (label, bias): (0,0) 2 of 2 right, (0,1) 1 of 2, (1,0) 0 of 2, (1,1) 3 of 4
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    bias = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    preds = torch.tensor([0, 0, 0, 1, 0, 0, 1, 1, 1, 0])
    train_counts = torch.tensor([[90, 10], [5, 95]])  # the training split's (label x bias) counts
    m = accuracy_metrics(preds, labels, bias, 2, 2, group_weights=train_counts)
    assert math.isclose(m["adjusted_accuracy"], (90 * 1.0 + 10 * 0.5 + 5 * 0.0 + 95 * 0.75) / 200)
    assert math.isclose(m["unbiased_accuracy"], (1.0 + 0.5 + 0.0 + 0.75) / 4)
    # a bias value the training split never had weighs 0 (weights narrower than the table)
    m = accuracy_metrics(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), 2, 3,
                         group_weights=torch.tensor([[3, 1], [1, 1]]))
    assert math.isclose(m["adjusted_accuracy"], (3 * 1.0 + 1 * 1.0) / 4)


def _urbancars_table():
    """Cells (obj, background aligned, co-occurring object aligned): n samples, k right. Class 0 has 4 per cell,
    class 1 has 2, so the mean over classes differs from pooling the samples."""
    cells = {(0, True, True): (4, 4), (0, False, True): (4, 2), (0, True, False): (4, 3), (0, False, False): (4, 1),
             (1, True, True): (2, 1), (1, False, True): (2, 0), (1, True, False): (2, 2), (1, False, False): (2, 1)}
    labels, bg, co, preds = [], [], [], []
    for (y, bg_aligned, co_aligned), (n, k) in cells.items():
        for i in range(n):
            labels.append(y)
            bg.append(y if bg_aligned else 1 - y)
            co.append(y if co_aligned else 1 - y)
            preds.append(y if i < k else 1 - y)
    return [torch.tensor(v) for v in (preds, labels, bg, co)]


def test_urbancars_id_accuracy_and_gaps_by_hand():
    preds, labels, bg, co = _urbancars_table()
    m = urbancars_metrics(preds, labels, bg, co)
    # conditions, mean of the two car classes: both aligned (1 + 1/2) / 2, BG-conflicting (1/2 + 0) / 2,
    # CoObj-conflicting (3/4 + 1) / 2, both conflicting (1/4 + 1/2) / 2
    assert m["both_aligned_accuracy"] == pytest.approx(0.75)
    assert m["bg_conflicting_accuracy"] == pytest.approx(0.25)
    assert m["coobj_conflicting_accuracy"] == pytest.approx(0.875)
    assert m["both_conflicting_accuracy"] == pytest.approx(0.375)
    # 0.9025 * 0.75 + 0.0475 * 0.25 + 0.0475 * 0.875 + 0.0025 * 0.375
    assert m["id_accuracy"] == pytest.approx(0.73125)
    assert m["bg_gap"] == pytest.approx(0.25 - 0.73125)
    assert m["coobj_gap"] == pytest.approx(0.875 - 0.73125)
    assert m["bg_coobj_gap"] == pytest.approx(0.375 - 0.73125)
    # an empty condition is undefined, and so is the I.D. accuracy it enters
    keep = ~((bg != labels) & (co != labels))
    m = urbancars_metrics(preds[keep], labels[keep], bg[keep], co[keep])
    assert math.isnan(m["both_conflicting_accuracy"]) and math.isnan(m["id_accuracy"])


def test_headline_metrics_per_benchmark():
    assert headline_metrics("cmnist") == ("unbiased_accuracy",)
    assert headline_metrics("waterbirds") == ("worst_group_accuracy", "adjusted_accuracy")
    assert headline_metrics("bffhq") == ("conflicting_accuracy",)
    assert headline_metrics("imagenet9") == ("accuracy",)
    assert headline_metrics("urbancars") == ("id_accuracy", "bg_gap", "coobj_gap", "bg_coobj_gap")
    assert headline_metrics("my_csv", {"accuracy": 0.5}) == ("accuracy",)


def test_extra_bias_attributes_follow_subset_and_are_checked():
    s = ImageSet(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 1, 0]),
                 extra_bias={"co_occur_obj": torch.tensor([1, 1, 0, 0])})
    sub = s.subset(torch.tensor([3, 0]))
    assert sub.extra_bias["co_occur_obj"].tolist() == [0, 1] and sub.bias.tolist() == [0, 0]
    with pytest.raises(ValueError, match="co_occur_obj"):
        ImageSet(s.images, s.labels, s.bias, extra_bias={"co_occur_obj": torch.tensor([1, 0])})


def _jpg(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), color, dtype=np.uint8)).save(path)


URBAN_TRAIN = {(True, True): 3, (False, True): 2, (True, False): 2, (False, False): 1}  # per (bg, co aligned)


@pytest.fixture
def urbancars_root(tmp_path):
    """The Whac-A-Mole layout under data.root: train 16 images (per class 3 both aligned, 2 BG-conflicting,
    2 CoObj-conflicting, 1 both), val and test 1 per folder (8 each); a mask beside every folder's images."""
    root = tmp_path / "data"
    for rel, per in (("bg-0.95_co_occur_obj-0.95/train", URBAN_TRAIN), ("bg-0.5_co_occur_obj-0.5/val", None),
                     ("bg-0.5_co_occur_obj-0.5/test", None)):
        for name, obj, bg, co in group_folders():
            n = per[(bg == obj, co == obj)] if per else 1
            folder = root / "urbancars" / rel / name
            for i in range(n):
                _jpg(folder / f"{i:03d}.jpg", (250 * obj, 120 + 60 * bg, 40 * co))
            Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "000_mask.png")
    return root


def test_urbancars_loads_labels_and_both_bias_attributes(urbancars_root):
    d = load_dataset(DataConfig(name="urbancars", root=str(urbancars_root), image_size=8), log=lambda m: None)
    assert (len(d.train), len(d.valid), len(d.test)) == (16, 8, 8)
    assert d.class_names == ["urban", "country"] and d.num_bias == 2 and d.image_size == 8
    assert all(p.endswith(".jpg") for p in d.train.paths)
    summary = describe(d)["splits"]
    assert summary["train"]["per_class"] == [8, 8]
    # background (primary bias): aligned = both aligned + CoObj-conflicting = 5 per class
    assert (summary["train"]["aligned"], summary["train"]["conflicting"]) == (10, 6)
    assert summary["train"]["extra_bias"]["co_occur_obj"] == {"per_value": [8, 8], "aligned": 10, "conflicting": 6}
    assert summary["test"]["extra_bias"]["co_occur_obj"] == {"per_value": [4, 4], "aligned": 4, "conflicting": 4}
    assert (summary["test"]["aligned"], summary["test"]["conflicting"]) == (4, 4)
    i = d.train.paths.index("bg-0.95_co_occur_obj-0.95/train/obj-country_bg-urban_co_occur_obj-country/000.jpg")
    assert (d.train.labels[i], d.train.bias[i], d.train.extra_bias["co_occur_obj"][i]) == (1, 0, 1)
    # read again from the cache: the extra attribute comes back
    again = load_dataset(DataConfig(name="urbancars", root=str(urbancars_root / "urbancars"), image_size=8),
                         log=lambda m: None)
    assert torch.equal(again.test.extra_bias["co_occur_obj"], d.test.extra_bias["co_occur_obj"])


def test_urbancars_missing_folder_prints_the_tree(urbancars_root):
    cfg = DataConfig(name="urbancars", root=str(urbancars_root), image_size=8)
    folder = urbancars_root / "urbancars/bg-0.5_co_occur_obj-0.5/test/obj-country_bg-urban_co_occur_obj-urban"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(DatasetError, match="put the files here:") as e:
        load_dataset(cfg, log=lambda m: None)
    assert "obj-country_bg-urban_co_occur_obj-urban" in str(e.value)
    assert "\n    urbancars/\n      bg-0.95_co_occur_obj-0.95/" in str(e.value)
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset(DataConfig(name="urbancars", root=str(urbancars_root)), log=lambda m: None)


A_PER_CLASS = {"dog": 3, "cat": 3, "frog": 3, "turtle": 3, "bird": 3, "monkey": 2, "fish": 2, "crab": 0, "insect": 2}
A_WNIDS = [w for name, ws in WNIDS.items() for w in ws[:A_PER_CLASS[name]]]  # 21 WNIDs, no crab


@pytest.fixture
def imagenet_root(tmp_path):
    """train/ and val/ with one image in each of the 42 WNID folders (and a WNID of another class, ignored);
    imagenet-a/ with one image in 21 of them and no crab, and its README."""
    root = tmp_path / "in"
    for split in ("train", "val"):
        for w in [*CLASS_OF, "n04037443"]:
            _jpg(root / split / w / f"{w}_{split}.JPEG", (20 * CLASS_OF.get(w, 0), 90, 10))
    for w in A_WNIDS:
        _jpg(root / "imagenet-a" / w / f"a_{w}.jpg", (20 * CLASS_OF[w], 30, 200))
    (root / "imagenet-a" / "README.txt").write_text("ImageNet-A\n")
    return root


def test_imagenet9_maps_wnids_to_the_nine_classes(imagenet_root):
    d = load_dataset(DataConfig(name="imagenet9", root=str(imagenet_root), image_size=8), log=lambda m: None)
    assert d.class_names == ["dog", "cat", "frog", "turtle", "bird", "monkey", "fish", "crab", "insect"]
    assert d.num_classes == 9 and d.num_bias == 0 and d.train.bias is None
    per_class = [5, 5, 3, 5, 5, 5, 5, 4, 5]
    summary = describe(d)["splits"]
    assert summary["train"]["per_class"] == per_class and summary["valid"]["per_class"] == per_class
    assert summary["test"]["per_class"] == [3, 3, 3, 3, 3, 2, 2, 0, 2] and len(d.test) == 21
    i = d.train.paths.index("train/n01641577/n01641577_train.JPEG")  # first WNID in folder order: frog, not class 0
    assert int(d.train.labels[i]) == 2


def test_imagenet9_missing_folders(imagenet_root):
    cfg = DataConfig(name="imagenet9", root=str(imagenet_root), image_size=8)
    (imagenet_root / "imagenet-a").rename(imagenet_root / "elsewhere")
    with pytest.raises(DatasetError, match="put the files here:") as e:
        load_dataset(cfg, log=lambda m: None)
    assert "imagenet-a/ folder not found" in str(e.value) and "\n    val/" in str(e.value)
    (imagenet_root / "elsewhere").rename(imagenet_root / "imagenet_a")  # rebias' spelling is read too
    for f in (imagenet_root / "val" / "n01981276").iterdir():
        f.unlink()
    (imagenet_root / "val" / "n01981276").rmdir()
    with pytest.raises(DatasetError, match=r"lacks 1 of the 42 WNID folders.*n01981276 \(crab\)"):
        load_dataset(cfg, log=lambda m: None)


def _run(tmp_path, data: dict, name: str) -> dict:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"name": name, "method": "erm", "data": data,
                                   "classifier": {"arch": "mlp", "epochs": 1, "batch_size": 8, "select": "last"}}))
    out = tmp_path / f"run-{name}"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--set", "data.image_size=8"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_urbancars_run_writes_id_accuracy_and_gaps(tmp_path, urbancars_root):
    m = _run(tmp_path, {"name": "urbancars", "root": str(urbancars_root)}, "urbancars")
    for split in ("valid", "test"):
        for key in ("id_accuracy", "bg_gap", "coobj_gap", "bg_coobj_gap", "adjusted_accuracy"):
            assert isinstance(m[split][key], float), (split, key)
        assert 0.0 <= m[split]["id_accuracy"] <= 1.0
        assert m[split]["bg_gap"] == pytest.approx(m[split]["bg_conflicting_accuracy"] - m[split]["id_accuracy"])
    report = (tmp_path / "run-urbancars" / "report.md").read_text()
    assert "What the urbancars benchmark reports (test, %): I.D. accuracy" in report and "BG+CoObj gap" in report


def test_imagenet9_run_scores_imagenet_a(tmp_path, imagenet_root):
    m = _run(tmp_path, {"name": "imagenet9", "root": str(imagenet_root)}, "imagenet9")
    assert m["test"]["size"] == sum(A_PER_CLASS.values()) and 0.0 <= m["test"]["accuracy"] <= 1.0


def test_csv_run_writes_adjusted_accuracy(tmp_path, image_folder):
    csv, root = image_folder
    m = _run(tmp_path, {"name": "csv", "csv": str(csv), "root": str(root)}, "csv")
    for split in ("valid", "test"):
        assert 0.0 <= m[split]["adjusted_accuracy"] <= 1.0
        assert "id_accuracy" not in m[split]
    # by hand: the test cells' accuracies weighted by the training split's cell counts
    split = (tmp_path / "run-csv" / "data" / "split.csv").read_text().splitlines()[1:]
    rows = [r.split(",") for r in split]
    train = {}
    for _, y, b, s in rows:
        if s == "train":
            train[(int(y), int(b))] = train.get((int(y), int(b)), 0) + 1
    acc, count = np.array(m["test"]["group_accuracy"]), np.array(m["test"]["group_count"])
    w = np.array([[train.get((y, b), 0) if count[y, b] else 0 for b in range(acc.shape[1])]
                  for y in range(acc.shape[0])])
    assert m["test"]["adjusted_accuracy"] == pytest.approx(float((acc * w).sum() / w.sum()))


def test_bench_table_reports_the_datasets_headline_metric(tmp_path):
    from diffdebias.bench import collect, load_table, render
    from diffdebias.runs import write_json

    (tmp_path / "erm.yaml").write_text(yaml.safe_dump({"name": "erm", "method": "erm"}))
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"name": "u", "dataset": "urbancars", "methods": {"erm": "erm.yaml"},
                                    "ratios": [0.05], "seeds": [1, 2], "out": str(tmp_path / "out")}))
    table = load_table(path)
    for seed, (id_acc, gap) in zip((1, 2), ((0.90, -0.10), (0.94, -0.20))):
        write_json(table.run_dir("erm", 0.05, seed) / "metrics.json", {"test": {
            "unbiased_accuracy": 0.5, "id_accuracy": id_acc, "bg_gap": gap, "coobj_gap": -0.05, "bg_coobj_gap": None}})
    md = render(table, collect(table))["md"]
    assert md.startswith("Test I.D. accuracy (%), mean ± std (the metric urbancars reports):")
    assert "| Vanilla | 92.00 ± 2.83 | — |" in md
    assert "| method | ratio | BG gap | CoObj gap | BG+CoObj gap |" in md
    assert "| Vanilla | 5 % | -15.00 ± 7.07 | -5.00 ± 0.00 | — |" in md  # an undefined (null) gap: a dash
