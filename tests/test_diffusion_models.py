"""U-Net presets, config validation, schedules and P2 weights."""

import pytest
import torch

from diffdebias.config import ConfigError
from diffdebias.diffusion import (
    DiffusionConfig,
    DiffusionConfigError,
    SamplingConfig,
    build_unet,
    load_unet,
    make_scheduler,
    model_num_classes,
    null_label,
    p2_weights,
    save_unet,
    timestep_grid,
)
from diffdebias.diffusion.models import resolve_precision
from diffdebias.diffusion.schedule import alphas_cumprod


@pytest.mark.parametrize("size,bottleneck", [(28, 7), (32, 8)])
def test_cpu_preset_shapes_and_bottleneck(size, bottleneck):
    model = build_unet("cpu", size, 3, 10, seed=0)
    seen = {}
    model.mid_block.register_forward_hook(lambda m, i, o: seen.update(h=o.shape))  # returns None: reads only
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size), torch.tensor([1, 999]), class_labels=torch.tensor([0, 10])).sample
    assert out.shape == (2, 3, size, size)
    assert seen["h"] == (2, 64, bottleneck, bottleneck)
    assert model_num_classes(model) == 10 and null_label(10) == 10
    assert model.config.num_class_embeds == 11  # ten classes + the null class


def test_paper_preset_drops_its_deepest_level_at_28px():
    assert len(build_unet("paper", 28, 1, None).config.block_out_channels) == 3
    assert len(build_unet("paper", 32, 1, None).config.block_out_channels) == 4


def test_unconditional_model_and_seeded_init():
    a, b = build_unet("tiny", 8, 1, None, seed=3), build_unet("tiny", 8, 1, None, seed=3)
    assert model_num_classes(a) is None
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    state = torch.get_rng_state()
    build_unet("tiny", 8, 1, None, seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda: build_unet("huge", 32, 3, 10), "diffusion.preset"),
        (lambda: build_unet("cpu", 30, 3, 10), "diffusion.preset"),
        (lambda: build_unet("tiny", 6, 3, 10), "diffusion.preset"),
        (lambda: DiffusionConfig(preset="huge").validate(), "diffusion.preset"),
        (lambda: DiffusionConfig(precision="fp16").validate(), "diffusion.precision"),
        (lambda: DiffusionConfig(label_dropout=1.5).validate(), "diffusion.label_dropout"),
        (lambda: DiffusionConfig(batch_size=10, gradient_accumulation=4).validate(), "diffusion.batch_size"),
        (lambda: SamplingConfig(sampler="euler").validate(), "sampling.sampler"),
        (lambda: SamplingConfig(timestep_spacing="even").validate(), "sampling.timestep_spacing"),
        (lambda: SamplingConfig(guidance_scale=-1).validate(), "sampling.guidance_scale"),
        (lambda: timestep_grid(DiffusionConfig(num_train_timesteps=10), "ddim", 20, "leading"), "sampling.steps"),
    ],
)
def test_invalid_settings_name_the_field(call, field):
    with pytest.raises(DiffusionConfigError, match=field.replace(".", r"\.")) as info:
        call()
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_defaults_validate():
    DiffusionConfig().validate()
    SamplingConfig().validate()


def test_schedulers_take_every_setting_from_the_config():
    cfg = DiffusionConfig(num_train_timesteps=500, beta_start=2e-4, beta_end=0.03, clip_sample=False)
    for kind in ("ddpm", "ddim"):
        sched = make_scheduler(cfg, kind, "trailing")
        assert sched.config.num_train_timesteps == 500
        assert sched.config.beta_start == 2e-4 and sched.config.beta_end == 0.03
        assert sched.config.clip_sample is False and sched.config.timestep_spacing == "trailing"
        assert sched.config.steps_offset == 0
    assert make_scheduler(cfg, "ddim").config.set_alpha_to_one is True
    ts, prev = timestep_grid(DiffusionConfig(), "ddim", 50, "trailing")
    assert ts[0] == 999 and ts[-1] == 19 and len(ts) == 50 and prev[-1] == 1.0
    ts, _ = timestep_grid(DiffusionConfig(), "ddim", 50, "leading")
    assert ts[0] == 980 and ts[-1] == 0


def test_p2_weights_match_the_formula():
    abar = alphas_cumprod(DiffusionConfig())
    for gamma in (0.5, 1.0):
        w = p2_weights(abar, k=1.0, gamma=gamma)
        for t in (0, 10, 250, 500, 999):
            snr = abar[t] / (1 - abar[t])
            assert torch.isclose(w[t], 1 / (1 + snr) ** gamma, rtol=1e-5)
    assert torch.equal(p2_weights(abar, k=1.0, gamma=0.0), torch.ones_like(abar))
    w = p2_weights(abar, k=1.0, gamma=1.0)
    assert w[0] < w[500] < w[999] <= 1  # low-noise steps are down-weighted


def test_save_and_load_unet_round_trip(tmp_path):
    model = build_unet("tiny", 8, 3, 4, seed=0).eval()
    save_unet(tmp_path / "unet.safetensors", model, {"note": "x"})
    loaded, meta = load_unet(tmp_path / "unet.safetensors", with_meta=True)
    assert meta["note"] == "x" and model_num_classes(loaded) == 4
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5, 500]), torch.tensor([0, 4])
    with torch.no_grad():
        assert torch.equal(model(x, t, y).sample, loaded(x, t, y).sample)


def test_precision_auto_is_explicit():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
