"""Every config section range-checks its fields at load, so an impossible value fails before any stage runs."""

from pathlib import Path

import pytest

from diffdebias import checks
from diffdebias.config import ConfigError, TrainConfig, load_config
from diffdebias.diffusion.config import DiffusionConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

BAD = [
    # top level
    ("method=ermm", "method"),
    ("device=gpu", "device"),
    ("device=cuda:x", "device"),
    ("seed=-1", "seed"),
    # data
    ("data.name=imagenet", "data.name"),
    ("data.name=csv", "data.csv"),
    ("data.conflict_ratio=1.0", "data.conflict_ratio"),
    ("data.conflict_ratio=-0.01", "data.conflict_ratio"),
    ("data.color_std=-1", "data.color_std"),
    ("data.image_size=-4", "data.image_size"),
    ("data.image_size=0", "data.image_size"),
    ("data.valid_fraction=1.5", "data.valid_fraction"),
    ("data.valid_fraction=0", "data.valid_fraction"),
    ("data.test_fraction=-0.1", "data.test_fraction"),
    ("data.test_fraction=1", "data.test_fraction"),
    ("data.valid_bias_order=random", "data.valid_bias_order"),
    ("data.seed=-3", "data.seed"),
    # classifier
    ("classifier.epochs=0", "classifier.epochs"),
    ("classifier.epochs=-3", "classifier.epochs"),
    ("classifier.batch_size=-5", "classifier.batch_size"),
    ("classifier.batch_size=0", "classifier.batch_size"),
    ("classifier.eval_every=0", "classifier.eval_every"),
    ("classifier.ensemble=0", "classifier.ensemble"),
    ("classifier.optimizer=sgdd", "classifier.optimizer"),
    ("classifier.arch=resnet19", "classifier.arch"),
    ("classifier.loss=mse", "classifier.loss"),
    ("classifier.select=best", "classifier.select"),
    ("classifier.precision=fp16", "classifier.precision"),
    ("classifier.lr=0", "classifier.lr"),
    ("classifier.lr=.nan", "classifier.lr"),
    ("classifier.weight_decay=-0.1", "classifier.weight_decay"),
    ("classifier.momentum=1", "classifier.momentum"),
    ("classifier.gce_q=0", "classifier.gce_q"),
    ("classifier.input_scale=0", "classifier.input_scale"),
    # amplifier: the same schema, named by its own section
    ("amplifier.epochs=0", "amplifier.epochs"),
    ("amplifier.batch_size=-5", "amplifier.batch_size"),
    ("amplifier.select=best", "amplifier.select"),
    # detection
    ("detection.rule=foo", "detection.rule"),
    ("detection.quantile=1", "detection.quantile"),
    ("detection.threshold=-1", "detection.threshold"),
    ("detection.source=committee", "detection.source"),
    ("detection.source=ddb", "detection.ddb_config"),
    # groupdro
    ("groupdro.eta=-0.1", "groupdro.eta"),
    ("groupdro.adjustment=-1", "groupdro.adjustment"),
    # lff
    ("lff.alpha=1", "lff.alpha"),
    ("lff.q=0", "lff.q"),
    ("lff.error_epochs=0", "lff.error_epochs"),
    # ddb
    ("ddb.recipe=foo", "ddb.recipe"),
    ("ddb.reference_epochs=0", "ddb.reference_epochs"),
    ("ddb.bias_temperature=0", "ddb.bias_temperature"),
    ("ddb.bias_model=warm", "ddb.bias_model"),
    # jtt
    ("jtt.epochs_first=0", "jtt.epochs_first"),
    ("jtt.lambda_up=-2", "jtt.lambda_up"),
    # selection
    ("selection.valid_groups=all", "selection.valid_groups"),
    ("jtt.valid_groups=all", "selection.valid_groups"),  # an old name: the error names the key it set
    ("lff.valid_groups=random", "selection.valid_groups"),
    # disent
    ("disent.lambda_swap=-1", "disent.lambda_swap"),
    ("disent.curr_step=-1", "disent.curr_step"),
    ("disent.lr_decay_step=0", "disent.lr_decay_step"),
    ("disent.lr_gamma=0", "disent.lr_gamma"),
    ("disent.lr_gamma=1.5", "disent.lr_gamma"),
    # bias_ensemble
    ("bias_ensemble.num_models=0", "bias_ensemble.num_models"),
    ("bias_ensemble.iterations=0", "bias_ensemble.iterations"),
    ("bias_ensemble.valid_freq=0", "bias_ensemble.valid_freq"),
    ("bias_ensemble.tau=1", "bias_ensemble.tau"),
    ("bias_ensemble.agreement=0", "bias_ensemble.agreement"),
    ("bias_ensemble.agreement=6", "bias_ensemble.agreement"),  # more votes than the 5 models
    # diffusion sections
    ("diffusion.steps=0", "diffusion.steps"),
    ("diffusion.lr=0", "diffusion.lr"),
    ("sampling.steps=0", "sampling.steps"),
    ("sampling.eta=2", "sampling.eta"),
    ("injection.steps=1", "injection.steps"),
    ("diffinject.top_k=0", "diffinject.top_k"),
    ("diffinject.synthetic_ratio=0", "diffinject.synthetic_ratio"),
]


@pytest.mark.parametrize("override,field", BAD)
def test_bad_value_fails_at_load_naming_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value)


