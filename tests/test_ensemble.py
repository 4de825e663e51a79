"""``classifier.ensemble``: members trained as their own stages, averaged in probability, reused across counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffdebias.classifiers.models import SoftmaxAverage
from diffdebias.classifiers.train import load_classifier, predict_logits
from diffdebias.config import load_config
from diffdebias.data import load_dataset
from diffdebias.evaluation.metrics import accuracy_metrics
from diffdebias.pipeline import execute
from diffdebias.runs import Stage, read_json


def linear(weight: list[list[float]]) -> nn.Module:
    layer = nn.Linear(2, len(weight), bias=False)
    layer.weight.data = torch.tensor(weight)
    return layer


def test_softmax_average_is_the_log_of_the_mean_probability():
    a, b = linear([[1.0, 0.0], [0.0, 1.0]]), linear([[0.0, 3.0], [2.0, 0.0]])
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    out = SoftmaxAverage([a, b])(x)
    expected = (a(x).softmax(1) + b(x).softmax(1)) / 2
    assert torch.allclose(out.exp(), expected, atol=1e-6)
    assert torch.allclose(out.softmax(1), expected, atol=1e-6)  # valid logits: softmax reads the average back


def erm(fake_mnist, ensemble: int):
    return load_config(None, [f"data.mnist_path={fake_mnist}", "data.conflict_ratio=0.05", "classifier.epochs=2",
                              "classifier.batch_size=64", "classifier.select=last", "method=erm",
                              f"classifier.ensemble={ensemble}"])


def test_ensemble_trains_members_and_evaluates_their_mean(tmp_path, fake_mnist):
    single = erm(fake_mnist, 1)
    out = tmp_path / "run"
    alone = read_json(execute(single, out, quiet=True) / "metrics.json")
    assert "members" not in alone
    first = (out / "classifier" / "model.safetensors").stat().st_mtime_ns

    cfg = erm(fake_mnist, 3)
    metrics = read_json(execute(cfg, out, quiet=True) / "metrics.json")
    assert (out / "classifier" / "model.safetensors").stat().st_mtime_ns == first  # not trained again
    members = [load_classifier(Stage(n, out / n, "", cfg.seed), single.classifier)
               for n in ("classifier", "classifier_m1", "classifier_m2")]
    # member 0 is the single run's model, reused; the others start from their own seeds
    assert metrics["members"][0] == {k: alone[k] for k in ("valid", "test")}
    w = [m.state_dict()["encoder.1.weight"] for m in members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    # the run's numbers are those of the mean softmax of the three
    d = load_dataset(cfg.data, log=lambda m: None)
    probs = torch.stack([predict_logits(m, d.test.images).softmax(1) for m in members]).mean(0)
    expected = accuracy_metrics(probs.argmax(1), d.test.labels, d.test.bias, d.num_classes, d.num_bias)
    assert metrics["test"]["unbiased_accuracy"] == pytest.approx(expected["unbiased_accuracy"])
    assert metrics["test"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert len(metrics["members"]) == 3
    assert "averages the softmax of 3 classifiers" in (out / "report.md").read_text()


def test_ensemble_must_be_positive(tmp_path, fake_mnist):
    with pytest.raises(ValueError, match="ensemble must be at least 1"):
        execute(erm(fake_mnist, 0), tmp_path / "run", quiet=True)


def test_only_the_final_classifier_is_an_ensemble(tmp_path, fake_mnist, monkeypatch):
    from diffdebias.config import JTTConfig
    from diffdebias.methods import METHODS
    from diffdebias.methods.baselines import BASELINES

    monkeypatch.setitem(METHODS, "jtt", BASELINES["jtt"])
    cfg = erm(fake_mnist, 2)
    cfg.method, cfg.jtt = "jtt", JTTConfig(epochs_first=1, lambda_up=2)
    out = execute(cfg, tmp_path / "jtt", quiet=True)
    assert (out / "jtt_m1" / "DONE").exists()  # the debiased classifier has its second member
    assert not (out / "jtt_identify_m1").exists()  # the error set comes from one model, as JTT defines it
    assert len(read_json(out / "metrics.json")["members"]) == 2
