"""Why does a DDB amplifier trained on synthetic images miss real bias-conflicting samples? (Colored MNIST)

Takes a finished DDB run, retrains its amplifier (the run's ``amplifier`` config, the library's training loop and
valid selection) on variants of the run's synthetic set, and scores the real training split:
  - ``--per-class N``: the first N synthetic images of each class (a learning curve over the synthetic set's size);
  - ``--aligned-only``: only the synthetic images whose stroke colour is their class's (reads the bias: a diagnostic
    of whether the synthetic set's own conflicting images are what the amplifier learns shape from);
  - ``--match-histogram``: each channel's pixel distribution mapped onto the real training split's (a global colour
    shift between generated and real images);
  - ``--weight-decay``: the amplifier's weight decay;
  - ``--amp KEY=VALUE[,KEY=VALUE]``: any other ``amplifier`` fields (e.g. ``gce_q=0.9`` or ``arch=mlp16,epochs=20``).
Printed per variant: real valid accuracy and the selected epoch, AUROC / AP of the loss, the error set's size,
precision and recall; then where the errors come from: the share of misclassified aligned samples whose colour reads
as their own class's, and what the amplifier predicts for conflicting samples (their colour, their label, or neither).

    python benchmarks/amplifier_probe.py runs/bench/cmnist/ddb/ratio0.01-seed1 --per-class 25 50 100 200
    python benchmarks/amplifier_probe.py runs/bench/cmnist/ddb/ratio0.01-seed1 --aligned-only --match-histogram
    python benchmarks/amplifier_probe.py runs/bench/cmnist/ddb/ratio0.01-seed1 --amp gce_q=0.9 --amp arch=mlp16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # one line per variant, not a progress bar per epoch

import torch  # noqa: E402


def match_histogram(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-channel quantile mapping of uint8 ``images`` onto ``reference``'s pixel distribution."""
    out = images.clone()
    for c in range(images.shape[1]):
        cdf = [torch.bincount(x[:, c].flatten().long(), minlength=256).double().cumsum(0) for x in (images, reference)]
        lut = torch.searchsorted(cdf[1] / cdf[1][-1], cdf[0] / cdf[0][-1]).clamp(max=255).to(torch.uint8)
        out[:, c] = lut[images[:, c].long()]
    return out


def first_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([(labels == k).nonzero().squeeze(1)[:n] for k in labels.unique()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished DDB run directory on Colored MNIST")
    parser.add_argument("--per-class", type=int, nargs="*", default=[], help="synthetic images per class")
    parser.add_argument("--aligned-only", action="store_true")
    parser.add_argument("--match-histogram", action="store_true")
    parser.add_argument("--weight-decay", type=float, nargs="*", default=[])
    parser.add_argument("--amp", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="a variant with these amplifier fields changed (repeatable)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip retraining the run's own amplifier (its numbers are in the run's metrics.json)")
    args = parser.parse_args()

    from diffdebias.classifiers.train import predict_logits, train_classifier
    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.data.base import ImageSet
    from diffdebias.evaluation.amplification import nearest_color, stroke_colors
    from diffdebias.evaluation.metrics import detection_metrics
    from diffdebias.runs import Stage, load_tensors

    cfg = load_config(args.run / "config.yaml")
    d = load_dataset(cfg.data)
    tr = d.train
    syn, _ = load_tensors(args.run / "synthetic" / "synthetic.safetensors")
    synthetic = ImageSet(syn["images"], syn["labels"])
    colour = nearest_color(stroke_colors(tr.images))
    conflicting = (tr.labels != tr.bias).numpy()

    variants = {} if args.no_baseline else {"as the run": (synthetic, cfg.amplifier)}
    for n in args.per_class:
        variants[f"{n} per class"] = (synthetic.subset(first_per_class(synthetic.labels, n)), cfg.amplifier)
    if args.aligned_only:
        keep = (nearest_color(stroke_colors(synthetic.images)) == synthetic.labels).nonzero().squeeze(1)
        variants[f"aligned only ({len(keep)})"] = (synthetic.subset(keep), cfg.amplifier)
    if args.match_histogram:
        variants["histogram matched"] = (ImageSet(match_histogram(synthetic.images, tr.images), synthetic.labels),
                                         cfg.amplifier)
    for wd in args.weight_decay:
        variants[f"weight decay {wd:g}"] = (synthetic, dataclasses.replace(cfg.amplifier, weight_decay=wd))
    for spec in args.amp:
        variant = load_config(args.run / "config.yaml", [f"amplifier.{kv}" for kv in spec.split(",")])
        variants[spec] = (synthetic, variant.amplifier)

    print(f"{args.run}: {len(synthetic)} synthetic images, {int(conflicting.sum())} conflicting of {len(tr)} real")
    for name, (train, amp_cfg) in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            stage = Stage("amplifier", Path(tmp), "probe", seed=cfg.seed, log=lambda msg: None)
            model = train_classifier(stage, train, amp_cfg, d.num_classes,
                                     d.valid if amp_cfg.select == "valid" else None)
            selection = json.loads((Path(tmp) / "selection.json").read_text())
        logits = predict_logits(model, tr.images)
        loss = torch.nn.functional.cross_entropy(logits, tr.labels, reduction="none").numpy()
        pred = logits.argmax(1)
        err = (pred != tr.labels).numpy()
        m = detection_metrics(loss, err, conflicting)
        aligned_err = torch.from_numpy(err & ~conflicting)
        conf = torch.from_numpy(conflicting)
        print(f"- {name}: AUROC {m['auroc']:.4f}, AP {m['average_precision']:.3f}; error set {int(err.sum())}, "
              f"precision {m['precision']:.3f}, recall {m['recall']:.3f}; epoch {selection['epoch'] + 1} kept "
              f"(select={selection['select']}, real valid accuracy {selection['score'] or float('nan'):.3f})")
        print(f"    misclassified aligned: {int(aligned_err.sum())}, colour read as their class's: "
              f"{float((colour[aligned_err] == tr.labels[aligned_err]).double().mean()):.3f}; conflicting predicted "
              f"as their colour {float((pred[conf] == tr.bias[conf]).double().mean()):.3f}, as their label "
              f"{float((pred[conf] == tr.labels[conf]).double().mean()):.3f}", flush=True)


if __name__ == "__main__":
    main()
