"""Diffusion training: exact resume, outputs on disk, config checks."""

import pytest
import torch

from diffdebias.diffusion import DiffusionConfig, DiffusionConfigError, build_unet, load_unet, train_diffusion
from diffdebias.diffusion.train import _EpochOrder
from diffdebias.runs import Stage, load_tensors


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def data(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 3


CFG = dict(preset="tiny", steps=6, batch_size=8, warmup_steps=2, checkpoint_every=2, sample_every=3, log_every=2,
           label_dropout=0.3, p2_gamma=1.0, random_flip=True, precision="fp32")


def train(tmp_path, name, cfg, **kw):
    images, labels = data()
    stage = Stage("diffusion", tmp_path / name, "key", seed=0, log=lambda msg: None)
    model = build_unet("tiny", 8, 3, 3 if cfg.conditional else None, seed=0)
    return stage, train_diffusion(stage, model, images, labels, cfg, progress=False, **kw)


def weights(stage):
    return load_tensors(stage.path("unet.safetensors"))[0]


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    cfg = DiffusionConfig(**CFG)
    full, model = train(tmp_path, "full", cfg)
    stopped, _ = train(tmp_path, "stopped", cfg, stop_after=3)  # stop after 3 steps (checkpoint at 3) ...
    assert not stopped.path("unet.safetensors").exists()
    assert load_tensors(stopped.path("checkpoint.safetensors"))[1]["step"] == 3
    train(tmp_path, "stopped", cfg)  # ... and resume

    def crash(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed at step 5: the last checkpoint is from step 4
        train(tmp_path, "crashed", cfg, callback=crash)
    crashed, _ = train(tmp_path, "crashed", cfg)

    a = weights(full)
    for other in (stopped, crashed):
        b = weights(other)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the returned model is the EMA model saved in unet.safetensors, and load_unet rebuilds it
    assert all(torch.equal(a[k], v) for k, v in model.state_dict().items())
    loaded, meta = load_unet(full.path("unet.safetensors"), with_meta=True)
    assert meta["steps"] == 6 and meta["num_classes"] == 3 and meta["diffusion"]["p2_gamma"] == 1.0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([3, 4]), torch.tensor([0, 3])).sample,
                           model(x, torch.tensor([3, 4]), torch.tensor([0, 3])).sample)
    files = {p.name for p in full.dir.rglob("*")}
    assert {"checkpoint.safetensors", "unet.safetensors", "train.json", "step_0000003.png", "tb"} <= files


def test_unconditional_training_and_different_seed(tmp_path):
    cfg = DiffusionConfig(**{**CFG, "conditional": False, "steps": 2, "sample_every": 0})
    a, _ = train(tmp_path, "a", cfg)
    images, labels = data()
    stage = Stage("diffusion", tmp_path / "b", "key", seed=1, log=lambda msg: None)
    train_diffusion(stage, build_unet("tiny", 8, 3, None, seed=0), images, labels, cfg, progress=False)
    wa, wb = weights(a), weights(stage)
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)


def test_config_and_model_must_agree(tmp_path):
    images, labels = data()
    stage = Stage("diffusion", tmp_path / "x", "key", seed=0)
    with pytest.raises(DiffusionConfigError, match=r"diffusion\.conditional"):
        train_diffusion(stage, build_unet("tiny", 8, 3, None), images, labels, DiffusionConfig(**CFG), progress=False)
    with pytest.raises(ValueError, match="uint8"):
        train_diffusion(stage, build_unet("tiny", 8, 3, 3), images.float(), labels, DiffusionConfig(**CFG),
                        progress=False)
    with pytest.raises(DiffusionConfigError, match=r"diffusion\.batch_size"):
        DiffusionConfig(**{**CFG, "batch_size": 9, "gradient_accumulation": 2}).validate()


def test_epoch_order_visits_every_sample_once_per_epoch(tmp_path):
    order = _EpochOrder(Stage("d", tmp_path, "k", seed=0), 10)
    stream = torch.cat([order.batch(s, 4) for s in range(5)])  # 20 indices = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert torch.equal(order.batch(3, 4), _EpochOrder(Stage("d", tmp_path, "k", seed=0), 10).batch(3, 4))
