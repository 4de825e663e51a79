"""Stages rerun when something they read changes, and only then (the two holes issue #39 found by reading)."""

from __future__ import annotations

import json
from pathlib import Path

from diffdebias.classifiers.train import evaluate, load_classifier
from diffdebias.cli import main
from diffdebias.config import load_config
from diffdebias.data import load_dataset
from diffdebias.keys import NOTHING
from diffdebias.methods.common import train_group_counts
from diffdebias.runs import Stage
from test_diffinject import TINY as DI_TINY


def test_a_last_epoch_models_valid_metrics_follow_the_valid_split(tmp_path, fake_mnist, capsys):
    """A select=last model never reads the valid split, so it stays cached when the split changes; its evaluation
    reads the split, so it reruns and reports the new split's metrics."""
    args = ["run", "configs/cmnist/erm.yaml", "--out", str(tmp_path / "r"), "--set", f"data.mnist_path={fake_mnist}",
            "--set", "data.conflict_ratio=0.05", "--set", "classifier.epochs=2", "--set", "classifier.select=last"]
    assert main(args) == 0
    before = json.loads((tmp_path / "r" / "metrics.json").read_text())
    capsys.readouterr()
    assert main([*args, "--set", "data.valid_bias_order=dataset"]) == 0
    log = capsys.readouterr().out
    assert "stage classifier: done, skipped" in log and "stage evaluation: running" in log
    after = json.loads((tmp_path / "r" / "metrics.json").read_text())
    cfg = load_config("configs/cmnist/erm.yaml", [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05",
                                                  "data.valid_bias_order=dataset"])
    d = load_dataset(cfg.data)
    model = load_classifier(Stage("classifier", tmp_path / "r" / "classifier", "", 0), cfg.classifier)
    fresh = evaluate(model, d.valid, d.num_classes, d.num_bias, group_weights=train_group_counts(d))
    assert after["test"] == before["test"] and after["valid"] == json.loads(json.dumps(fresh))


