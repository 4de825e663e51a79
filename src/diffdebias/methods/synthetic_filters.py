"""What happens to DiffInject's synthetic images between the injection and the final classifier (none of it in the
paper): their black level matched to the real images' (``diffinject.match_black``), then the filters of
``diffinject.keep``, a registry keyed by filter name, chained in the config's order, each dropping more.

An image whose luminance no longer correlates with its style image's (``similar``), or whose nearest real images
carry another label (``neighbours``), has lost the structure its label comes from (on Colored MNIST, the digit), and
such wrong-label images cost the classifier more than the good ones add; ``conflicting`` drops those the GCE-biased
classifier already assigns to their label, which teach only the shortcut. None reads a bias label. (``crossfit``, a
classifier trained without them judging them, is retired: config.RETIRED_FILTERS.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..classifiers.train import predict_logits
from ..config import DiffInjectConfig
from ..data.base import ImageSet
from ..keys import NOTHING, Reads, reads
from .common import Context
from .content_pools import biased_classifier

# ------------------------------------------------------------------------------------------------- black level


def black_level(images: torch.Tensor, real: torch.Tensor) -> int:
    """The uint8 level at or below which as large a share of the synthetic values lies as the real values that are 0
    (0 when no real value is)."""
    share = float((real == 0).double().mean())
    if share == 0:
        return 0
    counts = torch.bincount(images.flatten().long(), minlength=256).cumsum(0)
    return int((counts >= share * counts[-1]).nonzero()[0])


def match_black_level(images: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """uint8 synthetic images with their levels stretched from [b, 255] to [0, 255], b = :func:`black_level`: the
    real images' black is exact, the generated one a few levels of noise, a cue that an image is synthetic."""
    b = min(black_level(images, real), 254)  # 255 only for images that are nearly all white
    if b == 0:
        return images
    return ((images.float() - b) * (255 / (255 - b))).round().clamp(0, 255).to(torch.uint8)


def postprocessed(ctx: Context, synthetic: ImageSet) -> ImageSet:
    """The synthetic images as the later stages read them: their black level matched to the real images' when
    ``diffinject.match_black`` is set (which joins what they were made from), else as generated (nothing added, so
    the stages cached before the setting keep their keys)."""
    if not ctx.cfg.diffinject.match_black:
        return synthetic
    return ImageSet(match_black_level(synthetic.images, ctx.data.train.images), synthetic.labels,
                    reads=synthetic.reads | reads(match_black=True))


# ----------------------------------------------------------------------------------------------------- filters


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair Pearson correlation of two equally long batches, each item flattened."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)).float()


def neighbour_votes(images: torch.Tensor, real: ImageSet, k: int, chunk: int = 2048) -> torch.Tensor:
    """(N, classes) counts of the labels of the ``k`` real images nearest to each image. Nearness is the correlation
    of luminance, each image centred and scaled, which ignores the hue: on Colored MNIST the neighbours vote by their
    digit, not their colour."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.float().mean(1).flatten(1)
        return torch.nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1)

    classes = int(real.labels.max()) + 1
    if not len(images):
        return torch.zeros(0, classes, dtype=torch.long)
    ref, query, k = unit(real.images), unit(images), min(k, len(real))
    return torch.cat([torch.nn.functional.one_hot(real.labels[(query[i:i + chunk] @ ref.T).topk(k, dim=1).indices],
                                                  classes).sum(1)
                      for i in range(0, len(query), chunk)])


def neighbours_agree(images: torch.Tensor, labels: torch.Tensor, real: ImageSet, k: int) -> torch.Tensor:
    """Whether the label most of the ``k`` real training images nearest to each synthetic image carry
    (:func:`neighbour_votes`) is its label: a structure check against every real image rather than one style image.
    It reads the class labels, no bias label."""
    return neighbour_votes(images, real, k).argmax(1) == labels


@dataclass
class Candidates:
    """The synthetic images a filter judges, with what the filters read beside them."""

    images: ImageSet  # labelled and post-processed, carrying what made them
    style: torch.Tensor  # each image's style image (a training index)


@dataclass(frozen=True)
class Filter:
    """One ``diffinject.keep`` filter: ``keep(ctx, candidates)`` gives the mask of the images it keeps
    and the stages it read beyond the candidates; ``settings`` are the ``diffinject`` fields it reads (its part of
    the stage keys), ``words`` the report's description."""

    keep: Callable[[Context, Candidates], tuple[torch.Tensor, Reads]]
    settings: tuple[str, ...]
    words: Callable[[DiffInjectConfig], str]


