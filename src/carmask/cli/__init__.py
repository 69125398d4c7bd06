"""The `carmask` command line: parses arguments, calls the library, prints the results.

One module per group of commands; this one assembles them into the `carmask` app.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.logging import RichHandler

from carmask.cli.arguments import CarmaskCommand, CarmaskGroup
from carmask.cli.common import err, printable
from carmask.cli.cutout import cutout, serve
from carmask.cli.data import data_app, eda
from carmask.cli.demo import demo
from carmask.cli.general import train_general
from carmask.cli.models import average, export, models, train
from carmask.cli.predict import evaluate, predict
from carmask.cli.refine import train_refiner
from carmask.cli.rle_submission import rle_app, submission_app

app = typer.Typer(
    cls=CarmaskGroup,
    help="Mask cars out of photos, Carvana's studio or anywhere: data checks, training, prediction, "
    "Kaggle submissions, evaluation, cut-outs, an HTTP service with a web page, and the demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo", cls=CarmaskCommand)(demo)
app.add_typer(data_app, name="data")
app.command("eda", cls=CarmaskCommand)(eda)
app.command("models", cls=CarmaskCommand)(models)
app.command("train", cls=CarmaskCommand)(train)
app.command("train-refiner", cls=CarmaskCommand)(train_refiner)
app.command("train-general", cls=CarmaskCommand,
            short_help="Fine-tune a model for cars on any background: outdoor photos, pasted cars, "
                       "studio photos.")(train_general)
app.command("predict", cls=CarmaskCommand)(predict)
app.command("evaluate", cls=CarmaskCommand)(evaluate)
app.command("export", cls=CarmaskCommand)(export)
app.command("average", cls=CarmaskCommand)(average)
app.command("cutout", cls=CarmaskCommand)(cutout)
app.command("serve", cls=CarmaskCommand,
            short_help="Serve the web page, the HTTP API (rembg's too) and its docs.")(serve)
app.add_typer(rle_app, name="rle")
app.add_typer(submission_app, name="submission")


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step (INFO).")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and the shipped models' ids.")] = False,
) -> None:
    # Log messages hold paths and names from the user's files: never markup, never raw controls.
    handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    handler.setFormatter(PrintableFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def _print_version(value: bool) -> None:
    if not value:
        return
    from carmask import __version__
    from carmask.inference.model_files import shipped_models

    print(f"carmask {__version__}")
    for entry in shipped_models():
        print(f"  {entry.role} model: {entry.id}")
    raise typer.Exit()


class PrintableFormatter(logging.Formatter):
    """Shows control characters in a log message as escapes (the traceback, if any, is kept)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def main() -> None:
    app()
