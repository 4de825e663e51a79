"""DiffInject: inject the content of the few samples a biased classifier gets wrong into other training images
through the h-space of an unconditional, P2-weighted diffusion model, then train on real + synthetic data.

Stages: biased_classifier (GCE, the ``amplifier`` section) -> biased_scores -> content pool (top-K CE per class) ->
injection_diffusion (``diffusion`` section, on the general dataset) -> content_h (inverted content bottlenecks) ->
injection (style inversion + injected generation, in resumable chunks) -> (optionally) the synthetic images that kept
their style's structure -> classifier on real + synthetic (optionally with the real samples the ranking model
misclassifies repeated, ``diffinject.upsample_errors``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from ..classifiers.debias_weighting import Upsample
from ..classifiers.train import predict_logits
from ..classifiers.weighting import SyntheticShare, Weighting
from ..config import DiffInjectConfig, key_dict
from ..data.base import ImageSet
from ..devices import accelerator, cpu_workers, gather_parts, launched, map_batches, my_part, share
from ..runs import Stage, load_resumable, load_resumable_shared, load_tensors, save_tensors
from .amplifier import ddb_amplifier
from .common import Context, Scores, Trained, evaluate_stage, score_stage, train_stage
from .diagnostics import colour_shape_stage, colour_shape_table
from .generation import UNET, diffusion_stage
from .parts import jtt_copies, lff_selection, lff_weighting, require_ce

INJECTED = "injected.safetensors"


# ----------------------------------------------------------------------------------------------- content pool


def top_k_per_class(loss: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest-loss samples of every class (fewer where a class is smaller), sorted."""
    chosen = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        chosen.append(idx[loss[idx].argsort(descending=True)[:k]])
    return torch.cat(chosen).sort().values


