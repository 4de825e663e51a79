import json
import subprocess
import sys
import time

import pytest
import yaml

from diffdebias.cli import main


def tiny_config(tmp_path, fake_mnist):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tiny", "method": "erm",
        "data": {"name": "cmnist", "conflict_ratio": 0.05, "mnist_path": str(fake_mnist)},
        "classifier": {"epochs": 3, "batch_size": 64, "select": "valid"},
    }))
    return cfg


def test_run_end_to_end_then_skip(tmp_path, fake_mnist, capsys):
    cfg = tiny_config(tmp_path, fake_mnist)
    out = tmp_path / "run"
    t0 = time.time()
    assert main(["run", str(cfg), "--seed", "1", "--out", str(out), "--set", "classifier.lr=0.002"]) == 0
    assert time.time() - t0 < 60
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        for key in ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy",
                    "worst_group_accuracy"):
            assert 0.0 <= metrics[split][key] <= 1.0
    assert metrics["test"]["aligned_accuracy"] > metrics["test"]["conflicting_accuracy"]  # it learned the shortcut
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["seed"] == 1 and resolved["classifier"]["lr"] == 0.002
    report = (out / "report.md").read_text()
    assert "unbiased" in report and (out / "figures" / "curves.png").exists()
    capsys.readouterr()

    assert main(["run", str(cfg), "--seed", "1", "--out", str(out), "--set", "classifier.lr=0.002"]) == 0
    log = capsys.readouterr().out
    assert "stage classifier: done, skipped" in log and "stage evaluation: done, skipped" in log
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]


def test_same_seed_same_metrics(tmp_path, fake_mnist):
    cfg = tiny_config(tmp_path, fake_mnist)
    results = []
    for name in ("a", "b"):
        assert main(["run", str(cfg), "--seed", "3", "--out", str(tmp_path / name), "--quiet"]) == 0
        results.append(json.loads((tmp_path / name / "metrics.json").read_text())["test"])
    assert results[0] == results[1]


def test_csv_dataset_run_and_data_check(tmp_path, image_folder, capsys):
    csv, root = image_folder
    assert main(["data", "check", "--csv", str(csv), "--root", str(root)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["class_names"] == ["cat", "dog", "owl"]
    assert sum(s["size"] for s in summary["splits"].values()) == 60
    out = tmp_path / "run"
    assert main(["run", "-", "--out", str(out), "--quiet", "--set", "data.name=csv", "--set", f"data.csv={csv}",
                 "--set", "classifier.epochs=2", "--set", "classifier.select=last"]) == 2  # '-' is not a file
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  name: csv\n  csv: {csv}\n  root: {root}\n"
                   "classifier:\n  epochs: 2\n  batch_size: 8\n  select: last\n")
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    split = (out / "data" / "split.csv").read_text().splitlines()
    assert split[0] == "path,label,bias,split" and len(split) == 61


def test_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("classifer:\n  epochs: 1\n")
    assert main(["run", str(bad)]) == 2
    assert "unknown config key 'classifer'" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["data", "build", "--help"], ["report", "--help"]])
def test_help(args):
    r = subprocess.run([sys.executable, "-m", "diffdebias.cli", *args], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: diffdebias" in r.stdout


@pytest.mark.parametrize("preset", ["configs/generic/ddb_cpu.yaml", "configs/generic/ddb.yaml"])
def test_generic_presets_run_a_users_folder_end_to_end(tmp_path, image_folder, preset):
    """What the README tells a user to run on their own CSV, shrunk: the gallery of ranked images and the ERM
    comparison come out, and the detection scores read the CSV's bias column."""
    csv, root = image_folder
    tiny = {"data.image_size": 16, "diffusion.steps": 4, "diffusion.checkpoint_every": 2, "diffusion.sample_every": 0,
            "diffusion.batch_size": 8, "sampling.steps": 2, "sampling.per_class": 4, "sampling.batch_size": 8,
            "amplifier.epochs": 1, "amplifier.batch_size": 8, "amplifier.arch": "resnet8",
            "classifier.epochs": 1, "classifier.batch_size": 8, "classifier.arch": "resnet8",
            "classifier.pretrained": False, "diffusion.preset": "cpu"}
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "run"
    assert main(["run", preset, "--out", str(out), "--quiet", "--set", f"data.csv={csv}", "--set",
                 f"data.root={root}", *sets]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "ddb" and set(metrics["erm"]["test"]) >= {"accuracy", "conflicting_accuracy"}
    assert 0 <= metrics["detection"]["auroc"] <= 1 and metrics["detection"]["true"] > 0
    train_size = json.loads((out / "data" / "summary.json").read_text())["splits"]["train"]["size"]
    ranked = (out / "gallery" / "ranked.csv").read_text().splitlines()
    assert len(ranked) == 1 + train_size  # every training image, ranked
