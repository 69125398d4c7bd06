"""`carmask models`, `carmask train` and `carmask export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from carmask.cli import train_options as check
from carmask.cli.common import (DataDir, ModelOption, console, fail, parse_second_look, parse_size,
                                require_data_folder, require_torch, styled)


WIDE_TABLE = 150  # columns from which the shipped models fit one table without cutting names


def models() -> None:
    """List the shipped models (role, input size, held-out Dice, licence), then the registry's
    architectures (parameters, input size, encoder, weights, origin) where torch is installed."""
    import importlib.util

    from carmask.inference.model_files import shipped_models

    title = "shipped models (carmask cutout / predict / serve use these)"
    if console.width >= WIDE_TABLE:
        shipped = Table(title=title)
        for column in ("role", "file", "input HxW", "held out", "licence"):
            shipped.add_column(column, no_wrap=column in ("role", "file", "input HxW"))
        for entry in shipped_models():
            shipped.add_row(entry.role, entry.path.name, entry.input, entry.held_out, entry.licence)
        console.print(shipped)
    else:  # a narrow terminal would squeeze the file names to "carvana-…": one block a model
        console.print(title)
        for entry in shipped_models():
            block = Table.grid(padding=(0, 2))
            block.add_column(no_wrap=True, style="dim")
            block.add_column()
            for label, value in (("file", entry.path.name), ("input HxW", entry.input),
                                 ("held out", entry.held_out), ("licence", entry.licence)):
                block.add_row(label, value)
            console.print()
            console.print(styled((entry.role, "bold")))
            console.print(block)
    if importlib.util.find_spec("torch") is None:
        console.print("architectures to train: pip install 'carmask[train]' to list and train them")
        return
    from carmask.training.models import create_bare_model, list_models

    table = Table(title="architectures (carmask train --model NAME)")
    for column in ("name", "params", "input HxW", "encoder", "pretrained weights", "output", "origin"):
        table.add_column(column, justify="right" if column == "params" else "left",
                         no_wrap=column in ("name", "params", "output"))
    for info in list_models():
        params = sum(p.numel() for p in create_bare_model(info.name).parameters())
        size = f"{info.default_size[0]}x{info.default_size[1]}" + ("" if info.fixed_size else " (any)")
        table.add_row(
            info.name, f"{params / 1e6:.2f}M", size, info.encoder, info.pretrained, info.output, info.origin
        )
    console.print(table)


def train(
    data: DataDir,
    model: Annotated[str, typer.Option(help="Architecture (see `carmask models`).")] = "unet-mnv2",
    out: Annotated[
        Path, typer.Option("--out", callback=check.run_folder,
                           help="Run folder: checkpoints, metrics, curves, model.safetensors.")
    ] = Path("runs/unet-mnv2"),
    size: Annotated[
        Optional[str], typer.Option(help="Training size HEIGHTxWIDTH (default: the model's).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = 20,
    batch: Annotated[int, typer.Option(min=1, help="Batch size per device.")] = 8,
    lr: Annotated[float, typer.Option(callback=check.positive,
                                      help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-3,
    fold: Annotated[int, typer.Option(min=0, help="Validation fold (cars of this fold are held out).")] = 0,
    folds: Annotated[int, typer.Option(min=2, help="Number of car-grouped folds.")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split, the initialisation and augmentation.")] = 0,
    patience: Annotated[int, typer.Option(min=1, help="Early stopping: validations without improvement.")] = 5,
    devices: Annotated[
        str, typer.Option(callback=check.devices, help="Devices per node: auto, or a number (DDP when > 1).")
    ] = "auto",
    num_nodes: Annotated[int, typer.Option(min=1, help="Nodes for multi-node DDP (torchrun/SLURM).")] = 1,
    accelerator: Annotated[str, typer.Option(callback=check.accelerator,
                                             help="auto, cpu or gpu (cuda).")] = "auto",
    precision: Annotated[
        Optional[str], typer.Option(callback=check.precision,
                                    help="16-mixed, bf16-mixed or 32 (default: mixed on GPU, 32 on CPU).")
    ] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Data loader processes per device.")] = None,
    max_time: Annotated[Optional[str], typer.Option(callback=check.max_time,
                                                    help="Stop cleanly after DD:HH:MM:SS.")] = None,
    val_every: Annotated[float, typer.Option(callback=check.fraction_of_epoch,
                                             help="Validate every this fraction of an epoch.")] = 1.0,
    limit_train_batches: Annotated[
        float, typer.Option(callback=check.positive, help="Fraction (<=1) or number of batches per epoch.")
    ] = 1.0,
    max_cars: Annotated[
        Optional[int], typer.Option(min=1, help="Use only the first N cars (quick experiments).")
    ] = None,
    pretrained: Annotated[
        bool, typer.Option(help="Start from ImageNet weights where the model has them.")
    ] = True,
    encoder_weights: Annotated[
        Optional[Path], typer.Option(exists=True, dir_okay=False,
                                     help="torchvision-format encoder weights file (vgg19, resnet34).")
    ] = None,
    init: Annotated[
        Optional[str], typer.Option(callback=check.training_model,
                                    help="Fine-tune: start from a carmask model's weights (a file, "
                                         "a run folder, or 'shipped'); its split should be this run's.")
    ] = None,
    val_cars: Annotated[
        Optional[str], typer.Option(callback=check.held_out_cars,
                                    help="Hold out exactly these cars instead of a fold: car ids "
                                         "(comma-separated), or a model whose recorded validation "
                                         "cars to keep held out (e.g. 'shipped').")
    ] = None,
    vflip: Annotated[bool, typer.Option(help="Also flip up/down, as the seed did.")] = False,
    half: Annotated[bool, typer.Option(help="Export the model in fp16 (half the size).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    cache: Annotated[
        Optional[Path], typer.Option(callback=check.cache_folder,
                                     help="Decode and resize the photos once into this folder "
                                          "(uint8 at the training size), for long CPU runs.")
    ] = None,
) -> None:
    """Train a model with Lightning and export the best weights to OUT/model.safetensors."""
    require_torch("train")
    from carmask.training.data.transforms import AugmentConfig
    from carmask.training.models import UnknownModelError, model_info
    from carmask.training.train import TrainConfig
    from carmask.training.train import train as run_training

    require_data_folder(data)  # says what the path is instead
    try:
        model_info(model)
    except UnknownModelError as error:
        raise fail(f"--model: {error}") from None
    if fold >= folds:
        raise fail(f"--fold {fold}: the folds are numbered 0 to {folds - 1} (--folds {folds})")
    config = TrainConfig(
        data=data,
        model=model,
        out=out,
        size=parse_size(size, "HEIGHTxWIDTH", "--size") if size else None,
        epochs=epochs,
        batch=batch,
        lr=lr,
        fold=fold,
        folds=folds,
        seed=seed,
        patience=patience,
        devices=int(devices) if devices.isdigit() else devices,
        num_nodes=num_nodes,
        accelerator=accelerator,
        precision=("32-true" if precision == "32" else precision),
        workers=workers,
        max_time=max_time,
        val_every=val_every,
        limit_train_batches=int(limit_train_batches) if limit_train_batches > 1 else limit_train_batches,
        max_cars=max_cars,
        pretrained=pretrained,
        encoder_weights=str(encoder_weights) if encoder_weights else None,
        init=init,
        val_cars=val_cars,
        augment=AugmentConfig(vflip=vflip),
        export_half=half,
        resume=resume,
        cache=cache,
    )
    try:
        summary = run_training(config)
    except ValueError as error:
        raise fail(str(error)) from None
    if summary:
        console.print(
            f"best full-resolution val Dice {summary['best_val_dice_full']} after "
            f"{summary['epochs_run']} epochs; model: {out / 'model.safetensors'}, "
            f"curves: {out / 'curves.png'}"
        )


def export(
    out: Annotated[Path, typer.Option("--out", help="The .onnx file to write.")],
    model: ModelOption = None,
    size: Annotated[Optional[str], typer.Option(help="Input HEIGHTxWIDTH (default: the model's).")] = None,
    fp16: Annotated[
        bool, typer.Option(help="Store weights in fp16 (half the file; computed in fp32).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the --out file if it exists.")] = False,
    refines: Annotated[Optional[str], typer.Option(
        callback=check.coarse_model,
        help="For an outline refiner: the coarse model it refines (studio, general, or its model "
             "file), recorded in the ONNX file (default: the model its training record names).")
    ] = None,
    int8_decoder: Annotated[Optional[Path], typer.Option(
        "--int8-decoder", metavar="DATA",
        help="Put the decoder in int8 (the encoder stays fp32), its activations calibrated on 24 "
             "training photos of DATA (a Kaggle-layout folder, or an outdoor one with index.csv) "
             "outside the model's held-out photos: about 1.4x faster on CPUs with VNNI or AMX, for "
             "no measurable loss of Dice. Both shipped ONNX files are made so.")
    ] = None,
) -> None:
    """Export a trained model (.safetensors, or a run folder) to one ONNX file, its config
    inside, that every command runs without torch (`--model FILE.onnx`). It takes any input
    size; --size only sets the size it is traced at and the size it runs at by default.

    An outline refiner (a `carmask train-refiner` run folder or its refiner.safetensors) becomes
    a refiner ONNX file, fixed at its tiles, which `--quality best` runs without torch: the
    studio model's ships as weights/carvana-refiner-mnv2.onnx (use --fp16, as the shipped files).
    """
    require_torch("export")
    from carmask.inference.model_files import ModelFileError, model_id, read_config, resolve_model_path
    from carmask.data.io import DataError
    from carmask.training.export import export_model_file, is_refiner, refiner_export_config
    from carmask.training.quantize import calibration_photos
    from carmask.util.output_files import OutputError, check_output_file, refuse_replacing

    input_size = parse_size(size, "HEIGHTxWIDTH", "--size") if size else None
    if int8_decoder:
        require_data_folder(int8_decoder, "--int8-decoder")
    try:
        if out.suffix != ".onnx":  # every loader reads a model file by its suffix
            raise OutputError(f"{out}: the --out ONNX file must end in .onnx")
        check_output_file(out, "--out ONNX file")
        refuse_replacing([out], "ONNX file", overwrite)
        # checksum, finite weights, config
        source = check.model_file(_refiner_run(model), ".safetensors")
        coarse = model_id(resolve_model_path(refines)) if refines else None
        config = read_config(source)
        if is_refiner(config):  # what it refines is settled before any work
            coarse = refiner_export_config(config, coarse, source)["refines"]
        elif refines:
            raise ModelFileError(f"--refines: {source} is not an outline refiner")
        photos = calibration_photos(int8_decoder, config) if int8_decoder else None
        path = export_model_file(source, out, fp16=fp16, size=input_size, refines=coarse,
                                 int8_photos=photos)
    except (ModelFileError, OutputError, DataError) as error:
        raise fail(str(error)) from None
    weights = "int8 decoder, fp32 encoder" if photos else "fp16" if fp16 else "fp32"
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, {weights} weights) from "
                  f"{source}" + (f", the outline refiner of {coarse}" if coarse else ""))


def _refiner_run(model: str | None) -> str | None:
    """A `carmask train-refiner` run folder → its refiner.safetensors; any other as it is."""
    folder = Path(model) if model else None
    if folder and folder.is_dir() and not (folder / "model.safetensors").exists() \
            and (folder / "refiner.safetensors").is_file():
        return str(folder / "refiner.safetensors")
    return model


def average(
    models: Annotated[list[str], typer.Argument(help="Two or more model files or run folders of "
                                                     "one architecture, fine-tuned from one start.")],
    out: Annotated[Path, typer.Option("--out", help="The model file to write.")],
    size: Annotated[
        Optional[str], typer.Option(help="Input HEIGHTxWIDTH it runs at (default: the first model's).")
    ] = None,
    min_car_area: Annotated[
        Optional[float], typer.Option(min=0.0, max=0.01, help="Drop predicted regions smaller than this "
                                      "share of the photo (default: the first model's setting).")
    ] = None,
    second_look: Annotated[
        Optional[str], typer.Option(help="HEIGHTxWIDTH, larger than --size, at which photos whose cars "
                                         "cover under 5% of them are run again (default: the first "
                                         "model's setting; 'none' turns it off).")
    ] = None,
    half: Annotated[bool, typer.Option(help="Store the weights in fp16 (half the file).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace the --out file if it exists.")] = False,
) -> None:
    """Average the weights of fine-tuned runs (a model soup): often better than any one of them,
    at no cost when predicting. The first model's config and training record are kept."""
    require_torch("average")
    from carmask.inference.predictor import second_look_config
    from carmask.training.models.io import ModelFileError, average_models
    from carmask.util.output_files import OutputError, check_output_file, refuse_replacing

    changes = {}
    if size:
        changes["input_size"] = list(parse_size(size, "HEIGHTxWIDTH", "--size"))
    if min_car_area is not None:
        changes["min_car_area"] = min_car_area
    if second_look:
        look_size = parse_second_look(second_look, "--second-look")
        changes["second_look"] = second_look_config(look_size) if look_size else None
    try:
        if out.suffix == ".onnx":  # every loader reads a model file by its suffix
            raise OutputError(f"{out}: the --out model file is a .safetensors file, not ONNX "
                              "(carmask export makes the ONNX file of it)")
        check_output_file(out, "--out model file")
        refuse_replacing([out], "averaged model", overwrite)
        for model in models:  # each one sound (checksum, finite weights) before any work
            check.model_file(model, ".safetensors")
        if len(models) < 2:
            raise ModelFileError("averaging needs at least two model files")
    except (ModelFileError, OutputError) as error:
        raise fail(str(error)) from None
    try:
        path = average_models(models, out, half=half, **changes)
    except ModelFileError as error:
        raise fail(str(error)) from None
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB), the average of {len(models)} models")