def test_amplifier_errors_do_not_blame_the_classifier():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["amplifier.epochs=0"])
    assert "classifier" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^amplifier\.gce_q"):
        load_config(None, ["amplifier.gce_q=0"])
    with pytest.raises(ConfigError, match=r"^amplifier\.lr must be > 0"):
        TrainConfig(lr=0).validate("amplifier")
    with pytest.raises(ConfigError, match=r"^classifier\.lr"):
        TrainConfig(lr=0).validate()  # the old call without a name still works


def test_a_trained_recipe2_bias_model_needs_the_amplifiers_architecture():
    """ddb.bias_model=trained starts LfF's biased model (built like the target) from the amplifier: refused at load,
    before any stage, when the two differ, and with a temperature that only a frozen amplifier's loss has."""
    ok = ["method=ddb", "diffusion.conditional=true", "ddb.recipe=lff", "ddb.bias_model=trained"]
    assert load_config(None, ok).ddb.bias_model == "trained"
    with pytest.raises(ConfigError, match=r"ddb\.bias_model=trained.*classifier\.arch=mlp.*amplifier\.arch=resnet8"):
        load_config(None, [*ok, "amplifier.arch=resnet8"])
    with pytest.raises(ConfigError, match=r"ddb\.bias_temperature"):
        load_config(None, [*ok, "ddb.bias_temperature=0.5"])
    load_config(None, [*ok[:3], "amplifier.arch=resnet8"])  # the paper's frozen amplifier may be any model
    load_config(None, ["ddb.recipe=lff", "ddb.bias_model=trained", "amplifier.arch=resnet8"])  # not a DDB run


@pytest.mark.parametrize("override", ["diffusion.steps=0", "sampling.sampler=euler", "injection.blend=max"])
def test_diffusion_sections_keep_their_error_class(override):
    with pytest.raises(DiffusionConfigError):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides",
    [
        ["device=cuda:1"], ["device=mps"], ["jtt.lambda_up=-1"], ["jtt.lambda_up=0"], ["groupdro.eta=0"],
        ["data.image_size=null"], ["data.image_size=32"], ["data.conflict_ratio=0"], ["detection.threshold=0"],
        ["disent.lr_gamma=1"], ["disent.curr_step=0"], ["lff.alpha=0"], ["classifier.momentum=0"],
        ["bias_ensemble.agreement=5"], ["data.name=csv", "data.csv=x.csv"],
        ["method=disent_be"], ["seed=0"],
    ],
)
def test_edge_values_that_work_are_accepted(overrides):
    load_config(None, overrides)


def test_every_shipped_config_loads():
    paths = [p for p in sorted(CONFIGS.rglob("*.yaml")) if "tables" not in p.relative_to(CONFIGS).parts
             and p.relative_to(CONFIGS) != Path("scoreboard.yaml")]  # tables and the scoreboard's spec: no run configs
    assert len(paths) >= 12
    for path in paths:
        assert load_config(path).method, path


def test_name_lists_match_their_owners():
    """config.py keeps copies of names owned by modules it cannot import (they import it, or torch)."""
    from diffdebias import config
    from diffdebias.classifiers.models import ARCHS
    from diffdebias.data import SOURCES
    from diffdebias.data.cmnist import VALID_BIAS_ORDERS
    from diffdebias.methods import METHODS
    from diffdebias.methods.detection import RULES
    from diffdebias.methods.parts import VALID_GROUPS

    assert config.METHOD_NAMES == tuple(sorted(METHODS))
    assert config.ARCHS == ARCHS
    assert config.DETECTION_RULES == RULES
    assert config.VALID_GROUPS == VALID_GROUPS
    assert config.VALID_BIAS_ORDERS == VALID_BIAS_ORDERS
    assert config.DATASET_NAMES == tuple(SOURCES)


def test_check_helpers():
    class Custom(ConfigError):
        pass

    with pytest.raises(Custom, match=r"^s\.k must be at least 1 \(an integer\), got True$"):
        checks.count("s.k", True, error=Custom)  # a bool is no count
    with pytest.raises(ConfigError, match=r"must be at least 1 \(an integer\), got 2.5"):
        checks.count("s.k", 2.5)
    with pytest.raises(ConfigError, match=r"must be > 0, got nan"):
        checks.positive("s.k", float("nan"))
    with pytest.raises(ConfigError, match=r"must be >= 0, got nan"):
        checks.at_least("s.k", float("nan"), 0)
    with pytest.raises(ConfigError, match=r"^s\.k must be in \(0, 1\], got 0$"):
        checks.fraction("s.k", 0, low_open=True)
    with pytest.raises(ConfigError, match=r"^s\.k must be one of a, b; got 'c'$"):
        checks.choice("s.k", "c", ("a", "b"))
    checks.fraction("s.k", 1, low_open=True)
    checks.count("s.k", 0, low=0)
    checks.interval("s.k", -1, -1, 1)
    assert ConfigError is checks.ConfigError


def test_a_partial_section_keeps_that_sections_own_defaults():
    """``--set amplifier.epochs=5`` changes the epochs only: the amplifier stays a GCE model kept at its last epoch
    (its defaults), not a classifier with the classifier's defaults."""
    cfg = load_config(None, ["amplifier.epochs=5"])
    assert (cfg.amplifier.loss, cfg.amplifier.epochs, cfg.amplifier.select) == ("gce", 5, "last")
    assert cfg.classifier.loss == "ce"
