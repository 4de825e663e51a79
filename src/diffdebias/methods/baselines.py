"""The debiasing baselines as compositions of cached stages: LfF, JTT, Group-DRO, DisEnt, LfF+BE (and DisEnt+BE).

Each is ``(ctx) -> Trained``; the training itself is always the one loop with a weighting object from
:mod:`..classifiers.debias_weighting` or :mod:`..classifiers.weighting`. Config sections read: ``classifier`` (the
target), ``lff`` (EMA alpha, GCE q, EMA and normalisation switches, shared by every LfF-style method), ``groupdro``,
``jtt``, ``disent``, ``bias_ensemble``, ``selection`` (LfF's and JTT's groups of the valid split), ``detection`` (DDB
plugged in).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import torch

from ..classifiers.debias_weighting import (
    DisEnt,
    FixedSteps,
    Upsample,
    committee_aligned,
    disent_factory,
)
from ..classifiers.losses import cross_entropy
from ..classifiers.train import predict_logits
from ..classifiers.weighting import GroupDRO
from ..data.base import ImageSet
from ..keys import reads
from ..runs import Stage, load_tensors, read_json, save_tensors, write_json
from .amplifier import ddb_flags
from .common import Context, Method, Trained, record, train_stage
from .detection import identification
from .parts import jtt_copies, lff_selection, lff_weighting, require_ce, selection_valid

# ---------------------------------------------------------------------------------------------------------- LfF


def run_lff(ctx: Context) -> Trained:
    """LfF (Nam et al. 2020): f_B (GCE) and f_D trained jointly, f_D's CE weighted by the relative difficulty."""
    c = ctx.cfg
    require_ce(c.classifier, "lff")
    return train_stage(ctx, "lff", c.classifier, weighting=lff_weighting(ctx, ctx.data.train), what=reads(lff=c.lff),
                       valid=lff_selection(ctx))


# ---------------------------------------------------------------------------------------------------------- JTT


def run_jtt(ctx: Context) -> Trained:
    """JTT (Liu et al. 2021): ERM for T epochs, its training errors upsampled 1 + lambda_up times in a new ERM.

    Deviation: the error set is read from the stage-1 model after epoch T in eval mode (a separate pass over the
    training set); JTT records the predictions of the training-mode forward passes during epoch T.
    """
    c, j = ctx.cfg, ctx.cfg.jtt
    if j.epochs_first < 1:
        raise ValueError(f"jtt.epochs_first must be >= 1, got {j.epochs_first}")

    @cache
    def identify() -> Trained:
        return train_stage(ctx, "jtt_identify", replace(c.classifier, epochs=j.epochs_first, select="last", ensemble=1))

    valid = selection_valid(ctx, identify)
    if c.detection.source == "ddb":  # DDB as the plug-in detector: its flagged samples are the error set
        flags, detector = ddb_flags(ctx)
        index = flags.nonzero().squeeze(1)
        copies = jtt_copies(j.lambda_up, len(ctx.data.train), len(index))
        return train_stage(ctx, "jtt", c.classifier, weighting=Upsample(index, copies),
                           what=reads(detector, jtt=j, copies=copies), valid=valid)
    first = identify()

    def find_errors(stage: Stage) -> None:
        train = ctx.data.train
        logits = predict_logits(first.model, train.images, precision=c.classifier.precision)
        wrong = logits.argmax(1) != train.labels
        loss = cross_entropy(logits, train.labels)
        save_tensors(stage.path("error_set.safetensors"), {"index": wrong.nonzero().squeeze(1), "loss": loss})
        write_json(stage.path("summary.json"), identification(train, loss.numpy(), wrong.numpy()))

    errors = ctx.run.cached("jtt_error_set", find_errors, reads(first, rule="eval-mode errors after epoch T"))
    index = load_tensors(errors.path("error_set.safetensors"))[0]["index"]
    record(ctx, "jtt_error_set", read_json(errors.path("summary.json")))
    copies = jtt_copies(j.lambda_up, len(ctx.data.train), len(index))
    return train_stage(ctx, "jtt", c.classifier, weighting=Upsample(index, copies),
                       what=reads(first, errors, jtt=j, copies=copies), valid=valid)


# ---------------------------------------------------------------------------------------------------- Group-DRO


def true_groups(train: ImageSet, num_bias: int) -> torch.Tensor:
    """Group index of each training sample from (label, bias), renumbered over the groups present in training."""
    if not train.has_bias:
        raise ValueError("gdro is supervised: it needs a bias label for every training sample (groups = label x "
                         "bias), and this dataset's training split has none; use an unsupervised method (jtt, lff, "
                         "disent, lff_be) or add a bias column to the CSV")
    groups = train.labels * max(num_bias, int(train.bias.max()) + 1) + train.bias
    return torch.unique(groups, return_inverse=True)[1]


def run_gdro(ctx: Context) -> Trained:
    """Group-DRO (Sagawa et al. 2020) with the true groups label x bias: a supervised ceiling, not unsupervised."""
    c, d = ctx.cfg, ctx.data
    groups = true_groups(d.train, d.num_bias)
    g = c.groupdro
    w = GroupDRO.from_config(groups, g)
    record(ctx, "supervised", True)
    return train_stage(ctx, "gdro", c.classifier, weighting=w, what=reads(groupdro=g))


# ------------------------------------------------------------------------------------------------------- DisEnt


