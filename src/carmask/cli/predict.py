"""`carmask predict` and `carmask evaluate`."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer

from carmask.cli.common import (
    INCOMPLETE,
    DataDir,
    by_model,
    ModelOption,
    QualityOption,
    TtaOption,
    console,
    err,
    fail,
    parse_size,
    progress,
    require_data_folder,
    warn,
)


PhotosArgument = Annotated[
    Optional[list[str]],
    typer.Argument(help="Photos, folders of photos, or globs (test/*.jpg, quoted or not).",
                   show_default=False),
]
BatchOption = Annotated[
    Optional[int], typer.Option(min=1, help="Photos per forward pass (default: 1 with onnx, 4 with torch).")
]
BackendOption = Annotated[
    str, typer.Option(help="auto (onnxruntime on the CPU, torch on a GPU), torch, or onnx (CPU only).")
]


def predict(
    inputs: PhotosArgument = None,
    data: Annotated[
        Optional[Path],
        typer.Option("--data", help="Kaggle folder: predicts test/ in sample_submission.csv order."),
    ] = None,
    images: Annotated[
        Optional[list[str]], typer.Option("--images", help="Photo files or globs (repeatable).")
    ] = None,
    model: ModelOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Submission CSV to write.")] = None,
    masks_dir: Annotated[
        Optional[Path], typer.Option("--masks-dir", help="Also write one PNG mask per photo here.")
    ] = None,
    size: Annotated[
        Optional[str], typer.Option(help="Model input HEIGHTxWIDTH (default: the model's).")
    ] = None,
    quality: QualityOption = "fast",
    tta: TtaOption = None,
    batch: BatchOption = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Decoding threads.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    backend: BackendOption = "auto",
    shard: Annotated[
        Optional[str], typer.Option(help="i/n: this job's share (0-based); join with `submission merge`.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run; nothing is predicted twice.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing --out file, or a killed run's rows, instead of refusing.")] = False,
) -> None:
    """Predict full-resolution masks into a Kaggle submission and/or mask files.

    Exit code 0: everything predicted; 3: finished, but some photos failed, were missing or
    were not at the submission's size (listed in OUT.failures.csv, their rows left empty); 1:
    could not run, or stopped by a full disk; 130: interrupted (rerun with --resume to continue).
    """
    from carmask.apps.cutout import CutoutError
    from carmask.inference.model_files import ModelFileError
    from carmask.util.output_files import OutputError
    from carmask.inference.job import (check_no_clash, check_outputs, check_row_names, failures_file,
                                       mask_file, run_prediction, share_job)
    from carmask.util.output_files import refuse_replacing
    from carmask.inference.route import create_predictor
    from carmask.kaggle.submission import SubmissionError

    if out is None and masks_dir is None:
        raise fail("nothing to write: give --out submission.csv and/or --masks-dir DIR")
    if resume and overwrite:
        raise fail("give --resume (continue) or --overwrite (start again), not both")
    with ExitStack() as locks:
        try:
            # this process's part: all, --shard's, or under torchrun its rank's into a part file
            share = share_job(out, device, shard, overwrite=overwrite)
            out = share.out
            # Everything about the outputs is settled before the model loads: a mistake shows
            # in a second, and a second run on the same outputs is refused, naming the first.
            check_outputs(out, masks_dir, resume=resume, overwrite=overwrite, locks=locks)
            photos, every_name = _photos_to_predict(data, [*(images or []), *(inputs or [])],
                                                    masks=masks_dir is not None)
            names = share.names(every_name)
            if out is not None:
                check_row_names(names)  # before the model loads
                check_no_clash(out, masks_dir, names)
            if masks_dir is not None and not resume:  # mask files are never silently replaced
                refuse_replacing([mask_file(masks_dir, n) for n in names], "--masks-dir", overwrite)
            # A Kaggle submission is always the studio model's; loose photos get the auto choice.
            submission = out is not None or data is not None
            predictor = create_predictor(
                model or ("studio" if submission else None),
                device=share.device,
                backend=backend,
                quality=quality,
                tta=tta,
                batch=batch,
                size=parse_size(size, "HEIGHTxWIDTH") if size else None,
            )
        except (CutoutError, ModelFileError, OutputError, SubmissionError, ValueError,
                FileNotFoundError) as error:
            raise fail(str(error)) from None
        err.print(
            f"predicting {len(names)} images with {predictor.name} at "
            f"{predictor.size[0]}x{predictor.size[1]}{' + flip TTA' if predictor.tta else ''}, "
            f"quality {quality} ({predictor.backend}, {predictor.device}, batch {predictor.batch})",
            highlight=False,
        )
        try:
            summary = run_prediction(predictor, photos, names, submission=out, masks_dir=masks_dir,
                                     resume=resume, workers=workers, track=progress)
        except KeyboardInterrupt:
            warn(f"what was done is kept; to continue, run: {_resume_command()}",
                 label="interrupted:")
            raise typer.Exit(INTERRUPTED) from None
        except (OutputError, SubmissionError) as error:
            raise fail(str(error)) from None
    for name, warning in summary.warnings[:10]:
        warn(f"{name}: {warning}", label="check:")
    if len(summary.warnings) > 10:
        warn(f"... and {len(summary.warnings) - 10} more masks to check", label="check:")
    for dropped in summary.dropped[:10]:
        warn(dropped, label="redone:")
    if len(summary.dropped) > 10:
        warn(f"... and {len(summary.dropped) - 10} more rows", label="redone:")
    models = f", {by_model(summary.models)}" if summary.models else ""
    console.print(
        f"{summary.predicted} predicted ({summary.resumed} already done{models}) in "
        f"{summary.seconds:.1f} s: {summary.images_per_second:.2f} images/s, "
        f"peak memory {summary.peak_rss_mb:.0f} MB"
    )
    if out:
        console.print(f"submission: {out}")
    if masks_dir:
        console.print(f"masks: {masks_dir}")
    try:
        missing = share.finish(every_name)
    except SubmissionError as error:
        raise fail(str(error)) from None
    if missing is not None:
        console.print(f"merged {share.rank.count} parts into {share.whole}"
                      + (f" ({len(missing)} rows without a mask)" if missing else ""))
    if not summary.complete:
        off_size = ""
        if summary.off_size:  # the one failure a user cannot see in the photo: say what it is
            height, width = summary.row_size
            off_size = (f" ({len(summary.off_size)} not {width}x{height}, the size of this "
                        "submission's rows: Kaggle would decode their rows wrongly)")
        from carmask.kaggle.writer import spool_file

        spool = spool_file(out) if out else None
        kept = (f"; {spool} keeps the rows made, so --resume predicts only the photos that failed"
                if spool and spool.exists() else "")
        warn(
            f"{len(summary.failures)} failed{off_size}, {len(summary.missing)} without a photo; "
            f"see {failures_file(out) if out else 'the log'}{kept}",
            label="incomplete:",
        )
        raise typer.Exit(INCOMPLETE)


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C


def _resume_command() -> str:
    """The command line that continues this run: the same one, with --resume."""
    import shlex
    import sys

    args = [a for a in sys.argv[1:] if a not in ("--overwrite", "--no-resume")]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["carmask", *args])


def _photos_to_predict(data: Path | None, specs: list[str],
                       masks: bool) -> tuple[dict[str, Path], list[str]]:
    """The photos by name, and the names to predict in submission order."""
    from carmask.apps.batch import expand_inputs
    from carmask.inference.job import photos_by_name
    from carmask.kaggle.submission import read_sample_names

    if data is not None and specs:
        raise ValueError("give photos or --data DIR, not both")
    if data is None and not specs:
        raise ValueError("nothing to predict: give photos (files, folders or globs) or --data DIR")
    if data is not None:
        folder = data / "test"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no test/ folder in the data folder")
        photos = {
            p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        }
        sample = data / "sample_submission.csv"
        return photos, read_sample_names(sample) if sample.is_file() else sorted(photos)
    photos = photos_by_name(expand_inputs(specs), masks=masks)
    return photos, list(photos)


def evaluate(
    data: DataDir,
    model: ModelOption = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Folder for per_image.csv and index.html.")
    ] = None,
    quality: QualityOption = "fast",
    tta: TtaOption = None,
    size: Annotated[
        Optional[str], typer.Option(help="Model input HEIGHTxWIDTH (default: the model's).")
    ] = None,
    backend: BackendOption = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    cars: Annotated[
        Optional[str],
        typer.Option(help="Only these car ids (comma-separated), or 'val' for the model's validation cars."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {dice, iou, images, by_make, ...} as JSON on stdout; "
                                          "with people masks (an outdoor folder's people/), also "
                                          "the people taken for car.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the --out report if it exists.")] = False,
) -> None:
    """Score a model against true masks: Dice and IoU at full resolution, per view and make (an
    outdoor folder: per kind of photo). Where the folder has people masks (people/NAME.png), it
    also reports the people taken for car: the share of person pixels called car, and the frames
    where over 10% of a person's pixels are.

    Exit code 0: every photo scored; 3: scored, but some photos could not be (unreadable, a
    mask that is not binary or not the photo's size; each named on stderr); 1: nothing to score.
    """
    from carmask.apps.evaluate import EvaluationError, evaluate as run_evaluation, photos_to_score
    from carmask.inference.model_files import ModelFileError
    from carmask.inference.refine import describe_quality, quality_record
    from carmask.inference.route import create_predictor

    from carmask.util.output_files import OutputError, check_output_dir, refuse_replacing

    require_data_folder(data)
    try:  # the report's folder, before any scoring
        if out is not None:
            check_output_dir(out, "--out folder")
            refuse_replacing([out / "index.html", out / "per_image.csv"], "evaluation report", overwrite)
    except OutputError as error:
        raise fail(str(error)) from None
    try:
        predictor = create_predictor(
            model,
            device=device,
            backend=backend,
            quality=quality,
            tta=tta,
            size=parse_size(size, "HEIGHTxWIDTH") if size else None,
        )
    except (ModelFileError, ValueError) as error:
        raise fail(str(error)) from None
    try:
        records, people = photos_to_score(data, cars, predictor.config)
    except EvaluationError as error:
        raise fail(str(error)) from None
    try:
        evaluation = run_evaluation(predictor, records, out, track=progress, people=people)
    except EvaluationError as error:
        raise fail(str(error)) from None
    if as_json:
        print(json.dumps(evaluation.as_json()))
    else:
        console.print(f"mean Dice {evaluation.dice:.5f}, IoU {evaluation.iou:.5f} over "
                      f"{len(evaluation.per_image)} images; quality {quality}: "
                      f"{describe_quality(quality_record(predictor))}", highlight=False)
        if evaluation.people:
            figures = evaluation.people
            console.print(f"people taken for car: {figures['person_pixels_called_car']:.2%} of the "
                          f"person pixels; a person taken in {figures['frames_with_a_person_taken']} "
                          f"of {figures['frames_with_people']} frames with people", highlight=False)
        if evaluation.report:
            console.print(f"report: {evaluation.report}")
    if evaluation.unscored:  # each is named in the log as it happens; the count says it all
        warn(f"{len(evaluation.unscored)} of {len(records)} photos not scored (the mean leaves "
             f"them out; first: {evaluation.unscored[0][1]})", label="incomplete:")
        raise typer.Exit(INCOMPLETE)

