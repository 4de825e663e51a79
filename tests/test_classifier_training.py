import math

import pytest
import torch

from diffdebias.classifiers import train as train_module
from diffdebias.classifiers.losses import cross_entropy, gce
from diffdebias.classifiers.models import build_classifier
from diffdebias.classifiers.train import augment, train_classifier
from diffdebias.config import TrainConfig
from diffdebias.data.base import ImageSet
from diffdebias.runs import Run, load_tensors


def toy_set(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randint(0, 30, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[torch.arange(n), labels, :4, :4] = 250  # the label is written in one channel
    return ImageSet(images, labels, labels.clone())


def test_gce_matches_formula_and_gradient():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], requires_grad=True)
    y = torch.tensor([0, 2])
    q = 0.7
    p = torch.softmax(logits, 1)[torch.arange(2), y]
    value = gce(logits, y, q)
    assert torch.allclose(value, cross_entropy(logits, y) * p.detach() ** q * q)
    # the gradient equals that of (1 - p^q) / q, times q
    value.sum().backward()
    g1 = logits.grad.clone()
    logits.grad = None
    ((1 - torch.softmax(logits, 1)[torch.arange(2), y] ** q) / q * q).sum().backward()
    assert torch.allclose(g1, logits.grad, atol=1e-6)


def test_augment_is_a_shifted_crop_or_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, pad=1)
    assert out.shape == x.shape
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        crops = [padded[:, a : a + 4, b : b + 4] for a in range(3) for b in range(3)]
        crops += [c.flip(-1) for c in crops]
        assert any(torch.equal(out[i], c) for c in crops)


def test_augment_without_flip_keeps_the_same_crops_unmirrored():
    x = torch.rand(64, 1, 6, 6)  # asymmetric content: a flip is visible
    with_flip = augment(x, torch.Generator().manual_seed(3), pad=1)
    without = augment(x, torch.Generator().manual_seed(3), pad=1, flip=False)
    mirrored = [i for i in range(64) if not torch.equal(with_flip[i], without[i])]
    assert 16 < len(mirrored) < 48  # about half were flipped ...
    for i in range(64):  # ... and each is the same crop, mirrored or not
        assert torch.equal(with_flip[i], without[i]) or torch.equal(with_flip[i], without[i].flip(-1))


@pytest.mark.parametrize("arch,shape", [("mlp", (3, 28, 28)), ("mlp16", (3, 28, 28)), ("resnet18_cifar", (3, 32, 32))])
def test_models_output_logits(arch, shape):
    m = build_classifier(arch, 7, shape)
    assert m(torch.rand(2, *shape)).shape == (2, 7)
    assert m.features(torch.rand(2, *shape)).shape == (2, m.feature_dim)


def test_training_learns_and_selects_on_valid(tmp_path):
    data, valid = toy_set(), toy_set(60, seed=1)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, select="valid")
    run = Run(tmp_path, seed=0, quiet=True)
    out = {}
    st = run.cached("clf", lambda s: out.update(m=train_classifier(s, data, cfg, 3, valid, 3)))
    model = out["m"]
    acc = (model(valid.images.float() / 255).argmax(1) == valid.labels).float().mean()
    assert acc > 0.9
    weights, meta = load_tensors(st.path("model.safetensors"))
    assert meta["select"] == "valid" and 0 <= meta["selected_epoch"] < 4
    assert not st.path("checkpoint.safetensors").exists()


def test_killed_training_resumes_to_identical_weights(tmp_path):
    data, valid = toy_set(), toy_set(60, seed=1)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, select="last", augment=True)

    full = Run(tmp_path / "full", seed=5, quiet=True)
    res = {}
    full.cached("clf", lambda s: res.update(a=train_classifier(s, data, cfg, 3, valid, 3)))

    class Killed(Exception):
        pass

    def kill_after_two(epoch, model):
        if epoch == 1:
            raise Killed
        return {}

    part = Run(tmp_path / "part", seed=5, quiet=True)
    with pytest.raises(Killed):
        part.cached("clf", lambda s: train_classifier(s, data, cfg, 3, valid, 3, on_epoch=kill_after_two))
    # the checkpoint of epoch 1 was not written (killed before it), epoch 0's was
    part.cached("clf", lambda s: res.update(b=train_classifier(s, data, cfg, 3, valid, 3)))
    for (k, a), b in zip(res["a"].state_dict().items(), res["b"].state_dict().values()):
        assert torch.equal(a, b), k


def test_same_seed_same_numbers(tmp_path):
    data = toy_set()
    cfg = TrainConfig(epochs=2, batch_size=32, select="last")
    outs = []
    for name in ("a", "b"):
        run = Run(tmp_path / name, seed=9, quiet=True)
        run.cached("clf", lambda s: outs.append(train_classifier(s, data, cfg, 3)))
    assert all(torch.equal(a, b) for a, b in zip(outs[0].parameters(), outs[1].parameters()))
    assert not math.isnan(float(next(outs[0].parameters()).detach().sum()))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_sets_every_steps_learning_rate(tmp_path, monkeypatch, schedule):
    seen = []
    real = train_module.make_optimizer

    def recording(model, cfg):
        optimizer = real(model, cfg)
        step = optimizer.step

        def recorded(*args, **kwargs):
            seen.append(optimizer.param_groups[0]["lr"])
            return step(*args, **kwargs)

        optimizer.step = recorded
        return optimizer

    monkeypatch.setattr(train_module, "make_optimizer", recording)
    cfg = TrainConfig(epochs=3, batch_size=50, lr=1e-2, select="last", lr_schedule=schedule)
    Run(tmp_path, seed=0, quiet=True).cached("clf", lambda s: train_classifier(s, toy_set(), cfg, 3))
    steps = 3 * 4  # 200 images in batches of 50
    if schedule == "constant":
        expected = [1e-2] * steps
    else:  # a half cosine over the steps: full lr at the first, near 0 at the last
        expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * i / steps)) for i in range(steps)]
    assert seen == pytest.approx(expected)
    assert schedule == "constant" or seen[-1] < 2e-4


def test_select_valid_needs_valid(tmp_path):
    run = Run(tmp_path, seed=0, quiet=True)
    with pytest.raises(ValueError, match="select=last"):
        run.cached("clf", lambda s: train_classifier(s, toy_set(), TrainConfig(epochs=1), 3, None))


@pytest.mark.parametrize("arch", ["mlp", "mlp16"])
def test_input_scale_multiplies_the_inputs(arch):
    torch.manual_seed(0)
    plain = build_classifier(arch, 10, (3, 28, 28))
    scaled = build_classifier(arch, 10, (3, 28, 28), input_scale=1 / 255)
    scaled.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 28, 28)
    assert torch.allclose(scaled(x), plain(x / 255), atol=1e-6)
    assert not torch.allclose(scaled(x), plain(x), atol=1e-3)


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    import diffdebias.devices as devices

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.resolve_precision("auto", cpu) == "fp32" and not torch.is_autocast_enabled("cpu")
    with devices.autocast(cpu, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    with devices.autocast(cpu, "auto"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="fp16"):
        devices.resolve_precision("fp16", cpu)
