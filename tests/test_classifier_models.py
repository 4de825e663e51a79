"""Classifier models: the CPU-sized CIFAR ResNets, and ImageNet weights read only from the local torch cache."""

from __future__ import annotations

import hashlib

import pytest
import torch

from diffdebias.classifiers import models
from diffdebias.classifiers.models import PretrainedWeightsError, build_classifier


@pytest.mark.parametrize("arch,weights", [("resnet20", 272_474), ("resnet8", 78_042)])
@pytest.mark.parametrize("side", [28, 32])
def test_cifar_resnets_are_small_and_take_28_and_32_px(arch, weights, side):
    model = build_classifier(arch, 10, (3, side, side))
    assert model(torch.rand(2, 3, side, side)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == weights  # He et al.'s ResNet-20: 0.27 M


def test_missing_imagenet_weights_name_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsError) as e:
        build_classifier("resnet18", 2, (3, 32, 32), pretrained=True)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(e.value)
    assert "nothing is downloaded" in str(e.value)
    with pytest.raises(PretrainedWeightsError, match="only resnet18, resnet50"):
        build_classifier("resnet20", 2, (3, 32, 32), pretrained=True)


def _weights_file(tmp_path, state: dict) -> tuple:
    """A torchvision-style checkpoint named ``resnet18-<sha256[:8]>.pth``, as torch.hub names its files."""
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    path = tmp_path / f"resnet18-{digest[:8]}.pth"
    raw.rename(path)
    return path, digest


def test_imagenet_weights_load_from_the_cache_and_are_hash_checked(tmp_path, monkeypatch):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).state_dict()
    path, digest = _weights_file(tmp_path, reference)
    monkeypatch.setattr(models, "pretrained_path", lambda arch: path)
    model = build_classifier("resnet18", 2, (3, 32, 32), pretrained=True)
    assert torch.equal(model.encoder.conv1.weight, reference["conv1.weight"]) and model.normalize
    path.write_bytes(path.read_bytes()[:-10])  # truncated: its hash no longer matches its name
    with pytest.raises(PretrainedWeightsError, match="does not match"):
        build_classifier("resnet18", 2, (3, 32, 32), pretrained=True)


def test_a_saved_pretrained_model_loads_with_its_input_normalisation(tmp_path, monkeypatch):
    """A model fine-tuned from ImageNet weights normalises its inputs; loading its saved weights must keep that."""
    import torchvision

    from diffdebias.classifiers.train import WEIGHTS, load_classifier
    from diffdebias.config import TrainConfig
    from diffdebias.runs import Stage, save_tensors

    path, _ = _weights_file(tmp_path, torchvision.models.resnet18(weights=None).state_dict())
    monkeypatch.setattr(models, "pretrained_path", lambda arch: path)
    cfg = TrainConfig(arch="resnet18", pretrained=True)
    trained = build_classifier("resnet18", 2, (3, 32, 32), pretrained=True)
    stage = Stage("classifier", tmp_path / "stage", "k", 0)
    save_tensors(stage.path(WEIGHTS), trained.state_dict(), {"num_classes": 2, "image_shape": [3, 32, 32]})
    loaded = load_classifier(stage, cfg)
    x = torch.rand(2, 3, 32, 32)
    assert loaded.normalize and torch.allclose(loaded(x), trained.eval()(x), atol=1e-5)
