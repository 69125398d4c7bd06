"""Training with Lightning: BCE + soft Dice, validation Dice at full 1280x1918, early stopping with
best-weight restore, checkpoints and resume, CSV metrics and curves, DDP, AMP on GPU.

The best weights are exported as one `.safetensors` file whose metadata holds the config.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from segmentation_models_pytorch.losses import DiceLoss
from torch.utils.data import DataLoader

from carmask.training.data.dataset import SegmentationDataset
from carmask.training.data.loaders import loader_options, training_loader
from carmask.data.io import read_mask
from carmask.data.layout import index_dataset
from carmask.data.split import split_by_car
from carmask.training.data.transforms import AugmentConfig, train_transforms
from carmask.training.losses import soft_dice_per_photo
from carmask.training.models import create_model, model_info
from carmask.training.models.io import model_config, save_model, state_checksum
from carmask.training.models.outputs import car_mask, car_probability, upsample

log = logging.getLogger(__name__)
CARVANA_SHAPE = (1280, 1918)


@dataclass
class TrainConfig:
    data: Path
    model: str = "unet-mnv2"
    out: Path = Path("runs/unet-mnv2")
    size: tuple[int, int] | None = None  # (height, width); default: the model's
    epochs: int = 20
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    fold: int = 0
    folds: int = 5
    seed: int = 0
    patience: int = 5
    devices: int | str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str | None = None  # default: bf16/16-mixed on GPU, 32-true on CPU
    workers: int | None = None
    resume: bool = False
    max_time: str | None = None  # "DD:HH:MM:SS": stop cleanly after this long
    val_every: float = 1.0  # validate every this fraction of an epoch
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    max_cars: int | None = None  # train on the first N cars only (quick experiments)
    pretrained: bool = True
    encoder_weights: str | None = None
    init: str | None = None  # start from this carmask model's weights (file, run folder, "shipped")
    # Hold out exactly these cars instead of a fold: comma-separated ids, or a model (file, run
    # folder, "shipped") whose recorded validation cars to keep held out.
    val_cars: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    export_half: bool = False
    cache: Path | None = None  # decode and resize the photos once, into this folder


class SegmentationTask(L.LightningModule):
    """Wraps a registry model with the loss and metrics its output kind needs."""

    def __init__(self, model_name: str, build: dict, lr: float, weight_decay: float,
                 full_size: tuple[int, int] = CARVANA_SHAPE, dice_per_photo: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model_name, **build)
        self.kind = model_info(model_name).output
        # The soft Dice over a whole batch barely notices a photo whose only cars are a few
        # hundred pixels; per photo, every photo counts alike, as in the metric.
        self.dice_loss = soft_dice_per_photo if dice_per_photo else DiceLoss(mode="binary", from_logits=False)
        self.channels_last = False  # set by `train` where channels-last kernels are faster

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def loss(self, output: torch.Tensor, target: torch.Tensor,
             pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
        """BCE + soft Dice. `pixel_weight` (B, 1, H, W), from a training batch that carries one
        (carmask.training.losses.collate_with_small_car_weights), weighs each pixel's BCE, whatever the
        output kind."""
        output = output.float()  # losses in fp32 even under AMP
        if self.kind == "logit":
            bce = F.binary_cross_entropy_with_logits(output, target, weight=pixel_weight)
        elif self.kind == "softmax3":
            per_pixel = F.cross_entropy(output, target[:, 0].long(), reduction="none")
            bce = (per_pixel if pixel_weight is None else per_pixel * pixel_weight[:, 0]).mean()
        else:  # sigmoid3: each channel is a sigmoid; the target is one-hot over 3 classes
            one_hot = torch.cat([1 - target, target, torch.zeros_like(target)], dim=1)
            bce = F.binary_cross_entropy(output.clamp(1e-6, 1 - 1e-6), one_hot, weight=pixel_weight)
        return bce + self.dice_loss(car_probability(output, self.kind), target)

    def training_step(self, batch, batch_index):
        images, targets, *pixel_weight = batch  # a third item: per-pixel weights of the BCE
        output = self(images)
        loss = self.loss(output, targets, pixel_weight[0] if pixel_weight else None)
        dice = dice_per_image(car_mask(output, self.kind), targets[:, 0] > 0.5).mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train_dice", dice, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_index):
        images, targets, full_masks = batch
        output = self(images)
        count = images.shape[0]
        self.log("val_loss", self.loss(output, targets), sync_dist=True, batch_size=count)
        small = dice_per_image(car_mask(output, self.kind), targets[:, 0] > 0.5)
        self.log("val_dice", small.mean(), prog_bar=True, sync_dist=True, batch_size=count)
        # The Kaggle metric: upsample the raw output (not the mask) to the photo's full size.
        full = dice_per_image(car_mask(upsample(output.float(), full_masks.shape[-2:]), self.kind),
                              full_masks.bool())
        self.log("val_dice_full", full.mean(), prog_bar=True, sync_dist=True, batch_size=count)

    def configure_optimizers(self):
        return adamw_with_cosine(self)


def adamw_with_cosine(task: L.LightningModule) -> dict:
    """AdamW on the task's trainable weights (hparams lr, weight_decay), a short warm-up, then a
    cosine over every step the trainer will take: what every carmask training loop uses."""
    params = [p for p in task.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=task.hparams.lr, weight_decay=task.hparams.weight_decay)
    steps = max(1, int(task.trainer.estimated_stepping_batches))
    warmup = min(100, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, warmup, steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


def dice_per_image(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice of each (H, W) bool pair in a batch; 1.0 when both are empty (Kaggle's rule)."""
    prediction, truth = prediction.flatten(1), truth.flatten(1)
    intersection = (prediction & truth).sum(1).float()
    total = prediction.sum(1).float() + truth.sum(1).float()
    return torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.ones_like(total))