def misclassified(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Indices of the samples whose predicted class is not their label (JTT's error set), sorted."""
    return (pred != labels).nonzero().flatten()


def content_pool(ctx: Context, scores: Scores) -> torch.Tensor:
    """The content images: the top K per class by loss (the paper), or every sample the ranking model gets wrong.

    Top K follows the loss, and the highest losses come from the few bias attributes the biased model trusts most
    (on Colored MNIST, up to a third of a top-10 pool shares one colour); the error set holds whatever it gets wrong.
    """
    di, labels = ctx.cfg.diffinject, ctx.data.train.labels
    if di.content_pool == "errors":
        index = misclassified(scores.pred, labels)
        if not len(index):
            raise ValueError("diffinject.content_pool=errors: the ranking model gets every training sample right, so "
                             "the pool would be empty; use content_pool=top_k")
        return index
    return top_k_per_class(scores.loss, labels, di.top_k)


def ranking_scores(ctx: Context) -> Scores:
    """The per-sample losses that rank the content pool: the GCE classifier's (paper) or a DDB amplifier's."""
    di = ctx.cfg.diffinject
    if di.content_source == "gce":
        return score_stage(ctx, "biased_scores", train_stage(ctx, "biased_classifier", ctx.cfg.amplifier))
    _, amp = ddb_amplifier(ctx, di.ddb_config)
    return score_stage(ctx, "amplifier_scores", amp)


def purity(data: ImageSet, index: torch.Tensor) -> dict[str, Any]:
    """How many of the chosen samples are truly bias-conflicting (needs bias labels)."""
    if not data.has_bias:
        return {"pool": len(index)}
    conflicting = int((data.labels[index] != data.bias[index]).sum())
    return {"pool": len(index), "truly_conflicting": conflicting, "purity": conflicting / max(len(index), 1)}


# ---------------------------------------------------------------------------------------------- general dataset


def general_dataset(ctx: Context) -> tuple[ImageSet, str]:
    """The diffusion model's training data and its cache key: the biased training set, or grey MNIST (3 channels)."""
    d = ctx.data
    if ctx.cfg.diffinject.general_data == "train":
        return d.train, ctx.train_key
    from ..data.mnist import load_mnist

    mnist = load_mnist(ctx.cfg.data.mnist_path)
    images = mnist.train_images[:, None].expand(-1, d.channels, -1, -1).contiguous()
    if images.shape[-1] != d.image_size:
        raise ValueError(f"diffinject.general_data=mnist gives {images.shape[-1]} px images, but the dataset has "
                         f"{d.image_size} px: use general_data=train")
    key = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    return ImageSet(images, mnist.train_labels), f"mnist-grey{d.channels}-{key}"


# ---------------------------------------------------------------------------------------------------- injection


def draw_pairs(ctx: Context, stage: Stage, pool: torch.Tensor) -> dict[str, torch.Tensor]:
    """(style, content) training indices and per-image seeds of every synthetic image; the label is chosen later
    (:func:`load_injected`), so switching ``diffinject.label_source`` reuses the images."""
    from ..diffusion.sampling import draw_seeds

    di, d = ctx.cfg.diffinject, ctx.data
    outside = torch.ones(len(d.train), dtype=torch.bool)
    outside[pool] = False
    if di.style_pool == "aligned":
        if not d.train.has_bias:
            raise ValueError("diffinject.style_pool=aligned needs bias labels; this dataset has none (use all)")
        styles = (d.train.aligned_mask() & outside).nonzero().flatten()
    else:
        styles = outside.nonzero().flatten()
    n = max(1, round(di.synthetic_ratio * len(styles)))
    g = stage.generator("pairs")
    style = styles[torch.randint(len(styles), (n,), generator=g)]
    content = pool[torch.randint(len(pool), (n,), generator=g)]
    return {"style": style, "content": content, "seeds": draw_seeds(g, n)}


def injection_stage(ctx: Context, diffusion: Stage, pool: torch.Tensor, inputs: tuple[str, ...],
                    chunk: int = 1024) -> Stage:
    """Invert the content pool once (its h cached in ``content_h.safetensors``), then for each chunk of pairs invert
    the style images and generate with the content injected; chunks are saved as they finish. A U-Net trained
    smaller (``diffusion.image_size``) inverts the images resized to its size; its results are resized back.

    Of several processes launched together, each inverts its part of the pool and computes its part of every chunk;
    the main process gathers and writes. Each image depends only on its pair and seed, not on who computes it."""
    from ..diffusion.models import resolve_precision

    icfg, dcfg = ctx.cfg.injection, ctx.cfg.diffusion
    icfg.validate()
    device = accelerator(ctx.cfg.device).device
    precision = resolve_precision(icfg.precision, device)

    def compute(stage: Stage) -> None:
        from ..diffusion import load_unet, write_synthetic_dataset
        from ..diffusion.images import resize, to_uint8, to_unit
        from ..diffusion.injection import check_splittable, inject, injection_grid, invert, truncated_grid
        from ..diffusion.models import pad_rows
        from ..diffusion.schedule import alphas_cumprod

        d = ctx.data
        parallel, main = launched(), ctx.run.main
        model = load_unet(diffusion.path(UNET)).to(device)
        check_splittable(model)
        abar = alphas_cumprod(dcfg).double()
        grid = truncated_grid(injection_grid(dcfg.num_train_timesteps, icfg.steps), icfg.t_start)
        bs = icfg.batch_size
        # torch.compile'd halves are not called from several threads at once
        workers = 1 if icfg.compile else cpu_workers(device, icfg.workers)
        side = d.train.images.shape[-1]

        def unit(index: torch.Tensor) -> torch.Tensor:  # training images as the U-Net sees them
            return to_unit(resize(d.train.images[index], dcfg.image_size or side).to(device))

        def padded(rows: torch.Tensor) -> torch.Tensor:  # compiled: every batch one size, so one graph serves all
            return pad_rows(rows, bs) if icfg.compile else rows

        h_path = stage.path("content_h.safetensors")
        content_h = load_resumable_shared(h_path, lambda p: {int(k): v for k, v in load_tensors(p)[0].items()},
                                          stage.log, everywhere=parallel)
        if content_h is None:
            stage.log(f"{stage.name}: inverting the content pool ({len(pool)} images, {len(grid) - 1} steps)")
            split = parallel and len(pool) >= accelerator().num_processes  # else each inverts the few itself
            mine = pool[my_part(len(pool))] if split else pool
            parts = []
            for s in range(0, len(mine), bs):
                rows = mine[s:s + bs]
                h = invert(model, unit(padded(rows)), grid, abar, icfg.t_edit, precision=precision,
                           compiled=icfg.compile)[1]
                parts.append({t: v[:len(rows)].cpu() for t, v in h.items()})
            content_h = {t: torch.cat([p[t] for p in parts]) for t in parts[0]}
            if split:
                content_h = {t: gather_parts(v, len(pool)) for t, v in content_h.items()}
            if main:
                save_tensors(h_path, {str(t): v for t, v in content_h.items()})
                stage.checkpointed()
        position = torch.full((len(d.train),), -1, dtype=torch.long)
        position[pool] = torch.arange(len(pool))

        pairs = draw_pairs(ctx, stage, pool)
        n = len(pairs["style"])
        stage.log(f"{stage.name}: {n} images, {len(grid)} steps, t_edit {icfg.t_edit}, gamma {icfg.gamma}, {precision}")
        starts = range(0, n, chunk)
        paths = [stage.path(f"chunk_{k:04d}.safetensors") for k in range(len(starts))]
        images = [load_resumable(path, lambda p: load_tensors(p)[0]["images"], stage.log) if main else None
                  for path in paths]
        # pairs done, each an inversion + an injected generation
        bar = tqdm(total=n, desc="injection", unit="img", disable=not main)
        bar.update(sum(len(part) for part in images if part is not None))
        empty = torch.empty((0, *d.train.images.shape[1:]), dtype=torch.uint8)

        def one_batch(s: int, stop: int) -> torch.Tensor:  # pairs s..min(s + bs, stop); the same for any workers
            e = min(s + bs, stop)
            style, content = padded(pairs["style"][s:e]), padded(pairs["content"][s:e])
            x_T, _ = invert(model, unit(style), grid, abar, precision=precision, compiled=icfg.compile)
            h = {t: v[position[content]] for t, v in content_h.items()}
            gens = [torch.Generator().manual_seed(int(v)) for v in padded(pairs["seeds"][s:e])]
            x = inject(model, x_T, h, grid, abar, icfg, gens)
            bar.update(e - s)
            return resize(to_uint8(x[: e - s]).cpu(), side)

        for k in share([k for k, part in enumerate(images) if part is None]):  # the main process's to-do list
            start = starts[k]
            stop = min(start + chunk, n)
            stage.log(f"{stage.name}: images {start}-{stop} of {n}")
            part = my_part(stop - start) if parallel else slice(0, stop - start)
            first, last = start + part.start, start + part.stop
            done = map_batches(partial(one_batch, stop=last), range(first, last, bs), workers)
            done = torch.cat(done) if done else empty
            if parallel:
                done = gather_parts(done, stop - start)
                bar.update(stop - start - (last - first))
            if main:
                images[k] = done
                save_tensors(paths[k], {"images": done})
                stage.checkpointed()
        bar.close()
        if not main:
            return
        images = torch.cat(images)
        save_tensors(stage.path(INJECTED), {"images": images, **pairs})
        labels = d.train.labels  # the CSV's label is the style image's; content_label is the other choice
        write_synthetic_dataset(stage.path("images"), images, labels[pairs["style"]], pairs["seeds"],
                                extra_columns={"style": pairs["style"], "content": pairs["content"],
                                               "content_label": labels[pairs["content"]]})
        for k in range(-(-n // chunk)):
            stage.path(f"chunk_{k:04d}.safetensors").unlink(missing_ok=True)

    di = ctx.cfg.diffinject  # only what shapes the pairs; the pool and the diffusion model are inputs of their own
    # the precision the images are computed in, not the setting: fp32 (every cache made before the setting existed)
    # stays out of the key, bf16 enters it, so ``auto`` reuses what this hardware would compute
    injection_key = {k: v for k, v in key_dict(icfg).items() if k != "precision"}
    if precision != "fp32":
        injection_key["precision"] = precision
    key = {"injection": injection_key, "pool": pool.tolist(),
           "pairs": {k: getattr(di, k) for k in ("synthetic_ratio", "style_pool")}}
    return ctx.run.cached("injection", key, compute, (diffusion.key, *inputs), distributed=True)


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


def black_key(di: DiffInjectConfig) -> dict[str, Any]:
    """What ``diffinject.match_black`` adds to the keys of the stages that read the synthetic images (nothing when off,
    so the stages cached before the setting keep their keys)."""
    return {"match_black": True} if di.match_black else {}


def load_injected(ctx: Context, stage: Stage) -> tuple[ImageSet, dict[str, torch.Tensor]]:
    """The synthetic images, labelled by the style or the content image (``diffinject.label_source``), their black
    level matched to the real images' when ``diffinject.match_black`` is set."""
    t, _ = load_tensors(stage.path(INJECTED))
    di = ctx.cfg.diffinject
    if di.label_source not in ("style", "content"):
        raise ValueError(f"diffinject.label_source must be 'style' or 'content', got '{di.label_source}'")
    images = match_black_level(t["images"], ctx.data.train.images) if di.match_black else t["images"]
    return ImageSet(images, ctx.data.train.labels[t[di.label_source]]), t


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


def kept_synthetic(ctx: Context, synthetic: ImageSet, style: torch.Tensor, errors: torch.Tensor,
                   inputs: tuple[str, ...]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Boolean mask of the synthetic images the final classifier trains on (``diffinject.keep``), and the keys of
    the stages the filters read beyond ``inputs`` (the GCE classifier of ``conflicting``), which the final
    classifier's key must cover.

    An image whose luminance no longer correlates with its style image's (``similar``), or whose nearest real images
    carry another label (``neighbours``), has lost the structure its label comes from (on Colored MNIST, the digit),
    and such wrong-label images cost the classifier more than the good ones add; ``conflicting`` drops those the
    GCE-biased classifier already assigns to their label, which teach only the shortcut; ``crossfit`` drops those a
    classifier trained without them does not assign to their label (:func:`crossfit_agree`). None reads a bias label.
    ``errors`` and ``inputs`` (the stage keys the images and errors come from) serve ``crossfit``."""
    di = ctx.cfg.diffinject
    keep = torch.ones(len(synthetic), dtype=torch.bool)
    read: tuple[str, ...] = ()
    for name in di.keep_filters():
        if name == "similar":
            style_images = ctx.data.train.images[style]
            keep &= pearson(synthetic.images.float().mean(1), style_images.float().mean(1)) >= di.min_similarity
        elif name == "neighbours":
            keep &= neighbours_agree(synthetic.images, synthetic.labels, ctx.data.train, di.neighbours)
        elif name == "conflicting":
            biased = train_stage(ctx, "biased_classifier", ctx.cfg.amplifier)
            keep &= predict_logits(biased.model, synthetic.images).argmax(1) != synthetic.labels
            read += (biased.key,)
        else:
            keep &= crossfit_agree(ctx, synthetic, keep, errors, inputs)
    return keep, read


def crossfit_agree(ctx: Context, synthetic: ImageSet, keep: torch.Tensor, errors: torch.Tensor,
                   inputs: tuple[str, ...]) -> torch.Tensor:
    """Whether a classifier that never saw a kept synthetic image assigns it its label: the kept images split in two
    halves (by position), and a classifier on the real images plus one half (the real ``errors`` repeated as in the
    final classifier) reads the other. An image whose content replaced its style's digit carries a label its picture
    does not show; the real images teach enough of the digit to expose it, and no bias label or image prior is read.
    Images outside ``keep`` stay False."""
    cfg, d, di = ctx.cfg, ctx.data, ctx.cfg.diffinject
    index = keep.nonzero().flatten()
    halves = (index[0::2], index[1::2])
    agree = torch.zeros(len(synthetic), dtype=torch.bool)
    scorer = replace(cfg.classifier, epochs=di.crossfit_epochs, ensemble=1)  # a filter: one model each
    extra = {"label_source": di.label_source, **black_key(di), **keep_key(di), **upsample_key(ctx, errors)}
    for k, (seen, held) in enumerate((halves, halves[::-1])):
        train = with_synthetic(d.train, ImageSet(synthetic.images[seen], synthetic.labels[seen]))
        model = train_stage(ctx, f"crossfit_{k}", scorer, error_weighting(ctx, errors), train=train, inputs=inputs,
                            extra_config={**extra, "half": k}).model
        if len(held):
            agree[held] = predict_logits(model, synthetic.images[held]).argmax(1) == synthetic.labels[held]
    return agree


def keep_key(di: DiffInjectConfig) -> dict[str, Any]:
    """What ``diffinject.keep`` adds to the keys of the stages that read the kept images: nothing for ``all``, else
    the filters and the settings of those that are on (``similar`` and ``similar_conflicting`` keep their keys)."""
    if di.keep == "all":
        return {}
    filters = di.keep_filters()
    return {"keep": di.keep, **({"min_similarity": di.min_similarity} if "similar" in filters else {}),
            **({"neighbours": di.neighbours} if "neighbours" in filters else {}),
            **({"crossfit_epochs": di.crossfit_epochs} if "crossfit" in filters else {})}


def keep_words(di: DiffInjectConfig) -> str:
    """The report's description of the filters ``diffinject.keep`` applies."""
    words = {"similar": f"correlation >= {di.min_similarity} with the style image",
             "neighbours": f"label of most of the {di.neighbours} nearest real images",
             "conflicting": "not assigned to its label by the GCE-biased classifier",
             "crossfit": f"assigned to its label by a {di.crossfit_epochs}-epoch classifier trained without it"}
    return "; ".join(words[f] for f in di.keep_filters())


def with_synthetic(real: ImageSet, synthetic: ImageSet) -> ImageSet:
    """The final classifier's training set: every real image, then the synthetic ones (no bias labels for those)."""
    return ImageSet(torch.cat([real.images, synthetic.images]), torch.cat([real.labels, synthetic.labels]))


def error_copies(ctx: Context, errors: torch.Tensor) -> int:
    """Extra copies per epoch of each real error (``diffinject.upsample_errors``; -1: JTT's rule over the real set)."""
    return jtt_copies(ctx.cfg.diffinject.upsample_errors, len(ctx.data.train), len(errors))


def error_weighting(ctx: Context, errors: torch.Tensor) -> Upsample | None:
    """The real ``errors`` repeated in every epoch of a classifier on real + synthetic images (the real images come
    first in its training set, so their indices hold), or None when ``diffinject.upsample_errors`` is 0."""
    return Upsample(errors, error_copies(ctx, errors)) if ctx.cfg.diffinject.upsample_errors else None


def upsample_key(ctx: Context, errors: torch.Tensor) -> dict[str, Any]:
    """What ``diffinject.upsample_errors`` adds to a classifier stage's key (nothing when off)."""
    di = ctx.cfg.diffinject
    return {"upsample_errors": di.upsample_errors, "copies": error_copies(ctx, errors)} if di.upsample_errors else {}


def final_classifier(ctx: Context, synthetic: ImageSet, inj: Stage, errors: torch.Tensor,
                     kept_from: tuple[str, ...] = ()) -> Trained:
    """The classifier on every real image plus the synthetic ones: drawn uniformly (the released code), with a fixed
    synthetic share per epoch, weighted by LfF (``diffinject.final_method=lff``: a GCE model trained beside it
    up-weights what it fails on, real or synthetic; selected as LfF selects when ``classifier.select=valid``), or
    with the real ``errors`` of the ranking model repeated (``diffinject.upsample_errors``): the synthetic images
    teach the shape through other images, the errors are the few real bias-conflicting images themselves."""
    cfg, d = ctx.cfg, ctx.data
    di = cfg.diffinject
    train = with_synthetic(d.train, synthetic)
    extra: dict[str, Any] = {"label_source": di.label_source, **black_key(di), **keep_key(di)}
    weighting: Weighting | None = None
    valid: ImageSet | str = "real"
    inputs: tuple[str, ...] = (inj.key, *kept_from)  # kept_from: what chose the synthetic images (kept_synthetic)
    if di.upsample_errors:
        weighting = error_weighting(ctx, errors)
        extra.update(upsample_key(ctx, errors))
    elif di.final_method == "lff":
        require_ce(cfg.classifier, "diffinject.final_method=lff")
        extra.update(final_method="lff", lff=key_dict(cfg.lff))
        valid, selection_inputs = lff_selection(ctx)
        weighting, inputs = lff_weighting(ctx, train), inputs + selection_inputs
    elif di.synthetic_share is not None:
        is_synthetic = torch.cat([torch.zeros(len(d.train), dtype=torch.bool),
                                  torch.ones(len(synthetic), dtype=torch.bool)])
        weighting = SyntheticShare(is_synthetic, di.synthetic_share)
        extra["synthetic_share"] = di.synthetic_share
    return train_stage(ctx, "classifier", cfg.classifier, weighting, train=train, inputs=inputs, extra_config=extra,
                       valid=valid)


# ---------------------------------------------------------------------------------------------------------- run


def run_diffinject(ctx: Context) -> Trained:
    cfg, d = ctx.cfg, ctx.data
    scores = ranking_scores(ctx)
    pool = content_pool(ctx, scores)
    general, general_key = general_dataset(ctx)
    diff = diffusion_stage(ctx, "injection_diffusion", cfg.diffusion, general, None, (general_key,))
    inj = injection_stage(ctx, diff, pool, (scores.key,))
    generated, pairs = load_injected(ctx, inj)
    errors = misclassified(scores.pred, d.train.labels)
    keep, kept_from = kept_synthetic(ctx, generated, pairs["style"], errors, (inj.key, scores.key))
    synthetic = ImageSet(generated.images[keep], generated.labels[keep])
    if not len(synthetic):
        ctx.run.log(f"warning: diffinject.keep={cfg.diffinject.keep}: no synthetic image passes "
                    f"({keep_words(cfg.diffinject)}); the classifier sees the real images only")
    final = final_classifier(ctx, synthetic, inj, errors, kept_from)

    metrics: dict[str, Any] = ctx.extras.setdefault("metrics", {})  # with what the stages recorded
    metrics.update(content_pool=purity(d.train, pool), synthetic_images=len(generated), synthetic_kept=len(synthetic))
    if cfg.diffinject.upsample_errors:
        metrics["upsampled_errors"] = {**purity(d.train, errors), "copies": error_copies(ctx, errors)}
    if d.train.has_bias:
        style_aligned = d.train.aligned_mask()[pairs["style"]]
        content_conflicting = ~d.train.aligned_mask()[pairs["content"]]
        metrics["pairs"] = {"style_aligned": float(style_aligned.double().mean()),
                            "content_conflicting": float(content_conflicting.double().mean())}
    if cfg.diffinject.compare_erm:
        metrics["erm"] = evaluate_stage(ctx, "erm_evaluation", train_stage(ctx, "erm", cfg.classifier))
    if cfg.data.name == "cmnist" and len(synthetic):
        di = cfg.diffinject  # the numbers read the labels and the images: another source or level, another stage
        shaped = {**({} if di.label_source == "style" else {"label_source": di.label_source}),
                  **black_key(di), **keep_key(di)}
        metrics["synthetic_colour_shape"] = colour_shape_stage(ctx, "synthetic_colour_shape", lambda: synthetic,
                                                               (inj.key,), shaped or None)
    if ctx.run.main:  # of several processes, the main one writes the run's figures
        ctx.extras["report_sections"] = diffinject_report(ctx, pool, inj, generated, pairs, metrics, keep)
    return final


def upsample_words(metrics: dict[str, Any]) -> str:
    """The report's words for ``diffinject.upsample_errors`` (empty when off)."""
    if "upsampled_errors" not in metrics:
        return ""
    u = metrics["upsampled_errors"]
    return f", the ranking model's {u['pool']} real training errors seen {1 + u['copies']} times per epoch"


def diffinject_report(ctx: Context, pool: torch.Tensor, inj: Stage, synthetic: ImageSet,
                      pairs: dict[str, torch.Tensor], metrics: dict[str, Any], keep: torch.Tensor) -> list[str]:
    from ..evaluation.diffinject_figures import kept_figure, triples_figure

    cfg, d = ctx.cfg, ctx.data
    di, ic = cfg.diffinject, cfg.injection
    pool_words = (f"the {len(pool)} training samples misclassified" if di.content_pool == "errors"
                  else f"top {di.top_k} per class")
    kept_words = ("" if di.keep == "all" else
                  f", {metrics['synthetic_kept']} kept by `{di.keep}` ({keep_words(di)})")
    out = ["## DiffInject", "",
           f"Content pool: {pool_words} by the `{di.content_source}` ranking; styles from "
           f"`{di.style_pool}`; labels from the `{di.label_source}` image; diffusion data `{di.general_data}`; "
           f"{ic.steps}-step grid{'' if ic.t_start is None else f' up to t_start {ic.t_start}'}, t_edit {ic.t_edit}, "
           f"t_boost {ic.t_boost}, {ic.blend} blend, gamma {ic.gamma}"
           f"{'' if ic.mask is None else f', mask {ic.mask}'}; {len(synthetic)} synthetic images"
           f"{'' if di.synthetic_share is None else f', {di.synthetic_share} of each epoch of the final classifier'}"
           f"{', final classifier weighted by LfF' if di.final_method == 'lff' else ''}"
           f"{upsample_words(metrics)}"
           f"{', black level matched to the real images' if di.match_black else ''}"
           f"{kept_words}.",
           ""]
    cp = metrics["content_pool"]
    if "truly_conflicting" in cp:
        out += [f"Content pool purity: **{cp['truly_conflicting']} of {cp['pool']}** truly bias-conflicting "
                f"({100 * cp['purity']:.1f} %).", ""]
    u = metrics.get("upsampled_errors", {})
    if "truly_conflicting" in u:
        out += [f"Upsampled real errors: **{u['truly_conflicting']} of {u['pool']}** truly bias-conflicting "
                f"({100 * u['purity']:.1f} %), each seen {1 + u['copies']} times per epoch.", ""]
    if "erm" in metrics:
        e = metrics["erm"]["test"]
        out += [f"Plain ERM on the real data with the same classifier settings: test unbiased accuracy "
                f"**{100 * e.get('unbiased_accuracy', float('nan')):.2f}** %.", ""]
    if "synthetic_colour_shape" in metrics:
        a = metrics["synthetic_colour_shape"]
        out += ["### Synthetic images (Colored MNIST)", "",
                "A bias-conflicting synthetic image has a stroke colour that is NOT its label's majority colour.", "",
                *colour_shape_table(a)]
    figures = ctx.run.root / "figures"
    triples_figure(d.train.images[pairs["style"][:16]], d.train.images[pairs["content"][:16]],
                   synthetic.images[:16], figures / "triples.png")
    out += ["### (style, content, result) triples", "", "![triples](figures/triples.png)", ""]
    if di.keep != "all" and keep.any() and not keep.all():
        kept_figure(synthetic.images, keep, figures / "kept.png")
        out += [f"### Kept and dropped by `{di.keep}`", "",
                "Top row: synthetic images the final classifier sees; bottom row: images the filter dropped.", "",
                "![kept](figures/kept.png)", ""]
    grid = inj.path("images") / "grid.png"
    if grid.exists():
        (figures / "synthetic_grid.png").write_bytes(grid.read_bytes())
        out += ["### Synthetic images by label", "", "![synthetic](figures/synthetic_grid.png)", ""]
    return out
