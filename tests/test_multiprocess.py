"""Runs in several processes (torchrun on the CPU, gloo), ``python -m diffdebias`` and cluster shards (--shard auto).

A two-process run must finish (a deadlock fails at the timeout instead of hanging the suite) and give what one process
gives: the classifiers run on the main process alone, so ERM is identical; DDB's diffusion model is trained on both
processes, equal to one process's up to the order of the float reductions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diffdebias.bench import parse_shard
from diffdebias.cli import main
from diffdebias.config import ConfigError
from test_ddb import TINY

TIMEOUT = 120  # seconds: a two-process run here takes 10-25 s; a deadlock would wait forever


def launch(*args: str, procs: int = 2) -> str:
    """``torchrun --nproc_per_node procs -m diffdebias ARGS``; its output, or a failure with the output's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "-m", "diffdebias", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: no pipe to wait on
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        try:
            proc.wait(timeout=TIMEOUT)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
            proc.terminate()  # torchrun stops its workers (each in a session of its own) before it exits
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if hung:
        pytest.fail(f"{procs} processes did not finish in {TIMEOUT} s (deadlock?): {(stdout + stderr)[-2000:]}")
    assert proc.returncode == 0, (stdout + stderr)[-3000:]
    return stdout


def metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_two_process_erm_equals_one_process_and_skips_when_done(tmp_path, fake_mnist, capsys):
    cfg = tmp_path / "erm.yaml"
    cfg.write_text(yaml.safe_dump({"name": "tiny", "method": "erm",
                                   "data": {"name": "cmnist", "conflict_ratio": 0.05, "mnist_path": str(fake_mnist)},
                                   "classifier": {"epochs": 2, "batch_size": 64, "select": "valid"}}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    out = launch("run", str(cfg), "--out", str(tmp_path / "two"))
    assert out.count("report.md") == 2  # the main process's log line and the path it prints, once each
    assert out.count("stage classifier: running") == 1
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert two["test"] == one["test"] and two["valid"] == one["valid"]
    assert set(json.loads((tmp_path / "two" / "timings.json").read_text())) == {"data", "classifier", "evaluation"}
    assert json.loads((tmp_path / "two" / "classifier" / "selection.json").read_text())["processes"] == 2
    weights = [load_file(tmp_path / run / "classifier" / "model.safetensors") for run in ("one", "two")]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5, rtol=0) for k in weights[0])
    again = launch("run", str(cfg), "--out", str(tmp_path / "two"))  # every stage done: all processes skip it
    assert "running" not in again and again.count("done, skipped") == 3


