"""Training the outline refiner (carmask.training.refiner) on full-resolution crops along coarse outlines.

1. The coarse model's raw logits for every training and validation photo are cached once, at the
   coarse model's own size (float16 .npy; resumable: photos already cached are skipped).
2. Each training item is one photo: decoded at full resolution, its cached logit upsampled
   exactly as the predictor does, and `crops` tiles cut where the coarse outline runs, with
   the outline anywhere in the tile's core, as the inference grid would place it.
3. The loss is binary cross-entropy on the pixels the refiner will decide: the band around the
   coarse outline, inside the tile's core. The validation metric is the count of wrong band
   pixels per crop, refined against coarse, on crops of the held-out cars.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from carmask.inference.model_files import model_id
from carmask.util.atomic import atomic_path
from carmask.data.io import read_image, read_mask
from carmask.data.layout import Record, index_dataset
from carmask.training.data.loaders import training_loader
from carmask.training.models import create_model
from carmask.training.models.io import model_config, save_model
from carmask.training.models.outputs import upsample
from carmask.training.refiner import MEAN, STD, RefinerGeometry, crop_mirrored, outline_band, refiner_input
from carmask.training.train import (_log_lightning_once, _resume_checkpoint, _write_metrics, adamw_with_cosine,
                                    latest_by_time, warn_if_bf16_is_emulated)

log = logging.getLogger(__name__)


@dataclass
class RefinerTrainConfig:
    data: Path
    out: Path = Path("runs/refiner")
    coarse: str | None = None  # the coarse model (file, run folder; None: the shipped one)
    model: str = "refiner-mnv2"
    train_cars: str | None = None  # comma-separated ids (default: every car but the validation ones)
    epochs: int = 4
    steps_per_epoch: int | None = None  # photos drawn per epoch (default: all); sets the schedule
    crops: int = 16  # crops per photo
    photos_per_batch: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_time: str | None = None  # "DD:HH:MM:SS"
    val_photos: int = 48  # photos of the validation cars scored by crops at each validation
    val_every: float = 0.25  # validate every this fraction of an epoch
    geometry: RefinerGeometry = RefinerGeometry()
    workers: int = 0
    resume: bool = False
    precision: str | None = None  # Lightning's; default: bf16-mixed on a GPU, 32-true on a CPU


def coarse_logit(predictor, record: Record, cache: Path) -> np.ndarray:
    """The coarse model's raw logit for a photo at the coarse model's size, from cache/<image
    id>.npy (float16), computed and written atomically the first time it is asked for."""
    path = cache / f"{record.image_id}.npy"
    if not path.exists():
        if predictor is None:
            raise FileNotFoundError(f"{path}: coarse logit not cached and no coarse model given")
        photo, _ = predictor.load(record.image_path)
        logit = np.asarray(predictor.raw_outputs(predictor.preprocess(photo)[None]))[0, 0]
        with atomic_path(path, suffix=".npy") as tmp:  # np.save would add .npy to another name
            np.save(tmp, logit.astype(np.float16))
    return np.load(path).astype(np.float32)


def full_logit(logit: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse logit upsampled to the photo's full size, exactly as the predictor does."""
    return upsample(torch.from_numpy(logit)[None, None], shape)[0, 0].numpy()


class OutlineCrops(Dataset):
    """One item per photo: `crops` tiles along its coarse outline, as (inputs, targets, weights),
    each (crops, C, tile, tile). With `seed`, the crops of a photo are the same on every call
    (for validation); without, they are drawn afresh and flipped at random (training).
    Coarse logits come from `cache`, computed there by `predictor` when missing."""

    def __init__(self, records: list[Record], cache: Path, geometry: RefinerGeometry, crops: int,
                 seed: int | None = None, predictor=None) -> None:
        self.records, self.cache, self.geometry, self.crops, self.seed = records, cache, geometry, crops, seed
        self.predictor = predictor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        rng = np.random.default_rng(None if self.seed is None else (self.seed, index))
        photo = read_image(record.image_path)
        truth = read_mask(record.mask_path)
        logit = full_logit(coarse_logit(self.predictor, record, self.cache), truth.shape)
        band = outline_band(logit > 0, self.geometry.band)
        ys, xs = np.nonzero(band)
        g = self.geometry
        inputs, targets, weights = [], [], []
        for pick in rng.integers(len(ys), size=self.crops):
            # the band pixel lands anywhere in the core, as on the inference grid
            top = ys[pick] - g.margin - rng.integers(g.core)
            left = xs[pick] - g.margin - rng.integers(g.core)
            x = refiner_input(photo, logit, top, left, g.tile, MEAN, STD)
            target = crop_mirrored(truth, top, left, g.tile)[None]
            weight = np.zeros_like(target)  # only the core's band pixels are decided
            inner = slice(g.margin, g.margin + g.core)
            weight[:, inner, inner] = crop_mirrored(band, top, left, g.tile)[inner, inner]
            if self.seed is None and rng.random() < 0.5:
                x, target, weight = x[..., ::-1], target[..., ::-1], weight[..., ::-1]
            inputs.append(np.ascontiguousarray(x))
            targets.append(np.ascontiguousarray(target, np.float32))
            weights.append(np.ascontiguousarray(weight, np.float32))
        return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets)), \
            torch.from_numpy(np.stack(weights))


def _flatten(batch):
    return [t.flatten(0, 1) for t in batch]


