"""Classifiers: the LfF/DisEnt MLPs and torchvision ResNets, each split into an encoder and a linear head.

The split lets methods read features (DisEnt swaps them, amplifiers embed with them) without touching the model code.
Inputs are float images in [0, 1], multiplied by ``input_scale`` first (1/255 reproduces the DisEnt/BiasEnsemble
code's double division); pretrained ResNets normalise with ImageNet statistics inside.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("mlp", "mlp16", "resnet18", "resnet50", "resnet18_cifar")


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int, normalize: bool = False,
                 input_scale: float = 1.0):
        super().__init__()
        self.input_scale = input_scale
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            x = x * self.input_scale
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SoftmaxAverage(nn.Module):
    """Several classifiers as one: the log of their mean softmax, so argmax, softmax and CE read the average."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def _mlp(in_features: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(in_features, h), nn.ReLU()]
        in_features = h
    return nn.Sequential(*layers)


def _resnet(arch: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    if arch == "resnet50":
        net = torchvision.models.resnet50(weights="IMAGENET1K_V1" if pretrained else None)
    else:
        net = torchvision.models.resnet18(weights="IMAGENET1K_V1" if pretrained else None)
    if arch == "resnet18_cifar":  # 3x3 stem without max-pool, for 32 px images
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def build_classifier(arch: str, num_classes: int, image_shape: tuple[int, int, int], pretrained: bool = False,
                     input_scale: float = 1.0):
    """``image_shape`` is (C, H, W) of the inputs."""
    c, h, w = image_shape
    if arch == "mlp":
        return Classifier(_mlp(c * h * w, (100, 100, 100)), 100, num_classes, input_scale=input_scale)
    if arch == "mlp16":
        return Classifier(_mlp(c * h * w, (100, 100, 16)), 16, num_classes, input_scale=input_scale)
    if arch in ("resnet18", "resnet50", "resnet18_cifar"):
        if c != 3:
            raise ValueError(f"classifier.arch={arch} needs 3-channel images, got {c}")
        if pretrained and arch == "resnet18_cifar":
            raise ValueError("classifier.pretrained is not available for resnet18_cifar")
        try:
            encoder, dim = _resnet(arch, pretrained)
        except Exception as e:  # weights not in the local cache and no internet
            raise RuntimeError(f"could not load ImageNet weights for {arch} (classifier.pretrained=true): {e}") from e
        return Classifier(encoder, dim, num_classes, normalize=pretrained, input_scale=input_scale)
    raise ValueError(f"unknown classifier.arch '{arch}' (known: {', '.join(ARCHS)})")
