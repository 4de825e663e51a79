"""Diffusing DeBias: a conditional diffusion model trained on the biased data generates bias-aligned images; a bias
amplifier trained only on them scores the real samples; a recipe debiases the target model with that signal.

Stages: diffusion -> synthetic -> amplifier -> amplifier_scores -> classifier (Recipe I: Group-DRO on pseudo-groups,
Recipe II: LfF-style weights). Reference amplifiers trained on the real data (ERM for a few epochs as JTT does, GCE as
LfF does) are scored with the same detection rule, to measure the paper's central claim.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..classifiers.weighting import FixedBiasLossWeights, GroupDRO
from ..config import Config, TrainConfig
from ..data.base import ImageSet
from ..keys import Reads, reads
from ..runs import Stage
from .amplifier import detected, synthetic_amplifier
from .common import Context, Scores, Trained, evaluate_stage, logits_stage, score_stage, train_stage
from .detection import GROUP_METRICS, SUPERVISED_RULES, identification, with_pseudo_groups
from .diagnostics import colour_shape_stage, colour_shape_table
from .generation import load_synthetic
from .parts import lff_weighting

RECIPES = ("groupdro", "lff")


def selection_valid(ctx: Context, amp: Trained) -> ImageSet | str:
    """The valid split that selects the recipe's model (and its ERM comparison) when ``classifier.select=valid``.

    Its bias labels are replaced by the pseudo-groups the detection rule finds in it with the same frozen amplifier,
    so ``select_metric=unbiased_accuracy`` or ``worst_group_accuracy`` needs no true bias label (the oracle rule reads
    the true ones here too); the split carries the scores and the rule it was made with. With ``select=last`` or a
    metric that reads no group (``accuracy``) the plain valid split.
    """
    c = ctx.cfg.classifier
    if c.select != "valid" or c.select_metric not in GROUP_METRICS:
        return "real"
    d = ctx.data
    scores = score_stage(ctx, "amplifier_valid_scores", amp, split="valid")
    return with_pseudo_groups(d.valid, torch.from_numpy(detected(ctx, scores, "valid")), d.num_classes,
                              reads(scores, valid_groups=ctx.cfg.detection))


def detection_report(ctx: Context, scores: Scores) -> dict[str, Any]:
    return identification(ctx.data.train, scores.loss.numpy(), detected(ctx, scores))


def reference_training(cfg: Config) -> TrainConfig:
    """The references' training recipe: the amplifier's, or without its weight decay and augmentation (``plain``)."""
    if cfg.ddb.reference_recipe == "plain":
        return replace(cfg.amplifier, weight_decay=0.0, augment=False)
    return cfg.amplifier


def reference_amplifiers(ctx: Context) -> dict[str, Trained]:
    """Biased models trained on the real data: ERM stopped early (JTT) and GCE (LfF), same architecture."""
    amp = reference_training(ctx.cfg)
    return {
        "erm_real": train_stage(ctx, "reference_erm", replace(amp, loss="ce", epochs=ctx.cfg.ddb.reference_epochs,
                                                               select="last")),
        "gce_real": train_stage(ctx, "reference_gce", replace(amp, loss="gce", select="last",
                                                               epochs=ctx.cfg.ddb.reference_gce_epochs or amp.epochs)),
    }


def bias_loss(ctx: Context, amp: Trained, scores: Scores) -> tuple[torch.Tensor, Stage]:
    """Recipe II's per-sample loss of the amplifier and the stage it comes from: its plain CE (the paper's), or its CE
    at ``logits / ddb.bias_temperature`` from its cached logits."""
    t = ctx.cfg.ddb.bias_temperature
    if t == 1:
        return scores.loss, scores.stage
    stage, logits = logits_stage(ctx, "amplifier_logits", amp)
    return torch.nn.functional.cross_entropy(logits / t, ctx.data.train.labels, reduction="none"), stage


def recipe2_weighting(cfg: Config, loss_b: torch.Tensor, labels: torch.Tensor) -> FixedBiasLossWeights:
    """Recipe II's weights against a frozen bias model's per-sample losses, from the ``lff`` settings."""
    lf = cfg.lff
    return FixedBiasLossWeights(loss_b, labels, alpha=lf.alpha, ema=lf.ema, normalize=lf.normalize)


def recipe_weighting(ctx: Context, amp: Trained, scores: Scores, loss_b: torch.Tensor | None = None):
    cfg = ctx.cfg
    labels = ctx.data.train.labels
    if cfg.ddb.recipe == "groupdro":
        conflicting = torch.from_numpy(detected(ctx, scores)).long()
        share = float(conflicting.double().mean())
        if share > 0.5:
            ctx.run.log(f"warning: detection.rule={cfg.detection.rule} flags {share:.0%} of the training set as "
                        "bias-conflicting, so the pseudo-groups are nearly the classes; a minority this large is "
                        "degenerate: try detection.rule=error_set or quantile")
        return GroupDRO.from_config(labels * 2 + conflicting, cfg.groupdro)
    if cfg.ddb.recipe == "lff" and cfg.ddb.bias_model == "trained":
        # LfF's biased model, built like the target (config validation checked the amplifier's architecture
        # matches), starts from the amplifier's weights
        return lff_weighting(ctx, ctx.data.train, init_b=amp.model.state_dict())
    if cfg.ddb.recipe == "lff":
        return recipe2_weighting(cfg, scores.loss if loss_b is None else loss_b, labels)
    raise ValueError(f"unknown ddb.recipe '{cfg.ddb.recipe}' (known: {', '.join(RECIPES)})")


def recipe_reads(ctx: Context, loss: Stage) -> Reads:
    """What the recipe's weighting reads: the amplifier's losses (``loss``, the stage they come from) and the
    recipe's settings (a temperature or a biased model that trains on only where they are not the paper's)."""
    ddb = ctx.cfg.ddb
    if ddb.recipe == "groupdro":
        return reads(loss, recipe=ddb.recipe, detection=ctx.cfg.detection, groupdro=ctx.cfg.groupdro)
    if ddb.bias_model != "frozen":  # the biased model trains on from the amplifier (its temperature is 1)
        return reads(loss, recipe=ddb.recipe, lff=ctx.cfg.lff, bias_model=ddb.bias_model)
    t = {} if ddb.bias_temperature == 1 else {"bias_temperature": ddb.bias_temperature}
    return reads(loss, recipe=ddb.recipe, lff=ctx.cfg.lff, **t)


def amplification_stage(ctx: Context, syn: Stage) -> dict[str, Any]:
    """Colored MNIST only: bias-aligned fraction and shape fidelity of the synthetic set, beside the real set's."""
    return colour_shape_stage(ctx, "amplification", lambda: load_synthetic(syn), reads(syn))


