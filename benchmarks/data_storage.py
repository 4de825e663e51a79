"""Images in RAM or memory-mapped from the dataset cache: read time, epoch time and memory.

Part 1, Colored MNIST at 1 % (the default dataset): each reader runs in its own child process (its own peak RSS):
  - ``load_file``: safetensors' reader, what the cache used before ``data.storage`` existed;
  - ``ram``: the store read into memory (``data.storage=ram``, what ``auto`` picks when the images fit);
  - ``mapped``: the images memory-mapped (``data.storage=mapped``).
  Each prints the seconds to read the cache, then trains the LfF MLP for one epoch (batch 256) on the training split
  and prints its seconds and the process's peak RSS.
Part 2 (``--large GB``): a generated set of 64 px images taking GB (default 0.55 x this machine's memory) is written
  chunk by chunk into a dataset cache file (``allocated_store``), then one epoch of the MLP trains on it with
  ``data.storage=auto``, which maps it. Printed: seconds, peak RSS (file pages the kernel may drop included) and the
  largest anonymous RSS seen (memory that cannot be dropped: what runs a machine out of memory).

    OMP_NUM_THREADS=2 python benchmarks/data_storage.py --repeats 3
    OMP_NUM_THREADS=2 python benchmarks/data_storage.py --skip-cmnist --large 13
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def anon_rss_sampler() -> tuple[threading.Event, list[int]]:
    """Sample RssAnon (kB) every 50 ms until the event is set; the list holds the largest value seen."""
    stop, peak = threading.Event(), [0]

    def run() -> None:
        while not stop.is_set():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
            time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()
    return stop, peak


def child(mode: str, path: str) -> None:
    """Read the cache at ``path`` as ``mode``, train one epoch, print one JSON line."""
    import torch
    from safetensors.torch import load_file

    from diffdebias.classifiers.train import train_classifier
    from diffdebias.config import TrainConfig
    from diffdebias.data import ImageSet, read_splits
    from diffdebias.data.store import fits_in_memory, image_bytes
    from diffdebias.runs import Stage

    stop, anon = anon_rss_sampler()
    t0 = time.perf_counter()
    if mode == "load_file":
        t = load_file(path)
        train = ImageSet(t["train.images"], t["train.labels"])
    else:
        mapped = mode == "mapped" or (mode == "auto" and not fits_in_memory(image_bytes(path)))
        train = read_splits(Path(path), mapped=mapped).train
    read = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        stage = Stage("classifier", Path(d), "bench", 0, log=lambda m: None)
        t0 = time.perf_counter()
        train_classifier(stage, train, TrainConfig(epochs=1, select="last"), int(train.labels.max()) + 1)
        epoch = time.perf_counter() - t0
    stop.set()
    print(json.dumps({"mode": mode, "read_s": round(read, 3), "epoch_s": round(epoch, 2),
                      "images_gb": round(train.images.numel() / 1e9, 2), "threads": torch.get_num_threads(),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                      "max_anon_rss_gb": round(anon[0] / 1e6, 2)}), flush=True)


def run_child(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cmnist_cache() -> Path:
    from diffdebias.config import load_config
    from diffdebias.data import cache_dir, dataset_key, load_dataset

    cfg = load_config(None, ["data.conflict_ratio=0.01"]).data
    load_dataset(cfg)
    return cache_dir(cfg) / f"cmnist-{dataset_key(cfg)}.safetensors"


def generated_cache(gigabytes: float, folder: Path, side: int = 64, chunk: int = 4096) -> Path:
    """A dataset cache of ``gigabytes`` of 64 px images in 10 classes (a class-coloured square on noise), written
    chunk by chunk: never whole in memory."""
    import numpy as np
    import torch

    from diffdebias.data.store import allocated_store

    n = int(gigabytes * 1e9 // (3 * side * side))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    specs = {"train.images": (torch.uint8, (n, 3, side, side)), "train.labels": (torch.int64, (n,))}
    for split in ("valid", "test"):
        specs |= {f"{split}.images": (torch.uint8, (100, 3, side, side)), f"{split}.labels": (torch.int64, (100,))}
    meta = {"num_classes": 10, "num_bias": 0, "class_names": [str(c) for c in range(10)], "name": "generated",
            "paths": {}}
    path = folder / "generated.safetensors"
    with allocated_store(path, specs, meta) as arrays:
        for start in range(0, n, chunk):
            y = labels[start:start + chunk]
            block = rng.integers(0, 64, (len(y), 3, side, side), dtype=np.uint8)
            for c in range(10):
                block[y == c, c % 3, 8 * (c // 3):8 * (c // 3) + 16, 8:24] = 255
            arrays["train.images"][start:start + len(y)] = block
        arrays["train.labels"][:] = labels
        for split in ("valid", "test"):
            arrays[f"{split}.images"][:] = arrays["train.images"][:100]
            arrays[f"{split}.labels"][:] = labels[:100]
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help="rounds over the Colored MNIST readers (alternating)")
    p.add_argument("--skip-cmnist", action="store_true")
    p.add_argument("--large", type=float, nargs="?", const=0.0, default=None,
                   help="also train on a generated set of this many GB (no value: 0.55 x this machine's memory)")
    p.add_argument("--tmp", default=None, help="folder for the generated set (default: the system's temp folder)")
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    if not args.skip_cmnist:
        path = cmnist_cache()
        for r in range(args.repeats):
            for mode in ("load_file", "ram", "mapped"):
                print(json.dumps({"round": r + 1, **run_child(mode, path)}), flush=True)
    if args.large is not None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        size = args.large or 0.55 * total
        with tempfile.TemporaryDirectory(dir=args.tmp) as d:
            t0 = time.perf_counter()
            path = generated_cache(size, Path(d))
            print(json.dumps({"generated_gb": round(size, 2), "machine_gb": round(total, 2),
                              "write_s": round(time.perf_counter() - t0, 1)}), flush=True)
            print(json.dumps(run_child("auto", path)), flush=True)


if __name__ == "__main__":
    main()
