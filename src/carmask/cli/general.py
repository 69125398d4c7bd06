"""`carmask train-general`: the model for cars on any background (carmask.training.general)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from carmask.cli import train_options as check
from carmask.cli.common import (DataDir, console, fail, parse_second_look, parse_size,
                                require_data_folder, require_torch)


def train_general(
    data: DataDir,
    wild: Annotated[Optional[Path], typer.Option(
        help="Outdoor photos with masks (images/, masks/, index.csv); default: cars_in_the_wild "
             "beside --data.")] = None,
    out: Annotated[Path, typer.Option("--out", callback=check.run_folder,
                                      help="Run folder: checkpoints, metrics, "
                                           "model.safetensors.")] = Path("runs/general"),
    init: Annotated[str, typer.Option(callback=check.training_model,
                                      help="The model to start from (default: the studio model); its "
                                           "validation cars are never pasted.")] = "shipped",
    size: Annotated[str, typer.Option(help="Training HEIGHTxWIDTH, multiples of 32.")] = "352x480",
    predict_size: Annotated[Optional[str], typer.Option(
        help="HEIGHTxWIDTH the exported model runs at (default: --size); a little larger than "
             "--size finds more distant cars.")] = None,
    second_look: Annotated[Optional[str], typer.Option(
        help="HEIGHTxWIDTH, larger than the run size, at which the exported model looks again at "
             "photos whose cars cover under 5% of them, averaging both looks; 'none' for no second "
             "look (default: as the --init model).")] = None,
    outdoor_share: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Share of samples that are real outdoor photos (default: the "
                               "training mix's own); the rest are pasted cars and (a tenth) "
                               "studio photos.")] = None,
    street_cars: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Share of real street frames that get 1-3 cars cut from another "
                               "training frame (default: the training mix's own).")] = None,
    people_share: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Share of real street frames and pasted pictures that get 1-2 "
                               "people (not car) cut from a training street frame's people mask "
                               "(--wild's people/), beside or in front of a car; 0: none "
                               "(default: the training mix's own, 0.3).")] = None,
    shadow_share: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Share of real outdoor photos and pasted pictures that get a hard "
                               "cast shadow, a contact shadow under the cars or a bright "
                               "highlight on them; the mask does not change (default: the "
                               "training mix's own, 0: none).")] = None,
    camera_share: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Share of real outdoor photos and pasted pictures given another "
                               "camera's look: white balance, a JPEG re-save, blur and noise, "
                               "each half the time; the mask does not change (default: the "
                               "training mix's own, 0: none).")] = None,
    camera_changes: Annotated[str, typer.Option(
        help="Which of another camera's changes --camera-share draws, comma-separated: "
             "white_balance, jpeg, blur, noise.")] = "white_balance,jpeg,blur,noise",
    small_car_boost: Annotated[float, typer.Option(
        min=1.0, help="Pixels of true cars under 2% of the photo weigh up to this many times more in "
                      "the loss (the square root of 2% over their share); 1: all alike.")] = 4.0,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of --samples random samples.")] = 12,
    samples: Annotated[int, typer.Option(min=1, help="Samples drawn per epoch.")] = 480,
    batch: Annotated[int, typer.Option(min=1, help="Samples per step.")] = 8,
    lr: Annotated[float, typer.Option(callback=check.positive,
                                      help="Peak learning rate (AdamW, warm-up, cosine).")] = 5e-4,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the samples drawn.")] = 0,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Loader processes.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        callback=check.precision, help="16-mixed, bf16-mixed or 32 (default: bf16-mixed on GPU, 32 on "
                                       "CPU; bf16-mixed is several times faster on a CPU with AMX).")] = None,
    max_time: Annotated[Optional[str], typer.Option(callback=check.max_time,
                                                    help="Stop cleanly after DD:HH:MM:SS.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
) -> None:
    """Fine-tune a model for cars on any background: real outdoor photos, studio cars pasted onto
    street frames, registry photos and synthetic scenes, and plain studio photos; people cut from
    the training street frames stand by the cars as negatives, hard shadows and highlights may
    fall on the cars, and a photo may take another camera's look. Validated on the outdoor
    photos' held-out split."""
    require_torch("train-general")
    from dataclasses import replace

    from carmask.training.data.anywhere import MixConfig, wild_folder_beside
    from carmask.data.io import DataError
    from carmask.inference.model_files import ModelFileError
    from carmask.training.general import AnywhereConfig, train_anywhere

    require_data_folder(data)  # says what the path is instead
    mix = MixConfig()
    if outdoor_share is not None:
        mix = replace(mix, wild=outdoor_share)
    if street_cars is not None:
        mix = replace(mix, street_cars=street_cars)
    if people_share is not None:
        mix = replace(mix, people=people_share)
    if shadow_share is not None:
        mix = replace(mix, shadows=shadow_share)
    if camera_share is not None:
        mix = replace(mix, camera=camera_share)
    changes = tuple(name.strip() for name in camera_changes.split(",") if name.strip())
    if changes != mix.camera_style.changes:
        try:
            mix = replace(mix, camera_style=replace(mix.camera_style, changes=changes))
        except ValueError as error:
            raise fail(f"--camera-changes {camera_changes}: {error}") from None
    run_size = parse_size(predict_size, "HEIGHTxWIDTH", "--predict-size") if predict_size else None
    look_size = "init" if second_look is None else parse_second_look(second_look, "--second-look")
    train_size = parse_size(size, "HEIGHTxWIDTH", "--size")
    wild = wild or wild_folder_beside(data)
    require_data_folder(wild, "--wild")
    if not (wild / "index.csv").is_file():  # read only after the studio data is indexed
        raise fail(f"--wild {wild}: no index.csv there (outdoor photos: images/, masks/, index.csv)")
    try:
        config = AnywhereConfig(carvana=data, wild=wild, out=out, init=init,
                                size=train_size, samples_per_epoch=samples,
                                predict_size=run_size, second_look=look_size, epochs=epochs,
                                batch=batch, lr=lr, seed=seed, small_car_boost=small_car_boost,
                                workers=workers, max_time=max_time, resume=resume, mix=mix,
                                precision="32-true" if precision == "32" else precision)
        summary = train_anywhere(config)
    except (DataError, ModelFileError, ValueError) as error:
        raise fail(str(error)) from None
    console.print(f"general model: {out / 'model.safetensors'}; outdoor validation Dice "
                  f"{summary['best_outdoor_val_dice']}", highlight=False)
