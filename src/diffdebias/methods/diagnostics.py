"""Colour and shape of a synthetic Colored MNIST set: does it carry the bias, and are its digits still digits?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..classifiers.train import predict_logits
from ..config import TrainConfig
from ..data.base import ImageSet
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
    ctx: Context, name: str, load: Callable[[], ImageSet], inputs: tuple[str, ...]
) -> dict[str, Any]:
    """Bias-aligned fraction (stroke colour nearest to the label's majority colour), shape fidelity (grey digit
    classifier accuracy) and usable conflicting fraction (the label's digit in another class's colour) of the images
    ``load()`` returns, beside the real set's, as a cached stage."""
    from ..evaluation.amplification import aligned_fraction, to_grey, usable_conflicting_fraction

    d = ctx.data
    shape = shape_classifier(ctx)

    def compute(stage: Stage) -> None:
        s = load()

        def digits(images: torch.Tensor) -> torch.Tensor:
            return predict_logits(shape.model, to_grey(images)).argmax(1)

        synthetic_digits = digits(s.images)
        write_json(stage.path(f"{name}.json"), {
            "synthetic_aligned_fraction": aligned_fraction(s.images, s.labels),
            "real_aligned_fraction": aligned_fraction(d.train.images, d.train.labels),
            "synthetic_shape_fidelity": float((synthetic_digits == s.labels).double().mean()),
            "real_valid_shape_fidelity": float((digits(d.valid.images) == d.valid.labels).double().mean()),
            "synthetic_usable_conflicting": usable_conflicting_fraction(s.images, s.labels, synthetic_digits),
            "real_usable_conflicting": usable_conflicting_fraction(d.train.images, d.train.labels,
                                                                   digits(d.train.images)),
            "synthetic_images": len(s),
        })

    key = {"diagnostic": "background-subtracted, colour by hue; usable conflicting"}
    st = ctx.run.cached(name, key, compute, (*inputs, shape.key))
    return read_json(st.path(f"{name}.json"))


def colour_shape_table(a: dict[str, Any]) -> list[str]:
    """The report's table of :func:`colour_shape_stage`'s numbers, synthetic set beside the real one."""
    usable = [a.get("real_usable_conflicting", float("nan")), a.get("synthetic_usable_conflicting", float("nan"))]
    return ["| | bias-aligned fraction | shape fidelity | usable conflicting (label's digit, another colour) |",
            "|---|---|---|---|",
            f"| real training set | {a['real_aligned_fraction']:.4f} | {a['real_valid_shape_fidelity']:.4f} (valid) | "
            f"{usable[0]:.4f} |",
            f"| synthetic set ({a['synthetic_images']} images) | {a['synthetic_aligned_fraction']:.4f} | "
            f"{a['synthetic_shape_fidelity']:.4f} | {usable[1]:.4f} |", ""]
