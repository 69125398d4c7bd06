"""Training the general model: cars on any background (issue 12).

Fine-tunes a carmask model (by default the shipped studio model) on `AnywhereDataset`: real
outdoor photos, studio cars pasted onto other backgrounds and plain studio photos. Validation is
the held-out outdoor photos at their own size. The studio model's validation cars are never
trained on, so both figures stay honest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from carmask.training.data.anywhere import AnywhereDataset, MixConfig, WildValidationSet, registry_pictures
from carmask.data.layout import index_dataset
from carmask.data.wild import read_wild, split_wild
from carmask.training.data.loaders import loader_options, training_loader
from carmask.training.losses import collate_with_small_car_weights
from carmask.training.models import model_info
from carmask.training.models.io import load_model, model_config, save_model
from carmask.inference.predictor import second_look_config
from carmask.training.train import SegmentationTask, _log_lightning_once, _resume_checkpoint, _score, \
    _write_metrics, best_task, checkpoints, held_out_cars, use_channels_last, \
    warn_if_bf16_is_emulated

log = logging.getLogger(__name__)
GENERAL_SIZE = (352, 480)  # the outdoor photos are 480x360; multiples of 32 for the U-Net


@dataclass
class AnywhereConfig:
    carvana: Path
    wild: Path
    out: Path = Path("runs/general")
    init: str = "shipped"  # the carmask model to start from
    size: tuple[int, int] = GENERAL_SIZE
    # The size the exported model runs at (None: `size`). Trained with zoom, the model finds
    # more of the distant cars when run a little larger than it trained (docs/training-history.md).
    predict_size: tuple[int, int] | None = None
    samples_per_epoch: int = 480
    epochs: int = 12
    batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    seed: int = 0
    workers: int | None = None
    precision: str | None = None  # Lightning's; default: bf16-mixed on GPU, 32-true on CPU
    max_time: str | None = None  # "DD:HH:MM:SS"
    resume: bool = False
    export_half: bool = True
    dice_per_photo: bool = True  # the soft Dice of the loss per photo, as the metric counts
    # Pixels of true cars under 2% of the photo weigh up to this many times more in the BCE
    # (carmask.training.losses.small_car_weights); 1: all pixels alike. 4 since r16 (docs/training-history.md).
    small_car_boost: float = 4.0
    # The exported model drops predicted regions under this share of the photo: specks of false
    # car (17 pixels at 480x360), which cost a street frame without a car its whole Dice.
    min_car_area: float = 1e-4
    # Photos whose cars are small are run again at this (H, W), larger, and the two outputs
    # averaged (carmask.inference.predictor.SecondLook). "init": as the model it starts from; None: none.
    second_look: tuple[int, int] | str | None = "init"
    mix: MixConfig = field(default_factory=MixConfig)


def exported_second_look(requested: tuple[int, int] | str | None, start_config: dict) -> dict | None:
    """The `second_look` entry the trained model gets: the one asked for, or the start model's."""
    if requested == "init":
        return start_config.get("second_look")
    return second_look_config(requested) if requested else None


def train_anywhere(config: AnywhereConfig, progress_bar: bool = True) -> dict:
    """Train, export the best weights (by outdoor validation Dice) to `out/model.safetensors`."""
    for size in (config.size, config.predict_size or config.size):
        if any(side % 32 for side in size):
            raise ValueError(f"size {size[0]}x{size[1]}: both sides must be multiples of 32")
    if config.second_look not in (None, "init"):
        second_look_config(config.second_look)  # checked before hours of training, not after
    _log_lightning_once()
    out = Path(config.out)
    L.seed_everything(config.seed, workers=True, verbose=False)
    start, start_config = load_model(config.init)
    architecture = start_config["architecture"]
    info = model_info(architecture)

    wild_train, wild_val = split_wild(read_wild(config.wild))
    index = index_dataset(config.carvana, check_pixels=False)
    records = [r for r in index.train if r.mask_path is not None]
    studio_val = held_out_cars(records, config.init) if (start_config.get("training") or {}).get("val_car_ids") else []
    kept_out = {r.car_id for r in studio_val}
    studio_train = [r for r in records if r.car_id not in kept_out]
    log.info("outdoor photos: %d for training, %d held out; studio cars: %d for pasting, %d kept out",
             len(wild_train), len(wild_val), len({r.car_id for r in studio_train}), len(kept_out))

    train_set = AnywhereDataset(wild_train, studio_train, config.size, config.samples_per_epoch,
                                config.mix, registry_pictures(), info.mean, info.std)
    val_set = WildValidationSet(wild_val, config.size, info.mean, info.std)
    loader = loader_options(config.workers)
    weigh = partial(collate_with_small_car_weights, cap=config.small_car_boost) if config.small_car_boost > 1 else None
    train_loader = training_loader(train_set, config.batch, collate_fn=weigh, **loader)
    val_loader = DataLoader(val_set, batch_size=config.batch, **loader)

    task = SegmentationTask(architecture, {"pretrained": False} if info.takes_pretrained else {},
                            config.lr, config.weight_decay, dice_per_photo=config.dice_per_photo)
    task.model.load_state_dict(start.state_dict(), strict=True)
    best, *crash_safe = checkpoints(out, steps_between_saves=10)
    gpu = torch.cuda.is_available()
    precision = config.precision or ("bf16-mixed" if gpu else "32-true")
    if gpu or precision == "bf16-mixed":
        task = use_channels_last(task)
    warn_if_bf16_is_emulated(precision, gpu)
    trainer = L.Trainer(
        accelerator="auto", devices=1, precision=precision,
        max_epochs=config.epochs, max_time=config.max_time, callbacks=[best, *crash_safe],
        logger=CSVLogger(out, name="logs"), enable_progress_bar=progress_bar,
        log_every_n_steps=5, num_sanity_val_steps=0, default_root_dir=out,
    )
    resume_from = _resume_checkpoint(out) if config.resume else None
    started = time.time()
    trainer.fit(task, train_loader, val_loader, ckpt_path=resume_from)
    restored = best_task(best, out)
    summary = {
        "model": architecture, "size": list(config.size), "epochs_run": trainer.current_epoch,
        "best_outdoor_val_dice": _score(best.best_model_score), "init": config.init,
        "outdoor_train_photos": len(wild_train), "outdoor_val_photos": [p.name for p in wild_val],
        # the studio model's held-out cars: never pasted here, so its figure can be re-checked
        "val_car_ids": sorted(kept_out), "seconds": round(time.time() - started), "seed": config.seed,
        "mix": asdict(config.mix), "dice_per_photo": config.dice_per_photo,
        "small_car_boost": config.small_car_boost, "precision": precision,
    }
    save_model(restored.model, out / "model.safetensors",
               model_config(architecture, config.predict_size or config.size, training=summary,
                            role="general", min_car_area=config.min_car_area,
                            second_look=exported_second_look(config.second_look, start_config)),
               half=config.export_half)
    _write_metrics(trainer, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("best outdoor val Dice %.4f; model written to %s",
             summary["best_outdoor_val_dice"] or float("nan"), out / "model.safetensors")
    return summary
