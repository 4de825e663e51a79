"""DiffInject (the paper's pipeline): inject the content of the few samples a biased classifier gets wrong into other
training images through the h-space of an unconditional, P2-weighted diffusion model, then train on real + synthetic
data.

Stages: biased_classifier (GCE, the ``amplifier`` section; ``detection.source=ddb``: a DDB amplifier instead) ->
biased_scores -> content pool (top-K CE per class) -> injection_diffusion (``diffusion`` section, on the general
dataset) -> content_h (inverted content bottlenecks) -> injection (style inversion + injected generation, in
resumable chunks) -> classifier on real + synthetic.

What the paper leaves fixed and the config opens is looked up in registries keyed by the config value, each in a
module of its own: who ranks and which samples become content (:mod:`.content_pools`), what happens to the synthetic
images before the classifier sees them (:mod:`.synthetic_filters`: the black-level match and the ``keep`` filters),
and how the final classifier draws real + synthetic images (:mod:`.final_samplers`).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from ..config import key_dict
from ..data.base import ImageSet
from ..devices import accelerator, cpu_workers, gather_parts, launched, map_batches, my_part
from ..keys import Source, reads
from ..progress import progress_bar
from ..runs import Stage, chunked, load_resumable_shared, load_tensors, save_tensors
from .common import Context, Scores, Trained, evaluate_stage, train_stage
from .content_pools import POOLS, RANKINGS, misclassified, purity
from .diagnostics import colour_shape_stage, colour_shape_table
from .final_samplers import SAMPLERS, Draw, sampler_name, with_synthetic
from .generation import UNET, diffusion_stage
from .synthetic_filters import keep_words, kept_section, kept_synthetic, postprocessed, selection_words

INJECTED = "injected.safetensors"


# ---------------------------------------------------------------------------------------------- general dataset


def general_dataset(ctx: Context) -> tuple[ImageSet, Source]:
    """The diffusion model's training data and what it is: the biased training set, or grey MNIST (3 channels)."""
    d = ctx.data
    if ctx.cfg.diffinject.general_data == "train":
        return d.train, ctx.train_split
    from ..data.mnist import load_mnist

    mnist = load_mnist(ctx.cfg.data.mnist_path)
    images = mnist.train_images[:, None].expand(-1, d.channels, -1, -1).contiguous()
    if images.shape[-1] != d.image_size:
        raise ValueError(f"diffinject.general_data=mnist gives {images.shape[-1]} px images, but the dataset has "
                         f"{d.image_size} px: use general_data=train")
    key = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    return ImageSet(images, mnist.train_labels), Source("mnist", f"mnist-grey{d.channels}-{key}")


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


def injection_stage(ctx: Context, diffusion: Stage, pool: torch.Tensor, ranking: Scores, chunk: int = 1024) -> Stage:
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
        # pairs done, each an inversion + an injected generation
        bar = progress_bar(show=main, total=n, desc="injection", unit="img")
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

        def one_chunk(start: int, stop: int) -> torch.Tensor:  # of several processes, each computes its part
            part = my_part(stop - start) if parallel else slice(0, stop - start)
            first, last = start + part.start, start + part.stop
            done = map_batches(partial(one_batch, stop=last), range(first, last, bs), workers)
            done = torch.cat(done) if done else empty
            if parallel:
                done = gather_parts(done, stop - start)
                bar.update(stop - start - (last - first))
            return done

        with chunked(stage, n, chunk, one_chunk, bar.update) as images:
            bar.close()
            if images is None:  # the main process writes
                return
            save_tensors(stage.path(INJECTED), {"images": images, **pairs})
            labels = d.train.labels  # the CSV's label is the style image's; content_label is the other choice
            write_synthetic_dataset(stage.path("images"), images, labels[pairs["style"]], pairs["seeds"],
                                    extra_columns={"style": pairs["style"], "content": pairs["content"],
                                                   "content_label": labels[pairs["content"]]})

    di = ctx.cfg.diffinject  # only what shapes the pairs; the pool and the diffusion model are inputs of their own
    # the precision the images are computed in, not the setting: fp32 (every cache made before the setting existed)
    # stays out of the key, bf16 enters it, so ``auto`` reuses what this hardware would compute
    computed = {k: v for k, v in key_dict(icfg).items() if k != "precision"}
    if precision != "fp32":
        computed["precision"] = precision
    pairs = {k: getattr(di, k) for k in ("synthetic_ratio", "style_pool")}
    return ctx.run.cached("injection", compute, reads(diffusion, ranking, injection=computed, pool=pool, pairs=pairs),
                          distributed=True)


def load_injected(ctx: Context, stage: Stage) -> tuple[ImageSet, dict[str, torch.Tensor]]:
    """The synthetic images as generated, labelled by the style or the content image (``diffinject.label_source``),
    and the injection's tensors (images, style and content indices, seeds)."""
    t, _ = load_tensors(stage.path(INJECTED))
    di = ctx.cfg.diffinject
    if di.label_source not in ("style", "content"):
        raise ValueError(f"diffinject.label_source must be 'style' or 'content', got '{di.label_source}'")
    return ImageSet(t["images"], ctx.data.train.labels[t[di.label_source]],
                    reads=reads(stage, label_source=di.label_source)), t


# ---------------------------------------------------------------------------------------------------------- run


