"""ERM: the plain classifier every debiasing method is measured against."""

from __future__ import annotations

from .common import Context, Trained, train_stage


def run_erm(ctx: Context) -> Trained:
    return train_stage(ctx, "classifier", ctx.cfg.classifier)
