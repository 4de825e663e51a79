"""Pinned full-loop numbers: whole sampling and injection runs end on published or recorded values, so a change in the
update maths, the grid or the loop that the closed-form unit tests miss still fails here.

(a) diffusers' own scheduler tests (tests/schedulers/test_scheduler_ddim.py and test_scheduler_ddpm.py, class
``SchedulerCommonTest``) run a full loop of a dummy model ``sample * t / (t + 1)`` from a deterministic sample and
assert the sum and mean of ``|x|``. Our loop (:func:`diffdebias.diffusion.denoise`, the one :func:`sample` runs) takes
that model as it is; it must land on the same published numbers, with diffusers' tolerances, and on the installed
scheduler's result step for step.

(b) DDIM inversion and h-space injection on the seeded ``tiny`` U-Net (untrained: only the arithmetic is pinned), with
numbers recorded once on a CPU in fp32; and the property that gamma = 0 without boosting is plain DDIM inversion then
generation.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import diffdebias.diffusion.injection as inj
from diffdebias.diffusion import DiffusionConfig, InjectionConfig, build_unet, denoise
from diffdebias.diffusion.schedule import alphas_cumprod, timestep_grid

# ---------------------------------------------------------------------------------- (a) diffusers' full loops


def dummy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """diffusers' ``SchedulerCommonTest.dummy_model``."""
    return sample * t / (t + 1)


def dummy_deter(flip: bool = False) -> torch.Tensor:
    """diffusers' ``dummy_sample_deter`` (``dummy_noise_deter`` with ``flip``): 4 x 3 x 8 x 8 values in [0, 1)."""
    n = 4 * 3 * 8 * 8
    values = torch.arange(n)
    if flip:
        values = values.flip(-1)
    return (values.reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def assert_published(x: torch.Tensor, result_sum: float, result_mean: float) -> None:
    """diffusers' assertion and tolerances: ``|x|`` summed within 1e-2, averaged within 1e-3."""
    assert abs(x.abs().sum().item() - result_sum) < 1e-2, x.abs().sum().item()
    assert abs(x.abs().mean().item() - result_mean) < 1e-3, x.abs().mean().item()


@pytest.mark.parametrize("beta_start, result_sum, result_mean", [
    (0.0001, 172.0067, 0.223967),  # test_full_loop_no_noise
    (0.01, 149.8295, 0.1951),  # test_full_loop_with_set_alpha_to_one (our last step always lands on alpha-bar 1)
])
def test_our_ddim_loop_lands_on_diffusers_published_full_loop(beta_start, result_sum, result_mean):
    cfg = DiffusionConfig(beta_start=beta_start)  # T 1000, linear to 0.02, clip_sample: the test's scheduler config
    ts, prev = timestep_grid(cfg, "ddim", 10, "leading")  # diffusers' default spacing, steps_offset 0
    assert ts == list(range(900, -1, -100))
    ours = denoise(dummy_deter(), dummy_model, ts, prev, alphas_cumprod(cfg).double(), "ddim", eta=0.0, clip=True)
    assert_published(ours, result_sum, result_mean)

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=beta_start, beta_end=0.02, beta_schedule="linear",
                              clip_sample=True)
    scheduler.set_timesteps(10)
    x = dummy_deter()
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t), t, x, 0.0).prev_sample
    assert torch.allclose(ours, x, atol=1e-5)


def test_our_ddim_loop_started_mid_grid_lands_on_diffusers_published_full_loop_with_noise():
    """test_full_loop_with_noise: the sample noised to the 9th of 10 grid points, then the last two steps (as our
    injection starts from a truncated grid)."""
    cfg = DiffusionConfig()
    ts, prev = timestep_grid(cfg, "ddim", 10, "leading")
    abar = alphas_cumprod(cfg).double()
    a = float(abar[ts[8]])
    x = a**0.5 * dummy_deter() + (1 - a) ** 0.5 * dummy_deter(flip=True)  # diffusers' add_noise
    ours = denoise(x, dummy_model, ts[8:], prev[8:], abar, "ddim", eta=0.0, clip=True)
    assert_published(ours, 354.5418, 0.4616)