@pytest.mark.parametrize("method", ["lff", "gdro"])
def test_two_process_weighted_training_equals_one_process(tmp_path, fake_mnist, method):
    """The weighting sees the whole batch on every process (LfF's EMAs and f_B, Group-DRO's q), so two processes
    that each compute half of every batch train the same target model as one."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"name": "tiny", "method": method,
                                   "data": {"name": "cmnist", "conflict_ratio": 0.05, "mnist_path": str(fake_mnist)},
                                   "classifier": {"epochs": 2, "batch_size": 64, "select": "last"}}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    launch("run", str(cfg), "--out", str(tmp_path / "two"))
    one, two = tmp_path / "one", tmp_path / "two"
    stage = next(p.parent.name for p in two.glob("*/selection.json")
                 if json.loads(p.read_text())["processes"] == 2)
    weights = [load_file(run / stage / "model.safetensors") for run in (one, two)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-4, rtol=0) for k in weights[0])
    history = [json.loads((run / stage / "history.json").read_text()) for run in (one, two)]
    assert [h["train_loss"] for h in history[1]] == pytest.approx([h["train_loss"] for h in history[0]], rel=1e-4)
    m1, m2 = metrics(one), metrics(two)
    assert abs(m1["test"]["unbiased_accuracy"] - m2["test"]["unbiased_accuracy"]) <= 0.01


def test_two_processes_set_a_broken_checkpoint_aside_once_and_both_restart(tmp_path, fake_mnist):
    """Only the main process reads a checkpoint first and sets a broken one aside; the other learns that and starts
    afresh with it, instead of failing on the renamed file or resuming alone."""
    cfg = tmp_path / "erm.yaml"
    cfg.write_text(yaml.safe_dump({"name": "tiny", "method": "erm",
                                   "data": {"name": "cmnist", "conflict_ratio": 0.05, "mnist_path": str(fake_mnist)},
                                   "classifier": {"epochs": 2, "batch_size": 64, "select": "last"}}))
    run = tmp_path / "two"
    launch("run", str(cfg), "--out", str(run))
    stage = run / "classifier"
    clean = load_file(stage / "model.safetensors")
    for name in ("DONE", "model.safetensors"):
        (stage / name).unlink()
    (stage / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"truncated")
    out = launch("run", str(cfg), "--out", str(run))
    assert out.count("set aside") == 1
    assert [p.name.split(".corrupt-")[0] for p in stage.glob("*.corrupt-*")] == ["checkpoint.safetensors"]
    again = load_file(stage / "model.safetensors")
    assert all(torch.equal(clean[k], again[k]) for k in clean)  # restarted from scratch on both: the same weights


def test_two_process_ddb_finishes_and_matches_one_process(tmp_path, fake_mnist):
    # fp32: bf16 autocast rounds differently for other batch shapes, so only fp32 can compare images exactly
    args = ["run", "configs/demo.yaml", "--quiet", "--set", f"data.mnist_path={fake_mnist}",
            "--set", "data.conflict_ratio=0.05", *TINY, "--set", "diffusion.precision=fp32",
            "--set", "sampling.precision=fp32"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    launch(*args, "--out", str(two))
    stages = [p for p in two.iterdir() if p.is_dir() and (p / "KEY").exists()]
    assert len(stages) > 10 and all((p / "DONE").read_text() == (p / "KEY").read_text() for p in stages)
    assert json.loads((two / "diffusion" / "train.json").read_text())["processes"] == 2
    assert (two / "report.md").exists() and (two / "gallery" / "ranked.csv").exists()

    # the gradients of two half batches are averaged across processes: equal to one process's up to float order
    unet = [load_file(run / "diffusion" / "unet.safetensors") for run in (one, two)]
    assert all(torch.allclose(unet[0][k], unet[1][k], atol=1e-4, rtol=0) for k in unet[0])
    # each process samples half the images with their own seeds, the main one writes them all
    syn = [load_file(run / "synthetic" / "synthetic.safetensors") for run in (one, two)]
    assert torch.equal(syn[0]["seeds"], syn[1]["seeds"]) and torch.equal(syn[0]["labels"], syn[1]["labels"])
    diff = (syn[0]["images"].int() - syn[1]["images"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # a weight ~1e-6 away may round a pixel over
    m1, m2 = metrics(one), metrics(two)
    assert 0 <= m2["test"]["unbiased_accuracy"] <= 1 and 0 <= m2["detection"]["auroc"] <= 1
    if diff.max() == 0:  # the same synthetic images: every later stage runs on the main process, identically
        for key in ("test", "valid", "detection", "detection_references", "amplification"):
            assert m2[key] == m1[key], key


def test_two_process_diffinject_splits_the_injection_and_matches_one_process(tmp_path, fake_mnist):
    from test_diffinject import TINY as DI_TINY

    args = ["run", "configs/cmnist/diffinject.yaml", "--quiet", "--set", f"data.mnist_path={fake_mnist}",
            "--set", "data.conflict_ratio=0.05", *DI_TINY, "--set", "diffusion.precision=fp32",
            "--set", "injection.precision=fp32", "--set", "injection.batch_size=16"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    launch(*args, "--out", str(two))
    stages = [p for p in two.iterdir() if p.is_dir() and (p / "KEY").exists()]
    assert all((p / "DONE").read_text() == (p / "KEY").read_text() for p in stages)
    h = [load_file(run / "injection" / "content_h.safetensors") for run in (one, two)]
    assert h[0].keys() == h[1].keys() and all(torch.allclose(h[0][k], h[1][k], atol=1e-3) for k in h[0])
    injected = [load_file(run / "injection" / "injected.safetensors") for run in (one, two)]
    for k in ("style", "content", "seeds"):  # the same pairs, whoever computes them
        assert torch.equal(injected[0][k], injected[1][k])
    diff = (injected[0]["images"].int() - injected[1]["images"].int()).abs()
    assert len(diff) > 32 and diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    if diff.max() == 0:
        assert metrics(two)["test"] == metrics(one)["test"]


@pytest.mark.parametrize("env, shard", [
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, (3, 8)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"}, (4, 8)),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "RANK": "1", "WORLD_SIZE": "2"}, (2, 4)),
    ({"RANK": "1", "WORLD_SIZE": "3"}, (1, 3)),
])
def test_shard_auto_from_slurm_or_launcher(monkeypatch, env, shard):
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert parse_shard("auto") == shard


def test_shard_auto_without_a_scheduler_says_what_it_reads(monkeypatch):
    for var in ("SLURM_ARRAY_TASK_ID", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID.*RANK and WORLD_SIZE.*--shard i/n"):
        parse_shard("auto")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")  # a task of --array=0-15:4 or 1,3,7: not a contiguous range
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    with pytest.raises(ConfigError, match="--array=0-N"):
        parse_shard("auto")


def test_python_m_diffdebias_help():
    done = subprocess.run([sys.executable, "-m", "diffdebias", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: diffdebias" in done.stdout


def test_two_processes_that_need_the_same_dataset_build_it_once(tmp_path, fake_mnist, monkeypatch):
    """The second waits on the dataset's lock and reads what the first built (flock locks conflict between open
    files, so two threads stand in for two processes)."""
    import threading
    import time

    import diffdebias.data as data
    from diffdebias.config import DataConfig

    build, builds = data._build, []

    def slow_build(cfg, path, log):
        builds.append(path)
        time.sleep(0.5)  # long enough for the other to find the lock taken
        return build(cfg, path, log)

    monkeypatch.setattr(data, "_build", slow_build)
    cfg = DataConfig(name="cmnist", conflict_ratio=0.05, mnist_path=str(fake_mnist), cache_dir=str(tmp_path / "c"))
    logs: list[str] = []
    out: list = [None, None]

    def load(i: int) -> None:
        out[i] = data.load_dataset(cfg, log=logs.append)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=60)
    assert len(builds) == 1 and sum("another process is building it" in m for m in logs) == 1
    assert torch.equal(out[0].train.images, out[1].train.images)
