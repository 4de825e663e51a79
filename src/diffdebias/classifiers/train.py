"""The one classifier training loop. Methods change its weighting object, never copy it.

Data are in-memory uint8 tensors indexed per batch (no DataLoader, no per-sample Python work). Each epoch draws its
order and augmentation from a generator seeded by (run seed, stage, epoch), so a resumed run continues exactly where
an uninterrupted one would be. A checkpoint is written after every evaluation, atomically.

Several processes launched together can train one classifier (``parallel``): the same global batch as one process,
each process computing a contiguous part of it on a DDP copy of the model (see :func:`train_classifier`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data.base import ImageSet
from ..devices import accelerator, autocast, gather_parts, my_part, with_parts_gathered
from ..evaluation.metrics import accuracy_metrics, extra_bias_metrics
from ..progress import progress_bar
from ..runs import (
    Stage,
    check_finite,
    load_resumable_shared,
    load_state,
    load_tensors,
    read_json,
    save_state,
    save_tensors,
    write_json,
)
from .losses import per_sample_loss
from .models import build_classifier
from .weighting import Batch, Weighting, sample_weight_record

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
HISTORY = "history.json"


def to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip (unless ``flip`` is off), batched on tensors. The
    same draws are made either way, so turning the flip off leaves the crops unchanged."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5) & flip
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    cols = torch.where(flips[:, None].to(x.device), cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 2048, precision: str = "fp32",
                   parallel: bool = False):
    """Logits of every image, in order, on the CPU. ``parallel`` (called by every process launched together): each
    process predicts its part of the images and all of them get the gathered whole."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    part = my_part(len(images)) if parallel else slice(0, len(images))
    out = []
    for start in range(part.start, part.stop, batch_size):
        with autocast(device, precision):
            out.append(model(to_float(images[start : min(start + batch_size, part.stop)], device)).float())
    model.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0, device=device)
    return (gather_parts(logits, len(images)) if parallel else logits).cpu()


def evaluate(model: nn.Module, data: ImageSet, num_classes: int, num_bias: int = 0, precision: str = "fp32",
             group_weights: torch.Tensor | None = None, parallel: bool = False):
    """:func:`accuracy_metrics` of the model's predictions (``adjusted_accuracy`` given the training split's (label x
    bias) counts ``group_weights``), and the metrics of the split's further bias attributes (UrbanCars')."""
    preds = predict_logits(model, data.images, precision=precision, parallel=parallel).argmax(1)
    out = accuracy_metrics(preds, data.labels, data.bias, num_classes, num_bias or None, group_weights)
    out.update(extra_bias_metrics(preds, data.labels, data.bias, data.extra_bias))
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}' (known: adam, sgd)")


ModelFactory = Callable[[TrainConfig, int, tuple[int, int, int]], nn.Module]


