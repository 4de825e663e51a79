"""How much could a better choice of synthetic images buy? The final classifier of a finished DiffInject run on
Colored MNIST, retrained on the real training set plus a subset of the run's synthetic images.

Subsets: ``all`` (the run's own set: retrained here, it reproduces the run's number); ``useful`` (an oracle: the
images the grey shape classifier reads as their label's digit and whose stroke is another class's colour, i.e. what a
perfect filter would keep; it reads the colour, the bias; the table gives each subset's share of them);
``similar`` (grey images correlated >= 0.7 with their style image: the style's digit kept); ``similar_conflicting``
(``similar`` and not assigned to their label by the run's GCE-biased classifier); ``neighbours`` (most of the 5 real
training images nearest in luminance carry the image's label); ``neighbours_conflicting`` (and the GCE-biased
classifier does not assign it to that label); ``similar_neighbours_conflicting`` (all three); ``black`` (every
image, its black level matched to the real images', as ``diffinject.match_black``); ``conflicting`` (not assigned to
their label by the GCE-biased classifier: an unsupervised filter); ``black_<subset>`` (that subset with the black
level matched: e.g. ``black_useful``, what a perfect filter would add to the option). Same classifier settings as the
run (its ``classifier`` section), selection as the run's; test unbiased accuracy.

    python benchmarks/synthetic_subsets.py runs/di/mean-s50-r03-s1 --subsets useful similar all
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

BASES = ("all", "useful", "similar", "conflicting", "similar_conflicting", "palette", "neighbours",
         "neighbours_conflicting", "similar_neighbours_conflicting")
SUBSETS = BASES + ("black",) + tuple(f"black_{b}" for b in BASES if b != "all")


def snap_to_palette(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) images redrawn as ``colour * grey`` with each image's palette colour (N, 3) in [0, 1]; the
    grey is each pixel's projection on that colour, so the stroke's shape and brightness stay."""
    x = images.float() / 255
    c = colours[:, :, None, None].float()
    grey = ((x * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True)).clamp(0, 1)
    return (c * grey * 255).round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished DiffInject run directory on Colored MNIST")
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS), choices=SUBSETS)
    args = parser.parse_args()

    from diffdebias.classifiers.train import evaluate, predict_logits, train_classifier
    from diffdebias.data.base import ImageSet
    from diffdebias.data.cmnist import COLORS
    from diffdebias.evaluation.amplification import to_grey
    from diffdebias.methods.common import Context, train_stage
    from diffdebias.methods.synthetic_filters import match_black_level, neighbours_agree, pearson
    from diffdebias.runs import Run, Stage, load_tensors
    from injection_probe import load_probe

    p = load_probe(args.run)
    cfg = p.cfg
    ctx = Context(cfg, Run(args.run, cfg.seed, quiet=True))
    d = ctx.data
    t, _ = load_tensors(args.run / "injection" / "injected.safetensors")
    images, style = t["images"], t["style"]
    labels = d.train.labels[t[cfg.diffinject.label_source]]
    grey = to_grey(images)
    similar = pearson(grey, to_grey(d.train.images[style])) >= 0.7
    biased = train_stage(ctx, "biased_classifier", cfg.amplifier).model
    conflicting = predict_logits(biased, images).argmax(1) != labels
    everything = torch.ones(len(images), dtype=torch.bool)
    colours = p.colours(images)
    useful = (p.digits(images) == labels) & (colours != labels)
    neighbours = neighbours_agree(images, labels, d.train, 5)
    keep = {"all": everything, "palette": everything, "useful": useful, "similar": similar,
            "conflicting": conflicting, "similar_conflicting": similar & conflicting,
            "neighbours": neighbours, "neighbours_conflicting": neighbours & conflicting,
            "similar_neighbours_conflicting": similar & neighbours & conflicting}
    print("subset  images  useful_share  unbiased  conflicting")
    for name in args.subsets:
        m = keep[name.removeprefix("black").removeprefix("_") or "all"]
        chosen = snap_to_palette(images, COLORS[colours]) if name.endswith("palette") else images
        chosen = match_black_level(chosen, d.train.images) if name.startswith("black") else chosen
        chosen = chosen[m]
        train = ImageSet(torch.cat([d.train.images, chosen]), torch.cat([d.train.labels, labels[m]]))
        with tempfile.TemporaryDirectory() as tmp:
            # the run's stage name: the same initial weights and batch order seeds as the run's final classifier
            stage = Stage("classifier", Path(tmp), "subset", cfg.seed, log=lambda s: None)
            model = train_classifier(stage, train, cfg.classifier, d.num_classes, d.valid, d.num_bias)
        r = evaluate(model, d.test, d.num_classes, d.num_bias)
        share = float((useful & m).sum()) / max(int(m.sum()), 1)  # the oracle's share of the subset
        print(f"{name}  {int(m.sum())}  {share:.3f}  {100 * r['unbiased_accuracy']:.2f}  "
              f"{100 * r['conflicting_accuracy']:.2f}", flush=True)


if __name__ == "__main__":
    main()
