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
    """Bias-aligned fraction (stroke colour nearest to the label's majority colour) and shape fidelity (grey digit
    classifier accuracy) of the images ``load()`` returns, beside the real set's, as a cached stage."""
    from ..evaluation.amplification import aligned_fraction, to_grey

    d = ctx.data
    shape = shape_classifier(ctx)

    def compute(stage: Stage) -> None:
        s = load()

        def fidelity(images: torch.Tensor, labels: torch.Tensor) -> float:
            return float((predict_logits(shape.model, to_grey(images)).argmax(1) == labels).double().mean())

        write_json(stage.path(f"{name}.json"), {
            "synthetic_aligned_fraction": aligned_fraction(s.images, s.labels),
            "real_aligned_fraction": aligned_fraction(d.train.images, d.train.labels),
            "synthetic_shape_fidelity": fidelity(s.images, s.labels),
            "real_valid_shape_fidelity": fidelity(d.valid.images, d.valid.labels),
            "synthetic_images": len(s),
        })

    st = ctx.run.cached(name, {"diagnostic": "background-subtracted, colour by hue"}, compute, (*inputs, shape.key))
    return read_json(st.path(f"{name}.json"))