def lr_schedule_factor(schedule: str, progress: float) -> float:
    """Multiplier of the configured learning rate at ``progress`` in [0, 1) of the training (``lr_schedule``):
    constant 1, or a half cosine from 1 towards 0, so the last epoch is taken from a settled model."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r} (constant | cosine)")


def default_factory(cfg: TrainConfig, num_classes: int, image_shape: tuple[int, int, int]) -> nn.Module:
    return build_classifier(cfg.arch, num_classes, image_shape, cfg.pretrained, cfg.input_scale)


def load_classifier(stage: Stage, cfg: TrainConfig, build_model: ModelFactory = default_factory) -> nn.Module:
    """The selected weights a finished training stage saved (their shapes are in the file's metadata)."""
    state, meta = load_tensors(stage.path(WEIGHTS))
    # built as trained (a pretrained model normalises its inputs with ImageNet statistics), then given its weights
    model = build_model(cfg, meta["num_classes"], tuple(meta["image_shape"]))
    model.load_state_dict(state)
    return model.to(accelerator().device).eval()


def train_classifier(
    stage: Stage,
    train: ImageSet,
    cfg: TrainConfig,
    num_classes: int,
    valid: ImageSet | None = None,
    num_bias: int = 0,
    weighting: Weighting | None = None,
    on_epoch: Callable[[int, nn.Module], dict[str, Any]] | None = None,
    build_model: ModelFactory = default_factory,
    parallel: bool = False,
) -> nn.Module:
    """Train, evaluate on ``valid`` every ``cfg.eval_every`` epochs, checkpoint, and save the selected weights.

    Selection: ``cfg.select = valid`` keeps the epoch with the best ``valid[cfg.select_metric]``; ``last`` keeps the
    last epoch. The test split never reaches this function.

    ``parallel``: every process launched together makes this call. Each draws the same batch and computes the model on
    its contiguous part of it (a DDP copy: gradients are averaged); the per-sample losses and logits are gathered, so
    the weighting sees the whole batch on every process and its state (EMAs, group weights, LfF's f_B) stays the same
    everywhere, and the loss is the one-process loss. BatchNorm uses each process's part of the batch on a CPU
    (SyncBatchNorm needs a GPU) and the whole batch on GPUs. The main process alone reads and writes checkpoints.
    """
    if cfg.select not in ("valid", "last"):
        raise ValueError(f"classifier.select must be 'valid' or 'last', got '{cfg.select}'")
    if cfg.select == "valid" and (valid is None or len(valid) == 0):
        raise ValueError("classifier.select=valid needs a non-empty valid split; use select=last")
    weighting = weighting or Weighting()
    acc = accelerator()
    device = acc.device
    parallel = parallel and acc.num_processes > 1
    procs = acc.num_processes if parallel else 1
    writes = acc.is_main_process or not parallel  # a stage that does not distribute runs on the main process alone
    with stage.seeded("init"):  # initial weights from the stage's seed, global RNG untouched
        model = build_model(cfg, num_classes, tuple(train.images.shape[1:])).to(device)
        if parallel and device.type != "cpu":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        weighting.bind(model, stage.generator("bind"))
    optimizer = make_optimizer(model, cfg)
    net = acc.prepare_model(model) if parallel else model  # the DDP copy trains; ``model`` predicts and is saved
    criterion = per_sample_loss(cfg.loss, cfg.gce_q)
    history: list[dict[str, Any]] = []
    best = {"score": -math.inf, "epoch": -1}
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 0

    ckpt = stage.path(CHECKPOINT)

    state = load_resumable_shared(ckpt, load_state, stage.log, everywhere=parallel)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        weighting.load_state_dict(state.get("weighting", {}))
        best = {"score": state["best_score"], "epoch": state["best_epoch"]}
        best_state = state.get("best_model")
        start_epoch = state["epoch"] + 1
        history = read_json(stage.path(HISTORY)) if stage.path(HISTORY).exists() else []
        history = [h for h in history if h["epoch"] < start_epoch]
        stage.log(f"{stage.name}: resuming at epoch {start_epoch + 1}/{cfg.epochs}")

    writer = _tensorboard(stage) if writes else None
    labels_all = train.labels
    n = len(train)
    step = start_epoch * math.ceil(n / cfg.batch_size)
    bar = progress_bar(range(start_epoch, cfg.epochs), show=writes, desc=stage.name, initial=start_epoch,
                       total=cfg.epochs, leave=False)
    for epoch in bar:
        t0 = time.time()
        g = stage.generator("epoch", epoch)
        order = weighting.order(n, epoch, g)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            x = to_float(train.images[index], device)
            if cfg.augment:
                x = augment(x, g, flip=cfg.flip)
            y = labels_all[index].to(device)
            mine = my_part(len(index)) if parallel else slice(None)
            with autocast(device, cfg.precision):
                logits = net(x[mine])
            losses = criterion(logits, y[mine])
            if parallel:
                logits = with_parts_gathered(logits.float(), len(index))
                losses = with_parts_gathered(losses, len(index))
            loss = weighting.loss(losses, Batch(index, x, y, logits, epoch, step))
            check_finite(float(loss.detach()), stage, f"epoch {epoch + 1}, step {step + 1}",
                         f"lower the learning rate (lr={cfg.lr:g}, optimizer {cfg.optimizer})")
            optimizer.zero_grad(set_to_none=True)
            (loss * procs).backward()  # DDP averages over the processes, each holding its part's gradient
            progress = (epoch + start / len(order)) / cfg.epochs
            # a method's schedule (DisEnt's StepLR; 1 by default) times the configured one (constant by default)
            lr = cfg.lr * weighting.lr_factor(step) * lr_schedule_factor(cfg.lr_schedule, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            step += 1
            loss_sum += float(losses.detach().sum())
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(index)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "seconds": time.time() - t0,
        }
        weights = weighting.sample_weights() if train.has_bias else None
        if weights is not None:
            # the true bias labels of the training split, read only for this diagnostic record (after the epoch's
            # last step, from copies the weighting keeps); nothing in training reads them or this record
            record["sample_weights"] = sample_weight_record(weights, train.aligned_mask())
        last = epoch == cfg.epochs - 1
        if (epoch + 1) % cfg.eval_every == 0 or last:
            if valid is not None and len(valid):
                vm = evaluate(model, valid, num_classes, num_bias, cfg.precision, parallel=parallel)
                record["valid"] = {k: v for k, v in vm.items() if not isinstance(v, list)}
                if cfg.select == "valid":
                    if cfg.select_metric not in vm:
                        raise ValueError(f"classifier.select_metric '{cfg.select_metric}' is not a valid metric "
                                         f"(available: {', '.join(k for k in vm if not isinstance(vm[k], list))})")
                    if vm[cfg.select_metric] > best["score"]:
                        best = {"score": vm[cfg.select_metric], "epoch": epoch}
                        best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            if on_epoch is not None:
                record.update(on_epoch(epoch, model))
            history.append(record)
            if writes:
                _log_scalars(writer, record, epoch)
                write_json(stage.path(HISTORY), history)
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "weighting": weighting.state_dict(), "epoch": epoch,
                         "best_score": best["score"], "best_epoch": best["epoch"]}
                if best_state is not None:
                    state["best_model"] = best_state
                save_state(ckpt, state)
                stage.checkpointed()
        else:
            history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_accuracy']:.3f}")
    if writer is not None:
        writer.close()

    if cfg.select == "valid" and best_state is not None:
        model.load_state_dict(best_state)
    selected = best["epoch"] if cfg.select == "valid" else cfg.epochs - 1
    if not writes:
        return model.eval()
    save_tensors(stage.path(WEIGHTS), model.state_dict(),
                 {"arch": cfg.arch, "num_classes": num_classes, "image_shape": list(train.images.shape[1:]),
                  "selected_epoch": selected, "select": cfg.select})
    write_json(stage.path(HISTORY), history)
    write_json(stage.path("selection.json"), {"select": cfg.select, "metric": cfg.select_metric,
                                              "epoch": selected, "score": best["score"] if cfg.select == "valid"
                                              else None, "processes": procs})
    ckpt.unlink(missing_ok=True)  # the selected weights are saved; the resume state is no longer needed
    return model.eval()


def _tensorboard(stage: Stage):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    return SummaryWriter(str(stage.path("tb")))


def _log_scalars(writer, record: dict[str, Any], epoch: int) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (int, float)) and k != "size":
                    writer.add_scalar(f"{key}/{k}", v, epoch)
        elif isinstance(value, (int, float)) and key != "epoch":
            writer.add_scalar(f"train/{key}", value, epoch)
