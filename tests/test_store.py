"""The dataset cache file: standard safetensors, written without a second copy, read into RAM or memory-mapped."""

from __future__ import annotations

import json
import threading
import tracemalloc
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffdebias.cli import main
from diffdebias.config import DataConfig
from diffdebias.data import SOURCES, DatasetError, _save, cache_dir, generic, layout, load_dataset
from diffdebias.data.generic import load_images
from diffdebias.data.store import image_bytes, read_store, splits_layout, write_store
from diffdebias.runs import file_sha256
from test_benchmark_loaders import WRITERS, config, write_bffhq, write_celeba, write_named
from test_benchmark_metrics import imagenet_root, urbancars_root  # noqa: F401 (fixtures, by name in layout_root)


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


# ------------------------------------------------------------------------ layout datasets written into the cache
LAYOUT_NAMES = [*WRITERS, "urbancars", "imagenet9"]


def layout_root(name: str, tmp_path, request):
    """A small tree of ``name`` in its public layout (the fixture writers of the loaders' tests)."""
    if name in WRITERS:
        return WRITERS[name](tmp_path / name)
    return request.getfixturevalue({"urbancars": "urbancars_root", "imagenet9": "imagenet_root"}[name])


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_a_layout_dataset_written_into_the_cache_equals_the_one_built_in_memory(tmp_path, request, monkeypatch, name):
    monkeypatch.setattr(layout, "CHUNK_BYTES", 5 * 3 * 6 * 6)  # 5 images a chunk: the chunks must join up in order
    cfg = config(name, layout_root(name, tmp_path, request), image_size=6)  # every fixture image is resized
    source = SOURCES[name]
    source.write(cfg, tmp_path / "written.safetensors")
    built = source.build(cfg)
    _save(tmp_path / "built.safetensors", built)
    written, meta = read_store(tmp_path / "written.safetensors")
    tensors, expected = splits_layout(built)
    assert meta == expected and written.keys() == tensors.keys()
    assert all(torch.equal(written[k], tensors[k]) for k in tensors)
    assert len(built.train) > 5 and (name != "urbancars" or "train.extra_bias.co_occur_obj" in written)
    assert (tmp_path / "written.safetensors").read_bytes() == (tmp_path / "built.safetensors").read_bytes()


def test_load_dataset_writes_a_layout_dataset_into_its_cache_and_maps_it(tmp_path, monkeypatch):
    cfg = config("celeba", write_celeba(tmp_path / "celeba"), storage="mapped")
    expected = SOURCES["celeba"].build(cfg)
    monkeypatch.setitem(SOURCES, "celeba", replace(SOURCES["celeba"], build=None))  # the writer or nothing
    logs = []
    d = load_dataset(cfg, log=logs.append)
    (path,) = cache_dir(cfg).glob("celeba-*.safetensors")
    assert file_backed(d.train.images, path) and any("building" in m for m in logs)
    stat = path.stat()
    assert path.with_suffix(".sha256").read_text() == f"{d.fingerprint} {stat.st_size} {stat.st_mtime_ns}\n"
    assert d.fingerprint == file_sha256(path)
    for split in ("train", "valid", "test"):
        assert torch.equal(d.split(split).images, expected.split(split).images)
        assert d.split(split).paths == expected.split(split).paths
    logs.clear()
    again = load_dataset(replace(cfg, storage="ram"), log=logs.append)
    assert not logs and again.fingerprint == d.fingerprint and torch.equal(again.test.images, d.test.images)


def cache_files(cfg) -> list:
    """The dataset cache's files but the (empty) lock files that let one process build while another waits."""
    return [p for p in cache_dir(cfg).iterdir() if not p.name.endswith(".lock")]


def test_a_written_dataset_that_fails_leaves_no_cache(tmp_path):
    root = write_bffhq(tmp_path / "bffhq")
    cfg = config("bffhq", root)
    bad = root / "test" / sorted(p.name for p in (root / "test").iterdir())[3]
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=f"bffhq: test/{bad.name}: unreadable image"):
        load_dataset(cfg, log=lambda m: None)
    assert cache_files(cfg) == []  # not even the temporary file
    bad.unlink()
    for f in (root / "valid").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"bffhq dataset \(data.root=.*\): the valid split is empty"):
        load_dataset(cfg, log=lambda m: None)
    assert cache_files(cfg) == []  # checked after writing, and removed: as when built in memory


