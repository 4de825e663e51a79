"""Speed of diffdebias' diffusion training and sampling against a plain loop written like diffusers' example.

Baseline ("example"), written the way ``examples/unconditional_image_generation/train_unconditional.py`` and
``DDIMPipeline.__call__`` do it, plus class labels (our model is class-conditional):
  - training: a ``DataLoader`` over a dataset of PIL images with torchvision transforms (Resize, CenterCrop, ToTensor,
    Normalize), ``noise_scheduler.add_noise``, ``F.mse_loss``, ``accelerator.accumulate``/``backward``,
    ``clip_grad_norm_``, AdamW with torch's default implementation, a warm-up lr scheduler, diffusers ``EMAModel``;
  - sampling: ``DDIMScheduler.step`` in a pipeline-style loop under ``torch.no_grad``;
  - the model: the SAME preset (channels, layers, block types) but with the library's default
    ``attention_head_dim=8``, as the example leaves it. Everything fp32, as the example's default.
Ours: ``train_diffusion`` and ``sample`` from ``diffdebias.diffusion`` with their defaults (precision ``auto``):
  - in-memory uint8 tensors indexed directly (no DataLoader, no per-sample transforms);
  - one attention head per block (``attention_head_dim`` = channels) instead of 8-dim heads;
  - fused AdamW, one multi-tensor EMA update, ``zero_grad(set_to_none=True)``, ``torch.inference_mode``;
  - bf16 autocast only where it is faster (``precision=auto``); ``torch.compile`` for sampling is opt-in.
The speedups therefore come from those differences together; the "variants" lines separate them: the example's loop
with our one-head model isolates the model change, and channels_last / bf16 / compile are printed as measured.

Both sides run the same batch size, image size, steps and device (ours runs its batches side by side on a CPU,
``sampling.workers``), interleaved in ``--rounds`` rounds; each number is the best round (other processes on a
shared machine only ever slow a round down). Synthetic 3-channel data.
The last line reads ``train_speedup=<x> sample_speedup=<y>``.

Measured on a 2-core AMD EPYC (AVX2, no AMX/AVX512-BF16), torch 2.14 CPU, idle machine, default arguments:
train_speedup=1.11 sample_speedup=1.14 (two sampling batches side by side; one batch of 64 before: 1.16 / 1.07);
torch.compile sampling x1.30 (39 s to compile); channels_last x0.97 / x1.00; bf16 autocast x0.10 training and far
slower sampling (emulated bf16). Convolutions are ~80 % of a U-Net step here and none of the loop-level changes touch
them; with attention only at the 7x7 level, 8-dim heads cost little. The large
CPU gains seen elsewhere (bf16 1.8-3x, one-head attention 1.7x) need AMX and attention at higher resolutions.
Measured on a 2-core Intel Xeon with AMX-BF16 (precision auto -> bf16), idle machine, default arguments:
train_speedup=1.87 sample_speedup=2.46; with 10 + 10 timed steps and 3 rounds 1.64 / 2.28 (our fp32 x1.08 / x0.78,
torch.compile sampling x3.41): bf16 autocast is the gain, and only such hardware gets it.
On a busy 2-core machine run with ``--threads 1``: two OpenMP threads competing with another process ran ~10x slower.

    python benchmarks/diffusion_speed.py            # ~2-3 min on 2 busy CPU cores
    python benchmarks/diffusion_speed.py --extras   # also channels_last and bf16 autocast, one round each
    python benchmarks/diffusion_speed.py --compile  # also torch.compile for sampling (compile time printed apart)
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def _sync() -> None:
    """Wait for queued GPU work, so wall-clock timestamps mean finished steps."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def example_model(preset: str, size: int, num_classes: int):
    """Our preset with the library default attention heads (8-dim), as the example builds its UNet2DModel."""
    from diffusers import UNet2DModel

    from diffdebias.diffusion import build_unet

    config = dict(build_unet(preset, size, 3, num_classes).config)
    config["attention_head_dim"] = 8
    return UNet2DModel.from_config(config)


def rate(times: list[float], per_step: int) -> float:
    """Images per second from timestamps taken after each step: the steps after the first (warm-up) one."""
    return (len(times) - 1) * per_step / (times[-1] - times[0])


# ------------------------------------------------------------------------------------------------------ training


