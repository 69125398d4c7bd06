"""The `carmask` command line: parses arguments, calls the library, prints the results."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import track as rich_track
from rich.table import Table

app = typer.Typer(
    help="Mask cars out of studio photos: data checks, Kaggle RLE and submissions, EDA, demo.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Index, validate, synthesise or download Carvana data.",
                       no_args_is_help=True)
rle_app = typer.Typer(help="Kaggle run-length encoding (row-major, 1-based).", no_args_is_help=True)
submission_app = typer.Typer(help="Check Kaggle submission files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(rle_app, name="rle")
app.add_typer(submission_app, name="submission")

console = Console(soft_wrap=True)  # never wrap paths and RLEs mid-line
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("carmask")


def progress(iterable, total=None, description=""):
    """A rich progress bar on stderr, handed to the library as its `track`."""
    return rich_track(iterable, total=total, description=description or "working", console=err,
                      transient=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def parse_size(text: str, order: str) -> tuple[int, int]:
    """'480x320' → (480, 320); `order` names the two numbers for the error message."""
    try:
        first, second = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not {order}, e.g. 480x320") from None
    if first <= 0 or second <= 0:
        raise typer.BadParameter(f"{text!r}: both sides must be positive")
    return first, second


@app.callback()
def main_options(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step (INFO).")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


# -- data ---------------------------------------------------------------------------------------
DataDir = Annotated[Path, typer.Option("--data", help="Kaggle-layout folder (train/, train_masks/, test/, metadata.csv).")]


@data_app.command("index")
def data_index(
    data: DataDir,
    deep: Annotated[bool, typer.Option(help="Also decode every photo (finds broken coding tables the header check misses; slower).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary and problems as JSON.")] = False,
) -> None:
    """Discover a Kaggle folder, join metadata.csv, check every file and print a summary.

    Exits 1 when a fatal problem is found (missing or orphan masks, wrong sizes, masks that are
    not binary or have several frames, unreadable or truncated files, bad names, duplicate ids).
    """
    from carmask.data.layout import index_dataset

    try:
        index = index_dataset(data, deep=deep, track=progress)
    except FileNotFoundError as error:
        raise fail(str(error)) from None
    summary = index.summary()
    if as_json:
        summary["problem_list"] = [
            {"path": str(p.path), "kind": p.kind, "message": p.message, "fatal": p.fatal}
            for p in index.problems]
        console.print_json(json.dumps(summary))
    else:
        table = Table(title=f"Carvana data in {data}", show_header=False)
        for key, value in summary.items():
            if key != "root":
                table.add_row(key.replace("_", " "), ", ".join(f"{k}: {v}" for k, v in value.items())
                              if isinstance(value, dict) else str(value))
        console.print(table)
        for problem in index.problems:
            console.print(str(problem), style="red" if problem.fatal else "yellow", highlight=False)
        if not index.problems:
            console.print("[green]no problems found[/]")
    if index.fatal:
        raise typer.Exit(1)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the data set into.")],
    cars: Annotated[int, typer.Option(help="Training cars (16 views each).")] = 8,
    test_cars: Annotated[int, typer.Option(help="Test cars (16 views each, true masks in test_masks/).")] = 2,
    size: Annotated[str, typer.Option(help="Image size WIDTHxHEIGHT.")] = "480x320",
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
) -> None:
    """Write a synthetic studio data set in the exact Kaggle layout (deterministic per seed)."""
    from carmask.data.synth import synthesize

    try:
        result = synthesize(out, cars=cars, test_cars=test_cars, size=parse_size(size, "WIDTHxHEIGHT"),
                            seed=seed, track=progress)
    except ValueError as error:
        raise fail(str(error)) from None
    console.print(f"wrote {result.images} images of {len(result.train_cars)} train and "
                  f"{len(result.test_cars)} test cars to [bold]{result.root}[/]")


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option("--out", help="Folder for the Kaggle data (about 25 GB unzipped).")],
    file: Annotated[Optional[list[str]], typer.Option(help="Only these competition files, e.g. metadata.csv.zip.")] = None,
) -> None:
    """Download the competition with the Kaggle API (needs your credentials and the accepted rules)."""
    from carmask.data.download import DownloadError, download_competition

    try:
        path = download_competition(out, files=file)
    except DownloadError as error:
        raise fail(str(error)) from None
    console.print(f"downloaded to [bold]{path}[/]; next: carmask data index --data {path}")


# -- rle ----------------------------------------------------------------------------------------
@rle_app.command("encode")
def rle_encode(mask: Annotated[Path, typer.Argument(help="Mask image (GIF/PNG, values {0,1} or {0,255}).")]) -> None:
    """Print the Kaggle RLE of a mask file."""
    from carmask import rle
    from carmask.data.io import DataError, read_mask

    try:
        print(rle.encode(read_mask(mask)))
    except DataError as error:
        raise fail(str(error)) from None


@rle_app.command("decode")
def rle_decode(
    encoding: Annotated[str, typer.Argument(help="The RLE string, or - to read it from stdin.")],
    out: Annotated[Path, typer.Option("--out", help="Output mask: .png (0/255) or .gif ({0,1}).")],
    shape: Annotated[str, typer.Option(help="Mask size HEIGHTxWIDTH.")] = "1280x1918",
) -> None:
    """Decode a Kaggle RLE string into a mask image."""
    from carmask import rle
    from carmask.data.io import save_mask

    text = sys.stdin.read().strip() if encoding == "-" else encoding.strip()
    try:
        mask = rle.decode(text, parse_size(shape, "HEIGHTxWIDTH"))
    except rle.RLEError as error:
        raise fail(f"invalid RLE: {error}") from None
    save_mask(mask, out)
    console.print(f"wrote {out} ({mask.shape[0]}x{mask.shape[1]}, {int(mask.sum())} car pixels)")


# -- submission ---------------------------------------------------------------------------------
@submission_app.command("check")
def submission_check(
    file: Annotated[Path, typer.Argument(help="The submission CSV.")],
    sample: Annotated[Optional[Path], typer.Option(help="sample_submission.csv listing the expected images.")] = None,
    shape: Annotated[str, typer.Option(help="Mask size HEIGHTxWIDTH.")] = "1280x1918",
) -> None:
    """Validate a submission: header, every expected image exactly once, every RLE valid."""
    from carmask.submission import SubmissionError, check_submission, read_sample_names

    try:
        expected = read_sample_names(sample) if sample else None
    except (OSError, SubmissionError) as error:
        raise fail(str(error)) from None
    report = check_submission(file, expected, shape=parse_size(shape, "HEIGHTxWIDTH"))
    for line, message in report.errors:
        err.print(f"{file}:{line if line is not None else '-'}: {message}", highlight=False)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if not report.ok:
        raise fail(f"{len(report.errors)} problem(s) in {file}")
    against = f" against {sample}" if sample else ""
    console.print(f"[green]OK[/] {file}: {report.rows} rows{against}, "
                  f"{report.rows - report.empty_masks} non-empty masks")


# -- models and training -----------------------------------------------------------------------
@app.command("models")
def models() -> None:
    """List the registered architectures: parameters, input size, encoder, weights, origin."""
    from carmask.models import create_bare_model, list_models

    table = Table(title="carmask models")
    for column in ("name", "params", "input HxW", "encoder", "pretrained weights", "output", "origin"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for info in list_models():
        params = sum(p.numel() for p in create_bare_model(info.name).parameters())
        size = f"{info.default_size[0]}x{info.default_size[1]}" + ("" if info.fixed_size else " (any)")
        table.add_row(info.name, f"{params / 1e6:.2f}M", size, info.encoder, info.pretrained,
                      info.output, info.origin)
    console.print(table)


@app.command("train")
def train(
    data: DataDir,
    model: Annotated[str, typer.Option(help="Architecture (see `carmask models`).")] = "unet-mnv2",
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics, curves, model.safetensors.")] = Path("runs/unet-mnv2"),
    size: Annotated[Optional[str], typer.Option(help="Training size HEIGHTxWIDTH (default: the model's).")] = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 20,
    batch: Annotated[int, typer.Option(help="Batch size per device.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-3,
    fold: Annotated[int, typer.Option(help="Validation fold (cars of this fold are held out).")] = 0,
    folds: Annotated[int, typer.Option(help="Number of car-grouped folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and augmentation.")] = 0,
    patience: Annotated[int, typer.Option(help="Early stopping: validations without improvement.")] = 5,
    devices: Annotated[str, typer.Option(help="Devices per node: auto, or a number (DDP when > 1).")] = "auto",
    num_nodes: Annotated[int, typer.Option(help="Nodes for multi-node DDP (torchrun/SLURM).")] = 1,
    accelerator: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    precision: Annotated[Optional[str], typer.Option(help="16-mixed, bf16-mixed or 32 (default: mixed on GPU, 32 on CPU).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Data loader processes per device.")] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop cleanly after DD:HH:MM:SS.")] = None,
    val_every: Annotated[float, typer.Option(help="Validate every this fraction of an epoch.")] = 1.0,
    limit_train_batches: Annotated[float, typer.Option(help="Fraction (<=1) or number of batches per epoch.")] = 1.0,
    max_cars: Annotated[Optional[int], typer.Option(help="Use only the first N cars (quick experiments).")] = None,
    pretrained: Annotated[bool, typer.Option(help="Start from ImageNet weights where the model has them.")] = True,
    encoder_weights: Annotated[Optional[Path], typer.Option(help="torchvision-format encoder weights file (vgg19, resnet34).")] = None,
    vflip: Annotated[bool, typer.Option(help="Also flip up/down, as the seed did.")] = False,
    half: Annotated[bool, typer.Option(help="Export the model in fp16 (half the size).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
) -> None:
    """Train a model with Lightning and export the best weights to OUT/model.safetensors."""
    from carmask.data.transforms import AugmentConfig
    from carmask.models import UnknownModelError, model_info
    from carmask.train import TrainConfig, train as run_training

    if not data.is_dir():
        raise fail(f"{data}: data folder does not exist")
    try:
        model_info(model)
    except UnknownModelError as error:
        raise fail(str(error)) from None
    config = TrainConfig(
        data=data, model=model, out=out, size=parse_size(size, "HEIGHTxWIDTH") if size else None,
        epochs=epochs, batch=batch, lr=lr, fold=fold, folds=folds, seed=seed, patience=patience,
        devices=int(devices) if devices.isdigit() else devices, num_nodes=num_nodes,
        accelerator=accelerator, precision=("32-true" if precision == "32" else precision),
        workers=workers, max_time=max_time, val_every=val_every,
        limit_train_batches=int(limit_train_batches) if limit_train_batches > 1 else limit_train_batches,
        max_cars=max_cars, pretrained=pretrained,
        encoder_weights=str(encoder_weights) if encoder_weights else None,
        augment=AugmentConfig(vflip=vflip), export_half=half, resume=resume)
    try:
        summary = run_training(config)
    except ValueError as error:
        raise fail(str(error)) from None
    if summary:
        console.print(f"best full-resolution val Dice {summary['best_val_dice_full']} after "
                      f"{summary['epochs_run']} epochs; model: {out / 'model.safetensors'}, "
                      f"curves: {out / 'curves.png'}")


# -- prediction ---------------------------------------------------------------------------------
ModelOption = Annotated[Optional[str], typer.Option("--model", help="Model file or run folder (default: the shipped model).")]
INCOMPLETE = 3  # exit code of a prediction that finished with failed or missing images


@app.command("predict")
def predict(
    data: Annotated[Optional[Path], typer.Option("--data", help="Kaggle folder: predicts test/ in sample_submission.csv order.")] = None,
    images: Annotated[Optional[list[str]], typer.Option("--images", help="Photo files or globs (repeatable).")] = None,
    model: ModelOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Submission CSV to write.")] = None,
    masks_dir: Annotated[Optional[Path], typer.Option("--masks-dir", help="Also write one PNG mask per photo here.")] = None,
    size: Annotated[Optional[str], typer.Option(help="Model input HEIGHTxWIDTH (default: the model's).")] = None,
    tta: Annotated[bool, typer.Option(help="Average with the horizontally flipped photo.")] = False,
    batch: Annotated[int, typer.Option(help="Photos per forward pass.")] = 4,
    workers: Annotated[Optional[int], typer.Option(help="Decoding threads.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    backend: Annotated[str, typer.Option(help="torch or onnx (CPU only).")] = "torch",
    shard: Annotated[Optional[str], typer.Option(help="i/n: this job's share (0-based); join with `submission merge`.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run; nothing is predicted twice.")] = False,
) -> None:
    """Predict full-resolution masks into a Kaggle submission and/or mask files.

    Exit code 0: everything predicted; 3: finished, but some photos failed or were missing
    (listed in OUT.failures.csv, their rows left empty); 1: could not run.
    """
    from carmask.models.io import ModelFileError
    from carmask.predict import Predictor, run_prediction, shard_of
    from carmask.submission import SubmissionError, read_sample_names

    if out is None and masks_dir is None:
        raise fail("nothing to write: give --out submission.csv and/or --masks-dir DIR")
    try:
        photos, names = _photos_to_predict(data, images, read_sample_names)
        if shard:
            index, count = (int(v) for v in shard.split("/"))
            names = shard_of(names, (index, count))
        predictor = Predictor(model, device=device, backend=backend, tta=tta, batch=batch,
                              size=parse_size(size, "HEIGHTxWIDTH") if size else None)
    except (ModelFileError, SubmissionError, ValueError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    err.print(f"predicting {len(names)} images with {predictor.name} at "
              f"{predictor.size[0]}x{predictor.size[1]}{' + flip TTA' if tta else ''} "
              f"({backend}, {device})", highlight=False)
    summary = run_prediction(predictor, photos, names, submission=out, masks_dir=masks_dir,
                             resume=resume, workers=workers, track=progress)
    console.print(f"{summary.predicted} predicted ({summary.resumed} already done) in "
                  f"{summary.seconds:.1f} s: {summary.images_per_second:.2f} images/s, "
                  f"peak memory {summary.peak_rss_mb:.0f} MB")
    if out:
        console.print(f"submission: {out}")
    if masks_dir:
        console.print(f"masks: {masks_dir}")
    if not summary.complete:
        err.print(f"[yellow]incomplete:[/] {len(summary.failures)} failed, {len(summary.missing)} "
                  f"without a photo; see {out.with_name(out.stem + '.failures.csv') if out else 'the log'}",
                  highlight=False)
        raise typer.Exit(INCOMPLETE)


def _photos_to_predict(data, images, read_sample_names) -> tuple[dict[str, Path], list[str]]:
    """The photos by name, and the names to predict in submission order."""
    import glob

    if (data is None) == (not images):
        raise ValueError("give either --data DIR or --images FILES/GLOBS")
    if data is not None:
        folder = data / "test"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no test/ folder in the data folder")
        photos = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
        sample = data / "sample_submission.csv"
        return photos, read_sample_names(sample) if sample.is_file() else sorted(photos)
    paths = [Path(p) for pattern in images for p in (sorted(glob.glob(pattern)) or [pattern])]
    photos = {p.name: p for p in paths}
    return photos, list(photos)


@submission_app.command("merge")
def submission_merge(
    shards: Annotated[list[Path], typer.Argument(help="Shard CSVs from `carmask predict --shard i/n`.")],
    sample: Annotated[Path, typer.Option(help="sample_submission.csv giving the order and the expected images.")],
    out: Annotated[Path, typer.Option("--out", help="The merged submission.")],
    shape: Annotated[str, typer.Option(help="Mask size HEIGHTxWIDTH.")] = "1280x1918",
) -> None:
    """Join prediction shards into one submission in sample order, then check it."""
    from carmask.submission import SubmissionError, check_submission, merge_submissions, read_sample_names

    try:
        expected = read_sample_names(sample)
        missing = merge_submissions(shards, out, expected)
    except (OSError, SubmissionError) as error:
        raise fail(str(error)) from None
    report = check_submission(out, expected, shape=parse_size(shape, "HEIGHTxWIDTH"))
    for line, message in report.errors[:20]:
        err.print(f"{out}:{line if line is not None else '-'}: {message}", highlight=False)
    if not report.ok:
        raise fail(f"the merged file has {len(report.errors)} problem(s)")
    console.print(f"merged {len(shards)} shards into {out}: {report.rows} rows, "
                  f"{len(missing)} without a mask")
    if missing:
        raise typer.Exit(INCOMPLETE)


# -- eda and demo -------------------------------------------------------------------------------
@app.command("eda")
def eda(
    data: DataDir,
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html.")] = Path("eda"),
) -> None:
    """Write a self-contained HTML report exploring a data folder."""
    from carmask.eda import write_eda_report

    if not data.is_dir():
        raise fail(f"{data}: data folder does not exist")
    path = write_eda_report(data, out, track=progress)
    console.print(f"EDA report: [bold]{path}[/]")


@app.command("demo")
def demo(
    data: Annotated[Optional[Path], typer.Option("--data", help="A real Kaggle folder; default: a synthetic one.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Where everything is written.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data set.")] = 0,
) -> None:
    """Run the whole pipeline end to end and say where the results are."""
    from carmask.demo import run_demo

    if data is not None and not data.is_dir():
        raise fail(f"{data}: data folder does not exist")
    result = run_demo(out, data, seed=seed, track=progress)
    summary = result.index.summary()
    console.rule("carmask demo")
    console.print(f"data:        {result.data} ({summary['train_cars']} cars, "
                  f"{summary['train_images']} train and {summary['test_images']} test images, "
                  f"{summary['problems']} problems)")
    console.print(f"EDA report:  {result.eda_report}")
    status = "[green]OK[/]" if result.check.ok else f"[red]{len(result.check.errors)} problems[/]"
    console.print(f"submission:  {result.submission} ({result.check.rows} rows of true masks) {status}")
    console.print("timings:     " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    if not result.check.ok or result.index.fatal:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