class RefinerTask(L.LightningModule):
    """A refiner with its loss (BCE on the decided band pixels) and its validation counts."""

    def __init__(self, model: str, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_index):
        x, target, weight = _flatten(batch)
        loss = (F.binary_cross_entropy_with_logits(self(x), target, reduction="none") * weight).sum() \
            / weight.sum().clamp_min(1)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_index):
        x, target, weight = _flatten(batch)
        truth, decided = target > 0.5, weight > 0
        coarse_wrong = (((x[:, 3:4] > 0) != truth) & decided).sum()
        refined_wrong = (((self(x) > 0) != truth) & decided).sum()
        crops = len(x)
        self.log("val_coarse_wrong", coarse_wrong.float() / crops, batch_size=crops)
        self.log("val_refined_wrong", refined_wrong.float() / crops, batch_size=crops, prog_bar=True)
        self.log("val_wrong_ratio", refined_wrong.float() / coarse_wrong.clamp_min(1), batch_size=crops)

    def configure_optimizers(self):
        return adamw_with_cosine(self)


def split_for_refiner(records: list[Record], coarse_config: dict, train_cars: str | None):
    """(train, validation) records: validation is the coarse model's own validation cars, so a
    refined model is scored on cars neither stage saw."""
    from carmask.data.split import recorded_validation

    val = recorded_validation(records, coarse_config.get("training") or {})
    held = {r.car_id for r in val}
    if train_cars:
        wanted = {c.strip() for c in train_cars.split(",") if c.strip()}
        if wanted & held:
            raise ValueError(f"--train-cars includes validation cars: {', '.join(sorted(wanted & held))}")
        train = [r for r in records if r.car_id in wanted]
    else:
        train = [r for r in records if r.car_id not in held]
    return train, val


def train_refiner(config: RefinerTrainConfig, progress_bar: bool = True, track=None) -> dict:
    """Cache the coarse logits, train the refiner, export OUT/refiner.safetensors."""
    from carmask.inference.predictor import Predictor
    from carmask.util.progress import silent_track

    _log_lightning_once()
    L.seed_everything(config.seed, workers=True, verbose=False)
    out = Path(config.out)
    started = time.time()
    predictor = Predictor(config.coarse, backend="onnx")
    records = [r for r in index_dataset(config.data, check_pixels=False).train if r.mask_path]
    train_records, val_records = split_for_refiner(records, predictor.config, config.train_cars)
    rng = np.random.default_rng(config.seed)
    val_records = [val_records[i] for i in sorted(rng.permutation(len(val_records))[:config.val_photos])]
    # Logits are cached as photos are first used: one pass over the data costs the same either
    # way, and training starts at once. Loader processes need them all cached beforehand.
    cache = out / "coarse-logits"
    if config.workers > 0:
        for record in (track or silent_track)(train_records + val_records, description="coarse logits"):
            coarse_logit(predictor, record, cache)
    g = config.geometry
    lazy = predictor if config.workers == 0 else None
    train_set = OutlineCrops(train_records, cache, g, config.crops, predictor=lazy)
    val_set = OutlineCrops(val_records, cache, g, config.crops, seed=config.seed, predictor=lazy)
    loader = dict(num_workers=config.workers, persistent_workers=config.workers > 0)
    train_loader = training_loader(train_set, config.photos_per_batch, **loader)
    val_loader = DataLoader(val_set, batch_size=config.photos_per_batch, **loader)
    task = RefinerTask(config.model, config.lr, config.weight_decay)
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_refined_wrong",
                           mode="min", save_top_k=1, save_last=True)
    crash_safe = ModelCheckpoint(dirpath=out / "checkpoints", filename="latest", every_n_train_steps=25,
                                 save_top_k=1, enable_version_counter=False)
    gpu = torch.cuda.is_available()
    precision = config.precision or ("bf16-mixed" if gpu else "32-true")
    warn_if_bf16_is_emulated(precision, gpu)
    trainer = L.Trainer(accelerator="auto", devices=1, precision=precision,
                        max_epochs=config.epochs, max_time=config.max_time,
                        callbacks=[best, crash_safe, latest_by_time(out)], logger=CSVLogger(out, name="logs"),
                        enable_progress_bar=progress_bar, log_every_n_steps=10, num_sanity_val_steps=0,
                        val_check_interval=config.val_every,
                        limit_train_batches=config.steps_per_epoch or 1.0)
    trainer.fit(task, train_loader, val_loader, ckpt_path=_resume_checkpoint(out) if config.resume else None)
    best_path = best.best_model_path or str(out / "checkpoints" / "last.ckpt")
    restored = RefinerTask.load_from_checkpoint(best_path, map_location="cpu", weights_only=False)
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    summary = {"model": config.model, "geometry": g.as_dict(), "epochs_run": trainer.current_epoch,
               "train_cars": sorted({r.car_id for r in train_records}),
               "val_car_ids": sorted({r.car_id for r in val_records}), "steps": trainer.global_step,
               "best_val_refined_wrong": round(float(best.best_model_score or float("nan")), 4),
               "last_metrics": metrics, "seconds": round(time.time() - started), "seed": config.seed,
               "precision": precision, "coarse": model_id(predictor.path)}
    save_model(restored.model, out / "refiner.safetensors",
               model_config(config.model, (g.tile, g.tile), geometry=g.as_dict(), training=summary))
    _write_metrics(trainer, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    return summary