def run_ddb(ctx: Context) -> Trained:
    cfg = ctx.cfg
    amp, diff, syn = synthetic_amplifier(ctx)
    scores = {"synthetic": score_stage(ctx, "amplifier_scores", amp)}
    valid = selection_valid(ctx, amp)
    synthetic = scores["synthetic"]
    loss_b, loss = bias_loss(ctx, amp, synthetic) if cfg.ddb.recipe == "lff" else (None, synthetic.stage)
    final = train_stage(ctx, "classifier", cfg.classifier, weighting=recipe_weighting(ctx, amp, synthetic, loss_b),
                        what=recipe_reads(ctx, loss), valid=valid)

    metrics = ctx.metrics  # with what the stages recorded
    oracle = cfg.detection.rule in SUPERVISED_RULES and cfg.ddb.recipe == "groupdro"
    metrics["supervised"] = metrics.get("supervised", False) or oracle
    if cfg.ddb.references:
        for name, model in reference_amplifiers(ctx).items():
            scores[name] = score_stage(ctx, f"{model.stage.name}_scores", model)
    if ctx.data.train.has_bias:
        det = {name: detection_report(ctx, s) for name, s in scores.items()}
        metrics["detection"] = det.pop("synthetic")
        metrics["detection_references"] = det
    if cfg.compare.erm:
        erm = train_stage(ctx, "erm", cfg.classifier, valid=valid)
        metrics["erm"] = evaluate_stage(ctx, "erm_evaluation", erm)
    if cfg.data.name == "cmnist":
        metrics["amplification"] = amplification_stage(ctx, syn)
    if ctx.run.main:  # of several processes, the main one writes the run's figures
        ctx.report = ddb_report(ctx, scores, syn, metrics)
    return final


