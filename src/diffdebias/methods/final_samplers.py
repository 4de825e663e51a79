"""How DiffInject's final classifier draws its real + synthetic training images, as a registry of samplers:
``uniform`` (every image alike: the released code), ``synthetic_share`` (a fixed synthetic share of each epoch),
``upsample_errors`` (the real samples the ranking model gets wrong repeated, JTT's way) and ``lff`` (LfF's weights
from a GCE model trained beside it). Each is one of the shared weighting objects, not a loop of its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..classifiers.debias_weighting import Upsample
from ..classifiers.weighting import SyntheticShare, Weighting
from ..config import DiffInjectConfig
from ..data.base import ImageSet
from ..keys import NOTHING, Reads, reads
from .common import Context
from .content_pools import purity
from .parts import jtt_copies, lff_selection, lff_weighting, require_ce


def with_synthetic(real: ImageSet, synthetic: ImageSet) -> ImageSet:
    """The final classifier's training set: every real image, then the synthetic ones (no bias labels for those),
    carrying what both were made from."""
    return ImageSet(torch.cat([real.images, synthetic.images]), torch.cat([real.labels, synthetic.labels]),
                    reads=real.reads | synthetic.reads)


@dataclass
class Draw:
    """How a classifier on :func:`with_synthetic`'s set draws its images, and what that adds to its stage and report."""

    weighting: Weighting | None = None
    reads: Reads = NOTHING  # what the weighting reads (the classifier stage's key)
    valid: ImageSet | str = "real"  # the split that selects the model (train_stage's ``valid``)
    words: str = ""  # the report's words for it (", ..."; empty for the released draw)
    metrics: dict[str, Any] = field(default_factory=dict)  # run-level entries of metrics.json
    notes: list[str] = field(default_factory=list)  # report paragraphs


# ``(ctx, train, errors)``: ``train`` is :func:`with_synthetic`'s set (the real images first), ``errors`` the real
# training samples the ranking model misclassifies
Sampler = Callable[[Context, ImageSet, torch.Tensor], Draw]


def uniform(ctx: Context, train: ImageSet, errors: torch.Tensor) -> Draw:
    """Every real and synthetic image alike (the released code)."""
    return Draw()


def synthetic_share(ctx: Context, train: ImageSet, errors: torch.Tensor) -> Draw:
    """A fixed expected share ``diffinject.synthetic_share`` of each epoch from the synthetic images."""
    share = ctx.cfg.diffinject.synthetic_share
    is_synthetic = torch.arange(len(train)) >= len(ctx.data.train)
    return Draw(SyntheticShare(is_synthetic, share), reads(synthetic_share=share),
                words=f", {share} of each epoch of the final classifier")


def lff(ctx: Context, train: ImageSet, errors: torch.Tensor) -> Draw:
    """LfF's weights (the ``lff`` section): a GCE model trained beside the classifier up-weights what it fails on,
    real or synthetic; selected as LfF selects when ``classifier.select=valid``."""
    cfg = ctx.cfg
    require_ce(cfg.classifier, "diffinject.final_method=lff")
    return Draw(lff_weighting(ctx, train), reads(final_method="lff", lff=cfg.lff), lff_selection(ctx),
                words=", final classifier weighted by LfF")


def error_copies(ctx: Context, errors: torch.Tensor) -> int:
    """Extra copies per epoch of each real error (``diffinject.upsample_errors``; -1: JTT's rule over the real set)."""
    return jtt_copies(ctx.cfg.diffinject.upsample_errors, len(ctx.data.train), len(errors))


def error_weighting(ctx: Context, errors: torch.Tensor) -> Upsample | None:
    """The real ``errors`` repeated in every epoch of a classifier on real + synthetic images (the real images come
    first in its training set, so their indices hold), or None when ``diffinject.upsample_errors`` is 0."""
    return Upsample(errors, error_copies(ctx, errors)) if ctx.cfg.diffinject.upsample_errors else None


def upsample_reads(ctx: Context, errors: torch.Tensor) -> Reads:
    """What ``diffinject.upsample_errors`` adds to a classifier stage's key (nothing when off)."""
    di = ctx.cfg.diffinject
    if not di.upsample_errors:
        return NOTHING
    return reads(upsample_errors=di.upsample_errors, copies=error_copies(ctx, errors))


def upsample_errors(ctx: Context, train: ImageSet, errors: torch.Tensor) -> Draw:
    """The ranking model's real ``errors`` repeated in every epoch: the synthetic images teach the shape through
    other images, the errors are the few real bias-conflicting images themselves."""
    copies = error_copies(ctx, errors)
    u = {**purity(ctx.data.train, errors), "copies": copies}
    notes = ([f"Upsampled real errors: **{u['truly_conflicting']} of {u['pool']}** truly bias-conflicting "
              f"({100 * u['purity']:.1f} %), each seen {1 + copies} times per epoch.", ""]
             if "truly_conflicting" in u else [])
    return Draw(error_weighting(ctx, errors), upsample_reads(ctx, errors),
                words=f", the ranking model's {u['pool']} real training errors seen {1 + copies} times per epoch",
                metrics={"upsampled_errors": u}, notes=notes)


SAMPLERS: dict[str, Sampler] = {"uniform": uniform, "synthetic_share": synthetic_share,
                                "upsample_errors": upsample_errors, "lff": lff}


def sampler_name(di: DiffInjectConfig) -> str:
    """The sampler the config asks for (the config allows at most one of upsample_errors, final_method=lff and
    synthetic_share)."""
    if di.upsample_errors:
        return "upsample_errors"
    if di.final_method == "lff":
        return "lff"
    return "uniform" if di.synthetic_share is None else "synthetic_share"
