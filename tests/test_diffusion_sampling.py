"""DDIM/DDPM update rules, classifier-free guidance, seeded sampling and the synthetic dataset writer."""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffdebias.diffusion import (
    DiffusionConfig,
    DiffusionConfigError,
    SamplingConfig,
    build_unet,
    combine_guidance,
    ddim_step,
    ddpm_step,
    make_scheduler,
    predict_eps,
    predicted_x0,
    sample,
    sample_per_class,
    write_synthetic_dataset,
)


@pytest.fixture(scope="module")
def cond_model():
    return build_unet("tiny", 8, 3, 3, seed=0).eval()


def test_ddim_step_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    a_t, a_prev, eta = 0.5, 0.8, 0.5
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * z
    assert torch.allclose(ddim_step(x, eps, a_t, a_prev, eta, z), expected, atol=1e-6)
    assert torch.allclose(predicted_x0(x, eps, a_t), x0, atol=1e-6)
    # eta = 0: deterministic, and with abar_prev = 1 the step returns the predicted x0
    assert torch.allclose(ddim_step(x, eps, a_t, 1.0, 0.0), x0, atol=1e-6)
    # Asyrp's asymmetric step: x0 from one eps, direction from another
    other = predicted_x0(x, z, a_t)
    asym = math.sqrt(a_prev) * other + math.sqrt(1 - a_prev) * eps
    assert torch.allclose(ddim_step(x, eps, a_t, a_prev, 0.0, x0=other), asym, atol=1e-6)


def test_ddim_and_ddpm_steps_agree_with_diffusers():
    cfg = DiffusionConfig(clip_sample=False)
    g = torch.Generator().manual_seed(1)
    x, eps, z = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    ddim = make_scheduler(cfg, "ddim", "leading")
    ddim.set_timesteps(50)
    abar = ddim.alphas_cumprod.double()
    for t in (980, 500, 20):
        ref = ddim.step(eps, t, x, eta=0.7, variance_noise=z).prev_sample
        mine = ddim_step(x, eps, float(abar[t]), float(abar[t - 20]), 0.7, z)
        assert torch.allclose(mine, ref, rtol=1e-4, atol=1e-4)  # float64 vs float32 coefficients
    ddpm = make_scheduler(cfg, "ddpm", "leading")
    ddpm.set_timesteps(1000)
    for t in (999, 400, 1):
        ref = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        mine = ddpm_step(x, eps, float(abar[t]), float(abar[t - 1]), noise)
        assert torch.allclose(mine, ref, rtol=1e-4, atol=1e-4)  # float64 vs float32 coefficients


def test_guidance_scale_one_is_the_conditional_prediction(cond_model):
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    t = torch.tensor(321)
    with torch.no_grad():
        cond = cond_model(x, t.expand(4), class_labels=y).sample
        uncond = cond_model(x, t.expand(4), class_labels=torch.full_like(y, 3)).sample
        assert torch.equal(predict_eps(cond_model, x, t, y, 1.0), cond)
        assert torch.equal(combine_guidance(cond, uncond, 1.0), cond)
        assert torch.equal(predict_eps(cond_model, x, t, y, 0.0), uncond)
        # the fused (one batch) pass equals the two separate passes combined
        fused = predict_eps(cond_model, x, t, y, 2.0)
        assert torch.allclose(fused, uncond + 2.0 * (cond - uncond), atol=1e-5)
        assert not torch.allclose(fused, cond, atol=1e-4)


