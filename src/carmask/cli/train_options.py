"""Checks of the options the training commands share (`train`, `train-refiner`,
`train-general`), run as typer callbacks while the arguments are parsed.

Without them a wrong `--max-time`, `--accelerator` or `--init` was refused by Lightning or torch
only after the data had been indexed and the network built (minutes on a CPU), with a
traceback; a `--out` that is a file, after the whole run. Each raises typer.BadParameter, which
the CLI prints as one line naming the option. The empty, non-finite and huge values of any
option are refused before these run (carmask.cli.arguments).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import typer

from carmask.cli.common import one_of

# Lightning's own format for `max_time` (lightning.pytorch.callbacks.Timer): DD:HH:MM:SS
DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")  # what train.py knows how to set up
PRECISIONS = ("16-mixed", "bf16-mixed", "32")  # 32 is Lightning's "32-true"
MAX_DEVICES = 1024


def max_time(value: str | None) -> str | None:
    """--max-time: DD:HH:MM:SS as Lightning reads it (00:12:00:00 is 12 hours), longer than 0."""
    if value is None:
        return None
    found = DURATION.fullmatch(value.strip())
    if not found:
        raise typer.BadParameter(f"{value!r} is not a duration: give DD:HH:MM:SS (days, hours, "
                                 "minutes, seconds), e.g. 00:12:00:00 for 12 hours")
    days, hours, minutes, seconds = (int(part) for part in found.groups())
    if days * 86400 + hours * 3600 + minutes * 60 + seconds == 0:
        raise typer.BadParameter(f"{value!r} is no time at all: give DD:HH:MM:SS longer than 0")
    return value.strip()


def devices(value: str) -> str:
    """--devices: auto, or how many devices (DDP when more than 1)."""
    if value == "auto" or (value.isdigit() and 1 <= int(value) <= MAX_DEVICES):
        return value
    raise typer.BadParameter(f"{value!r}: give auto or a number of devices from 1 to {MAX_DEVICES}")


def accelerator(value: str) -> str:
    return one_of(value, ACCELERATORS)


def precision(value: str | None) -> str | None:
    return None if value is None else one_of(value, PRECISIONS)


def fraction_of_epoch(value: float) -> float:
    """--val-every: a fraction of an epoch, more than 0 and at most 1."""
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{value}: give a fraction of an epoch, more than 0 and at most 1")
    return value


def positive(value: float | None) -> float | None:
    """A number that must be more than 0 (a learning rate, a share of batches)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} must be a number more than 0")
    return value


def run_folder(value: Path) -> Path:
    """--out of a training run: a folder that is, or can be made, written to (a file there, or
    an unwritable parent, would otherwise fail only when the first checkpoint is saved)."""
    return _output_folder(value, "run folder")


def cache_folder(value: Path | None) -> Path | None:
    return None if value is None else _output_folder(value, "cache folder")


def _output_folder(value: Path, what: str) -> Path:
    from carmask.util.output_files import OutputError, check_output_dir

    try:
        return check_output_dir(value, what)
    except OutputError as error:
        raise typer.BadParameter(str(error)) from None


def training_model(value: str | None) -> str | None:
    """--init: a model to start from, whose .safetensors file (torch's weights) is sound."""
    if value is not None:
        _model_option(value, ".safetensors")
    return value


def coarse_model(value: str | None) -> str | None:
    """--coarse: a model to refine (None: the shipped one), its .onnx or .safetensors file."""
    if value is not None:
        _model_option(value, ".onnx")
    return value


def _model_option(value: str, suffix: str) -> Path:
    from carmask.inference.model_files import ModelFileError

    try:
        return model_file(value, suffix)
    except ModelFileError as error:
        raise typer.BadParameter(str(error)) from None


def model_file(value: str | None, suffix: str) -> Path:
    """The model file of a model argument (None: the shipped one), read and checked as loading
    it would (checksum, finite weights, config), so that a bad one is refused before any work.
    `suffix` ".safetensors": torch's weights are needed (training, export, averaging), and an
    ONNX file is refused. ModelFileError names the file and what is wrong."""
    from carmask.inference.model_check import verify_model_file
    from carmask.inference.model_files import ModelFileError, read_config, resolve_model_path

    path = resolve_model_path(value, suffix=suffix)
    if suffix == ".safetensors" and path.suffix == ".onnx":
        raise ModelFileError(f"{path}: an ONNX file; this needs a .safetensors model file (torch's "
                             "weights), or the run folder that holds one")
    verify_model_file(path)
    read_config(path)
    return path


def car_ids(value: str | None) -> str | None:
    """--train-cars: comma-separated Kaggle car ids (12 hex digits each)."""
    if value is not None:
        bad = [car for car in _ids(value) if not _is_car_id(car)]
        if bad or not _ids(value):
            raise typer.BadParameter(f"{(bad or [value])[0]!r} is not a car id (12 hex digits, as "
                                     "in 0cdf5b5d0ce1); give ids separated by commas")
    return value


def held_out_cars(value: str | None) -> str | None:
    """--val-cars: comma-separated car ids, or a model whose recorded validation cars to keep."""
    if value is None or (_ids(value) and all(map(_is_car_id, _ids(value)))):
        return value
    try:
        _model_option(value, ".safetensors")
    except typer.BadParameter as error:
        raise typer.BadParameter(f"{value!r} is neither car ids (12 hex digits each, separated by "
                                 f"commas) nor a model: {error.message}") from None
    return value


def _ids(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _is_car_id(text: str) -> bool:
    from carmask.data.layout import CAR_ID

    return CAR_ID.fullmatch(text) is not None
