"""The synthetic-trained bias amplifier (DDB's first stages) and the real samples it flags: DDB composes it, and other
methods plug it in as their detector (``detection.source=ddb``: JTT's error set, LfF+BE's committee, DiffInject's
content ranking)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import load_config
from ..keys import Reads, reads
from ..runs import Stage
from .common import Context, Scores, Trained, score_stage, train_stage
from .detection import SUPERVISED_RULES, detect, identification
from .generation import diffusion_stage, load_synthetic, synthetic_stage


def detected(ctx: Context, scores: Scores, split: str = "train") -> np.ndarray:
    """Which samples of ``split`` the run's ``detection`` rule flags as bias-conflicting from an amplifier's scores."""
    part = ctx.data.split(split)
    bias = part.bias.numpy() if part.has_bias else None
    return detect(ctx.cfg.detection, scores.loss.numpy(), scores.pred.numpy(), part.labels.numpy(), bias)


def synthetic_amplifier(ctx: Context) -> tuple[Trained, Stage, Stage]:
    """diffusion -> synthetic -> amplifier: a classifier that has only ever seen generated (bias-aligned) images."""
    cfg = ctx.cfg
    d = ctx.data
    diff = diffusion_stage(ctx, "diffusion", cfg.diffusion, d.train, d.num_classes if cfg.diffusion.conditional
                           else None, ctx.train_split)
    syn = synthetic_stage(ctx, "synthetic", diff, cfg.sampling, cfg.diffusion, d.num_classes,
                          d.train.images.shape[-1])
    amp = train_stage(ctx, "amplifier", cfg.amplifier, train=load_synthetic(syn))
    return amp, diff, syn


def ddb_amplifier(ctx: Context, ddb_config: str) -> tuple[Context, Trained]:
    """The synthetic-trained amplifier of the DDB config ``ddb_config`` for this run's data and seed, its stages in
    this run (another method's plug-in detector), and the context it was made in."""
    ddb_cfg = load_config(ddb_config, seed=ctx.cfg.seed, device=ctx.cfg.device)
    ddb_cfg.data = ctx.cfg.data
    sub = Context(ddb_cfg, ctx.run)
    amp, _, _ = synthetic_amplifier(sub)
    return sub, amp


def ddb_flags(ctx: Context) -> tuple[torch.Tensor, Reads]:
    """DDB as a plug-in detector (``detection.source=ddb``): the real training samples the amplifier of
    ``detection.ddb_config`` flags as bias-conflicting under that config's detection rule. Returns the mask and what
    it was made from (the scores and the rule: the stage key of what uses it); records how well it matches."""
    sub, amp = ddb_amplifier(ctx, ctx.cfg.detection.ddb_config)
    scores = score_stage(sub, "amplifier_scores", amp)
    flags = detected(sub, scores)
    if sub.cfg.detection.rule in SUPERVISED_RULES:
        ctx.metrics["supervised"] = True
    ctx.metrics["ddb_detection"] = identification(ctx.data.train, scores.loss.numpy(), flags)
    return torch.from_numpy(flags).bool(), reads(scores, detector=sub.cfg.detection)
