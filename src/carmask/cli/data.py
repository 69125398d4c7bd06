"""`carmask data ...` and `carmask eda`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from carmask.cli.arguments import CarmaskCommand
from carmask.cli.common import DataDir, console, fail, parse_size, progress, require_data_folder, say

data_app = typer.Typer(help="Index, validate, synthesise or download Carvana data.", no_args_is_help=True)


@data_app.command("index", cls=CarmaskCommand)
def data_index(
    data: DataDir,
    deep: Annotated[
        bool,
        typer.Option(
            help="Also decode every photo (finds broken coding tables the header check misses; slower)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary and problems as JSON.")] = False,
) -> None:
    """Discover a Kaggle folder, join metadata.csv, check every file and print a summary.

    Exits 1 when a fatal problem is found (missing or orphan masks, wrong sizes, masks that are
    not binary or have several frames, unreadable or truncated files, links that lead nowhere,
    bad names, duplicate ids, an unreadable metadata.csv).
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
            for p in index.problems
        ]
        # ASCII: a path's unprintable characters (bidi marks, C1 controls) arrive as \u escapes.
        console.print_json(json.dumps(summary), ensure_ascii=True)
    else:
        table = Table(title=f"Carvana data in {data}", show_header=False)
        for key, value in summary.items():
            if key != "root":
                table.add_row(
                    key.replace("_", " "),
                    ", ".join(f"{k}: {v}" for k, v in value.items())
                    if isinstance(value, dict)
                    else str(value),
                )
        console.print(table)
        for problem in index.problems:
            console.print(str(problem), style="red" if problem.fatal else "yellow", highlight=False)
        if not index.problems:
            say(("no problems found", "green"))
    if index.fatal:
        raise typer.Exit(1)


@data_app.command("synth", cls=CarmaskCommand)
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the data set into.")],
    # at most carmask.data.synth.MAX_CARS cars in all (16,000 photos): Carvana itself has 318
    cars: Annotated[int, typer.Option(min=1, max=1000, help="Training cars (16 views each).")] = 8,
    test_cars: Annotated[int, typer.Option(
        min=0, max=1000, help="Test cars (16 views each, true masks in test_masks/).")] = 2,
    size: Annotated[str, typer.Option(help="Image size WIDTHxHEIGHT.")] = "480x320",
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same bytes.")] = 0,
    sign: Annotated[bool, typer.Option(help="Bold lettering on the studio wall, a distractor.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a data set this command wrote there before.")] = False,
) -> None:
    """Write a synthetic studio data set in the exact Kaggle layout (deterministic per seed)."""
    from carmask.data.synth import MARKER, synthesize
    from carmask.util.output_files import OutputError, check_output_dir, refuse_replacing

    image_size = parse_size(size, "WIDTHxHEIGHT", "--size")
    try:
        check_output_dir(out, "--out folder")
        refuse_replacing([out / MARKER], "synthetic data set", overwrite)
    except OutputError as error:
        raise fail(str(error).replace(str(out / MARKER), f"a data set in {out}")) from None
    try:
        result = synthesize(
            out,
            cars=cars,
            test_cars=test_cars,
            size=image_size,
            seed=seed,
            sign=sign,
            track=progress,
        )
    except ValueError as error:
        raise fail(str(error)) from None
    say(f"wrote {result.images} images of {len(result.train_cars)} train and "
        f"{len(result.test_cars)} test cars to ", (str(result.root), "bold"))


@data_app.command("download", cls=CarmaskCommand)
def data_download(
    out: Annotated[Path, typer.Option("--out", help="Folder for the Kaggle data (about 25 GB unzipped).")],
    file: Annotated[
        Optional[list[str]], typer.Option(help="Only these competition files, e.g. metadata.csv.zip.")
    ] = None,
) -> None:
    """Download the competition with the Kaggle API (needs your credentials and the accepted rules)."""
    from carmask.data.download import DownloadError, check_request, download_competition

    try:
        check_request(out, file)
        path = download_competition(out, files=file)
    except DownloadError as error:
        raise fail(str(error)) from None
    say("downloaded to ", (str(path), "bold"), f"; next: carmask data index --data {path}")


def eda(
    data: DataDir,
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html.")] = Path("eda"),
    overwrite: Annotated[bool, typer.Option(help="Replace the report if it exists.")] = False,
) -> None:
    """Write a self-contained HTML report exploring a data folder."""
    from carmask.apps.eda import write_eda_report
    from carmask.util.output_files import (OutputError, check_output_dir, check_output_file,
                                           refuse_replacing)

    require_data_folder(data)  # says what the path is instead
    try:
        check_output_dir(out, "--out folder")
        check_output_file(out / "index.html", "EDA report")  # a folder of that name, say
        refuse_replacing([out / "index.html"], "EDA report", overwrite)
    except OutputError as error:
        raise fail(str(error)) from None
    path = write_eda_report(data, out, track=progress)
    say("EDA report: ", (str(path), "bold"))