# ------------------------------------------------------------------------------- load_images into a preallocated array
def pictures(folder, n: int, same_size: bool = False) -> list:
    """``n`` PNGs of random pixels, of several sizes unless ``same_size``."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        files.append(folder / f"{i:03d}.png")
        shape = (10, 9) if same_size else (10 + i % 5, 9 + i % 3)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(files[-1])
    return files


def test_load_images_fills_a_memmap_in_order_with_the_stacked_bytes(tmp_path):
    files = pictures(tmp_path, 40)
    stacked = load_images(files, 8, 3, str, workers=4)
    out = np.memmap(tmp_path / "out.bin", np.uint8, "w+", shape=(40, 3, 8, 8))
    assert torch.equal(load_images(files, 8, 3, str, workers=4, out=out), stacked)
    out.flush()
    assert (tmp_path / "out.bin").read_bytes() == stacked.numpy().tobytes()
    (tmp_path / "same").mkdir()
    same = pictures(tmp_path / "same", 6, same_size=True)
    out = np.zeros((6, 3, 10, 9), dtype=np.uint8)
    load_images(same, None, 3, str, workers=2, out=out)  # without image_size: the images' own size
    assert np.array_equal(out, load_images(same, None, 3, str, workers=2).numpy())
    with pytest.raises(DatasetError, match=r"001.png: image size \(11, 10\) differs from the other images' "
                                           r"\(10, 9\); set data.image_size"):
        load_images(files[:8], None, 3, lambda i: files[i].name, workers=2, out=np.zeros((8, 3, 10, 9), np.uint8))
    with pytest.raises(ValueError, match=r"out must be a \(40, 3, 8, 8\) uint8 array"):
        load_images(files, 8, 3, str, out=np.zeros((40, 3, 9, 9), np.uint8))


def test_load_images_into_out_holds_a_bounded_number_of_decoded_images(tmp_path, monkeypatch):
    """Every decoded image is counted while it lives: stacked, all 64 live at once; written into ``out``, no more than
    the threads decode at a time."""
    files = pictures(tmp_path, 64, same_size=True)
    live, peak, lock = [0], [0], threading.Lock()
    decode = generic._load_image

    def dropped() -> None:
        with lock:
            live[0] -= 1

    def counted(*args) -> np.ndarray:
        image = decode(*args)
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        weakref.finalize(image, dropped)
        return image

    monkeypatch.setattr(generic, "_load_image", counted)
    stacked = load_images(files, None, 3, str, workers=4)
    assert peak[0] == 64  # the count sees images held
    del stacked
    peak[0] = 0
    load_images(files, None, 3, str, workers=4, out=np.zeros((64, 3, 10, 9), np.uint8))
    assert 1 <= peak[0] <= 2 * 4 and live[0] == 0


def bffhq_tree(root, n: int):
    """A BFFHQ tree of 2n + 2 training images and 2 each in valid and test."""
    k = write_named(root / "0.5pct" / "align", {(0, 0): n, (1, 1): n}, 0, by_label=True)
    k = write_named(root / "0.5pct" / "conflict", {(0, 1): 1, (1, 0): 1}, k, by_label=True)
    k = write_named(root / "valid", {(0, 0): 1, (1, 1): 1}, k)
    write_named(root / "test", {(0, 0): 1, (1, 1): 1}, k)
    return root


def traced_peak(fn, *args) -> int:
    """The most memory Python and numpy allocations took while ``fn(*args)`` ran (tracemalloc; file mappings are
    not counted: they are the kernel's page cache)."""
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writing_a_layout_dataset_takes_memory_that_does_not_grow_with_it(tmp_path):
    """48 more images of 128 px (2.4 MB) raise the in-memory build's peak by twice their bytes (decoded, then
    stacked), and the writer's by a small fraction of them (file names and labels: 0.1 MB)."""
    source, small, large = SOURCES["bffhq"], bffhq_tree(tmp_path / "s", 8), bffhq_tree(tmp_path / "l", 32)
    added = 48 * 3 * 128 * 128
    peaks = {}
    for how in ("write", "build"):
        for root in (small, small, large):  # the first run warms lazy imports and caches up
            cfg = config("bffhq", root, image_size=128)
            args = (cfg, tmp_path / "c.safetensors") if how == "write" else (cfg,)
            peaks[how, root] = traced_peak(getattr(source, how), *args)
    assert peaks["build", large] - peaks["build", small] > 1.5 * added
    assert peaks["write", large] - peaks["write", small] < added / 4
    assert peaks["write", large] < added / 2


def test_a_streamed_dataset_is_checked_before_any_image_is_decoded(tmp_path, monkeypatch):
    root = WRITERS["waterbirds"](tmp_path / "wb")
    meta = root / "metadata.csv"
    rows = meta.read_text().splitlines()
    meta.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[3] != "2"]) + "\n")  # no test rows

    def decode(*args, **kwargs):
        raise AssertionError("an image was decoded before the splits were checked")

    monkeypatch.setattr(layout, "load_images", decode)
    with pytest.raises(DatasetError, match="test split is empty"):
        load_dataset(config("waterbirds", root))
    assert not list(cache_dir(config("waterbirds", root)).glob("waterbirds-*"))