def run_disent(ctx: Context) -> Trained:
    """DisEnt (Lee et al. 2021): disentangled intrinsic / bias features with LfF weights and feature swapping."""
    c, d = ctx.cfg, ctx.data
    require_ce(c.classifier, "disent")
    w = DisEnt.from_config(d.train.labels, c.disent, c.lff, c.classifier.precision)
    return train_stage(ctx, "disent", c.classifier, weighting=w, build_model=disent_factory,
                       what=reads(disent=c.disent, lff=c.lff))


# ------------------------------------------------------------------------------------------------- BiasEnsemble


def bias_committee(ctx: Context) -> tuple[torch.Tensor, Stage]:
    """BiasEnsemble stage 1: M GCE models, each ``iterations`` steps from a fresh init, the best-valid one kept
    (valid accuracy every ``valid_freq`` steps); a sample is pseudo bias-aligned when >= ``agreement`` of them give
    its label p > tau. Returns the pseudo-aligned mask over the training set and the committee stage.

    Deviations: valid evaluations fall after steps valid_freq, 2·valid_freq, ... (BiasEnsemble evaluates after steps
    1, valid_freq + 1, ..., so its last steps are never evaluated); each model draws its own shuffled order (the
    authors share one loader across the models).
    """
    c, be = ctx.cfg, ctx.cfg.bias_ensemble
    if be.num_models < 1 or not 1 <= be.agreement <= be.num_models:
        raise ValueError(f"bias_ensemble needs num_models >= 1 and 1 <= agreement <= num_models, got "
                         f"{be.num_models} / {be.agreement}")
    steps = FixedSteps(be.iterations, be.valid_freq, c.classifier.batch_size)
    has_valid = len(ctx.data.valid) > 0
    member_cfg = replace(c.classifier, loss="gce", gce_q=c.lff.q, epochs=steps.epochs, eval_every=1, ensemble=1,
                         select="valid" if has_valid else "last", select_metric="accuracy")  # already a committee
    schedule = reads(iterations=be.iterations, valid_freq=be.valid_freq)
    members = [train_stage(ctx, f"be_bias{k}", member_cfg, weighting=steps, what=schedule)
               for k in range(be.num_models)]

    def vote(stage: Stage) -> None:
        train = ctx.data.train
        p_y = []
        for m in members:
            logits = predict_logits(m.model, train.images, precision=c.classifier.precision)
            p_y.append(torch.softmax(logits, 1).gather(1, train.labels[:, None]).squeeze(1))
        p_y = torch.stack(p_y, 1)
        aligned = committee_aligned(p_y, be.tau, be.agreement)
        save_tensors(stage.path("committee.safetensors"), {"p_y": p_y, "aligned": aligned})
        score = (1 - p_y.mean(1)).numpy()  # higher: more likely bias-conflicting
        write_json(stage.path("summary.json"), identification(train, score, (~aligned).numpy()))

    committee = ctx.run.cached("be_committee", vote, reads(*members, tau=be.tau, agreement=be.agreement))
    record(ctx, "be_pseudo_conflicting", read_json(committee.path("summary.json")))
    aligned = load_tensors(committee.path("committee.safetensors"))[0]["aligned"].bool()
    return aligned, committee


def run_lff_be(ctx: Context) -> Trained:
    """LfF + BiasEnsemble (Lee et al. 2023): LfF whose f_B is trained with CE on the committee's pseudo-aligned
    samples only (freshly initialised), f_D on every sample with LfF's W."""
    c, d = ctx.cfg, ctx.data
    require_ce(c.classifier, "lff_be")
    if c.detection.source == "ddb":  # DDB as the plug-in detector: what it does not flag is pseudo-aligned
        flags, detector = ddb_flags(ctx)
        return train_stage(ctx, "lff_be", c.classifier, weighting=lff_weighting(ctx, d.train, aligned_mask=~flags),
                           what=reads(detector, lff=c.lff))
    aligned, committee = bias_committee(ctx)
    w = lff_weighting(ctx, d.train, aligned_mask=aligned)
    return train_stage(ctx, "lff_be", c.classifier, weighting=w,
                       what=reads(committee, lff=c.lff, bias_ensemble=c.bias_ensemble))


def run_disent_be(ctx: Context) -> Trained:
    """DisEnt + BiasEnsemble: DisEnt whose align terms are CE on the committee's pseudo-aligned samples only."""
    c, d = ctx.cfg, ctx.data
    require_ce(c.classifier, "disent_be")
    aligned, committee = bias_committee(ctx)
    w = DisEnt.from_config(d.train.labels, c.disent, c.lff, c.classifier.precision, aligned_mask=aligned)
    return train_stage(ctx, "disent_be", c.classifier, weighting=w, build_model=disent_factory,
                       what=reads(committee, disent=c.disent, lff=c.lff, bias_ensemble=c.bias_ensemble))


BASELINES = {  # detection: its source and ddb_config (DDB as the plug-in detector)
    "lff": Method(run_lff, ("data", "classifier", "lff", "selection")),
    "jtt": Method(run_jtt, ("data", "classifier", "jtt", "selection", "detection")),
    "gdro": Method(run_gdro, ("data", "classifier", "groupdro")),
    "disent": Method(run_disent, ("data", "classifier", "disent", "lff")),
    "lff_be": Method(run_lff_be, ("data", "classifier", "lff", "bias_ensemble", "detection")),
    "disent_be": Method(run_disent_be, ("data", "classifier", "disent", "lff", "bias_ensemble")),
}
