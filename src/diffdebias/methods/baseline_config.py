"""Config sections of the debiasing baselines (top-level ``jtt``, ``disent`` and ``bias_ensemble`` of ``Config``).

Defaults are the published Colored-MNIST settings where the authors published some; JTT was never run on Colored MNIST
by its authors, so its two knobs are open and marked so. LfF-style knobs shared by LfF, LfF+BE and DisEnt (EMA alpha,
GCE q, EMA on/off, class-wise normalisation) live in the existing ``lff`` section.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class JTTConfig:
    epochs_first: int = 1  # T: ERM epochs of stage 1 whose errors form the error set (open: JTT has no CMNIST run;
    #                        JTT's CelebA script uses T=1)
    lambda_up: int = 50  # error-set copies added per epoch, so each error appears 1 + lambda_up times (open: JTT's
    #                      CelebA value, middle of its sweep [20, 50, 100]); -1: JTT's auto int((N-|E|)/|E|) - 1


@dataclass
class DisEntConfig:
    lambda_dis_align: float = 10.0  # weight of C_b's GCE term (DisEnt CMNIST script, all ratios)
    lambda_swap_align: float = 10.0  # weight of C_b's GCE term on swapped features (DisEnt CMNIST script)
    lambda_swap: float = 1.0  # weight of the swap loss once step > curr_step (DisEnt CMNIST script)
    curr_step: int = 10000  # training steps before the feature swap and the lr decay start (DisEnt --curr_step)
    lr_decay: bool = True  # StepLR decay, counted from curr_step (DisEnt --use_lr_decay, on in its CMNIST script)
    lr_decay_step: int = 10000  # StepLR step size in steps, so the first decay is at curr_step + lr_decay_step
    lr_gamma: float = 0.5  # StepLR factor (DisEnt CMNIST script)


@dataclass
class BiasEnsembleConfig:
    num_models: int = 5  # M GCE bias models in the committee (BiasEnsemble --num_bias_models)
    iterations: int = 1000  # training steps of each bias model (BiasEnsemble --biased_model_train_iter)
    valid_freq: int = 500  # steps between valid evaluations of a bias model; the best-valid one is kept
    #                        (BiasEnsemble --valid_freq)
    tau: float = 0.99  # a model flags a training sample as aligned when p(y|x) > tau (--biased_model_softmax_threshold)
    agreement: int = 3  # pseudo bias-aligned when at least this many models flag it (BiasEnsemble --agreement)