def train_example(model, images, labels, batch: int, steps: int) -> float:
    """The example's loop: DataLoader + PIL transforms, add_noise, mse_loss, AdamW, lr scheduler, EMAModel."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    reset_accelerate()
    size = images.shape[-1]
    augment = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(size),
        transforms.Lambda(lambda x: x),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])

    class PILDataset(Dataset):
        def __init__(self):
            self.pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]

        def __len__(self):
            return len(self.pil)

        def __getitem__(self, i):
            return {"input": augment(self.pil[i].convert("RGB")), "label": labels[i]}

    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=type(model), model_config=model.config)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    loader = DataLoader(PILDataset(), batch_size=batch, shuffle=True, num_workers=0)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=10_000)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema.to(accelerator.device)
    model.train()
    times = []  # one timestamp after each step; the first step is warm-up
    while len(times) <= steps:
        for batch_ in loader:
            clean = batch_["input"]
            noise = torch.randn(clean.shape, device=clean.device)
            timesteps = torch.randint(0, 1000, (clean.shape[0],), device=clean.device).long()
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(model):
                output = model(noisy, timesteps, class_labels=batch_["label"]).sample
                loss = F.mse_loss(output.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema.step(model.parameters())
            _sync()
            times.append(time.perf_counter())
            if len(times) > steps:
                break
    return rate(times, batch)


def train_ours(model, images, labels, batch: int, steps: int, precision: str = "auto") -> float:
    from diffdebias.diffusion import DiffusionConfig, train_diffusion
    from diffdebias.runs import Stage

    reset_accelerate()
    cfg = DiffusionConfig(preset="cpu", steps=steps + 1, batch_size=batch, checkpoint_every=10**9, sample_every=0,
                          precision=precision, log_every=10**9)
    times = []  # one timestamp after each step; the first step is warm-up
    with tempfile.TemporaryDirectory() as tmp:
        stage = Stage("diffusion", Path(tmp), "bench", seed=0, log=lambda msg: None)
        train_diffusion(stage, model, images, labels, cfg, progress=False,
                        callback=lambda step, loss: times.append(time.perf_counter()))
    return rate(times, batch)


# ------------------------------------------------------------------------------------------------------ sampling


@torch.no_grad()
def sample_example(model, labels, steps: int, batch: int, device: str = "cpu") -> float:
    """``DDIMPipeline.__call__`` once per batch of ``batch`` labels: randn_tensor, DDIMScheduler.set_timesteps,
    unet(...).sample, scheduler.step."""
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    t0 = time.perf_counter()
    model.eval().to(device)
    for start in range(0, len(labels), batch):
        y = labels[start:start + batch].to(device)
        scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        generator = torch.Generator().manual_seed(start)
        size = model.config.sample_size
        image = randn_tensor((len(y), 3, size, size), generator=generator, dtype=model.dtype).to(device)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            model_output = model(image, t, class_labels=y).sample
            image = scheduler.step(model_output, t, image, eta=0.0, use_clipped_model_output=None,
                                   generator=generator).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return steps * len(labels) / (time.perf_counter() - t0)


def sample_ours(model, labels, steps: int, batch: int, precision: str = "auto", compile_model: bool = False,
                device: str = "cpu") -> float:
    """The whole ``sample`` call over the same batches, set-up and uint8 conversion included, as for the example."""
    from diffdebias.diffusion import DiffusionConfig, SamplingConfig, sample

    scfg = SamplingConfig(steps=steps, guidance_scale=1.0, batch_size=batch, precision=precision,
                          compile=compile_model)
    t0 = time.perf_counter()
    sample(model, scfg, DiffusionConfig(), labels, torch.Generator().manual_seed(0), device, progress=False)
    return steps * len(labels) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per round (plus one warm-up)")
    parser.add_argument("--sample-batch", type=int, default=64, help="images per forward pass, both sides")
    parser.add_argument("--sample-batches", type=int, default=2,
                        help="batches per timed round: the example runs them one after the other, ours side by side "
                             "on a CPU (sampling.workers)")
    parser.add_argument("--sample-steps", type=int, default=4, help="denoising steps per timed round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--extras", action="store_true",
                        help="also time channels_last and bf16 autocast (one round each; bf16 is slow without AMX)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile for sampling")
    parser.add_argument("--device", default=None,
                        help="cpu | cuda (default: cuda when available); training always uses accelerate's device")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    from diffdebias.devices import cpu_has_native_bf16, resolve_precision
    from diffdebias.diffusion import build_unet

    if args.threads:
        torch.set_num_threads(args.threads)
    num_classes = 10
    g = torch.Generator().manual_seed(0)
    n = max(4 * args.train_batch, 512)
    images = torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    sample_labels = torch.arange(args.sample_batch * args.sample_batches) % num_classes
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}, "
          f"precision auto -> {resolve_precision('auto', device)}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"preset {args.preset}, {args.size} px, 3 channels, {num_classes} classes; train batch {args.train_batch} "
          f"({args.train_steps} timed steps), sample batch {args.sample_batch} x {args.sample_batches} "
          f"({args.sample_steps} DDIM steps); "
          f"best of {args.rounds} interleaved rounds", flush=True)

    def ours_model():
        return build_unet(args.preset, args.size, 3, num_classes, seed=0)

    def example():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return example_model(args.preset, args.size, num_classes)

    tb, ts, ss, sb = args.train_batch, args.train_steps, args.sample_steps, args.sample_batch
    base_t_name, base_s_name = "example loop, example model (8-dim heads)", "example pipeline loop, example model"
    train_variants = {
        base_t_name: lambda: train_example(example(), images, labels, tb, ts),
        "example loop, our model (1 head)": lambda: train_example(ours_model(), images, labels, tb, ts),
        "ours (defaults)": lambda: train_ours(ours_model(), images, labels, tb, ts),
    }
    sample_variants = {
        base_s_name: lambda: sample_example(example(), sample_labels, ss, sb, device),
        "example pipeline loop, our model (1 head)": lambda: sample_example(ours_model(), sample_labels, ss, sb,
                                                                            device),
        "ours (defaults)": lambda: sample_ours(ours_model(), sample_labels, ss, sb, device=device),
    }
    train = {k: 0.0 for k in train_variants}
    samp = {k: 0.0 for k in sample_variants}
    for r in range(args.rounds):
        for k, fn in train_variants.items():
            v = fn()
            train[k] = max(train[k], v)
            print(f"  round {r + 1} train  {k:<44} {v:8.1f} img/s", flush=True)
        for k, fn in sample_variants.items():
            v = fn()
            samp[k] = max(samp[k], v)
            print(f"  round {r + 1} sample {k:<44} {v:8.1f} img-steps/s", flush=True)
    if args.extras:
        cl = torch.channels_last
        train["ours + channels_last (1 round)"] = train_ours(ours_model().to(memory_format=cl), images, labels, tb, ts)
        samp["ours + channels_last (1 round)"] = sample_ours(ours_model().to(memory_format=cl), sample_labels, ss, sb,
                                                             device=device)
        other = "bf16" if resolve_precision("auto", device) == "fp32" else "fp32"
        train[f"ours, precision={other} (1 round, 1 step)"] = train_ours(ours_model(), images, labels, tb, 1, other)
        samp[f"ours, precision={other} (1 round, 1 step)"] = sample_ours(ours_model(), sample_labels, 1, sb, other,
                                                                      device=device)
    if args.compile:
        t0 = time.perf_counter()
        model = ours_model()
        sample_ours(model, sample_labels, 1, sb, compile_model=True, device=device)
        print(f"torch.compile warm-up (compile + 1 step): {time.perf_counter() - t0:.1f} s")
        samp["ours + torch.compile"] = max(sample_ours(model, sample_labels, ss, sb, compile_model=True, device=device)
                                           for _ in range(args.rounds))

    base_t, base_s = train[base_t_name], samp[base_s_name]
    auto = resolve_precision("auto", device)
    print(f"\ntraining (images/s; the example runs fp32, ours precision auto -> {auto} unless stated):")
    for k, v in train.items():
        print(f"  {k:<46} {v:8.1f}   x{v / base_t:.2f}")
    print(f"sampling (image-steps/s, DDIM, guidance 1 = one pass per step; ours {auto} unless stated):")
    for k, v in samp.items():
        print(f"  {k:<46} {v:8.1f}   x{v / base_s:.2f}")
    print(f"train_speedup={train['ours (defaults)'] / base_t:.2f} "
          f"sample_speedup={samp['ours (defaults)'] / base_s:.2f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