def test_our_ddpm_loop_lands_on_diffusers_published_full_loop():
    """test_full_loop_no_noise of the DDPM scheduler: all 1,000 steps, the variance noise drawn from one generator
    seeded 0 at every step but the last, in diffusers' order."""
    cfg = DiffusionConfig()
    ts, prev = timestep_grid(cfg, "ddpm", 1000, "leading")
    assert ts == list(range(999, -1, -1))
    g = torch.Generator().manual_seed(0)
    ours = denoise(dummy_deter(), dummy_model, ts, prev, alphas_cumprod(cfg).double(), "ddpm", clip=True,
                   draw_noise=lambda: torch.randn(4, 3, 8, 8, generator=g))
    assert_published(ours, 258.9606, 0.3372)

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                              variance_type="fixed_small", clip_sample=True)
    g = torch.Generator().manual_seed(0)
    x = dummy_deter()
    for t in range(999, -1, -1):
        x = scheduler.step(dummy_model(x, t), t, x, generator=g).prev_sample
    assert torch.allclose(ours, x, atol=1e-4)  # 1,000 steps: ours runs the coefficients in float64


# ------------------------------------------------------------------------------------ (b) h-space injection

ABAR = alphas_cumprod(DiffusionConfig()).double()
# a truncated grid (0..555 of 10 points), boosting below t 150: every branch of inject runs in a few U-Net passes
SETTINGS = InjectionConfig(steps=10, t_start=600, gamma=0.5, t_edit=300, t_boost=150, precision="fp32")


@pytest.fixture(scope="module")
def inverted():
    """The seeded tiny U-Net, the 6-point grid, content h and style x_T of 4 random [-1, 1] image pairs."""
    model = build_unet("tiny", 16, 3, None, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    content, style = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2))
    grid = inj.truncated_grid(inj.injection_grid(1000, SETTINGS.steps), SETTINGS.t_start)
    _, h = inj.invert(model, content, grid, ABAR, record_from=SETTINGS.t_edit)
    x_T, _ = inj.invert(model, style, grid, ABAR)
    return model, grid, h, x_T


def test_inversion_and_injection_on_the_seeded_tiny_unet_give_the_pinned_numbers(inverted):
    """Recorded once (2-core CPU, fp32; 1 and 2 threads agree to 1e-7): x_T's sum |x| 749.99097; the injected
    images' sum |x| 2818.9214 and mean 0.0264811."""
    model, grid, h, x_T = inverted
    assert grid == [0, 111, 222, 333, 444, 555]
    assert sorted(h) == [333, 444]
    assert x_T.abs().sum().item() == pytest.approx(749.99097, rel=1e-4)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    out = inj.inject(model, x_T, h, grid, ABAR, SETTINGS, gens)
    assert out.abs().sum().item() == pytest.approx(2818.9214, rel=1e-4)
    assert out.mean().item() == pytest.approx(0.0264811, abs=1e-5)


def test_gamma_zero_without_boosting_is_plain_inversion_then_ddim_generation(inverted):
    """Nothing blended and no noise: inject must be the sampling loop's deterministic DDIM down the same grid."""
    model, grid, h, x_T = inverted
    settings = InjectionConfig(gamma=0.0, t_edit=SETTINGS.t_edit, t_boost=-1, precision="fp32")
    same = inj.inject(model, x_T, h, grid, ABAR, settings)
    down = list(reversed(grid))
    prev = [float(ABAR[t]) for t in down[1:]] + [1.0]
    with torch.inference_mode():
        plain = denoise(x_T, lambda x, t: model(x, torch.full((len(x),), t), return_dict=False)[0].float(), down, prev,
                        ABAR)
    assert torch.allclose(same, plain, atol=1e-6)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    assert (inj.inject(model, x_T, h, grid, ABAR, SETTINGS, gens) - same).abs().mean() > 0.1  # gamma 0.5 moves it
