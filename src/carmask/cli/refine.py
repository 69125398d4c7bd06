"""`carmask train-refiner`: the full-resolution outline stage (carmask.training.refiner)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from carmask.cli import train_options as check
from carmask.cli.common import DataDir, console, fail, progress, require_data_folder, require_torch


def train_refiner(
    data: DataDir,
    out: Annotated[Path, typer.Option("--out", callback=check.run_folder,
                                      help="Run folder: checkpoints, coarse-logit cache, metrics, "
                                           "refiner.safetensors.")] = Path("runs/refiner"),
    coarse: Annotated[Optional[str], typer.Option(callback=check.coarse_model,
                                                  help="The coarse model it refines (default: the "
                                                       "shipped one); its validation cars stay held out.")] = None,
    train_cars: Annotated[Optional[str], typer.Option(callback=check.car_ids,
                                                      help="Train on these car ids only (comma-separated; "
                                                           "default: every car but the validation cars).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training photos.")] = 4,
    steps_per_epoch: Annotated[Optional[int], typer.Option(min=1, help="Photos drawn per epoch (default: "
                                                                     "all); the schedule follows it.")] = None,
    crops: Annotated[int, typer.Option(min=1, help="Full-resolution crops per photo and step.")] = 16,
    lr: Annotated[float, typer.Option(callback=check.positive,
                                      help="Peak learning rate (AdamW, warm-up, cosine).")] = 1e-3,
    val_photos: Annotated[int, typer.Option(min=1, help="Validation photos scored by crops.")] = 48,
    val_every: Annotated[float, typer.Option(callback=check.fraction_of_epoch,
                                             help="Validate every this fraction of an epoch.")] = 0.25,
    max_time: Annotated[Optional[str], typer.Option(callback=check.max_time,
                                                    help="Stop cleanly after DD:HH:MM:SS.")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Loader processes (0: cache logits lazily).")] = 0,
    precision: Annotated[Optional[str], typer.Option(
        callback=check.precision, help="16-mixed, bf16-mixed or 32 (default: bf16-mixed on GPU, 32 on "
                                       "CPU; bf16-mixed is faster on a CPU with AMX).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
) -> None:
    """Train the outline refiner on full-resolution crops along the coarse model's outlines."""
    require_torch("train-refiner")
    from carmask.training.refiner_train import RefinerTrainConfig
    from carmask.training.refiner_train import train_refiner as run

    require_data_folder(data)  # says what the path is instead
    config = RefinerTrainConfig(data=data, out=out, coarse=coarse, train_cars=train_cars, epochs=epochs,
                                steps_per_epoch=steps_per_epoch, crops=crops, lr=lr,
                                val_photos=val_photos, val_every=val_every, max_time=max_time,
                                workers=workers, resume=resume,
                                precision="32-true" if precision == "32" else precision)
    try:
        summary = run(config, track=progress)
    except ValueError as error:
        raise fail(str(error)) from None
    console.print(f"refiner: {out / 'refiner.safetensors'} after {summary['steps']} steps; wrong band "
                  f"pixels per validation crop {summary['best_val_refined_wrong']}", highlight=False)