def test_same_seed_same_images_and_batch_size_independence(cond_model):
    dcfg = DiffusionConfig()
    labels = torch.tensor([0, 1, 2, 2, 1])
    for scfg in (
        SamplingConfig(steps=5, guidance_scale=2.0, batch_size=5),
        SamplingConfig(sampler="ddpm", steps=5, guidance_scale=1.0, batch_size=5),
        SamplingConfig(steps=5, eta=1.0, batch_size=5, timestep_spacing="linspace"),
    ):
        a = sample(cond_model, scfg, dcfg, labels, torch.Generator().manual_seed(7), "cpu", progress=False)
        b = sample(cond_model, scfg, dcfg, labels, torch.Generator().manual_seed(7), "cpu", progress=False)
        c = sample(cond_model, scfg, dcfg, labels, torch.Generator().manual_seed(8), "cpu", progress=False)
        assert a.dtype == torch.uint8 and a.shape == (5, 3, 8, 8)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        scfg.batch_size = 2  # other batches: the same images up to rounding of the last bit
        d = sample(cond_model, scfg, dcfg, labels, torch.Generator().manual_seed(7), "cpu", progress=False)
        assert (a.int() - d.int()).abs().max() <= 1
        scfg.workers = 3  # the same batches, three at a time: the same images exactly
        assert torch.equal(sample(cond_model, scfg, dcfg, labels, torch.Generator().manual_seed(7), "cpu",
                                  progress=False), d)


def test_guidance_needs_a_conditional_model():
    model = build_unet("tiny", 8, 1, None, seed=0)
    with pytest.raises(DiffusionConfigError, match=r"sampling\.guidance_scale"):
        sample(model, SamplingConfig(steps=2, guidance_scale=2.0), DiffusionConfig(), torch.zeros(2), torch.Generator(),
               "cpu", progress=False)
    out = sample(model, SamplingConfig(steps=2, guidance_scale=1.0), DiffusionConfig(), torch.zeros(2),
                 torch.Generator().manual_seed(0), "cpu", progress=False)
    assert out.shape == (2, 1, 8, 8)


def test_sample_per_class_and_synthetic_dataset(cond_model, tmp_path):
    scfg = SamplingConfig(steps=3, per_class=2, batch_size=4, guidance_scale=2.0)
    images, labels, seeds = sample_per_class(cond_model, scfg, DiffusionConfig(), 3, torch.Generator().manual_seed(0),
                                             progress=False)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] and len(seeds) == 6 and len(set(seeds.tolist())) == 6
    csv_path = write_synthetic_dataset(tmp_path / "syn", images, labels, seeds)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "seed"] and len(rows) == 6
    for i, row in enumerate(rows):
        assert int(row["label"]) == labels[i] and int(row["seed"]) == seeds[i]
        assert not row["path"].startswith("/")
        with Image.open(tmp_path / "syn" / row["path"]) as im:
            assert torch.equal(torch.from_numpy(np.array(im)).permute(2, 0, 1), images[i])
    with Image.open(tmp_path / "syn" / "grid.png") as grid:
        assert grid.size == (2 + 8 * (8 + 2), 2 + 3 * (8 + 2))  # 8 per row (blank-padded), one row per class
    # one image regenerates from its seed alone
    again = sample(cond_model, scfg, DiffusionConfig(), labels[3:4], None, "cpu", progress=False, seeds=seeds[3:4])
    assert (again.int() - images[3:4].int()).abs().max() <= 1


def test_grey_images_write_as_single_channel_png(tmp_path):
    images = torch.randint(0, 256, (3, 1, 5, 5), dtype=torch.uint8)
    path = write_synthetic_dataset(tmp_path, images, torch.tensor([0, 1, 1]), torch.tensor([1, 2, 3]))
    with Image.open(tmp_path / "1" / "000002.png") as im:
        assert im.mode == "L" and torch.equal(torch.from_numpy(np.array(im)), images[2, 0])
    assert path.name == "synthetic.csv"


def test_resize_keeps_brightness_and_smooth_images():
    from diffdebias.diffusion.images import resize

    dots = (torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.05).to(torch.uint8) * 255
    small = resize(dots, 7)
    assert small.shape == (4, 3, 7, 7) and small.dtype == torch.uint8
    assert abs(small.float().mean() - dots.float().mean()) < 2  # antialiased: every dot counts, none is skipped
    ramp = torch.linspace(0, 255, 28).round().to(torch.uint8).expand(1, 3, 28, 28).contiguous()
    error = (resize(resize(ramp, 16), 28).int() - ramp.int()).abs()  # smooth images survive a round trip,
    assert error[..., 2:-2].max() <= 1 and error.max() <= 6  # up to the edges' clamping
    flat = torch.full((1, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(resize(flat, 28), torch.full((1, 3, 28, 28), 77, dtype=torch.uint8))
    assert resize(ramp, 28) is ramp
