"""Building a real-image dataset's cache: in memory (``Source.build``, then the cache file written from the stacked
tensors) or straight into the file (``Source.write``: each image decoded into its row of the mapped file).

A BFFHQ-layout tree of ``--images`` JPEGs (96 x 80, resized and centre-cropped to ``--side`` px) is generated once;
each way then runs ``load_dataset`` (``data.storage=mapped``, so reading the cache back adds nothing) in its own child
process, alternating, ``--repeats`` times. Printed per run: the build's seconds, the process's peak RSS
(``ru_maxrss``: file pages of the mapped cache the kernel may drop included), its RSS before the build (imports), the
largest anonymous RSS seen (memory that cannot be dropped: what runs a machine out of memory), and the cache file's
checksum (the two ways write the same bytes).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/streaming_build.py --images 5000 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_storage import anon_rss_sampler

os.environ.setdefault("TQDM_DISABLE", "1")


def generate(root: Path, n: int) -> None:
    """``n`` images of 2 classes in BFFHQ's layout (0.5pct/{align,conflict}/<label>/, valid/, test/, files
    ``<id>_<label>_<bias>.jpg``): 80 % train (5 % of them bias-conflicting), 10 % valid, 10 % test."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        y = i % 2
        split = "train" if i % 10 < 8 else ("valid" if i % 10 == 8 else "test")
        b = 1 - y if (rng.random() < (0.05 if split == "train" else 0.5)) else y
        folder = root / "0.5pct" / ("align" if b == y else "conflict") / str(y) if split == "train" else root / split
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 96, (96, 80, 3), dtype=np.uint8)
        pixels[10:40, 10:40, y] = 255  # the label's square, and the bias's
        pixels[50:80, 40:70, 2 - b] = 255
        Image.fromarray(pixels).save(folder / f"{i:06d}_{y}_{b}.jpg", quality=90)


def child(mode: str, root: str, cache: str, side: int) -> None:
    """Build the cache of the tree at ``root`` into ``cache`` the ``mode`` way; print one JSON line."""
    from dataclasses import replace

    from diffdebias.config import DataConfig
    from diffdebias.data import SOURCES, load_dataset

    if mode == "memory":  # the path every dataset took before Source.write: Splits in memory, then the file
        SOURCES["bffhq"] = replace(SOURCES["bffhq"], write=None)
    cfg = DataConfig(name="bffhq", root=root, image_size=side, conflict_ratio=0.005, cache_dir=cache,
                     storage="mapped").validate()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stop, anon = anon_rss_sampler()
    t0 = time.perf_counter()
    splits = load_dataset(cfg, log=lambda m: None)
    seconds = time.perf_counter() - t0
    stop.set()
    n = sum(len(splits.split(s)) for s in ("train", "valid", "test"))
    print(json.dumps({"mode": mode, "images": n, "images_mb": round(n * 3 * side * side / 1e6, 1),
                      "build_s": round(seconds, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3),
                      "rss_before_mb": round(before / 1e3), "max_anon_rss_mb": round(anon[0] / 1e3),
                      "sha256": splits.fingerprint[:12]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=4, metavar=("MODE", "ROOT", "CACHE", "SIDE"), help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if args.child:
        mode, root, cache, side = args.child
        child(mode, root, cache, int(side))
        return
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        generate(Path(d) / "bffhq", args.images)
        print(json.dumps({"generated": args.images, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        sums = set()
        for r in range(args.repeats):
            for mode in ("memory", "write"):
                cache = Path(d) / f"cache-{mode}-{r}"
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(Path(d) / "bffhq"), str(cache),
                                      str(args.side)], capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                sums.add(result["sha256"])
                print(json.dumps({"round": r + 1, **result}), flush=True)
        assert len(sums) == 1, f"the two ways wrote different cache files: {sums}"


if __name__ == "__main__":
    main()
