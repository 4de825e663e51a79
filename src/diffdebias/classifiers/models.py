"""Classifiers: the LfF/DisEnt MLPs and torchvision ResNets, each split into an encoder and a linear head.

The split lets methods read features (DisEnt swaps them, amplifiers embed with them) without touching the model code.
Inputs are float images in [0, 1], multiplied by ``input_scale`` first (1/255 reproduces the DisEnt/BiasEnsemble
code's double division); pretrained ResNets normalise with ImageNet statistics inside.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

ARCHS = ("mlp", "mlp16", "resnet18", "resnet50", "resnet18_cifar", "resnet20", "resnet8")
WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V1"}


class PretrainedWeightsError(ValueError):
    """ImageNet weights asked for (classifier.pretrained=true) that are not in the local torch cache, or corrupt."""


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


def pretrained_path(arch: str) -> Path:
    """Where torchvision keeps ``arch``'s ImageNet weights: ``$TORCH_HOME/hub/checkpoints/<name>-<sha256[:8]>.pth``."""
    import torch.hub
    import torchvision

    url = torchvision.models.get_weight(WEIGHTS[arch]).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def load_pretrained(arch: str) -> dict[str, torch.Tensor]:
    """``arch``'s ImageNet weights from the local torch cache, never downloaded: the file must exist and its sha256
    must start with the hash in its name (torch.hub's convention). Read as tensors only (``weights_only``), so the
    file cannot run code."""
    import torchvision

    if arch not in WEIGHTS:
        raise PretrainedWeightsError(f"classifier.pretrained is not available for {arch} (only {', '.join(WEIGHTS)})")
    path = pretrained_path(arch)
    url = torchvision.models.get_weight(WEIGHTS[arch]).url
    if not path.is_file():
        raise PretrainedWeightsError(f"classifier.pretrained=true needs {arch}'s ImageNet weights at {path}; nothing "
                                     f"is downloaded at run time: fetch {url} on a machine with internet and copy it "
                                     f"there (or set TORCH_HOME), or set classifier.pretrained=false")
    expected = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise PretrainedWeightsError(f"{path}: sha256 {digest[:8]}... does not match the {expected} in its name: a "
                                     f"corrupt or foreign file; fetch {url} again")
    return torch.load(path, map_location="cpu", weights_only=True)


def _resnet(arch: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    net = (torchvision.models.resnet50 if arch == "resnet50" else torchvision.models.resnet18)(weights=None)
    if pretrained:
        net.load_state_dict(load_pretrained(arch))
    if arch == "resnet18_cifar":  # 3x3 stem without max-pool, for 32 px images
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def _cifar_resnet(blocks: int) -> tuple[nn.Module, int]:
    """He et al.'s CIFAR ResNet (6n + 2 layers: a 3x3 stem, three stages of ``blocks`` basic blocks at 16/32/64
    channels): ResNet-20 has 0.27 M weights, a small model for 28-32 px images on a CPU."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    width = 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for b in range(blocks):
            s = stride if b == 0 else 1
            down = None
            if s != 1 or width != planes:
                down = nn.Sequential(conv1x1(width, planes, s), nn.BatchNorm2d(planes))
            layers.append(BasicBlock(width, planes, s, down))
            width = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), width


def build_classifier(arch: str, num_classes: int, image_shape: tuple[int, int, int], pretrained: bool = False,
                     input_scale: float = 1.0):
    """``image_shape`` is (C, H, W) of the inputs."""
    c, h, w = image_shape
    if arch == "mlp":
        return Classifier(_mlp(c * h * w, (100, 100, 100)), 100, num_classes, input_scale=input_scale)
    if arch == "mlp16":
        return Classifier(_mlp(c * h * w, (100, 100, 16)), 16, num_classes, input_scale=input_scale)
    if arch.startswith("resnet"):
        if c != 3:
            raise ValueError(f"classifier.arch={arch} needs 3-channel images, got {c}")
        if pretrained and arch not in WEIGHTS:
            raise PretrainedWeightsError(f"classifier.pretrained is not available for {arch} "
                                         f"(only {', '.join(WEIGHTS)})")
        encoder, dim = _cifar_resnet({"resnet20": 3, "resnet8": 1}[arch]) if arch in ("resnet20", "resnet8") else (
            _resnet(arch, pretrained))
        return Classifier(encoder, dim, num_classes, normalize=pretrained, input_scale=input_scale)
    raise ValueError(f"unknown classifier.arch '{arch}' (known: {', '.join(ARCHS)})")
