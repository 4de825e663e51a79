"""Safe runs, as a new user meets them: bad input is a named error (exit 2) before any long stage, nothing the toolkit
did not make is touched, a broken run is never reported as a result, and what a killed run left is cleaned up.

Every CLI case runs in a user's folder holding a small PNG dataset (CSV, images, notes) and checks that each of
those files is byte-identical afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diffdebias import runs
from diffdebias.cli import main
from diffdebias.keys import reads
from diffdebias.runs import OwnershipError, Run

COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def write_dataset(folder: Path, n: int = 90, rows: list[str] | None = None, split: bool = False) -> Path:
    """``folder/data.csv`` over ``folder/img/*.png``: 3 classes, a colour bias, 10 % conflicting; optional split."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["path,label,bias" + (",split" if split else "")]
    for i in range(n):
        y = i % 3
        b = y if rng.random() < 0.9 else (y + 1) % 3
        img = np.zeros((12, 12, 3), dtype=np.uint8)
        img[2 + 3 * y: 5 + 3 * y, 2:10] = COLORS[b]
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        part = ",test" if i % 5 == 0 else ",valid" if i % 5 == 1 else ",train"
        lines.append(f"img/{i}.png,{y},{b}" + (part if split else ""))
    csv = folder / "data.csv"
    csv.write_text("\n".join(rows if rows is not None else lines) + "\n")
    (folder / "notes.txt").write_text("the user's own notes\n")
    return csv


def snapshot(folder: Path, run: str = "r") -> dict[str, str]:
    """sha256 of every file below ``folder`` but the run directory ``run`` the toolkit writes: the user's files
    before and after a run must be equal."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] != run}


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's working folder with its dataset in ./data, and the config of a tiny ERM run on it."""
    home = tmp_path / "work"
    write_dataset(home / "data")
    config = home / "erm.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "method": "erm", "data": {"name": "csv", "csv": "data/data.csv", "root": "data"},
        "classifier": {"epochs": 2, "batch_size": 32, "select": "last"}}))
    monkeypatch.chdir(home)
    return home


def cli(*args: str) -> int:
    return main(["run", "erm.yaml", "--quiet", *args])


def refused(user: Path, capsys, *args: str, argv: list[str] | None = None) -> str:
    """Run the CLI (``run erm.yaml --quiet --out r ARGS`` unless ``argv``), expect exit 2 with one error line, check
    that every file of the user's is byte-identical afterwards, and return the line."""
    before = snapshot(user)
    assert main(argv or ["run", "erm.yaml", "--quiet", "--out", "r", *args]) == 2
    line = error_line(capsys)
    assert snapshot(user) == before
    return line


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    assert err[-1].startswith("diffdebias: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


# ------------------------------------------------------------------------------------------------------ ownership


def test_out_in_the_users_own_folder_is_refused_and_nothing_is_touched(user, capsys):
    line = refused(user, capsys, argv=["run", "erm.yaml", "--out", "."])
    assert "already holds files that diffdebias did not write" in line


def test_a_foreign_folder_where_a_stage_goes_survives(tmp_path):
    run = Run(tmp_path / "r", seed=0, quiet=True)
    foreign = tmp_path / "r" / "classifier"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(OwnershipError, match="did not make it"):
        run.cached("classifier", lambda st: None)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_a_foreign_folder_is_not_replaced_by_a_stage_cache_link(tmp_path):
    run = Run(tmp_path / "r", seed=0, quiet=True, stage_cache=tmp_path / "cache")
    foreign = tmp_path / "r" / "diffusion"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(OwnershipError, match="did not make it"):
        run.cached("diffusion", lambda st: None, reads(steps=1))
    assert (foreign / "mine.txt").read_text() == "keep me" and not foreign.is_symlink()
    other = tmp_path / "elsewhere"
    other.mkdir()
    foreign.rename(tmp_path / "moved")
    foreign.symlink_to(other)  # a user's link is not replaced either
    with pytest.raises(OwnershipError, match="link diffdebias did not make"):
        run.cached("diffusion", lambda st: None, reads(steps=1))
    assert foreign.resolve() == other.resolve()


def test_own_stage_folders_and_links_are_still_replaced(tmp_path):
    """A run started without a stage cache and resumed with one (and back) replaces only what it made."""
    calls = []

    def compute(st):
        calls.append(st.dir)
        st.path("w.txt").write_text("w")

    Run(tmp_path / "r", seed=0, quiet=True).cached("a", compute, reads(k=1))
    Run(tmp_path / "r", seed=0, quiet=True, stage_cache=tmp_path / "c").cached("a", compute, reads(k=2))
    assert (tmp_path / "r" / "a").is_symlink()
    Run(tmp_path / "r", seed=0, quiet=True).cached("a", compute, reads(k=3))
    assert not (tmp_path / "r" / "a").is_symlink() and len(calls) == 3


def test_a_run_directory_from_before_markers_is_still_ours(user, capsys):
    assert cli("--out", "old") == 0
    (user / "old" / runs.RUN_MARKER).unlink()
    assert cli("--out", "old", "--set", "classifier.epochs=1") == 0


@pytest.mark.parametrize("where", ["file", "below_file"])
def test_out_that_is_or_lies_below_a_file(user, capsys, where):
    (user / "taken").write_text("a file")
    line = refused(user, capsys, argv=["run", "erm.yaml", "--out", "taken" if where == "file" else "taken/run"])
    assert ("lies below" if where == "below_file" else "is a file") in line and "taken" in line


def test_out_that_cannot_be_written(user, capsys, monkeypatch):
    """As root a read-only folder is writable, so the operating system's answer is simulated."""
    real = Path.mkdir

    def refuse(self, *a, **k):
        if "readonly" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert "permission denied" in refused(user, capsys, argv=["run", "erm.yaml", "--out", "readonly/run"]).lower()


def test_cache_that_is_a_file(user, capsys, monkeypatch):
    (user / "cachefile").write_text("x")
    monkeypatch.setenv("DIFFDEBIAS_CACHE", str(user / "cachefile"))
    line = refused(user, capsys)
    assert "cachefile" in line and "DIFFDEBIAS_CACHE" in line


def test_disk_full_is_one_line(user, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "somewhere/model.safetensors")

    monkeypatch.setattr("diffdebias.classifiers.train.save_tensors", full)
    assert "No space left on device" in refused(user, capsys)
    assert not (user / "r" / "classifier" / "DONE").exists() and not (user / "r" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------ bad values and bad data


BAD_SETTINGS = [
    ("classifier.epochs=0", "classifier.epochs"),
    ("classifier.epochs=-3", "classifier.epochs"),
    ("classifier.batch_size=-5", "classifier.batch_size"),
    ("classifier.batch_size=0", "classifier.batch_size"),
    ("classifier.eval_every=0", "classifier.eval_every"),
    ("classifier.lr=0", "classifier.lr"),
    ("amplifier.epochs=0", "amplifier.epochs"),
    ("data.image_size=-4", "data.image_size"),
    ("data.valid_fraction=1.5", "data.valid_fraction"),
    ("data.test_fraction=-0.1", "data.test_fraction"),
    ("detection.rule=loudest", "detection.rule"),
    ("method=dbb", "method"),
]


@pytest.mark.parametrize("override,field", BAD_SETTINGS)
def test_impossible_settings_are_named_before_any_stage(user, capsys, override, field):
    assert field in refused(user, capsys, "--set", override)
    assert not (user / "r").exists()


def _rows(text: str) -> list[str]:
    return text.strip().splitlines()


BAD_DATA = {
    # name: (how the CSV's rows change, words the message must hold)
    "no_test_rows": (lambda rows: [r for r in rows if not r.endswith(",test")], "test"),
    "no_valid_rows": (lambda rows: [r for r in rows if not r.endswith(",valid")], "valid"),
    "one_class": (lambda rows: [rows[0]] + [r for r in rows[1:] if r.split(",")[1] == "0"], "class"),
    "duplicated_row": (lambda rows: rows + [rows[5].replace(",train", ",test").replace(",valid", ",test")], "row"),
    "path_with_two_labels": (lambda rows: rows + [rows[3].replace("img/2.png,2", "img/2.png,1")], "label"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_datasets_are_found_before_training(user, capsys, case):
    write_dataset(user / "data", split=True)
    change, words = BAD_DATA[case]
    csv = user / "data" / "data.csv"
    csv.write_text("\n".join(change(_rows(csv.read_text()))) + "\n")
    line = refused(user, capsys)
    assert words in line and "data.csv" in line
    assert not (user / "r" / "classifier").exists(), "a stage trained before the data were checked"
    assert refused(user, capsys, argv=["data", "check", "--csv", "data/data.csv"]) == line  # the same problem


def test_decompression_bomb_is_a_named_error(user, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30)  # 12x12 = 144 pixels > 2 x 30: PIL refuses
    line = refused(user, capsys)
    assert "row" in line and ".png" in line


def test_missing_mnist_path_does_not_fall_back_to_bundled_mnist(user, capsys):
    assert "data.mnist_path" in refused(user, capsys, "--set", "data.name=cmnist",
                                        "--set", "data.mnist_path=nowhere/mnist.pkl.gz")


# ------------------------------------------------------------------------------------- honest results and caching


def test_a_diverging_loss_stops_the_stage_and_writes_no_result(user, capsys):
    line = refused(user, capsys, "--set", "classifier.optimizer=sgd", "--set", "classifier.lr=1e6",
                   "--set", "classifier.epochs=20", "--set", "classifier.batch_size=8")
    assert "stage 'classifier'" in line and ("nan" in line or "inf" in line)
    assert "learning rate" in line
    assert not (user / "r" / "classifier" / "DONE").exists()
    assert not (user / "r" / "metrics.json").exists() and not (user / "r" / "report.md").exists()


def test_diffusion_loop_stops_on_a_non_finite_loss(tmp_path):
    import torch

    from diffdebias.diffusion.config import DiffusionConfig
    from diffdebias.diffusion.models import build_unet
    from diffdebias.diffusion.train import train_diffusion
    from diffdebias.runs import NonFiniteLossError, Stage

    cfg = DiffusionConfig(preset="tiny", steps=4, batch_size=4, log_every=2, warmup_steps=0, conditional=False,
                          sample_every=0, precision="fp32")
    model = build_unet("tiny", 8, 3, None, seed=0)
    images = torch.full((8, 3, 8, 8), 255, dtype=torch.uint8)
    stage = Stage("diffusion", tmp_path / "d", "k", seed=0, log=lambda m: None)
    stage.dir.mkdir()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="lower diffusion.lr"):
        train_diffusion(stage, model, images, torch.zeros(8, dtype=torch.long), cfg, progress=False)
    assert not stage.path("unet.safetensors").exists()


def test_changed_images_under_an_unchanged_csv_retrain(user, capsys):
    assert cli("--out", "r") == 0
    first = (user / "r" / "classifier" / "model.safetensors").read_bytes()
    for p in (user / "data" / "img").glob("*.png"):  # every image now carries the colour of the next class
        img = np.asarray(Image.open(p)).copy()
        img[img > 0] = 255 - img[img > 0]
        Image.fromarray(img).save(p)
    capsys.readouterr()
    assert main(["run", "erm.yaml", "--out", "r"]) == 0
    log = capsys.readouterr().out
    assert "stage classifier: running" in log and "stage classifier: done, skipped" not in log
    assert (user / "r" / "classifier" / "model.safetensors").read_bytes() != first


def test_metrics_json_is_strict_with_a_reason_for_undefined_values(user):
    rows = _rows((user / "data" / "data.csv").read_text())
    aligned = [rows[0]] + [r for r in rows[1:] if r.split(",")[1] == r.split(",")[2]]  # no conflicting sample
    (user / "data" / "data.csv").write_text("\n".join(aligned) + "\n")
    assert cli("--out", "r") == 0
    text = (user / "r" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert metrics["test"]["conflicting_accuracy"] is None
    assert "test.conflicting_accuracy" in metrics["undefined"]
    assert "no sample" in metrics["undefined"]["test.conflicting_accuracy"]


# -------------------------------------------------------------------------------------------- resumes and leftovers


def test_a_truncated_checkpoint_is_set_aside_and_the_stage_restarts(user, capsys):
    assert cli("--out", "r") == 0
    stage = user / "r" / "classifier"
    clean = (stage / "model.safetensors").read_bytes()
    for name in ("DONE", "model.safetensors"):  # unfinished, with a checkpoint cut short by a full disk or a kill
        (stage / name).unlink()
    (stage / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"truncated")
    capsys.readouterr()
    assert main(["run", "erm.yaml", "--out", "r"]) == 0
    assert "set aside" in capsys.readouterr().out
    assert [p.name.split(".corrupt-")[0] for p in stage.glob("*.corrupt-*")] == ["checkpoint.safetensors"]
    assert (stage / "model.safetensors").read_bytes() == clean  # restarted from scratch: the same weights


def test_orphan_temp_files_go_when_their_stage_runs_again(tmp_path):
    run = Run(tmp_path / "r", seed=0, quiet=True)

    def killed(st):
        (st.dir / ".checkpoint.safetensors.ab12cd_9.tmp").write_bytes(b"half a checkpoint")
        (st.dir / "mine.tmp").write_text("not ours: the name is not atomic_path's")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.cached("s", killed)
    run.cached("s", lambda st: None)
    names = sorted(p.name for p in (tmp_path / "r" / "s").iterdir())
    assert ".checkpoint.safetensors.ab12cd_9.tmp" not in names and "mine.tmp" in names


def test_written_files_follow_the_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "UMASK", 0o027)
    runs.write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640
    monkeypatch.setattr(runs, "UMASK", 0o002)
    runs.save_tensors(tmp_path / "t.safetensors", {})
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o664


def test_stage_time_adds_up_across_resumes(tmp_path):
    run = Run(tmp_path / "r", seed=0, quiet=True)

    def killed(st):
        st.earlier_seconds = 40.0  # as if this part had run for 40 s before its checkpoint
        st.checkpointed()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.cached("s", killed)
    run.cached("s", lambda st: None)
    assert 40.0 <= runs.read_json(tmp_path / "r" / "timings.json")["s"] < 45.0
