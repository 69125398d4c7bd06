"""`carmask demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from carmask.cli.common import console, fail, progress, require_data_folder, say


def demo(
    data: Annotated[
        Optional[Path], typer.Option("--data", help="A real Kaggle folder; default: a synthetic one.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where everything is written.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the synthetic data set.")] = 0,
) -> None:
    """Run the whole pipeline end to end and say where the results are."""
    from carmask.apps.demo import run_demo
    from carmask.util.output_files import OutputError, check_output_dir

    if data is not None:
        require_data_folder(data)
    try:
        check_output_dir(out, "--out folder")  # a run again writes over its own results
    except OutputError as error:
        raise fail(str(error)) from None
    result = run_demo(out, data, seed=seed, track=progress)
    summary = result.index.summary()
    console.rule("carmask demo")
    console.print(
        f"data:        {result.data} ({summary['train_cars']} cars, "
        f"{summary['train_images']} train and {summary['test_images']} test images, "
        f"{summary['problems']} problems)"
    )
    console.print(f"EDA report:  {result.eda_report}")
    status = ("OK", "green") if result.check.ok else (f"{len(result.check.errors)} problems", "red")
    say(f"submission:  {result.submission} ({result.check.rows} rows of true masks) ", status)
    if result.prediction is not None:
        job, ok = result.prediction, result.prediction_check.ok
        say(f"predicted:   {job.submission} and {job.masks_dir}/ ({job.predicted} test photos, "
            f"{job.images_per_second:.1f} images/s, shipped model) ",
            ("OK", "green") if ok and job.complete else ("problems", "red"))
    if result.evaluation is not None:
        console.print(f"evaluation:  {result.evaluation.report} (mean Dice {result.evaluation.dice:.4f} "
                      "on the test photos' true masks)")
    if result.cutouts:
        counts = ", ".join(f"{name} {len(job.written)}" for name, job in result.cutouts.items())
        console.print(f"cut-outs:    {result.gallery.parent}/ ({counts}); side by side in {result.gallery}")
    console.print("timings:     " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    predicted_ok = result.prediction is None or (result.prediction_check.ok and result.prediction.complete)
    cut_ok = all(not job.failed for job in result.cutouts.values())
    if not result.check.ok or result.index.fatal or not predicted_ok or not cut_ok:
        raise typer.Exit(1)