def final_classifier(ctx: Context, train: ImageSet, draw: Draw) -> Trained:
    """The classifier on every real image plus the synthetic ones (:func:`with_synthetic`'s ``train``, which carries
    what made and chose them), drawn as ``draw`` says (the released code: uniformly)."""
    return train_stage(ctx, "classifier", ctx.cfg.classifier, draw.weighting, train=train, what=draw.reads,
                       valid=draw.valid)


def run_diffinject(ctx: Context) -> Trained:
    cfg, d = ctx.cfg, ctx.data
    di = cfg.diffinject
    scores = RANKINGS[cfg.detection.source].scores(ctx)
    pool = POOLS[di.content_pool].choose(ctx, scores)
    general, general_source = general_dataset(ctx)
    diff = diffusion_stage(ctx, "injection_diffusion", cfg.diffusion, general, None, general_source)
    inj = injection_stage(ctx, diff, pool, scores)
    generated, pairs = load_injected(ctx, inj)
    generated = postprocessed(ctx, generated)
    errors = misclassified(scores.pred, d.train.labels)
    keep, chosen_by = kept_synthetic(ctx, generated, pairs["style"])
    synthetic = replace(generated.subset(keep.nonzero().flatten()), reads=generated.reads | chosen_by)
    if not len(synthetic):
        ctx.run.log(f"warning: diffinject.keep={di.keep}: no synthetic image passes ({keep_words(di)}); the "
                    f"classifier sees the real images only")
    train = with_synthetic(d.train, synthetic)
    draw = SAMPLERS[sampler_name(di)](ctx, train, errors)
    final = final_classifier(ctx, train, draw)

    metrics = ctx.metrics  # with what the stages recorded
    metrics.update(content_pool=purity(d.train, pool), synthetic_images=len(generated), synthetic_kept=len(synthetic),
                   **draw.metrics)
    if d.train.has_bias:
        style_aligned = d.train.aligned_mask()[pairs["style"]]
        content_conflicting = ~d.train.aligned_mask()[pairs["content"]]
        metrics["pairs"] = {"style_aligned": float(style_aligned.double().mean()),
                            "content_conflicting": float(content_conflicting.double().mean())}
    if cfg.compare.erm:
        metrics["erm"] = evaluate_stage(ctx, "erm_evaluation", train_stage(ctx, "erm", cfg.classifier))
    if cfg.data.name == "cmnist" and len(synthetic):
        metrics["synthetic_colour_shape"] = colour_shape_stage(ctx, "synthetic_colour_shape", lambda: synthetic,
                                                               synthetic.reads)
    if ctx.run.main:  # of several processes, the main one writes the run's figures
        ctx.report = diffinject_report(ctx, pool, inj, generated, pairs, metrics, keep, draw)
    return final


def diffinject_report(ctx: Context, pool: torch.Tensor, inj: Stage, synthetic: ImageSet,
                      pairs: dict[str, torch.Tensor], metrics: dict[str, Any], keep: torch.Tensor,
                      draw: Draw) -> list[str]:
    from ..evaluation.diffinject_figures import triples_figure
    from ..evaluation.report import pct

    cfg, d = ctx.cfg, ctx.data
    di, ic = cfg.diffinject, cfg.injection
    out = ["## DiffInject", "",
           f"Content pool: {POOLS[di.content_pool].words(di, len(pool))} by {RANKINGS[cfg.detection.source].words}; "
           f"styles from `{di.style_pool}`; labels from the `{di.label_source}` image; diffusion data "
           f"`{di.general_data}`; {ic.steps}-step grid{'' if ic.t_start is None else f' up to t_start {ic.t_start}'}, "
           f"t_edit {ic.t_edit}, t_boost {ic.t_boost}, {ic.blend} blend, gamma {ic.gamma}"
           f"{'' if ic.mask is None else f', mask {ic.mask}'}; {len(synthetic)} synthetic images"
           f"{draw.words}{selection_words(di, metrics['synthetic_kept'])}.",
           ""]
    cp = metrics["content_pool"]
    if "truly_conflicting" in cp:
        out += [f"Content pool purity: **{cp['truly_conflicting']} of {cp['pool']}** truly bias-conflicting "
                f"({100 * cp['purity']:.1f} %).", ""]
    out += draw.notes
    if "erm" in metrics:
        e = metrics["erm"]["test"]
        out += [f"Plain ERM on the real data with the same classifier settings: test unbiased accuracy "
                f"**{pct(e.get('unbiased_accuracy'))}** %.", ""]
    if "synthetic_colour_shape" in metrics:
        a = metrics["synthetic_colour_shape"]
        out += ["### Synthetic images (Colored MNIST)", "",
                "A bias-conflicting synthetic image has a stroke colour that is NOT its label's majority colour.", "",
                *colour_shape_table(a)]
    figures = ctx.run.root / "figures"
    triples_figure(d.train.images[pairs["style"][:16]], d.train.images[pairs["content"][:16]],
                   synthetic.images[:16], figures / "triples.png")
    out += ["### (style, content, result) triples", "", "![triples](figures/triples.png)", ""]
    out += kept_section(di, synthetic.images, keep, figures)
    grid = inj.path("images") / "grid.png"
    if grid.exists():
        (figures / "synthetic_grid.png").write_bytes(grid.read_bytes())
        out += ["### Synthetic images by label", "", "![synthetic](figures/synthetic_grid.png)", ""]
    return out
