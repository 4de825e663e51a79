"""Colour and shape of a synthetic Colored MNIST set: does it carry the bias, and are its digits still digits?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..classifiers.train import predict_logits
from ..config import TrainConfig
from ..data.base import ImageSet
from ..keys import Reads, reads
from ..runs import Stage, read_json, write_json
from .common import Context, Trained, train_stage

SHAPE_CLASSIFIER = TrainConfig(arch="mlp", epochs=5, batch_size=256, lr=1e-3, select="last")


def shape_classifier(ctx: Context) -> Trained:
    """A digit classifier (:data:`SHAPE_CLASSIFIER`) trained on the real training images made grey (no colour)."""
    from ..evaluation.amplification import to_grey

    d = ctx.data
    return train_stage(ctx, "shape_classifier", SHAPE_CLASSIFIER,
                       train=ImageSet(to_grey(d.train.images), d.train.labels), valid=None)


def colour_shape_stage(
    ctx: Context, name: str, load: Callable[[], ImageSet], made_from: Reads) -> dict[str, Any]:
    """Bias-aligned fraction (stroke colour nearest to the label's majority colour), shape fidelity (grey digit
    classifier accuracy) and usable conflicting fraction (the label's digit in another class's colour) of the images
    ``load()`` returns, as a cached stage, beside the real set's (a stage of its own, computed once per dataset).
    ``made_from``: what made the images and their labels (the stage key)."""
    from ..evaluation.amplification import aligned_fraction, to_grey, usable_conflicting_fraction

    d = ctx.data
    shape = shape_classifier(ctx)

    def digits(x: torch.Tensor) -> torch.Tensor:
        return predict_logits(shape.model, to_grey(x)).argmax(1)

    def fidelity(images: ImageSet, read: torch.Tensor) -> float:
        return float((read == images.labels).double().mean())

    def compute_real(stage: Stage) -> None:
        write_json(stage.path("real.json"), {
            "real_aligned_fraction": aligned_fraction(d.train.images, d.train.labels),
            "real_valid_shape_fidelity": fidelity(d.valid, digits(d.valid.images)),
            "real_usable_conflicting": usable_conflicting_fraction(d.train.images, d.train.labels,
                                                                   digits(d.train.images)),
        })

    def compute(stage: Stage) -> None:
        s = load()
        read = digits(s.images)
        write_json(stage.path(f"{name}.json"), {
            "synthetic_aligned_fraction": aligned_fraction(s.images, s.labels),
            "synthetic_shape_fidelity": fidelity(s, read),
            "synthetic_usable_conflicting": usable_conflicting_fraction(s.images, s.labels, read),
            "synthetic_images": len(s),
        })

    rule = "background-subtracted, colour by hue; usable conflicting"
    real = ctx.run.cached("real_colour_shape", compute_real, reads(ctx.dataset, shape, diagnostic=rule))
    st = ctx.run.cached(name, compute, reads(made_from, shape, diagnostic=rule))
    return {**read_json(st.path(f"{name}.json")), **read_json(real.path("real.json"))}


def colour_shape_table(a: dict[str, Any]) -> list[str]:
    """The report's table of :func:`colour_shape_stage`'s numbers, synthetic set beside the real one."""
    usable = [a.get("real_usable_conflicting", float("nan")), a.get("synthetic_usable_conflicting", float("nan"))]
    return ["| | bias-aligned fraction | shape fidelity | usable conflicting (label's digit, another colour) |",
            "|---|---|---|---|",
            f"| real training set | {a['real_aligned_fraction']:.4f} | {a['real_valid_shape_fidelity']:.4f} (valid) | "
            f"{usable[0]:.4f} |",
            f"| synthetic set ({a['synthetic_images']} images) | {a['synthetic_aligned_fraction']:.4f} | "
            f"{a['synthetic_shape_fidelity']:.4f} | {usable[1]:.4f} |", ""]
