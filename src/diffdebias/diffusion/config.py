"""Config sections of the diffusion engine: training (:class:`DiffusionConfig`) and sampling (:class:`SamplingConfig`).

Fields marked ``(open)`` are choices the papers leave open; their defaults are ours and documented here. Both classes
have a ``validate()`` that raises :class:`DiffusionConfigError` (a ``ValueError``) naming the offending field, e.g.
``diffusion.preset`` or ``sampling.guidance_scale``.

Guidance convention. We write classifier-free guidance as ``eps = eps_uncond + s * (eps_cond - eps_uncond)``:
``s = 1`` is the plain conditional model, ``s = 0`` the unconditional one. The DDB paper writes
``eps_cond + w * (eps_cond - eps_uncond)``, so its published ``w = 1`` is ``s = 1 + w = 2`` here.

Precision ``auto``. bf16 autocast is chosen only where it measurably helps: a CUDA device with bf16 support, or a CPU
with native bf16 matrix instructions (AMX-BF16 or AVX512-BF16), where it was measured 1.8-3x faster than fp32. On an
AVX2-only CPU (2-core AMD EPYC) bf16 autocast is emulated and was measured 5-11x SLOWER than fp32 for the ``cpu``
U-Net (training and sampling), so ``auto`` means fp32 there (``benchmarks/diffusion_speed.py --extras`` re-measures).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import ConfigError, at_least, choice, count, fraction, positive
from ..fields import added, execution


class DiffusionConfigError(ConfigError):
    """A diffusion or sampling setting that cannot work; the message names the field (a ``ValueError``)."""


PRESETS = ("tiny", "cpu", "paper")
PRECISIONS = ("fp32", "bf16", "auto")
BLENDS = ("slerp", "mean", "adain")  # injection.blend


@dataclass
class DiffusionConfig:
    """Training of one diffusion model (DDB's conditional DDPM, or DiffInject's unconditional P2 model)."""

    preset: str = "cpu"  # U-Net: tiny (tests) | cpu (~1 M params, 28/32 px) | paper (~27 M params, 32/64 px) (open)
    conditional: bool = True  # class-conditional with a learned null class (DDB); false: unconditional (DiffInject)
    image_size: int = added(0)  # side the U-Net works at; 0: the data's. Smaller trains and samples faster: the
    #   data is resized down (antialiased) for training, samples back up (bilinear)
    num_train_timesteps: int = 1000  # T (open; DDPM's value)
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2 (open; DDPM's linear)
    beta_start: float = 1e-4  # first beta of the schedule (open; DDPM)
    beta_end: float = 0.02  # last beta of the schedule (open; DDPM)
    clip_sample: bool = True  # clamp the predicted x0 to [-1, 1] at each sampling step (data lives in [-1, 1])
    label_dropout: float = 0.1  # P(label -> null class) in training, for classifier-free guidance (DDB: 0.1)
    p2_gamma: float = 0.0  # P2 weight exponent gamma in 1/(k + SNR)^gamma; 0 = plain MSE (DiffInject: 1 or 0.5)
    p2_k: float = 1.0  # P2 offset k (DiffInject/P2: 1)
    steps: int = 20000  # optimizer steps (DDB real data: 100k at batch 32) (open)
    batch_size: int = 64  # images per optimizer step, summed over processes and accumulation (DDB: 32) (open)
    lr: float = 2e-4  # AdamW learning rate (open; DDPM CIFAR-10 value)
    weight_decay: float = 0.0  # AdamW weight decay (open; P2: 0)
    warmup_steps: int = 500  # linear learning-rate warm-up, then constant (open)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping (open)
    ema_decay: float = 0.999  # EMA decay of the weights used for sampling (open; 0.9999 suits >=100k steps)
    ema_warmup: bool = True  # decay min(ema_decay, (1+step)/(10+step)) early on; false: constant ema_decay
    random_flip: bool = False  # random horizontal flips in training (off: digits and text are not symmetric) (open)
    precision: str = "auto"  # fp32 | bf16 (autocast) | auto (bf16 only on hardware where it is faster)
    gradient_accumulation: int = execution(1)  # micro-batches per optimizer step (memory only; results equal)
    checkpoint_every: int = execution(1000)  # steps between resumable checkpoints (plus one at the end)
    sample_every: int = execution(5000)  # steps between preview sample grids (PNG + TensorBoard); 0 disables
    log_every: int = execution(20)  # steps between loss/lr scalars in TensorBoard and the progress bar

    def validate(self, name: str = "diffusion") -> DiffusionConfig:
        """Every field in range; errors name ``<name>.<field>`` as :class:`DiffusionConfigError`."""
        err = DiffusionConfigError
        choice(f"{name}.preset", self.preset, PRESETS, err)
        choice(f"{name}.precision", self.precision, PRECISIONS, err)
        choice(f"{name}.beta_schedule", self.beta_schedule, ("linear", "scaled_linear", "squaredcos_cap_v2"), err)
        for key in ("num_train_timesteps", "steps", "batch_size", "gradient_accumulation", "checkpoint_every",
                    "log_every"):
            count(f"{name}.{key}", getattr(self, key), error=err)
        count(f"{name}.sample_every", self.sample_every, low=0, error=err)  # 0 disables previews
        count(f"{name}.warmup_steps", self.warmup_steps, low=0, error=err)
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 0:
            raise err(f"{name}.image_size must be 0 (the data's size) or a side in px, got {self.image_size!r}")
        for key in ("grad_clip", "weight_decay", "p2_gamma"):
            at_least(f"{name}.{key}", getattr(self, key), 0, err)
        positive(f"{name}.lr", self.lr, err)
        if not 0 < self.beta_start < self.beta_end < 1:
            raise err(f"{name}.beta_start/{name}.beta_end must satisfy 0 < start < end < 1, "
                      f"got {self.beta_start}, {self.beta_end}")
        fraction(f"{name}.label_dropout", self.label_dropout, high_open=True, error=err)
        fraction(f"{name}.ema_decay", self.ema_decay, high_open=True, error=err)
        if self.p2_k <= 0 and self.p2_gamma > 0:
            raise err(f"{name}.p2_k must be > 0 when p2_gamma > 0, got {self.p2_k}")
        if self.batch_size % self.gradient_accumulation:
            raise err(f"{name}.batch_size ({self.batch_size}) must be a multiple of "
                      f"{name}.gradient_accumulation ({self.gradient_accumulation})")
        return self


@dataclass
class SamplingConfig:
    """Drawing images from a trained model (DDB's synthetic set, previews)."""

    sampler: str = "ddim"  # ddim | ddpm (ancestral) (open; DDIM is the practical default)
    steps: int = 50  # denoising steps on a sub-grid of the T training steps (open; DDIM 50-100; DDPM usually T)
    eta: float = 0.0  # DDIM noise: 0 deterministic, 1 DDPM-like (ddim only)
    guidance_scale: float = 2.0  # s in eps_u + s*(eps_c - eps_u); 1: conditional; DDB's "w=1" is s=2 (open)
    per_class: int = 1000  # images per class for the synthetic set (DDB: 1,000-2,000 suffice) (open)
    batch_size: int = execution(256)  # images per forward pass (a guided pass runs 2x this many rows)
    workers: int = execution(0)  # batches run side by side in threads; 0: one per CPU thread on a CPU, 1 on a GPU
    timestep_spacing: str = "trailing"  # leading | trailing | linspace: trailing starts at t=T-1, where x_T~N(0,I)
    precision: str = "auto"  # fp32 | bf16 | auto (as diffusion.precision)
    compile: bool = False  # torch.compile the U-Net for sampling (pays a one-off compile of ~1 min on CPU)

    def validate(self, name: str = "sampling") -> SamplingConfig:
        """Every field in range; errors name ``<name>.<field>`` as :class:`DiffusionConfigError`."""
        err = DiffusionConfigError
        choice(f"{name}.sampler", self.sampler, ("ddim", "ddpm"), err)
        choice(f"{name}.timestep_spacing", self.timestep_spacing, ("leading", "trailing", "linspace"), err)
        choice(f"{name}.precision", self.precision, PRECISIONS, err)
        count(f"{name}.steps", self.steps, error=err)
        count(f"{name}.batch_size", self.batch_size, error=err)
        count(f"{name}.workers", self.workers, low=0, error=err)  # 0: automatic
        count(f"{name}.per_class", self.per_class, low=0, error=err)
        fraction(f"{name}.eta", self.eta, error=err)
        at_least(f"{name}.guidance_scale", self.guidance_scale, 0, err)
        return self


@dataclass
class InjectionConfig:
    """h-space content injection (DiffInject / InjectFusion). Defaults follow the released code's ``aug_diffstyle.py``.

    Timesteps are in training steps (0..T-1). The grid of ``steps`` points serves both the DDIM inversion and the
    generation; 50 reproduces the released code's injection grid (its 1,000-step runs add plain DDIM steps between
    the grid points).
    """

    steps: int = 50  # inversion/generation grid size (released code: injection on a 50-point grid) (open)
    gamma: float = 0.3  # slerp weight of the content h (released: 0.3 CCIFAR, 0.7 BFFHQ; swept 0.1-0.9); in [0, 1]
    #   for slerp; mean/adain accept gamma > 1, which moves h's statistics past the content's (extrapolation)
    t_edit: int = 400  # h is injected at steps with t >= t_edit (aug_diffstyle.py: 400; scripts: 500)
    t_boost: int = 200  # steps with t <= t_boost are stochastic ("quality boosting")
    boost_eta: float = 1.0  # DDIM eta in the boosting interval (released: 1)
    blend: str = added("slerp")  # slerp (the paper) | mean | adain: only h's per-channel statistics move to the
    #   content's, its spatial layout stays the style's (docs/results.md)
    t_start: int | None = added(None)  # invert only up to the last grid step <= t_start and generate from there
    #   (SDEdit-like truncation: fewer U-Net passes per image); null: the whole grid, as the paper (open)
    precision: str = added("auto")  # the U-Net's autocast in inversion and injection: fp32 | bf16 | auto (as
    #   diffusion.precision); the DDIM trajectories and the blend stay fp32. bf16 kept the reconstruction and the
    #   useful share and ran 1.6x faster on an AMX CPU (docs/results.md); stage keys hold the resolved precision
    compile: bool = added(False)  # torch.compile the U-Net halves for inversion and injection: x1.3 on a 2-core
    #   AVX-512 CPU in fp32 after a ~20 s compile (docs/results.md); batches then run one at a time, padded to
    #   batch_size. It enters stage keys (compiled kernels round differently), as sampling.compile does
    mask: list[float] | None = None  # local injection box (top, bottom, left, right) as fractions of h; null: all
    batch_size: int = execution(64)  # images per inversion/generation batch (CPU optimum ~64; raise it on a GPU)
    workers: int = execution(0)  # batches run side by side in threads; 0: one per CPU thread on a CPU, 1 on a GPU

    def validate(self, name: str = "injection") -> InjectionConfig:
        """Every field in range; errors name ``<name>.<field>`` as :class:`DiffusionConfigError`."""
        err = DiffusionConfigError
        count(f"{name}.batch_size", self.batch_size, error=err)
        count(f"{name}.workers", self.workers, low=0, error=err)  # 0: automatic
        count(f"{name}.steps", self.steps, low=2, error=err)
        if self.gamma < 0 or (self.blend == "slerp" and self.gamma > 1):
            raise err(f"{name}.gamma must be in [0, 1] for blend slerp and >= 0 for mean/adain; got {self.gamma} "
                      f"with blend {self.blend!r}")
        fraction(f"{name}.boost_eta", self.boost_eta, error=err)
        choice(f"{name}.blend", self.blend, BLENDS, err)
        choice(f"{name}.precision", self.precision, PRECISIONS, err)
        if self.t_boost >= self.t_edit:
            raise err(f"{name}.t_boost ({self.t_boost}) must be below {name}.t_edit ({self.t_edit})")
        if self.t_start is not None and not self.t_start > self.t_edit:
            raise err(f"{name}.t_start ({self.t_start}) must be above {name}.t_edit ({self.t_edit}), or null")
        if self.mask is not None:
            m = self.mask
            if len(m) != 4 or not (0 <= m[0] < m[1] <= 1 and 0 <= m[2] < m[3] <= 1):
                raise err(f"{name}.mask must be [top, bottom, left, right] fractions with top < bottom, "
                          f"left < right; got {m}")
        return self


# Where each default comes from, by "section.field" (the sections Config gives these classes): (provenance, note), as
# diffdebias.config.PROVENANCE, which joins this table; docs/settings.md prints both (diffdebias.settings_doc).
_NB = "docs/notebook.md, "
PROVENANCE: dict[str, tuple[str, str]] = {
    "diffusion.preset": ("open", "our choice: the ~1 M-parameter CPU U-Net"),
    "diffusion.conditional": ("paper", "DDB: class-conditional with a learned null class"),
    "diffusion.image_size": ("open", f"0: the data's size (16 px: {_NB}\"Training at 16 px\")"),
    "diffusion.num_train_timesteps": ("open", "DDPM's T = 1000"),
    "diffusion.beta_schedule": ("open", "DDPM's linear schedule"),
    "diffusion.beta_start": ("open", "DDPM's value"),
    "diffusion.beta_end": ("open", "DDPM's value"),
    "diffusion.clip_sample": ("open", "our choice: the data lives in [-1, 1]"),
    "diffusion.label_dropout": ("paper", "DDB: 0.1"),
    "diffusion.p2_gamma": ("paper", "0: plain MSE, as DDB (DiffInject: 1 or 0.5)"),
    "diffusion.p2_k": ("paper", "P2: k = 1"),
    "diffusion.steps": ("open", f"a CPU budget (DDB: 100k at batch 32); {_NB}\"Diffusion on Colored MNIST 1 %\""),
    "diffusion.batch_size": ("open", "our choice (DDB: 32)"),
    "diffusion.lr": ("open", "DDPM's CIFAR-10 value"),
    "diffusion.weight_decay": ("open", "P2: 0"),
    "diffusion.warmup_steps": ("open", "our choice"),
    "diffusion.grad_clip": ("open", "our choice"),
    "diffusion.ema_decay": ("open", "our choice (0.9999 suits >= 100k steps)"),
    "diffusion.ema_warmup": ("open", "our choice"),
    "diffusion.random_flip": ("open", "off: digits and text are not symmetric"),
    "diffusion.precision": ("open", f"bf16 only where faster ({_NB}\"Diffusion engine speed\")"),
    "diffusion.gradient_accumulation": ("execution", "memory only; results equal"),
    "diffusion.checkpoint_every": ("execution", "resumable checkpoints"),
    "diffusion.sample_every": ("execution", "preview grids"),
    "diffusion.log_every": ("execution", "logging"),
    "sampling.sampler": ("open", "DDIM, the practical default"),
    "sampling.steps": ("open", "DDIM's usual 50-100"),
    "sampling.eta": ("open", f"deterministic DDIM (eta = 1: {_NB}\"Deterministic DDIM leaves grey backgrounds\")"),
    "sampling.guidance_scale": ("paper", "DDB's w = 1 is s = 2"),
    "sampling.per_class": ("paper", "DDB: 1,000-2,000 images per class suffice"),
    "sampling.batch_size": ("execution", "rows per forward pass"),
    "sampling.workers": ("execution", "threads"),
    "sampling.timestep_spacing": ("open", "trailing: starts at t = T-1, where x_T ~ N(0, I)"),
    "sampling.precision": ("open", "as diffusion.precision"),
    "sampling.compile": ("execution", "torch.compile; enters stage keys (compiled kernels round differently)"),
    "injection.steps": ("released", "released code: injection on a 50-point grid"),
    "injection.gamma": ("released", "released: 0.3 CCIFAR (0.7 BFFHQ)"),
    "injection.t_edit": ("released", "aug_diffstyle.py: 400 (scripts: 500)"),
    "injection.t_boost": ("released", "aug_diffstyle.py: 200"),
    "injection.boost_eta": ("released", "released: 1"),
    "injection.blend": ("paper", f"slerp (mean, adain: {_NB}\"Injecting only h's channel statistics\")"),
    "injection.t_start": ("paper", f"null: the whole grid (truncation: {_NB}\"Inverting only part of the way\")"),
    "injection.precision": ("open", f"{_NB}\"DiffInject in bf16 on a CPU with AMX\""),
    "injection.compile": ("execution", f"torch.compile; enters stage keys ({_NB}\"Compiled injection\")"),
    "injection.mask": ("open", "our choice: null, inject everywhere"),
    "injection.batch_size": ("execution", "images per batch"),
    "injection.workers": ("execution", "threads"),
}