def ddb_report(ctx: Context, scores: dict[str, Scores], syn: Stage, metrics: dict[str, Any]) -> list[str]:
    from ..evaluation.ddb_figures import loss_histograms, ranked_gallery
    from ..evaluation.report import pct

    out = [f"## Diffusing DeBias: recipe `{ctx.cfg.ddb.recipe}`, detection rule `{ctx.cfg.detection.rule}`", ""]
    if metrics.get("supervised"):
        out += ["**Supervised ceiling**: the pseudo-groups come from the true bias labels (`detection.rule=oracle`).",
                ""]
    if "erm" in metrics:
        e = metrics["erm"]["test"]
        out += [f"Plain ERM on the same data and schedule: test unbiased accuracy "
                f"**{pct(e.get('unbiased_accuracy'))}**, conflicting {pct(e.get('conflicting_accuracy'))}, aligned "
                f"{pct(e.get('aligned_accuracy'))} (%; — where a split has no such sample).", ""]
    if "detection" in metrics:
        rows = {"synthetic (DDB amplifier)": metrics["detection"], **{
            {"erm_real": f"ERM on real data, {ctx.cfg.ddb.reference_epochs} epochs (JTT-style)",
             "gce_real": "GCE on real data (LfF-style)"}[k]: v for k, v in metrics["detection_references"].items()}}
        recipe = {"plain": "no weight decay, no augmentation, as JTT and LfF train",
                  "amplifier": "the amplifier's weight decay and augmentation"}[ctx.cfg.ddb.reference_recipe]
        out += ["### Bias-conflicting detection on the real training set", "",
                f"Same rule (`{ctx.cfg.detection.rule}`) for every amplifier; AUROC and AP rank by loss. The "
                f"real-data references train with `ddb.reference_recipe={ctx.cfg.ddb.reference_recipe}` ({recipe}).",
                "",
                "| amplifier | precision | recall | F1 | AUROC | AP | flagged | truly conflicting |",
                "|---|---|---|---|---|---|---|---|"]
        for name, m in rows.items():
            out.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['auroc']:.4f} | "
                       f"{m['average_precision']:.3f} | {m['predicted']} | {m['true']} |")
        out.append("")
    figures = ctx.run.root / "figures"
    d = ctx.data
    if d.train.has_bias and loss_histograms({k: v.loss for k, v in scores.items()},
                                            (d.train.labels != d.train.bias), figures / "amplifier_losses.png"):
        out += ["![amplifier loss, aligned vs conflicting](figures/amplifier_losses.png)", ""]
    grid = syn.path("images") / "grid.png"
    if grid.exists():
        figures.mkdir(parents=True, exist_ok=True)
        (figures / "synthetic_grid.png").write_bytes(grid.read_bytes())
        out += ["### Synthetic images (one row per class)", "", "![synthetic](figures/synthetic_grid.png)", ""]
    if "amplification" in metrics:
        a = metrics["amplification"]
        out += ["### Bias amplification (Colored MNIST)", "", *colour_shape_table(a)]
    ranked_gallery(d.train, scores["synthetic"].loss, d.class_names, ctx.run.root / "gallery")
    out += ["### Most likely bias-conflicting training images", "",
            "Ranked by amplifier loss: `gallery/ranked.csv` (all samples), top ones in "
            "[gallery/top.png](gallery/top.png).", "", "![top-ranked](gallery/top.png)", ""]
    return out