def test_diffinject_keeps_follow_the_classifier_that_filters_them(tmp_path, fake_mnist, capsys):
    """With the content pool ranked by a DDB amplifier, keep=conflicting still reads the GCE classifier (the
    amplifier section): changing it changes the kept images, so the final classifier must train again."""
    ddb_cfg = tmp_path / "ddb_tiny.yaml"
    ddb_cfg.write_text(f"base: {Path('configs/cmnist/ddb.yaml').resolve()}\n"
                       "diffusion: {preset: tiny, steps: 6, batch_size: 16, checkpoint_every: 3}\n"
                       "sampling: {per_class: 6, steps: 3}\namplifier: {epochs: 2}\n")
    args = ["run", "configs/cmnist/diffinject.yaml", "--out", str(tmp_path / "di"), "--quiet",
            "--set", f"data.mnist_path={fake_mnist}", "--set", "data.conflict_ratio=0.05", *DI_TINY,
            "--set", "detection.source=ddb", "--set", f"detection.ddb_config={ddb_cfg}",
            "--set", "diffinject.keep=conflicting", "--set", "compare.erm=false"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([a for a in args if a != "--quiet"] + ["--set", "amplifier.epochs=1"]) == 0
    log = capsys.readouterr().out
    assert "stage injection: done, skipped" in log  # the pool and the pairs do not read the GCE classifier
    assert "stage biased_classifier: running" in log and "stage classifier: running" in log


def diffinject_keys(out: Path, fake_mnist: Path, *overrides: str) -> dict[str, tuple]:
    """What every stage of a tiny DiffInject run is keyed by: ``{stage: (config, [input stages])}``, the config cut
    to what DiffInject chooses (a classifier's ``extra``, the injection's pool as its size), the inputs named by the
    stages (or ``data`` / ``train``, the dataset keys) they come from."""
    from diffdebias.data import dataset_key, train_key
    from diffdebias.runs import Run

    calls = []
    stage = Run.stage

    def record(self, name, what=NOTHING, version=0):
        st = stage(self, name, what, version)
        calls.append((name, {**what.settings, **({"version": version} if version else {})}, tuple(what.inputs),
                      st.key))
        return st

    args = ["run", "configs/cmnist/diffinject.yaml", "--out", str(out), "--quiet", "--set",
            f"data.mnist_path={fake_mnist}", "--set", "data.conflict_ratio=0.05", *DI_TINY, "--set",
            "injection.precision=fp32", "--set", "compare.erm=false"]
    for o in overrides:
        args += ["--set", o]
    Run.stage = record
    try:
        assert main(args) == 0
    finally:
        Run.stage = stage
    data = load_config("configs/cmnist/diffinject.yaml", [f"data.mnist_path={fake_mnist}",
                                                          "data.conflict_ratio=0.05"]).data
    names = {dataset_key(data): "data", train_key(data): "train"}
    stages = {}
    for name, config, inputs, key in calls:
        names[key] = name
        if name == "data":  # the dataset's own cache: its key names the temporary file
            continue
        if name == "injection_diffusion":
            config = "diffusion section"
        elif isinstance(config, dict) and "train" in config:
            config = config["extra"]
        elif isinstance(config, dict) and "pool" in config:
            config = {**config, "pool": len(config["pool"])}
        stages[name] = (json.loads(json.dumps(config)), sorted(names.get(k, k) for k in inputs))
    return stages


DIAGNOSTIC = {"diagnostic": "background-subtracted, colour by hue; usable conflicting"}
DI_BASE = {  # the released pipeline: GCE ranking, top 10 per class, every synthetic image, drawn uniformly
    "biased_classifier": (None, ["train"]),
    "biased_scores": ({}, ["biased_classifier"]),
    "injection_diffusion": ("diffusion section", ["train"]),
    "injection": ({"injection": {"boost_eta": 1.0, "gamma": 0.3, "mask": None, "steps": 4, "t_boost": 200,
                                 "t_edit": 400},
                   "pairs": {"style_pool": "all", "synthetic_ratio": 0.1}, "pool": 100},
                  ["biased_scores", "injection_diffusion"]),
    "classifier": ({"label_source": "style"}, ["data", "injection"]),
    "shape_classifier": (None, ["data"]),
    "real_colour_shape": (DIAGNOSTIC, ["data", "shape_classifier"]),
    "synthetic_colour_shape": ({**DIAGNOSTIC, "label_source": "style"}, ["injection", "shape_classifier"]),
    "evaluation": ({"splits": ["valid", "test"], "version": 2}, ["classifier", "data"]),
}
LFF_KEY = {"final_method": "lff", "label_source": "style", "lff": {"alpha": 0.7, "ema": True, "normalize": True,
                                                                    "q": 0.7}}
FILTERED = {"copies": 50, "keep": "similar_neighbours_conflicting", "label_source": "style", "min_similarity": -1.0,
            "neighbours": 5, "upsample_errors": 50}
DI_VARIANTS = [  # (overrides, the stages whose keys differ from DI_BASE's)
    (["diffinject.synthetic_share=0.5"],
     {"classifier": ({"label_source": "style", "synthetic_share": 0.5}, ["data", "injection"])}),
    (["diffinject.final_method=lff"], {"classifier": (LFF_KEY, ["data", "injection"])}),
    (["diffinject.final_method=lff", "classifier.select=valid", "classifier.select_metric=unbiased_accuracy"],
     {"classifier": (LFF_KEY, ["data", "early_erm", "injection"]), "early_erm": (None, ["train"])}),
    (["diffinject.label_source=content", "diffinject.match_black=true", "diffinject.keep=similar",
      "diffinject.min_similarity=-1.0"],
     {"classifier": ({"keep": "similar", "label_source": "content", "match_black": True, "min_similarity": -1.0},
                     ["data", "injection"]),
      "synthetic_colour_shape": ({**DIAGNOSTIC, "keep": "similar", "label_source": "content", "match_black": True,
                                  "min_similarity": -1.0}, ["injection", "shape_classifier"])}),
    (["diffinject.upsample_errors=50", "diffinject.keep=similar_neighbours_conflicting",
      "diffinject.min_similarity=-1.0"],
     {"classifier": (FILTERED, ["biased_classifier", "data", "injection"]),
      # the kept images' numbers read what kept them, the GCE classifier of ``conflicting`` included
      "synthetic_colour_shape": ({**DIAGNOSTIC, **{k: v for k, v in FILTERED.items() if k in (
          "keep", "label_source", "min_similarity", "neighbours")}},
                                 ["biased_classifier", "injection", "shape_classifier"])}),
]
COLOUR_SHAPE = ("shape_classifier", "real_colour_shape", "synthetic_colour_shape")  # none when no image is kept


def test_diffinject_stage_keys_stay_those_existing_caches_were_made_with(tmp_path, fake_mnist):
    """The paper's pipeline and the registries beside it (synthetic filters, black level, final samplers) key their
    stages as the runs cached so far were keyed: a change here recomputes every such run, so it must be meant."""
    out = tmp_path / "di"
    assert diffinject_keys(out, fake_mnist) == DI_BASE
    for overrides, changed in DI_VARIANTS:
        expected, got = {**DI_BASE, **changed}, diffinject_keys(out, fake_mnist, *overrides)
        if "synthetic_colour_shape" not in got:  # the filters kept no image: no colour-shape numbers to key
            expected = {k: v for k, v in expected.items() if k not in COLOUR_SHAPE}
        assert got == expected, overrides
