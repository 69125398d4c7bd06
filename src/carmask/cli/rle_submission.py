"""`carmask rle ...` and `carmask submission ...`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from carmask.cli.arguments import CarmaskCommand
from carmask.cli.common import INCOMPLETE, console, err, fail, parse_size, say, warn

rle_app = typer.Typer(help="Kaggle run-length encoding (row-major, 1-based).", no_args_is_help=True)
submission_app = typer.Typer(help="Check and merge Kaggle submission files.", no_args_is_help=True)


@rle_app.command("encode", cls=CarmaskCommand)
def rle_encode(
    mask: Annotated[Path, typer.Argument(help="Mask image (GIF/PNG, values {0,1} or {0,255}).")],
) -> None:
    """Print the Kaggle RLE of a mask file."""
    from carmask.kaggle import rle
    from carmask.data.io import DataError, read_mask

    try:
        print(rle.encode(read_mask(mask)))
    except DataError as error:
        raise fail(str(error)) from None


# An RLE such as '-1 2' is a (bad) RLE, not an option: the decoder then says what is wrong with it
@rle_app.command("decode", cls=CarmaskCommand,
                 context_settings={"ignore_unknown_options": True})
def rle_decode(
    encoding: Annotated[str, typer.Argument(help="The RLE string, or - to read it from stdin.")],
    out: Annotated[Path, typer.Option("--out", help="Output mask: .png (0/255) or .gif ({0,1}).")],
    shape: Annotated[str, typer.Option(help="Mask size HEIGHTxWIDTH.")] = "1280x1918",
    overwrite: Annotated[bool, typer.Option(help="Replace the --out mask if it exists.")] = False,
) -> None:
    """Decode a Kaggle RLE string into a mask image."""
    from carmask.kaggle import rle
    from carmask.data.io import MASK_SUFFIXES, DataError, save_mask
    from carmask.util.output_files import OutputError, check_output_file, refuse_replacing

    size = mask_shape(shape)
    try:  # the output is checked before stdin is read
        check_output_file(out, "--out mask")
        refuse_replacing([out], "decoded mask", overwrite)
        if out.suffix.lower() not in MASK_SUFFIXES:
            raise OutputError(f"--out {out}: masks are written as .png or .gif (lossless), "
                              f"not {out.suffix or 'a file without an extension'}")
    except OutputError as error:
        raise fail(str(error)) from None
    text = sys.stdin.read().strip() if encoding == "-" else encoding.strip()
    try:
        mask = rle.decode(text, size)
    except rle.RLEError as error:
        raise fail(f"invalid RLE: {error}") from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_mask(mask, out)
    except (DataError, OSError) as error:
        raise fail(str(error)) from None
    console.print(f"wrote {out} ({mask.shape[0]}x{mask.shape[1]}, {int(mask.sum())} car pixels)")


def mask_shape(text: str) -> tuple[int, int]:
    """--shape HEIGHTxWIDTH, refused before any work when it is larger than a mask can be."""
    from carmask.kaggle import rle

    size = parse_size(text, "HEIGHTxWIDTH", "--shape", largest=None)  # check_shape bounds it
    try:
        rle.check_shape(size)
    except ValueError as error:
        raise fail(f"--shape {text}: {error}") from None
    return size


# -- submission ---------------------------------------------------------------------------------
@submission_app.command("check", cls=CarmaskCommand)
def submission_check(
    file: Annotated[Path, typer.Argument(help="The submission CSV.")],
    sample: Annotated[
        Optional[Path], typer.Option(help="sample_submission.csv listing the expected images.")
    ] = None,
    shape: Annotated[str, typer.Option(help="Mask size HEIGHTxWIDTH.")] = "1280x1918",
) -> None:
    """Validate a submission: header, every expected image exactly once, every RLE valid."""
    from carmask.kaggle.submission import SubmissionError, check_submission, read_sample_names

    size = mask_shape(shape)
    try:
        expected = read_sample_names(sample) if sample else None
        report = check_submission(file, expected, shape=size)
    except (OSError, SubmissionError) as error:
        raise fail(str(error)) from None
    for line, message in report.errors:
        err.print(f"{file}:{line if line is not None else '-'}: {message}", highlight=False)
    for warning in report.warnings:
        warn(warning)
    if not report.ok:
        raise fail(f"{len(report.errors)} problem(s) in {file}")
    against = f" against {sample}" if sample else ""
    say(("OK", "green"), f" {file}: {report.rows} rows{against}, "
        f"{report.rows - report.empty_masks} non-empty masks")


@submission_app.command("merge", cls=CarmaskCommand)
def submission_merge(
    shards: Annotated[list[Path], typer.Argument(help="Shard CSVs from `carmask predict --shard i/n`.")],
    sample: Annotated[
        Path, typer.Option(help="sample_submission.csv giving the order and the expected images.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The merged submission.")],
    shape: Annotated[str, typer.Option(help="Mask size HEIGHTxWIDTH.")] = "1280x1918",
    overwrite: Annotated[bool, typer.Option(help="Replace the --out submission if it exists.")] = False,
) -> None:
    """Join prediction shards    overwrite: Annotated[bool, typer.Option(help="Replace the --out submission if it exists.")] = False,
 into one submission in sample order, then check it."""
    from carmask.kaggle.submission import (
        SubmissionError,
        check_submission,
        merge_submissions,
        read_sample_names,
    )

    from carmask.util.output_files import OutputError, check_output_file, refuse_replacing

    size = mask_shape(shape)
    try:
        check_output_file(out, "--out submission")
        refuse_replacing([out], "merged submission", overwrite)  # before any work
        expected = read_sample_names(sample)
        missing = merge_submissions(shards, out, expected)
        report = check_submission(out, expected, shape=size)
    except (OSError, SubmissionError, OutputError) as error:
        raise fail(str(error)) from None
    for line, message in report.errors[:20]:
        err.print(f"{out}:{line if line is not None else '-'}: {message}", highlight=False)
    if not report.ok:
        raise fail(f"the merged file has {len(report.errors)} problem(s)")
    console.print(
        f"merged {len(shards)} shards into {out}: {report.rows} rows, {len(missing)} without a mask"
    )
    if missing:
        raise typer.Exit(INCOMPLETE)
