"""What every method composes: the run context and the cached classifier-training stage."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..classifiers.models import SoftmaxAverage
from ..classifiers.train import ModelFactory, default_factory, load_classifier, predict_logits, train_classifier
from ..classifiers.weighting import Weighting
from ..config import Config, TrainConfig
from ..data import Splits, dataset_key, load_dataset, train_key
from ..data.base import ImageSet
from ..devices import launched
from ..keys import NOTHING, Reads, Source, reads
from ..runs import Run, Stage, load_tensors, read_json, save_tensors, write_json
from .detection import GROUP_METRICS


@dataclass
class Context:
    """A run in progress: its config, directory, and the dataset, loaded only when a stage needs it."""

    cfg: Config
    run: Run
    metrics: dict[str, Any] = field(default_factory=dict)  # run-level entries of metrics.json the stages record
    report: list[str] = field(default_factory=list)  # the method's sections of report.md (markdown)

    @cached_property
    def data(self) -> Splits:
        return load_dataset(self.cfg.data, log=self.run.log)

    @cached_property
    def data_key(self) -> str:
        return dataset_key(self.cfg.data)

    @cached_property
    def train_key(self) -> str:
        """Key of the training split alone, for stages that read nothing else."""
        return train_key(self.cfg.data)

    @property
    def dataset(self) -> Source:
        """The whole dataset as a stage input."""
        return Source("data", self.data_key)

    @property
    def train_split(self) -> Source:
        """The training split alone as a stage input."""
        return Source("train", self.train_key)


@dataclass
class Trained:
    """A finished classifier stage (or, for ``ensemble`` > 1, its members' stages, the first one as ``stage``); the
    model is loaded on first use."""

    stage: Stage
    cfg: TrainConfig
    ctx: Context
    build_model: ModelFactory = default_factory
    members: tuple[Stage, ...] = ()

    @property
    def key(self) -> str:
        return "+".join(s.key for s in self.members) if len(self.members) > 1 else self.stage.key

    @cached_property
    def parts(self) -> tuple[Trained, ...]:
        """The members, each alone (their own evaluations show what the averaging adds); they load once, shared
        with the average's model."""
        one = replace(self.cfg, ensemble=1)
        return tuple(Trained(s, one, self.ctx, self.build_model) for s in self.members)

    @cached_property
    def model(self) -> nn.Module:
        if len(self.members) > 1:
            return SoftmaxAverage([p.model for p in self.parts])
        return load_classifier(self.stage, self.cfg, self.build_model)


@dataclass
class Result:
    """What a method hands the pipeline: its final classifier, the run-level entries of ``metrics.json`` its stages
    recorded, and its sections of ``report.md``."""

    model: Trained
    metrics: dict[str, Any]
    report: list[str]


@dataclass(frozen=True)
class Method:
    """A method and the config sections it reads besides the top-level fields (name, method, seed, device): a run
    saves, and a benchmark table compares, only those, so a default changed in another section leaves its finished
    runs valid. A plug-in detector's sections (``detection.ddb_config``) come from its own config file, not this
    run's."""

    run: Callable[[Context], Trained]
    sections: tuple[str, ...]

    def __call__(self, ctx: Context) -> Result:
        model = self.run(ctx)
        return Result(model, ctx.metrics, ctx.report)


def record(ctx: Context, key: str, value: Any) -> None:
    """A run-level entry of ``metrics.json`` (methods add to it; none replaces what another stage recorded)."""
    ctx.metrics[key] = value


def train_stage(
    ctx: Context,
    name: str,
    cfg: TrainConfig,
    weighting: Weighting | None = None,
    train: ImageSet | None = None,
    what: Reads = NOTHING,
    build_model: ModelFactory = default_factory,
    valid: ImageSet | None | str = "real",
) -> Trained:
    """Train a classifier as a cached stage. ``train`` defaults to the real training split and ``valid`` to the real
    valid split (None: no valid split); ``what`` is what the weighting reads (:func:`..keys.reads`: its settings and
    the stages it came from). The stage is keyed by that, the training settings, and what ``train`` and ``valid``
    were made from (:attr:`ImageSet.reads`), so a change upstream retrains it.

    A model kept at its last epoch beside the real valid split never reads that split (it is only logged in the
    history), so the stage is keyed by the training split alone and a change to the valid split keeps it cached.
    A model selected on a group metric of the real valid split reads its bias labels: the run is marked supervised.
    """
    if valid == "real" and cfg.select == "valid" and cfg.select_metric in GROUP_METRICS:
        record(ctx, "supervised", True)
    if cfg.ensemble < 1:
        raise ValueError(f"{name}: ensemble must be at least 1, got {cfg.ensemble}")
    one = replace(cfg, ensemble=1)  # a member's key leaves out the count: an ensemble of 5 reuses the 3 of 3

    def compute(stage: Stage) -> None:
        d = ctx.data
        member_weighting = copy.deepcopy(weighting) if cfg.ensemble > 1 else weighting  # it may keep state (LfF)
        train_classifier(stage, train if train is not None else d.train, one, d.num_classes,
                         d.valid if valid == "real" else valid, d.num_bias, weighting=member_weighting,
                         build_model=build_model, parallel=parallel)

    parallel = launched() and (weighting is None or weighting.distributable)  # every process trains its part
    data = ctx.train_split if cfg.select == "last" and valid == "real" and train is None else ctx.dataset
    read = reads(what, train, valid if isinstance(valid, ImageSet) else None)
    key = reads(data, Reads(inputs=read.inputs), train=one, extra=dict(read.settings) or None)
    members = tuple(ctx.run.cached(name if k == 0 else f"{name}_m{k}", compute, key, distributed=parallel)
                    for k in range(cfg.ensemble))
    return Trained(members[0], cfg, ctx, build_model, members if cfg.ensemble > 1 else ())


def train_group_counts(d: Splits) -> torch.Tensor | None:
    """The real training split's (label x bias) counts: the weights of ``adjusted_accuracy``; None without bias
    labels."""
    from ..evaluation.metrics import group_table

    if not d.train.has_bias:
        return None
    num_bias = max(d.num_bias, int(d.train.bias.max()) + 1)
    return group_table(d.train.labels, d.train.labels, d.train.bias, d.num_classes, num_bias)[0]


def evaluate_stage(ctx: Context, name: str, model: Trained, splits: tuple[str, ...] = ("valid", "test")) -> dict:
    """Metrics of a trained classifier on the given splits, cached as a stage. It reads the splits it scores and the
    training split's group counts (``adjusted_accuracy``), so it is keyed by the whole dataset as well as the model
    (a model kept at its last epoch is keyed by the training split alone)."""
    from ..classifiers.train import evaluate

    def compute(stage: Stage) -> None:
        d = ctx.data
        weights = train_group_counts(d)
        write_json(stage.path("metrics.json"),
                   {s: evaluate(model.model, d.split(s), d.num_classes, d.num_bias, group_weights=weights)
                    for s in splits})

    st = ctx.run.cached(name, compute, reads(model, ctx.dataset, splits=list(splits)), version=2)
    return read_json(st.path("metrics.json"))


@dataclass
class Scores:
    """A biased model's signal on the real training set."""

    stage: Stage
    loss: torch.Tensor  # per-sample cross-entropy
    pred: torch.Tensor

    @property
    def key(self) -> str:
        return self.stage.key


def logits_stage(ctx: Context, name: str, model: Trained) -> tuple[Stage, torch.Tensor]:
    """A (frozen) model's logits on every real training sample, cached as a stage."""

    def compute(stage: Stage) -> None:
        save_tensors(stage.path("logits.safetensors"), {"logits": predict_logits(model.model, ctx.data.train.images)})

    st = ctx.run.cached(name, compute, reads(model))
    return st, load_tensors(st.path("logits.safetensors"))[0]["logits"]


def score_stage(ctx: Context, name: str, model: Trained, split: str = "train") -> Scores:
    """Per-sample CE loss and prediction of a (frozen) model on every real sample of ``split`` (default train)."""

    def compute(stage: Stage) -> None:
        part = ctx.data.split(split)
        logits = predict_logits(model.model, part.images)
        loss = torch.nn.functional.cross_entropy(logits, part.labels, reduction="none")
        save_tensors(stage.path("scores.safetensors"), {"loss": loss, "pred": logits.argmax(1)})

    st = ctx.run.cached(name, compute, reads(model) if split == "train" else reads(model, split=split))
    t, _ = load_tensors(st.path("scores.safetensors"))
    return Scores(st, t["loss"], t["pred"])
