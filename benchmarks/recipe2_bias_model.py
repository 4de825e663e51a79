"""Is DDB Recipe II limited by its recipe or by its bias model? The same recipe against other frozen bias models.

Takes a finished DDB run that trained the real-data reference amplifiers (``ddb.references=true``) and trains Recipe
II's target classifier (the run's ``classifier`` and ``lff`` settings, the library's training loop, W = L_b / (L_b +
L_d) through ``methods.ddb.recipe2_weighting``) once per named bias model, each from that run's cached per-sample
losses:
``amplifier`` (the synthetic-trained amplifier, the paper's), ``reference_gce`` (GCE on the real training images, as
LfF's biased model but trained first and frozen) or ``reference_erm`` (ERM stopped early, as JTT's). Every classifier
keeps its last epoch (no valid selection: the pseudo-groups would differ per bias model). Printed per bias model: the
test's unbiased / aligned / conflicting accuracy, the bias model's AUROC on the conflicting samples, and the share of
the final epoch's weight that the conflicting samples hold.

    python benchmarks/recipe2_bias_model.py runs/fm/ddb-s1 --bias-model amplifier reference_gce --out runs/fm/r2bias
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

STAGES = {"amplifier": "amplifier_scores", "reference_gce": "reference_gce_scores",
          "reference_erm": "reference_erm_scores"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished DDB run directory with its reference amplifiers")
    parser.add_argument("--bias-model", nargs="+", choices=sorted(STAGES), default=["amplifier", "reference_gce"])
    parser.add_argument("--out", type=Path, required=True,
                        help="where each classifier is written (a finished one is reused, an interrupted one resumes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the run's config (e.g. classifier.epochs=2 for a quick check)")
    args = parser.parse_args()

    from diffdebias.classifiers.train import evaluate, load_classifier, train_classifier
    from diffdebias.config import key_dict, load_config
    from diffdebias.data import load_dataset
    from diffdebias.evaluation.metrics import detection_metrics
    from diffdebias.methods.ddb import recipe2_weighting
    from diffdebias.runs import Stage, config_hash, load_tensors

    cfg = load_config(args.run / "config.yaml", args.set)
    if cfg.ddb.bias_temperature != 1:
        raise SystemExit("ddb.bias_temperature rescales the amplifier's logits, which this script does not read: "
                         "leave it at 1")
    d = load_dataset(cfg.data)
    tr, te = d.train, d.test
    conflicting = tr.labels != tr.bias
    clf = dataclasses.replace(cfg.classifier, select="last")
    print(f"{args.run}: {len(tr)} training images, {int(conflicting.sum())} conflicting; Recipe II with "
          f"lff.alpha={cfg.lff.alpha}, ema={cfg.lff.ema}, normalize={cfg.lff.normalize}; last epoch of "
          f"{clf.epochs}", flush=True)
    for name in args.bias_model:
        path = args.run / STAGES[name] / "scores.safetensors"
        if not path.exists():
            raise SystemExit(f"{path}: not found (a DDB run with ddb.references=true has it)")
        scores, _ = load_tensors(path)
        loss_b = scores["loss"]
        weighting = recipe2_weighting(cfg, loss_b, tr.labels)
        (args.out / name).mkdir(parents=True, exist_ok=True)
        key = config_hash(key_dict(clf), key_dict(cfg.lff), (args.run / STAGES[name] / "DONE").read_text(), cfg.seed)
        stage = Stage(f"recipe2_{name}", args.out / name, key, seed=cfg.seed, log=lambda msg: None)
        if stage.done:
            model = load_classifier(stage, clf)
        else:
            model = train_classifier(stage, tr, clf, d.num_classes, weighting=weighting)
            stage.finish()
        m = evaluate(model, te, d.num_classes, d.num_bias)
        auroc = detection_metrics(loss_b.numpy(), (scores["pred"] != tr.labels).numpy(), conflicting.numpy())["auroc"]
        history = json.loads((args.out / name / "history.json").read_text())
        w = history[-1]["sample_weights"]
        conflicting_weight = w["conflicting_mean"] * w["conflicting_count"]
        share = conflicting_weight / (conflicting_weight + w["aligned_mean"] * w["aligned_count"])
        print(f"- {name}: unbiased {100 * m['unbiased_accuracy']:.2f}, aligned {100 * m['aligned_accuracy']:.2f}, "
              f"conflicting {100 * m['conflicting_accuracy']:.2f}; bias model AUROC {auroc:.4f}; conflicting share "
              f"of the last epoch's weight {100 * share:.1f} %", flush=True)


if __name__ == "__main__":
    main()