def keep_similar(ctx: Context, c: Candidates) -> tuple[torch.Tensor, Reads]:
    style_images = ctx.data.train.images[c.style]
    r = pearson(c.images.images.float().mean(1), style_images.float().mean(1))
    return r >= ctx.cfg.diffinject.min_similarity, NOTHING


def keep_neighbours(ctx: Context, c: Candidates) -> tuple[torch.Tensor, Reads]:
    return neighbours_agree(c.images.images, c.images.labels, ctx.data.train, ctx.cfg.diffinject.neighbours), NOTHING


def keep_conflicting(ctx: Context, c: Candidates) -> tuple[torch.Tensor, Reads]:
    biased = biased_classifier(ctx)
    return predict_logits(biased.model, c.images.images).argmax(1) != c.images.labels, reads(biased)


FILTERS: dict[str, Filter] = {  # in the order config.KEEP_FILTERS chains them
    "similar": Filter(keep_similar, ("min_similarity",),
                      lambda di: f"correlation >= {di.min_similarity} with the style image"),
    "neighbours": Filter(keep_neighbours, ("neighbours",),
                         lambda di: f"label of most of the {di.neighbours} nearest real images"),
    "conflicting": Filter(keep_conflicting, (), lambda di: "not assigned to its label by the GCE-biased classifier"),
}


def kept_synthetic(ctx: Context, synthetic: ImageSet, style: torch.Tensor) -> tuple[torch.Tensor, Reads]:
    """Boolean mask of the synthetic images the final classifier trains on (``diffinject.keep``: every filter in
    turn), and what chose them: the filters' settings and the stages they read beyond the images (the GCE classifier
    of ``conflicting``), which the final classifier's key must cover."""
    candidates = Candidates(synthetic, style)
    keep = torch.ones(len(synthetic), dtype=torch.bool)
    chosen_by = reads(**keep_key(ctx.cfg.diffinject))
    for name in ctx.cfg.diffinject.keep_filters():
        mask, more = FILTERS[name].keep(ctx, candidates)
        keep &= mask
        chosen_by = chosen_by | more
    return keep, chosen_by


def keep_key(di: DiffInjectConfig) -> dict[str, Any]:
    """What ``diffinject.keep`` adds to the keys of the stages that read the kept images: nothing for ``all``, else
    the filters and the settings of those that are on (``similar`` and ``similar_conflicting`` keep their keys)."""
    if di.keep == "all":
        return {}
    return {"keep": di.keep, **{s: getattr(di, s) for f in di.keep_filters() for s in FILTERS[f].settings}}


def keep_words(di: DiffInjectConfig) -> str:
    """The report's description of the filters ``diffinject.keep`` applies."""
    return "; ".join(FILTERS[f].words(di) for f in di.keep_filters())


def selection_words(di: DiffInjectConfig, kept: int) -> str:
    """The report's words for the post-processing and the filters (empty when neither is on)."""
    return (f"{', black level matched to the real images' if di.match_black else ''}"
            f"{'' if di.keep == 'all' else f', {kept} kept by `{di.keep}` ({keep_words(di)})'}")


def kept_section(di: DiffInjectConfig, images: torch.Tensor, keep: torch.Tensor, figures: Path) -> list[str]:
    """The report's figure of the images the filters kept and dropped (none when they kept all or none)."""
    from ..evaluation.diffinject_figures import kept_figure

    if di.keep == "all" or not keep.any() or keep.all():
        return []
    kept_figure(images, keep, figures / "kept.png")
    return [f"### Kept and dropped by `{di.keep}`", "",
            "Top row: synthetic images the final classifier sees; bottom row: images the filter dropped.", "",
            "![kept](figures/kept.png)", ""]
