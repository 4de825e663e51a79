"""The dataset cache file: standard safetensors, written without a second copy, read into RAM or memory-mapped."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffdebias.cli import main
from diffdebias.config import DataConfig
from diffdebias.data import cache_dir, load_dataset
from diffdebias.data.store import image_bytes, read_store, write_store


def file_backed(t: torch.Tensor, path) -> bool:
    """Whether the tensor's memory is a mapping of ``path`` (Linux: /proc/self/maps)."""
    ptr = t.data_ptr()
    for line in open("/proc/self/maps"):
        span, *rest = line.split()
        start, end = (int(v, 16) for v in span.split("-"))
        if start <= ptr < end:
            return rest[-1] == str(path.resolve())
    return False


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return {"train.images": torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g),
            "train.labels": torch.randint(0, 3, (50,), generator=g),
            "test.images": torch.zeros((0, 3, 8, 8), dtype=torch.uint8)}


def test_a_store_is_a_safetensors_file(tmp_path, tensors):
    write_store(tmp_path / "s.safetensors", tensors, {"classes": ["a", "b", "c"]})
    back = load_file(str(tmp_path / "s.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    same, meta = read_store(tmp_path / "s.safetensors")
    assert meta == {"classes": ["a", "b", "c"]} and all(torch.equal(same[k], tensors[k]) for k in tensors)
    assert image_bytes(tmp_path / "s.safetensors") == 50 * 3 * 8 * 8


def test_mapped_images_are_read_from_disk_and_never_written_back(tmp_path, tensors):
    path = tmp_path / "s.safetensors"
    write_store(path, tensors)
    before = path.read_bytes()
    mapped, _ = read_store(path, {"train.images"})
    assert file_backed(mapped["train.images"], path)
    assert not file_backed(read_store(path)[0]["train.images"], path)
    assert torch.equal(mapped["train.images"][torch.tensor([7, 3])], tensors["train.images"][[7, 3]])
    mapped["train.images"][0] += 1  # copy-on-write: the process's own page changes, the file does not
    assert path.read_bytes() == before


def test_a_run_on_mapped_images_equals_one_in_ram(tmp_path, image_folder):
    csv, root = image_folder
    results = []
    for storage in ("ram", "mapped"):
        out = tmp_path / storage
        assert main(["run", _config(tmp_path), "--quiet", "--out", str(out), "--set", f"data.csv={csv}",
                     "--set", f"data.root={root}", "--set", f"data.storage={storage}"]) == 0
        results.append(json.loads((out / "metrics.json").read_text())["test"])
    assert results[0] == results[1]
    cfg = DataConfig(name="csv", csv=str(csv), root=str(root), storage="mapped")
    (path,) = cache_dir(cfg).glob("csv-*.safetensors")
    assert file_backed(load_dataset(cfg).train.images, path)


def _config(tmp_path) -> str:
    path = tmp_path / "erm.yaml"
    path.write_text("method: erm\ndata: {name: csv}\nclassifier: {epochs: 2, batch_size: 16, select: last}\n")
    return str(path)


def test_a_changed_cache_file_is_rebuilt_even_when_mapped(tmp_path, image_folder):
    csv, root = image_folder
    cfg = DataConfig(name="csv", csv=str(csv), root=str(root), storage="mapped")
    first = load_dataset(cfg).train.images.clone()
    (path,) = cache_dir(cfg).glob("csv-*.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a flipped byte and a new modification time: the recorded hash is checked again
    path.write_bytes(bytes(data))
    logs = []
    assert torch.equal(load_dataset(cfg, log=logs.append).train.images, first)
    assert any("fails its checksum" in m for m in logs)


def test_an_allocated_store_is_filled_in_chunks_and_appears_only_when_done(tmp_path, tensors):
    from diffdebias.data.store import allocated_store

    path = tmp_path / "big.safetensors"
    specs = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    with pytest.raises(RuntimeError):
        with allocated_store(path, specs) as arrays:
            arrays["train.images"][:10] = tensors["train.images"][:10].numpy()
            raise RuntimeError("killed while building")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with allocated_store(path, specs, {"n": 50}) as arrays:
        for start in range(0, 50, 16):
            arrays["train.images"][start:start + 16] = tensors["train.images"][start:start + 16].numpy()
        arrays["train.labels"][:] = tensors["train.labels"].numpy()
    back = load_file(str(path))
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