class _ValidationSet(SegmentationDataset):
    """Adds the full-resolution true mask, for the Dice Kaggle scores."""

    def __getitem__(self, index: int):
        image, target = super().__getitem__(index)
        return image, target, torch.from_numpy(read_mask(self.records[index].mask_path))


def train(config: TrainConfig, progress_bar: bool = True) -> dict:
    """Train, export the best weights to `out/model.safetensors`, return the summary."""
    _log_lightning_once()
    info = model_info(config.model)
    if info.role != "segmenter":
        raise ValueError(f"{info.name} refines a coarse model's outline: train it with "
                         "`carmask train-refiner`")
    size = tuple(config.size or info.default_size)
    if info.fixed_size and size != info.default_size:
        raise ValueError(f"{info.name} only works at {info.default_size[0]}x{info.default_size[1]}")
    out = Path(config.out)
    L.seed_everything(config.seed, workers=True, verbose=False)
    index = index_dataset(config.data, check_pixels=False)
    if index.fatal:
        raise ValueError(f"{config.data}: {len(index.fatal)} data problems, e.g. {index.fatal[0]}; "
                         "run `carmask data index` to see them all")
    records = [r for r in index.train if r.mask_path is not None]
    if config.max_cars:
        keep = sorted({r.car_id for r in records})[: config.max_cars]
        records = [r for r in records if r.car_id in keep]
    if config.val_cars:
        held_out = {r.car_id for r in held_out_cars(records, config.val_cars)}
        train_records = [r for r in records if r.car_id not in held_out]
        val_records = [r for r in records if r.car_id in held_out]
    else:
        train_records, val_records = split_by_car(records, config.fold, config.folds, config.seed,
                                                  stratify_by_make=True)
    source = index.image_sizes.most_common(1)[0][0][::-1] if index.image_sizes else CARVANA_SHAPE
    common = dict(size=size, mean=info.mean, std=info.std, channels=info.channels,
                  source_size=source)
    train_set = SegmentationDataset(train_records, transform=train_transforms(config.augment),
                                    cache=config.cache, **common)
    val_set = _ValidationSet(val_records, cache=config.cache, **common)
    loader = loader_options(config.workers)
    train_loader = training_loader(train_set, config.batch, drop_last=len(train_set) > config.batch, **loader)
    val_loader = DataLoader(val_set, batch_size=config.batch, **loader)

    # With --init the ImageNet encoder would be overwritten at once: do not load it.
    build = {"pretrained": config.pretrained and not config.init} if info.takes_pretrained else {}
    if config.encoder_weights:
        build["encoder_weights"] = config.encoder_weights
    task = SegmentationTask(config.model, build, config.lr, config.weight_decay, full_size=source)
    if config.init:
        _start_from(task.model, config)
    gpu = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    precision = config.precision or (("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
                                     if gpu else "32-true")
    if gpu or precision == "bf16-mixed":
        task = use_channels_last(task)
    warn_if_bf16_is_emulated(precision, gpu)
    best, *crash_safe = checkpoints(out, steps_between_saves=max(1, min(50, len(train_loader) // 4)))
    callbacks = [best, *crash_safe, EarlyStopping("val_dice_full", mode="max", patience=config.patience)]
    multi = config.num_nodes > 1 or (isinstance(config.devices, int) and config.devices > 1)
    trainer = L.Trainer(
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy="ddp" if multi else "auto", precision=precision, max_epochs=config.epochs,
        max_time=config.max_time, callbacks=callbacks, logger=CSVLogger(out, name="logs"),
        val_check_interval=config.val_every, limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches, enable_progress_bar=progress_bar,
        log_every_n_steps=max(1, min(10, len(train_loader))), num_sanity_val_steps=0,
        deterministic=False, default_root_dir=out,
    )
    resume_from = _resume_checkpoint(out) if config.resume else None
    if config.resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
    started = time.time()
    trainer.fit(task, train_loader, val_loader, ckpt_path=resume_from)
    checksums = trainer.strategy.all_gather(torch.tensor(state_checksum(task.model), dtype=torch.float64))
    if not trainer.is_global_zero:
        return {}
    restored = best_task(best, out)
    summary = {
        "model": config.model, "size": list(size), "epochs_run": trainer.current_epoch,
        "best_val_dice_full": _score(best.best_model_score),
        "fold": None if config.val_cars else config.fold,  # --val-cars replaces the fold
        "folds": None if config.val_cars else config.folds, "train_cars": len({r.car_id for r in train_records}),
        "val_cars": len({r.car_id for r in val_records}),
        "val_car_ids": sorted({r.car_id for r in val_records}), "seconds": round(time.time() - started),
        "precision": precision, "devices": trainer.world_size, "seed": config.seed,
        "init": config.init,
        "rank_checksums": [float(c) for c in checksums.flatten().tolist()],
    }
    config_out = model_config(config.model, size, training=summary)
    save_model(restored.model, out / "model.safetensors", config_out, half=config.export_half)
    _write_metrics(trainer, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    log.info("best full-resolution val Dice %.5f; model written to %s",
             summary["best_val_dice_full"] or float("nan"), out / "model.safetensors")
    return summary


def use_channels_last(task: SegmentationTask) -> SegmentationTask:
    """The task with its weights and inputs channels-last: the convolutions' fast kernels, on a
    GPU and on CPUs with bf16 units (AMX, Zen 4): 1.9x a training step at 640x960 on a Xeon with
    AMX (docs/benchmarks.md)."""
    task.channels_last = True
    return task.to(memory_format=torch.channels_last)


def warn_if_bf16_is_emulated(precision: str, gpu: bool) -> None:
    """bf16 on a CPU without bf16 units is emulated, several times slower than fp32: say so."""
    if precision == "bf16-mixed" and not gpu and not cpu_has_bf16():
        log.warning("--precision bf16-mixed: this CPU has no bf16 instructions (no AMX or "
                    "AVX512-BF16), so it will be emulated and slow; use 32")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX or AVX512-BF16, AMD Zen 4)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" amx_bf16", " avx512_bf16"))


def checkpoints(out: Path, steps_between_saves: int) -> tuple[ModelCheckpoint, ...]:
    """The best weights by full-resolution validation Dice (and last.ckpt at each validation),
    then latest.ckpt every few steps and at least every 10 minutes (`latest_by_time`): a killed
    run loses little (--resume), however slowly a busy machine steps."""
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_dice_full",
                           mode="max", save_top_k=1, save_last=True)
    by_steps = ModelCheckpoint(dirpath=out / "checkpoints", filename="latest",
                               every_n_train_steps=steps_between_saves, save_top_k=1,
                               enable_version_counter=False)
    return best, by_steps, latest_by_time(out)


def latest_by_time(out: Path, minutes: float = 10) -> ModelCheckpoint:
    """latest.ckpt once `minutes` of training have passed since the last save: a niced run beside
    other work may take longer than that for its few steps."""
    from datetime import timedelta

    return ModelCheckpoint(dirpath=out / "checkpoints", filename="latest", save_top_k=1,
                           train_time_interval=timedelta(minutes=minutes),
                           enable_version_counter=False)


def best_task(best: ModelCheckpoint, out: Path) -> SegmentationTask:
    """The task as it was at its best checkpoint (the last one when none was scored)."""
    path = best.best_model_path or str(out / "checkpoints" / "last.ckpt")
    return SegmentationTask.load_from_checkpoint(path, map_location="cpu", weights_only=False)


def _log_lightning_once() -> None:
    """Lightning adds its own stderr handlers; where the caller has set logging up (the CLI
    does), its records go only there instead of being printed twice."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def held_out_cars(records: list, spec: str) -> list:
    """The records of the cars `spec` names: comma-separated car ids, or a model whose recorded
    validation cars they are (so a fine-tune keeps the cars its start was never trained on)."""
    from carmask.data.layout import CAR_ID
    from carmask.data.split import recorded_validation
    from carmask.training.models.io import load_model_config

    ids = [part.strip() for part in spec.split(",") if part.strip()]
    if ids and all(CAR_ID.fullmatch(car) for car in ids):
        return recorded_validation(records, {"val_car_ids": ids})
    return recorded_validation(records, load_model_config(spec).get("training") or {})


def _start_from(model: torch.nn.Module, config: TrainConfig) -> None:
    """Fine-tune: load a trained carmask model's weights. Its split should be this run's, or the
    validation cars may include cars it was trained on: warn when it is not."""
    from carmask.training.models.io import load_model

    trained, trained_config = load_model(config.init)
    if trained_config["architecture"] != config.model:
        raise ValueError(f"--init {config.init} is a {trained_config['architecture']} model, "
                         f"not {config.model}")
    history = trained_config.get("training") or {}
    split = tuple(history.get(k) for k in ("fold", "folds", "seed"))
    # With --val-cars the held-out cars were chosen by hand (often the start's own); else warn.
    if not config.val_cars and split != (config.fold, config.folds, config.seed):
        log.warning("--init %s was trained on split fold/folds/seed = %s, this run uses %s: its "
                    "validation cars may include cars that model was trained on",
                    config.init, "/".join(map(str, split)),
                    f"{config.fold}/{config.folds}/{config.seed}")
    model.load_state_dict(trained.state_dict(), strict=True)
    log.info("starting from the weights of %s", config.init)


def _score(value) -> float | None:
    return None if value is None else round(float(value), 6)


def _resume_checkpoint(out: Path) -> str | None:
    """The most recent of last.ckpt (end of a validation) and latest.ckpt (mid-epoch)."""
    candidates = [p for p in (out / "checkpoints").glob("*.ckpt") if p.stem in ("last", "latest")]
    return str(max(candidates, key=lambda p: p.stat().st_mtime)) if candidates else None


def _write_metrics(trainer: L.Trainer, out: Path) -> None:
    """Copy Lightning's CSV to out/metrics.csv and draw out/curves.png."""
    source = Path(trainer.logger.log_dir) / "metrics.csv"
    if not source.exists():
        return
    shutil.copy(source, out / "metrics.csv")
    plot_training_curves(out / "metrics.csv", out / "curves.png")


def plot_training_curves(metrics_csv: Path, out_png: Path) -> Path:
    """Loss and Dice for train and validation against training progress (in epochs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(metrics_csv)
    per_epoch = frame.groupby("epoch")["step"].max()
    steps_per_epoch = max(1.0, float(per_epoch.diff().median())) if len(per_epoch) > 1 \
        else max(1.0, float(frame["step"].max()) + 1)
    frame["epochs"] = (frame["step"] + 1) / steps_per_epoch
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for column, label, axis in (("train_loss_step", "train loss (per step)", loss_axis),
                                ("val_loss", "val loss", loss_axis),
                                ("train_dice", "train Dice (train size)", dice_axis),
                                ("val_dice", "val Dice (train size)", dice_axis),
                                ("val_dice_full", "val Dice (1280x1918)", dice_axis)):
        if column in frame:
            points = frame[["epochs", column]].dropna()
            if column == "train_loss_step" and len(points) > 20:
                points[column] = points[column].rolling(10, min_periods=1).mean()
            axis.plot(points["epochs"], points[column], marker="o" if len(points) < 30 else None,
                      label=label)
    loss_axis.set(title="loss (BCE + soft Dice)", xlabel="epoch", yscale="log")
    dice_axis.set(title="Dice", xlabel="epoch")
    for axis in (loss_axis, dice_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_png, dpi=110)
    plt.close(figure)
    return out_png
