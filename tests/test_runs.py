import json
import threading
import time

import pytest
import torch

from diffdebias.keys import Source, reads
from diffdebias.runs import Run, atomic_path, generator, load_state, save_state, write_json


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_state_round_trip_with_adam():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "best": -1.5}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_state(f"{d}/s.safetensors", state)
        back = load_state(f"{d}/s.safetensors")
    assert back["epoch"] == 3 and back["best"] == -1.5
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.01
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(back["model"]["weight"], model.weight.detach())


def test_stage_cache_skips_and_invalidates(tmp_path):
    calls = []

    def compute(stage):
        calls.append(stage.name)
        (stage.path("out.txt")).write_text("x")

    run = Run(tmp_path, seed=1, quiet=True)
    run.cached("a", compute, reads(k=1))
    run.cached("a", compute, reads(k=1))
    assert calls == ["a"]
    run.cached("a", compute, reads(k=2))  # config changed: recomputed
    assert calls == ["a", "a"]
    run.cached("a", compute, reads(Source("up", "upstream-changed"), k=2))
    assert calls == ["a", "a", "a"]
    assert Run(tmp_path, seed=2, quiet=True).stage("a", reads(k=2)).key != run.stage("a", reads(k=2)).key


def test_interrupted_stage_keeps_its_files_and_resumes(tmp_path):
    run = Run(tmp_path, seed=0, quiet=True)

    def crash(stage):
        stage.path("checkpoint").write_text("epoch 3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.cached("train", crash, reads(k=1))
    seen = []

    def resume(stage):
        seen.append(stage.path("checkpoint").read_text())

    run.cached("train", resume, reads(k=1))
    assert seen == ["epoch 3"]
    assert run.stage("train", reads(k=1)).done


def test_generators_are_seeded_by_parts():
    a = torch.randn(3, generator=generator(1, "stage", 0))
    b = torch.randn(3, generator=generator(1, "stage", 0))
    c = torch.randn(3, generator=generator(1, "stage", 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_shared_stage_cache_computes_a_stage_once_across_runs(tmp_path):
    calls = []

    def compute(stage):
        calls.append(stage.name)
        stage.path("weights.txt").write_text(stage.name)

    cache = tmp_path / "cache"
    a = Run(tmp_path / "a", seed=1, quiet=True, stage_cache=cache)
    b = Run(tmp_path / "b", seed=1, quiet=True, stage_cache=cache)
    a.cached("diffusion", compute, reads(steps=5))
    b.cached("diffusion", compute, reads(steps=5))
    assert calls == ["diffusion"]
    assert (tmp_path / "b" / "diffusion" / "weights.txt").read_text() == "diffusion"  # linked into run b
    b.cached("diffusion", compute, reads(steps=6))  # another config: another cache entry, relinked
    assert calls == ["diffusion", "diffusion"]
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert (tmp_path / "a" / "diffusion").resolve() != (tmp_path / "b" / "diffusion").resolve()
    Run(tmp_path / "c", seed=2, quiet=True, stage_cache=cache).cached("diffusion", compute, reads(steps=5))
    assert len(calls) == 3  # another seed is another stage


def test_two_processes_needing_one_stage_compute_it_once(tmp_path):
    """Bench shards share a stage cache: the second to arrive waits on the stage's lock, then finds it done."""
    calls, waits = [], []
    started = threading.Event()

    def slow(stage):
        calls.append(stage.name)
        started.set()
        time.sleep(0.5)
        stage.path("weights.txt").write_text("trained")

    cache = tmp_path / "cache"
    first = Run(tmp_path / "a", seed=1, quiet=True, stage_cache=cache)
    second = Run(tmp_path / "b", seed=1, quiet=True, stage_cache=cache)
    second.log = waits.append
    worker = threading.Thread(target=first.cached, args=("diffusion", slow, reads(steps=5)))
    worker.start()
    assert started.wait(10)
    st = second.cached("diffusion", slow, reads(steps=5))
    worker.join()
    assert calls == ["diffusion"]
    assert any("waiting" in w for w in waits)
    assert second.events == [{"stage": "diffusion", "skipped": True}]
    assert (tmp_path / "b" / "diffusion" / "weights.txt").read_text() == "trained" and st.done


def test_chunked_work_resumes_at_the_chunks_it_lacks(tmp_path):
    from diffdebias.runs import chunked

    run = Run(tmp_path / "run", seed=0, quiet=True)
    st = run.stage("images")
    st.prepare()
    asked = []

    def compute(start, stop):
        asked.append((start, stop))
        if start == 8 and len(asked) < 4:
            raise KeyboardInterrupt  # killed in the third chunk
        return torch.arange(start, stop)

    with pytest.raises(KeyboardInterrupt), chunked(st, 10, 4, compute):
        pass
    assert sorted(p.name for p in st.dir.glob("chunk_*")) == ["chunk_0000.safetensors", "chunk_0001.safetensors"]
    resumed = []
    with pytest.raises(RuntimeError), chunked(st, 10, 4, compute, resumed.append) as whole:
        raise RuntimeError  # the block that saves the whole fails: the chunks stay
    assert resumed == [8] and asked[3:] == [(8, 10)] and torch.equal(whole, torch.arange(10))
    with chunked(st, 10, 4, compute) as again:
        assert torch.equal(again, torch.arange(10)) and len(asked) == 4  # every chunk saved: nothing computed
    assert not list(st.dir.glob("chunk_*"))
