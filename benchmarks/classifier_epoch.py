"""Time one training epoch of the LfF MLP over the 60k Colored MNIST training images (train + valid splits).

Uses the toolkit's own loop (`train_classifier`), so the number covers batching from uint8 tensors, the weighting
object and the optimizer step. Prints one line per precision and the median epoch time.

    .venv/bin/python benchmarks/classifier_epoch.py [--epochs 5] [--ratio 0.01]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from diffdebias.classifiers.train import train_classifier
from diffdebias.config import DataConfig, TrainConfig
from diffdebias.data import load_dataset
from diffdebias.data.base import ImageSet
from diffdebias.runs import Run, read_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--ratio", type=float, default=0.01)
    p.add_argument("--precisions", default="fp32,bf16")
    args = p.parse_args()

    d = load_dataset(DataConfig(conflict_ratio=args.ratio))
    full = ImageSet(torch.cat([d.train.images, d.valid.images]), torch.cat([d.train.labels, d.valid.labels]))
    print(f"images={len(full)} threads={torch.get_num_threads()} torch={torch.__version__}")
    results = {}
    for precision in args.precisions.split(","):
        cfg = TrainConfig(arch="mlp", epochs=args.epochs, batch_size=256, lr=1e-3, select="last",
                          precision=precision, eval_every=args.epochs)
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(tmp, seed=0, quiet=True)
            st = run.cached("bench", lambda s, c=cfg: train_classifier(s, full, c, 10))
            times = [h["seconds"] for h in read_json(st.path("history.json"))][1:]  # first epoch is warm-up
        results[precision] = statistics.median(times)
        print(f"precision={precision} epoch_seconds_median={results[precision]:.3f} all={[round(t, 3) for t in times]}")
    print(" ".join(f"{k}_epoch_s={v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
