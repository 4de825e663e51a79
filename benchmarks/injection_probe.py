"""What a finished DiffInject run on Colored MNIST needs to probe its injections: the data, the run's shape
classifier and diffusion model, and the digit / colour read-out of generated images (shared by the injection
benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Probe:
    cfg: object
    train: object
    shape: torch.nn.Module
    model: torch.nn.Module
    alphas_cumprod: torch.Tensor
    test: object = None

    def digits(self, images: torch.Tensor) -> torch.Tensor:
        """The digit the run's grey-scale shape classifier reads in uint8 images."""
        from diffdebias.classifiers.train import predict_logits
        from diffdebias.evaluation.amplification import to_grey

        return predict_logits(self.shape, to_grey(images)).argmax(1)

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 data images -> [-1, 1] at the U-Net's side (``diffusion.image_size``)."""
        from diffdebias.diffusion.images import resize, to_unit

        return to_unit(resize(images, self.model.config.sample_size))

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] U-Net outputs -> uint8 images at the data's side."""
        from diffdebias.diffusion.images import resize, to_uint8

        return resize(to_uint8(x), self.train.images.shape[-1])

    @staticmethod
    def colours(images: torch.Tensor) -> torch.Tensor:
        """The palette colour nearest to each image's stroke."""
        from diffdebias.evaluation.amplification import nearest_color, stroke_colors

        return nearest_color(stroke_colors(images))


def load_probe(run: Path) -> Probe:
    from diffdebias.classifiers.train import load_classifier
    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.diffusion import load_unet
    from diffdebias.diffusion.schedule import alphas_cumprod
    from diffdebias.methods.diagnostics import SHAPE_CLASSIFIER
    from diffdebias.runs import Stage

    cfg = load_config(run / "config.yaml")
    shape = load_classifier(Stage("shape_classifier", run / "shape_classifier", "", seed=0, log=print),
                            SHAPE_CLASSIFIER)
    model = load_unet(run / "injection_diffusion" / "unet.safetensors")
    splits = load_dataset(cfg.data)
    return Probe(cfg, splits.train, shape, model, alphas_cumprod(cfg.diffusion).double(), splits.test)
